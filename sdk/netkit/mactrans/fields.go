package mactrans

import (
	"encoding/binary"

	"github.com/google/gopacket/layers"
)

// DHCPv4 layout (RFC 2131); offsets are from the start of the UDP payload.
const (
	dhcpHtype    = 1
	dhcpHlen     = 2
	dhcpChaddr   = 28
	dhcpSname    = 44
	dhcpFile     = 108
	dhcpCookie   = 236
	dhcpOptions  = 240
	optClientID  = 61
	optOverload  = 52
	optPad       = 0
	optEnd       = 255
	hwEthernet   = 1
	duidLLT      = 1
	duidLL       = 3
	clientIDDUID = 255 // RFC 4361: IAID + DUID
)

var magicCookie = [4]byte{99, 130, 83, 99}

// dhcp walks the DHCPv4 message in the UDP payload by hand: insomniacslk
// and gopacket both allocate when parsing options.
func (t *Translator) dhcp(from, to *[6]byte) {
	p := t.udp.Payload
	var c csum
	if len(p) >= dhcpChaddr+6 && p[dhcpHtype] == hwEthernet && p[dhcpHlen] == 6 {
		c.swap(p[dhcpChaddr:dhcpChaddr+6], dhcpChaddr, from, to)
	}
	if len(p) >= dhcpOptions && [4]byte(p[dhcpCookie:dhcpOptions]) == magicCookie {
		// Option overload (RFC 2131 option 52) may move the client
		// identifier into the file or sname field.
		over := c.options(p[dhcpOptions:], dhcpOptions, from, to)
		if over&1 != 0 {
			c.options(p[dhcpFile:dhcpCookie], dhcpFile, from, to)
		}
		if over&2 != 0 {
			c.options(p[dhcpSname:dhcpFile], dhcpSname, from, to)
		}
	}
	c.apply(t.udp.Contents[6:8], true)
}

// options walks one DHCP option area starting at payload offset base and
// returns the option-overload value it saw.
func (c *csum) options(o []byte, base int, from, to *[6]byte) (overload byte) {
	for i := 0; i < len(o); {
		code := o[i]
		if code == optPad {
			i++
			continue
		}
		if code == optEnd || i+2 > len(o) {
			break
		}
		d, n := i+2, int(o[i+1])
		if d+n > len(o) {
			break
		}
		switch code {
		case optClientID:
			c.clientID(o[d:d+n], base+d, from, to)
		case optOverload:
			if n == 1 {
				overload = o[d]
			}
		}
		i = d + n
	}
	return overload
}

// clientID rewrites the MAC inside a client identifier, because servers
// such as dnsmasq key leases on it rather than on chaddr: left alone, two
// clones would share a lease.
func (c *csum) clientID(v []byte, off int, from, to *[6]byte) {
	switch {
	case len(v) == 7 && v[0] == hwEthernet: // type 1 + MAC: busybox udhcpc, dhclient
		c.swap(v[1:7], off+1, from, to)
	case len(v) >= 7 && v[0] == clientIDDUID:
		duid, doff := v[5:], off+5 // after type and 4-byte IAID
		typ := binary.BigEndian.Uint16(duid[0:2])
		switch {
		case typ == duidLL && len(duid) == 10 && binary.BigEndian.Uint16(duid[2:4]) == hwEthernet:
			c.swap(duid[4:10], doff+4, from, to)
		case typ == duidLLT && len(duid) == 14 && binary.BigEndian.Uint16(duid[2:4]) == hwEthernet:
			c.swap(duid[8:14], doff+8, from, to)
		}
	}
}

// Where ND options start in the ICMPv6 payload (after type, code and
// checksum), per RFC 4861 message type.
func ndOptionsAt(typ uint8) int {
	switch typ {
	case layers.ICMPv6TypeRouterSolicitation:
		return 4
	case layers.ICMPv6TypeRouterAdvertisement:
		return 12
	case layers.ICMPv6TypeNeighborSolicitation, layers.ICMPv6TypeNeighborAdvertisement:
		return 20
	case layers.ICMPv6TypeRedirect:
		return 36
	}
	return -1
}

// ND option types (RFC 4861 4.6.1).
const (
	ndSourceLL = 1
	ndTargetLL = 2
)

// nd rewrites the link-layer address options of Neighbor Discovery, the
// IPv6 counterpart of ARP: a neighbour caches the MAC from the option, not
// from the Ethernet header.
func (t *Translator) nd(from, to *[6]byte) {
	start := ndOptionsAt(t.icmp6.TypeCode.Type())
	p := t.icmp6.Payload
	if start < 0 || len(p) < start {
		return
	}
	var c csum
	for i := start; i+2 <= len(p); {
		n := int(p[i+1]) * 8
		if n == 0 || i+n > len(p) {
			break // RFC 4861: a zero length means the message is invalid
		}
		if (p[i] == ndSourceLL || p[i] == ndTargetLL) && n == 8 {
			c.swap(p[i+2:i+8], i+2, from, to)
		}
		i += n
	}
	c.apply(t.icmp6.Contents[2:4], false)
}
