package dhcpserver

import (
	"encoding/binary"
	"net"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// staticOptions are the option values every reply shares, encoded once.
type staticOptions struct {
	serverID, mask, broadcast, router, dns, domain, mtu []byte
	leaseTime, renew, rebind                            []byte
}

func newStaticOptions(c Config) staticOptions {
	secs := func(d time.Duration) []byte { return binary.BigEndian.AppendUint32(nil, uint32(d/time.Second)) }
	_, bcast := subnetBounds(c.Subnet)
	o := staticOptions{
		serverID:  c.ServerIP.AsSlice(),
		mask:      net.CIDRMask(c.Subnet.Bits(), 32),
		broadcast: u32IP(bcast),
		leaseTime: secs(c.LeaseTime),
		renew:     secs(c.LeaseTime / 2),
		rebind:    secs(c.LeaseTime / 8 * 7),
	}
	if c.Router.IsValid() {
		o.router = c.Router.AsSlice()
	}
	for _, d := range c.DNS {
		o.dns = append(o.dns, d.AsSlice()...)
	}
	if c.Domain != "" {
		o.domain = []byte(c.Domain)
	}
	if c.MTU != 0 {
		o.mtu = binary.BigEndian.AppendUint16(nil, uint16(c.MTU))
	}
	return o
}

var msgTypeValues = func() (v [9][]byte) {
	for i := range v {
		v[i] = []byte{byte(i)}
	}
	return v
}()

// eachOption yields the reply's options in the order dhcpv4 marshals
// them, ascending with option 82 last, so the map-based reply of Handle
// and the direct encoding of the frame path are the same bytes. Empty
// values are skipped.
func (s *Server) eachOption(req *dhcpv4.DHCPv4, d decision, f func(code uint8, v []byte)) {
	o := &s.opts
	emit := func(c dhcpv4.OptionCode, v []byte) {
		if len(v) > 0 {
			f(c.Code(), v)
		}
	}
	nak := d.kind == dhcpv4.MessageTypeNak
	if !nak {
		emit(dhcpv4.OptionSubnetMask, o.mask)
		emit(dhcpv4.OptionRouter, o.router)
		emit(dhcpv4.OptionDomainNameServer, o.dns)
		emit(dhcpv4.OptionHostName, []byte(d.hostname))
		emit(dhcpv4.OptionDomainName, o.domain)
		emit(dhcpv4.OptionInterfaceMTU, o.mtu)
		emit(dhcpv4.OptionBroadcastAddress, o.broadcast)
	}
	if d.lease && !nak {
		emit(dhcpv4.OptionIPAddressLeaseTime, o.leaseTime)
	}
	emit(dhcpv4.OptionDHCPMessageType, msgTypeValues[d.kind])
	emit(dhcpv4.OptionServerIdentifier, o.serverID)
	if nak {
		emit(dhcpv4.OptionMessage, []byte(d.message))
	}
	if d.lease && !nak {
		emit(dhcpv4.OptionRenewTimeValue, o.renew)
		emit(dhcpv4.OptionRebindingTimeValue, o.rebind)
	}
	// RFC 6842 and RFC 3046: echo what the client and relay sent.
	emit(dhcpv4.OptionClientIdentifier, req.Options.Get(dhcpv4.OptionClientIdentifier))
	emit(dhcpv4.OptionRelayAgentInformation, req.Options.Get(dhcpv4.OptionRelayAgentInformation))
}

// replyHeader holds the BOOTP fields of a reply to req.
func replyHeader(req *dhcpv4.DHCPv4, d decision) (htype iana.HWType, ciaddr, giaddr uint32) {
	htype = req.HWType
	if htype == 0 {
		htype = iana.HWTypeEthernet
	}
	if d.kind == dhcpv4.MessageTypeAck {
		ciaddr = ipU32(req.ClientIPAddr)
	}
	return htype, ciaddr, ipU32(req.GatewayIPAddr)
}

// buildReply builds the reply directly: dhcpv4.NewReplyFromRequest would
// draw a random transaction id (a getrandom call and a context timer) only
// to overwrite it.
func (s *Server) buildReply(req *dhcpv4.DHCPv4, d decision) *dhcpv4.DHCPv4 {
	htype, ciaddr, giaddr := replyHeader(req, d)
	r := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootReply,
		HWType:        htype,
		TransactionID: req.TransactionID,
		Flags:         req.Flags,
		ClientIPAddr:  u32IP(ciaddr),
		YourIPAddr:    u32IP(d.yiaddr),
		ServerIPAddr:  net.IP{0, 0, 0, 0},
		GatewayIPAddr: u32IP(giaddr),
		ClientHWAddr:  req.ClientHWAddr,
		Options:       make(dhcpv4.Options, 16),
	}
	s.eachOption(req, d, func(c uint8, v []byte) { r.Options[c] = v })
	return r
}

// appendReply encodes the reply to req onto b, byte for byte what
// buildReply(req, d).ToBytes() gives, without the options map, the sort
// and the buffer growth that made encoding a third of the server's CPU.
func (s *Server) appendReply(b []byte, req *dhcpv4.DHCPv4, d decision) []byte {
	htype, ciaddr, giaddr := replyHeader(req, d)
	start := len(b)
	b = append(b, byte(dhcpv4.OpcodeBootReply), byte(htype), byte(len(req.ClientHWAddr)), 0)
	b = append(b, req.TransactionID[:]...)
	b = append(b, 0, 0) // secs
	b = binary.BigEndian.AppendUint16(b, req.Flags)
	b = binary.BigEndian.AppendUint32(b, ciaddr)
	b = binary.BigEndian.AppendUint32(b, d.yiaddr)
	b = binary.BigEndian.AppendUint32(b, 0) // siaddr
	b = binary.BigEndian.AppendUint32(b, giaddr)
	var chaddr [16]byte
	copy(chaddr[:], req.ClientHWAddr)
	b = append(b, chaddr[:]...)
	b = append(b, make([]byte, 64+128)...) // sname, file
	b = append(b, 99, 130, 83, 99)
	s.eachOption(req, d, func(c uint8, v []byte) {
		for len(v) > 0 { // RFC 3396: long values are split
			n := min(len(v), 255)
			b = append(b, c, byte(n))
			b = append(b, v[:n]...)
			v = v[n:]
		}
	})
	b = append(b, 255)
	if n := len(b) - start; n < 300 {
		b = append(b, make([]byte, 300-n)...)
	}
	return b
}
