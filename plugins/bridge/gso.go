package main

import (
	"encoding/binary"
	"errors"
)

// The virtio-net header a packet socket with PACKET_VNET_HDR puts before
// each packet (struct virtio_net_hdr, native byte order as the kernel's
// legacy virtio: little-endian on every host anka runs on).
const (
	vnetHdrLen    = 10
	vnetNeedsCsum = 1
	gsoNone       = 0
	gsoTCPv4      = 1
	gsoUDP        = 3 // UFO: IP fragmentation, long gone from the kernel
	gsoTCPv6      = 4
	gsoUDPL4      = 5
	gsoECN        = 0x80
)

type vnetHdr struct {
	flags, gsoType                         uint8
	hdrLen, gsoSize, csumStart, csumOffset uint16
}

func parseVnetHdr(b []byte) vnetHdr {
	return vnetHdr{
		flags: b[0], gsoType: b[1],
		hdrLen: binary.LittleEndian.Uint16(b[2:]), gsoSize: binary.LittleEndian.Uint16(b[4:]),
		csumStart: binary.LittleEndian.Uint16(b[6:]), csumOffset: binary.LittleEndian.Uint16(b[8:]),
	}
}

// vlan is a tag the kernel stripped, to put back.
type vlan struct{ tci, tpid uint16 }

// csum adds b to a ones' complement sum, 32 bits at a time.
func csum(sum uint64, b []byte) uint64 {
	for len(b) >= 8 {
		sum += uint64(binary.BigEndian.Uint32(b)) + uint64(binary.BigEndian.Uint32(b[4:]))
		b = b[8:]
	}
	if len(b) >= 4 {
		sum += uint64(binary.BigEndian.Uint32(b))
		b = b[4:]
	}
	if len(b) >= 2 {
		sum += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	return sum
}

func fold(sum uint64) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}

// completeChecksum finishes a checksum the sender left to the hardware
// (CHECKSUM_PARTIAL): the field at start+off holds the pseudo-header sum;
// the checksum covers everything from start. False when the offsets lie
// outside the packet.
func completeChecksum(pkt []byte, start, off int) bool {
	if start < 0 || off < 0 || start+off+2 > len(pkt) {
		return false
	}
	c := ^fold(csum(0, pkt[start:]))
	if c == 0 && off == 6 { // UDP: zero means "no checksum"
		c = 0xffff
	}
	binary.BigEndian.PutUint16(pkt[start+off:], c)
	return true
}

// gso cuts a merged packet (TSO from the sender, GRO on our side) into
// the frames it stands for, as the kernel's own GSO would before a NIC:
// headers copied, IPv4 IDs counted up, TCP sequence numbers advanced,
// FIN and PSH on the last frame only, CWR on the first, every checksum
// computed afresh.
type gso struct {
	active bool
	pkt    []byte
	tag    vlan
	tagged bool
	l3, l4 int // offsets of the IP and transport headers
	hdrs   int // bytes of headers before the payload
	size   int // payload bytes per frame
	v4     bool
	tcp    bool
	proto  byte
	off    int // payload bytes handed out so far
	k      int // frames handed out so far
	id     uint16
	seq    uint32
}

var (
	errGSOType  = errors.New("a merged packet of a kind that cannot be cut (UFO)")
	errGSOParse = errors.New("a merged packet whose headers do not parse")
	errGSOSize  = errors.New("a merged packet whose segments would exceed the interface's MTU")
)

