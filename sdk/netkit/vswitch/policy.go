package vswitch

import (
	"encoding/binary"
)

// Drop reasons, counted per port so `anka show` can say why traffic died.
const (
	dropNone = iota
	dropSrcMAC
	dropSrcIP
	dropARPSpoof
	dropDHCPServer
	dropRA
	dropNASpoof
	dropMalformed
	dropHook
	dropIsolated
	dropNoRoute
	dropOffload
	numDropReasons
)

var dropNames = [numDropReasons]string{
	"", "source MAC not the port's", "source IP not the port's", "ARP sender not the port's",
	"DHCP server reply from a VM", "IPv6 router advertisement from a VM", "neighbour advertisement for another's address",
	"malformed frame", "dropped by a hook", "isolated port", "no route",
	"offload the switch cannot complete",
}

const (
	etherIPv4 = 0x0800
	etherARP  = 0x0806
	etherIPv6 = 0x86dd
	etherVLAN = 0x8100
)

// l3 finds the ethertype and the offset of the payload, skipping one VLAN
// tag; ok is false for frames too short to carry what they claim.
func l3(frame []byte) (etype uint16, off int, ok bool) {
	if len(frame) < 14 {
		return 0, 0, false
	}
	etype, off = binary.BigEndian.Uint16(frame[12:14]), 14
	if etype == etherVLAN {
		if len(frame) < 18 {
			return 0, 0, false
		}
		etype, off = binary.BigEndian.Uint16(frame[16:18]), 18
	}
	return etype, off, true
}

// checkSpoof applies the anti-spoofing rules to a frame a VM port sends:
// its own MAC; once it has an address, its own IPv4 address (or 0.0.0.0
// for DHCP); no DHCP server replies, no IPv6 router advertisements, and
// no neighbour advertisements for addresses another port holds.
func (s *Switch) checkSpoof(p *Port, frame []byte) int {
	if macAt(frame[6:12]) != p.mac {
		return dropSrcMAC
	}
	etype, off, ok := l3(frame)
	if !ok {
		return dropMalformed
	}
	switch etype {
	case etherIPv4:
		return checkIPv4(p, frame[off:])
	case etherARP:
		a := frame[off:]
		if len(a) < 28 {
			return dropMalformed
		}
		if macAt(a[8:14]) != p.mac {
			return dropARPSpoof
		}
		if ip, ok := p.ip4(); ok {
			spa := [4]byte(a[14:18])
			if spa != ip && spa != ([4]byte{}) {
				return dropARPSpoof
			}
		}
	case etherIPv6:
		return s.checkIPv6(p, frame[off:])
	}
	return dropNone
}

func checkIPv4(p *Port, ip []byte) int {
	if len(ip) < 20 || ip[0]>>4 != 4 {
		return dropMalformed
	}
	ihl := int(ip[0]&0x0f) * 4
	if ihl < 20 || len(ip) < ihl {
		return dropMalformed
	}
	var sport, dport uint16
	udp := ip[9] == 17 && len(ip) >= ihl+8
	if udp {
		sport = binary.BigEndian.Uint16(ip[ihl : ihl+2])
		dport = binary.BigEndian.Uint16(ip[ihl+2 : ihl+4])
		if sport == 67 {
			return dropDHCPServer
		}
	}
	if want, ok := p.ip4(); ok {
		src := [4]byte(ip[12:16])
		if src != want && !(src == [4]byte{} && udp && sport == 68 && dport == 67) {
			return dropSrcIP
		}
	}
	return dropNone
}

// IPv6 extension headers that may sit before an ICMPv6 header.
func isExtHeader(nh byte) bool { return nh == 0 || nh == 43 || nh == 44 || nh == 60 }

func (s *Switch) checkIPv6(p *Port, ip []byte) int {
	if len(ip) < 40 || ip[0]>>4 != 6 {
		return dropMalformed
	}
	nh, off := ip[6], 40
	for i := 0; isExtHeader(nh) && i < 8; i++ {
		if len(ip) < off+8 {
			return dropMalformed
		}
		l := 8
		if nh != 44 {
			l = (int(ip[off+1]) + 1) * 8
		}
		nh, off = ip[off], off+l
	}
	if isExtHeader(nh) {
		return dropMalformed // a chain this long only hides something
	}
	if nh == 17 && len(ip) >= off+2 && binary.BigEndian.Uint16(ip[off:off+2]) == 547 {
		return dropDHCPServer // DHCPv6 server
	}
	if nh != 58 || len(ip) < off+1 {
		return dropNone
	}
	switch ip[off] {
	case 134:
		return dropRA
	case 136:
		if len(ip) < off+24 {
			return dropMalformed
		}
		if !s.claimIPv6([16]byte(ip[off+8:off+24]), p) {
			return dropNASpoof
		}
	}
	return dropNone
}
