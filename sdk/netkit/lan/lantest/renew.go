package lantest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/insomniacslk/dhcp/dhcpv4"
)

// ErrNAK is what Renew returns when the server refuses the address.
var ErrNAK = errNAK

// Renew asks the server to extend the lease on ip (RFC 2131 REBINDING: a
// REQUEST with ciaddr set and no server identifier, broadcast from ip,
// as a guest whose lease outlived the server's restart sends it), resending
// every 300 ms until within passes. It returns the ACK's lease, or ErrNAK.
func (c *Client) Renew(ip netip.Addr, within time.Duration) (Lease, error) {
	m, err := dhcpv4.New(
		dhcpv4.WithHwAddr(c.MAC),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithClientIP(ip.AsSlice()),
	)
	if err != nil {
		return Lease{}, err
	}
	ack, err := c.exchangeFrom(m, ip, dhcpv4.MessageTypeAck, time.Now().Add(within))
	if err != nil {
		return Lease{}, err
	}
	return leaseOf(ack), nil
}

// Release gives l back to server (a DHCPRELEASE from l.IP). No reply is
// due, so it is sent once.
func (c *Client) Release(l Lease) error {
	m, err := dhcpv4.New(
		dhcpv4.WithHwAddr(c.MAC),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease),
		dhcpv4.WithClientIP(l.IP.AsSlice()),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(l.Server.AsSlice())),
	)
	if err != nil {
		return err
	}
	f, err := DHCPFrame(c.MAC, layers.EthernetBroadcast, l.IP, netip.IPv4Unspecified(), m.ToBytes())
	if err != nil {
		return err
	}
	return c.Send(f)
}

// exchangeFrom is exchange for a message sent from src.
func (c *Client) exchangeFrom(m *dhcpv4.DHCPv4, src netip.Addr, want dhcpv4.MessageType, deadline time.Time) (*dhcpv4.DHCPv4, error) {
	frame, err := DHCPFrame(c.MAC, layers.EthernetBroadcast, src, netip.IPv4Unspecified(), m.ToBytes())
	if err != nil {
		return nil, err
	}
	return c.await(frame, m.TransactionID, m.MessageType(), want, deadline, nil)
}

// Exchange sends frame, a request with transaction id xid that a test may
// have built by hand, until a reply of type want arrives (or a NAK:
// ErrNAK), resending every 300 ms until within passes.
func (c *Client) Exchange(frame []byte, xid dhcpv4.TransactionID, want dhcpv4.MessageType, within time.Duration) (*dhcpv4.DHCPv4, error) {
	sent := dhcpv4.MessageTypeNone
	if m, err := parseDHCP(frame); err == nil {
		sent = m.MessageType()
	}
	return c.await(frame, xid, sent, want, time.Now().Add(within), nil)
}

// await sends frame, a message of type sent, until a reply with xid of
// type want (or a NAK) arrives, resending every 300 ms until deadline.
// A send that fails (a full socket) is tried again at the next tick, as
// a client's retransmission would. Replies read on the way that answer
// none of the client's exchanges are appended to other, when not nil;
// those for its exchanges (late copies, answers to a resent request)
// are dropped.
func (c *Client) await(frame []byte, xid dhcpv4.TransactionID, sent, want dhcpv4.MessageType, deadline time.Time, other *[]*dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, error) {
	c.ask(xid)
	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	c.Send(frame)
	for {
		select {
		case f := <-c.in:
			r, err := parseDHCP(f)
			if err != nil {
				continue
			}
			if r.TransactionID != xid {
				if other != nil && !c.isAsked(r.TransactionID) {
					*other = append(*other, r)
				}
				continue
			}
			switch r.MessageType() {
			case want:
				return r, nil
			case dhcpv4.MessageTypeNak:
				return nil, errNAK
			}
		case now := <-tick.C:
			if now.After(deadline) {
				return nil, fmt.Errorf("no %s for %s", want, sent)
			}
			c.Send(frame)
		}
	}
}

// Fence sends a DHCPINFORM (from 0.0.0.0, which changes no lease) until
// its ACK arrives, and returns the other DHCP replies read before that
// ACK, leaving out those for the client's own exchanges (copies answering
// a resent request). The server answers one port's requests in the order
// they came and sends a reply that needs no write to disk (OFFER, NAK,
// INFORM's ACK) as soon as it is decided, to the asking port's socket,
// so every such reply to what the client sent with Send before Fence is
// among those returned: what a request earned is known exactly, without
// waiting for a time to pass. Replies that follow a write to disk (the
// ACK of a REQUEST) leave once it is synced and may come later.
func (c *Client) Fence(within time.Duration) ([]*dhcpv4.DHCPv4, error) {
	m, err := dhcpv4.New(dhcpv4.WithHwAddr(c.MAC), dhcpv4.WithMessageType(dhcpv4.MessageTypeInform))
	if err != nil {
		return nil, err
	}
	frame, err := c.frame(m)
	if err != nil {
		return nil, err
	}
	var got []*dhcpv4.DHCPv4
	if _, err := c.await(frame, m.TransactionID, m.MessageType(), dhcpv4.MessageTypeAck, time.Now().Add(within), &got); err != nil {
		return got, fmt.Errorf("lantest: fence: %w", err)
	}
	return got, nil
}

// DHCPFrame wraps a DHCP client payload (which may be malformed: hostile
// tests build their own) in Ethernet, IPv4 and UDP 68 -> 67, from src to
// dst; an unspecified dst is the broadcast address.
func DHCPFrame(srcMAC, dstMAC net.HardwareAddr, src, dst netip.Addr, payload []byte) ([]byte, error) {
	if !dst.IsValid() || dst.IsUnspecified() {
		dst = netip.AddrFrom4([4]byte{255, 255, 255, 255})
	}
	if !src.IsValid() {
		src = netip.IPv4Unspecified()
	}
	if !src.Is4() || !dst.Is4() {
		return nil, errors.New("lantest: DHCP runs over IPv4")
	}
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	udp := &layers.UDP{SrcPort: 68, DstPort: 67}
	udp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, udp, gopacket.Payload(payload))
	return buf.Bytes(), err
}