// start sets g up to cut pkt; mtu bounds each frame.
func (g *gso) start(pkt []byte, vh vnetHdr, tag vlan, tagged bool, mtu int) error {
	*g = gso{pkt: pkt, tag: tag, tagged: tagged, size: int(vh.gsoSize)}
	typ := vh.gsoType &^ gsoECN
	if typ != gsoTCPv4 && typ != gsoTCPv6 && typ != gsoUDPL4 {
		return errGSOType
	}
	if g.size <= 0 {
		return errGSOParse
	}
	// The IP header follows the Ethernet header and any tags in band.
	l3 := 12
	for {
		if len(pkt) < l3+2 {
			return errGSOParse
		}
		et := binary.BigEndian.Uint16(pkt[l3:])
		l3 += 2
		if et == 0x8100 || et == 0x88a8 {
			l3 += 2
			continue
		}
		switch et {
		case 0x0800:
			g.v4 = true
		case 0x86dd:
		default:
			return errGSOParse
		}
		break
	}
	g.l3 = l3
	if g.v4 {
		if len(pkt) < l3+20 || pkt[l3]>>4 != 4 || pkt[l3]&0x0f < 5 {
			return errGSOParse
		}
		g.l4 = l3 + int(pkt[l3]&0x0f)*4
		g.proto = pkt[l3+9]
		g.id = binary.BigEndian.Uint16(pkt[l3+4:])
	} else {
		if len(pkt) < l3+40 || pkt[l3]>>4 != 6 {
			return errGSOParse
		}
		// Extension headers: the checksum offset the kernel gives
		// points at the transport header.
		g.l4 = l3 + 40
		if vh.flags&vnetNeedsCsum != 0 && int(vh.csumStart) >= g.l4 {
			g.l4 = int(vh.csumStart)
		}
		g.proto = pkt[l3+6]
		if g.l4 > l3+40 {
			g.proto = 6
			if typ == gsoUDPL4 {
				g.proto = 17
			}
		}
	}
	switch typ {
	case gsoTCPv4, gsoTCPv6:
		if g.proto != 6 || len(pkt) < g.l4+20 || pkt[g.l4+12]>>4 < 5 {
			return errGSOParse
		}
		g.tcp = true
		g.hdrs = g.l4 + int(pkt[g.l4+12]>>4)*4
		g.seq = binary.BigEndian.Uint32(pkt[g.l4+4:])
	case gsoUDPL4:
		if g.proto != 17 {
			return errGSOParse
		}
		g.hdrs = g.l4 + 8
	}
	if g.hdrs > len(pkt) || g.hdrs < g.l4+8 {
		return errGSOParse
	}
	if g.hdrs-g.l3+g.size > mtu {
		return errGSOSize
	}
	g.active = true
	return nil
}

// next writes the next frame into dst (room for an MTU-sized frame and a
// VLAN tag) and returns its length; g.active is false after the last.
func (g *gso) next(dst []byte) int {
	pay := g.pkt[g.hdrs:]
	end := min(g.off+g.size, len(pay))
	last := end >= len(pay)
	at := 0
	if g.tagged {
		at = 4 // the tag goes in once the frame is built
	}
	n := g.hdrs + end - g.off
	if at+n > len(dst) {
		g.active = false
		return 0
	}
	f := dst[at : at+n]
	copy(f, g.pkt[:g.hdrs])
	copy(f[g.hdrs:], pay[g.off:end])
	ip := f[g.l3:]
	if g.v4 {
		binary.BigEndian.PutUint16(ip[2:], uint16(n-g.l3))
		binary.BigEndian.PutUint16(ip[4:], g.id+uint16(g.k))
		ip[10], ip[11] = 0, 0
		binary.BigEndian.PutUint16(ip[10:], ^fold(csum(0, ip[:g.l4-g.l3])))
	} else {
		binary.BigEndian.PutUint16(ip[4:], uint16(n-g.l3-40))
	}
	l4 := f[g.l4:]
	var sum uint64
	if g.v4 {
		sum = csum(0, ip[12:20])
	} else {
		sum = csum(0, ip[8:40])
	}
	sum += uint64(g.proto) + uint64(len(l4))
	if g.tcp {
		binary.BigEndian.PutUint32(l4[4:], g.seq+uint32(g.off))
		flags := l4[13]
		if g.k > 0 {
			flags &^= 0x80 // CWR
		}
		if !last {
			flags &^= 0x01 | 0x08 // FIN, PSH
		}
		l4[13] = flags
		l4[16], l4[17] = 0, 0
		binary.BigEndian.PutUint16(l4[16:], ^fold(csum(sum, l4)))
	} else {
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
		l4[6], l4[7] = 0, 0
		c := ^fold(csum(sum, l4))
		if c == 0 {
			c = 0xffff
		}
		binary.BigEndian.PutUint16(l4[6:], c)
	}
	if g.tagged {
		copy(dst[:12], dst[4:16])
		binary.BigEndian.PutUint16(dst[12:], g.tag.tpid)
		binary.BigEndian.PutUint16(dst[14:], g.tag.tci)
		n += 4
	}
	g.off = end
	g.k++
	if last {
		g.active = false
	}
	return n
}
