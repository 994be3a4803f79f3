package frameio

import (
	"encoding/binary"
	"errors"
	"math/bits"
)

// Offload is the work a frame leaves to whoever sends it on, as a virtio
// NIC's header (struct virtio_net_hdr) describes it: completing its
// checksum, and for a TCP segment larger than the MTU, cutting it. The
// zero value is a plain frame, complete as it is; every port that does not
// say otherwise (PartialWriter) gets only such frames.
//
// A guest with checksum offload leaves its TCP checksums partial, and one
// with TSO hands over 64 KiB segments: the vhost-user port takes both, and
// a TAP opened with offloads hands them to the host's stack as they are,
// so nobody on the way sums or cuts the payload.
type Offload struct {
	// Partial says the checksum is left to complete: the 16 bits at
	// CsumStart+CsumOffset hold the pseudo-header's sum (folded, not
	// complemented), and the checksum covers the frame from CsumStart on.
	Partial               bool
	CsumStart, CsumOffset uint16
	// GSO, when not GSONone, says the frame is one TCP segment of up to
	// 64 KiB, larger than the MTU, to be cut into segments of GSOSize
	// payload bytes each. Its checksum is partial.
	GSO     GSOType
	GSOSize uint16
}

// GSOType is virtio-net's gso_type (without the ECN bit).
type GSOType uint8

const (
	GSONone  GSOType = 0 // VIRTIO_NET_HDR_GSO_NONE
	GSOTCPv4 GSOType = 1 // VIRTIO_NET_HDR_GSO_TCPV4
	GSOTCPv6 GSOType = 4 // VIRTIO_NET_HDR_GSO_TCPV6
)

// MaxGSOLen is the largest GSO frame: an IP packet of 64 KiB behind an
// Ethernet header and a VLAN tag (an IPv6 payload length counts 64 KiB
// after its 40-byte header).
const MaxGSOLen = EthHeaderLen + VLANTagLen + 40 + 65535

// PartialWriter is a Port that takes frames whose checksum is partial
// (Offload.Partial, never GSO) and completes it on the way out, as a TAP
// with offloads has the kernel do. The switch completes partial checksums
// itself before it writes to any other port.
type PartialWriter interface {
	TakesPartial() bool
}

// GSOWriter is a Port that takes GSO frames (Offload.GSO) whole: a TAP
// with PassOffload, a vhost-user driver that negotiated TSO.
type GSOWriter interface {
	TakesGSO() bool
}

// GSOReader is a Port whose ReadBatch hands GSO frames up whole (Off
// set, WholeGSO true of each) into frame buffers of MaxGSOLen bytes or
// more, and cuts them to the MTU into smaller ones: a caller that can
// carry them whole (the switch, to a GSOWriter) gives it GSOBuffers
// large buffers at the start of each batch (0: it hands none up whole).
// A TAP opened with HandGSO, a vhost-user port whose guest sends TSO.
type GSOReader interface {
	GSOBuffers() int
}

// WholeGSO says whether GSO frame pkt may travel whole, to be cut by
// whoever takes no GSO frames: a TCP segment over IPv4 or IPv6 the
// Segmenter can cut, untagged, its checksum partial at the TCP header's
// place (what a Linux stack hands a NIC with TSO), its IP length the
// frame's (whoever takes it whole keeps its headers), and without CWR (an
// Offload cannot say ECN, so that the receiver would put CWR on the
// first piece only: such a segment is cut where it is read).
func WholeGSO(pkt []byte, o Offload) bool {
	plain := o
	plain.GSO, plain.GSOSize = GSONone, 0
	if o.GSO == GSONone || !PartialTCP(pkt, plain) || pkt[o.CsumStart+13]&0x80 != 0 {
		return false
	}
	ip := pkt[EthHeaderLen:]
	if l := int(binary.BigEndian.Uint16(ip[2:])); ip[0]>>4 == 4 && l != len(ip) {
		return false
	}
	if l := int(binary.BigEndian.Uint16(ip[4:])); ip[0]>>4 == 6 && l+40 != len(ip) {
		return false
	}
	var s Segmenter
	return s.Load(pkt, o) == nil
}

// OffloadReader is a Port whose ReadBatch may return frames with Offload
// set, GSO frames up to MaxGSOLen among them, when ReadsOffload says so:
// its batches need buffers that large (NewBatchSize).
type OffloadReader interface {
	ReadsOffload() bool
}

// Finish completes the partial checksum of f in place and clears f.Off.
// It reports false when the checksum's place lies outside the frame or
// the frame is a GSO segment (cut it with a Segmenter): drop such a frame.
func (f *Frame) Finish() bool {
	if !f.Off.Partial {
		return f.Off.GSO == GSONone
	}
	if f.Off.GSO != GSONone {
		return false
	}
	b := f.Bytes()
	cs, co := int(f.Off.CsumStart), int(f.Off.CsumOffset)
	if cs < MinFrameLen || cs+co+2 > len(b) {
		return false
	}
	c := csumFold(csumAdd(0, b[cs:]))
	if c == 0 && co == 6 {
		c = 0xffff // UDP: 0 would say "no checksum"
	}
	binary.BigEndian.PutUint16(b[cs+co:], c)
	f.Off = Offload{}
	return true
}

// Fit makes f fit a destination that takes partial checksums (partialOK)
// or GSO frames whole (gsoOK), or neither: a partial checksum the
// destination does not take is completed in place. It reports false when
// f cannot be made to fit (a GSO frame for a destination that does not
// take them, or a checksum Finish refuses): drop it.
func (f *Frame) Fit(partialOK, gsoOK bool) bool {
	switch {
	case f.Off.GSO != GSONone:
		return gsoOK
	case f.Off.Partial && !partialOK:
		return f.Finish()
	}
	return true
}

// PartialTCP says whether pkt's partial checksum o is a TCP checksum
// that may travel partial (past MAC translation and services, to a
// PartialWriter): untagged TCP over IPv4 (not a fragment) or IPv6 (no
// extension headers), the checksum at the TCP header's place
// (csum_start the TCP header, csum_offset 16).
func PartialTCP(pkt []byte, o Offload) bool {
	if !o.Partial || o.GSO != GSONone || o.CsumOffset != 16 || len(pkt) < EthHeaderLen+20 {
		return false
	}
	ip := pkt[EthHeaderLen:]
	l4 := 0
	switch binary.BigEndian.Uint16(pkt[12:14]) {
	case etherTypeIPv4:
		if ip[0]>>4 != 4 || ip[9] != ipProtoTCP || binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
			return false
		}
		l4 = EthHeaderLen + int(ip[0]&0x0f)*4
		if l4 < EthHeaderLen+20 {
			return false
		}
	case etherTypeIPv6:
		if len(ip) < 40 || ip[0]>>4 != 6 || ip[6] != ipProtoTCP {
			return false
		}
		l4 = EthHeaderLen + 40
	default:
		return false
	}
	return int(o.CsumStart) == l4 && l4+20 <= len(pkt)
}

// Segmenter cuts a GSO frame into frames no larger than the MTU, as a NIC
// with TSO would put them on the wire: each carries the first's headers
// with its own IP length (and IPv4 id and header checksum), TCP sequence
// number and flags (FIN and PSH on the last only, CWR on the first only).
// It reads the headers it needs from the frame itself and trusts nothing
// of the Offload but the type and the size to cut.
type Segmenter struct {
	pkt          []byte
	v6           bool
	l3, l4, hlen int // offsets of IP and TCP, length of all headers
	mss          int
	off          int    // next payload byte to send
	seq          uint32 // sequence number of the first payload byte
	id           uint16 // IPv4 id of the first segment
	first        bool
}

// MinGSOSize is the smallest segment size Load takes: Linux sends no
// smaller MSS, and a tiny one would make a 64 KiB frame thousands of
// frames (a cost a guest could aim at whoever cuts for it).
const MinGSOSize = 48

// ErrGSO is what Load says of a GSO frame it cannot cut.
var ErrGSO = errors.New("frameio: not a TCP segment to cut")

// Load takes a GSO frame to cut. pkt must stay unchanged until Pending
// is false: Next copies from it.
func (s *Segmenter) Load(pkt []byte, o Offload) error {
	s.pkt = nil
	if o.GSOSize < MinGSOSize || (o.GSO != GSOTCPv4 && o.GSO != GSOTCPv6) || len(pkt) < EthHeaderLen {
		return ErrGSO
	}
	l3 := EthHeaderLen
	etype := binary.BigEndian.Uint16(pkt[12:14])
	if etype == etherTypeVLAN {
		l3 += VLANTagLen
		if len(pkt) < l3 {
			return ErrGSO
		}
		etype = binary.BigEndian.Uint16(pkt[16:18])
	}
	var l4 int
	switch {
	case o.GSO == GSOTCPv4 && etype == etherTypeIPv4:
		if len(pkt) < l3+20 || pkt[l3]>>4 != 4 || pkt[l3+9] != ipProtoTCP {
			return ErrGSO
		}
		l4 = l3 + int(pkt[l3]&0x0f)*4
		if l4 < l3+20 || binary.BigEndian.Uint16(pkt[l3+6:])&0x3fff != 0 { // fragments are not cut
			return ErrGSO
		}
	case o.GSO == GSOTCPv6 && etype == etherTypeIPv6:
		if len(pkt) < l3+40 || pkt[l3]>>4 != 6 || pkt[l3+6] != ipProtoTCP {
			return ErrGSO // extension headers are not cut either
		}
		l4 = l3 + 40
	default:
		return ErrGSO
	}
	if len(pkt) < l4+20 {
		return ErrGSO
	}
	hlen := l4 + int(pkt[l4+12]>>4)*4
	if hlen < l4+20 || len(pkt) <= hlen || len(pkt)-l3 > 40+65535 {
		return ErrGSO
	}
	*s = Segmenter{pkt: pkt, v6: o.GSO == GSOTCPv6, l3: l3, l4: l4, hlen: hlen, mss: int(o.GSOSize), off: hlen, first: true,
		seq: binary.BigEndian.Uint32(pkt[l4+4:])}
	if !s.v6 {
		s.id = binary.BigEndian.Uint16(pkt[l3+4:])
	}
	return nil
}

// Pending says whether segments are left to take with Next.
func (s *Segmenter) Pending() bool { return s.pkt != nil }

// PartialTravels says whether the segments Next cuts with partial may go
// on with their checksums partial past the switch (PartialTCP holds of
// them): the frame has no VLAN tag. Behind one, cut them complete, as
// MAC translation and the services want.
func (s *Segmenter) PartialTravels() bool { return s.l3 == EthHeaderLen }

// SegmentLen is the length of the next segment Next writes.
func (s *Segmenter) SegmentLen() int {
	return s.hlen + min(s.mss, len(s.pkt)-s.off)
}

// Next writes the next segment into f. With partial, the TCP checksum is
// left partial for the port that sends it (f.Off says so); without, it
// is completed. It reports false, and gives up the rest of the frame,
// when the segment does not fit in f.Buf.
func (s *Segmenter) Next(f *Frame, partial bool) bool {
	pkt := s.pkt
	end := min(s.off+s.mss, len(pkt))
	last := end == len(pkt)
	n := s.hlen + end - s.off
	b := f.Buf[:cap(f.Buf)]
	if n > len(b) {
		s.pkt = nil
		return false
	}
	copy(b, pkt[:s.hlen])
	copy(b[s.hlen:], pkt[s.off:end])
	ip, tcp := b[s.l3:s.l4], b[s.l4:n]
	var sum uint64
	if s.v6 {
		binary.BigEndian.PutUint16(ip[4:], uint16(n-s.l4))
		sum = csumAdd(0, ip[8:40])
	} else {
		seg := (s.off - s.hlen) / s.mss
		binary.BigEndian.PutUint16(ip[2:], uint16(n-s.l3))
		binary.BigEndian.PutUint16(ip[4:], s.id+uint16(seg))
		ip[10], ip[11] = 0, 0
		binary.BigEndian.PutUint16(ip[10:], csumFold(csumAdd(0, ip)))
		sum = csumAdd(0, ip[12:20])
	}
	binary.BigEndian.PutUint32(tcp[4:], s.seq+uint32(s.off-s.hlen))
	if !last {
		tcp[13] &^= 0x09 // FIN, PSH: the last segment's
	}
	if !s.first {
		tcp[13] &^= 0x80 // CWR: the first segment's
	}
	sum += ipProtoTCP + uint64(len(tcp))
	if partial {
		binary.BigEndian.PutUint16(tcp[16:], ^csumFold(sum))
		f.Off = Offload{Partial: true, CsumStart: uint16(s.l4), CsumOffset: 16}
	} else {
		tcp[16], tcp[17] = 0, 0
		binary.BigEndian.PutUint16(tcp[16:], csumFold(csumAdd(sum, tcp)))
		f.Off = Offload{}
	}
	f.N = n
	s.off, s.first = end, false
	if last {
		s.pkt = nil
	}
	return true
}

const (
	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86dd
	etherTypeVLAN = 0x8100
	ipProtoTCP    = 6
)

// csumAdd adds b to a ones' complement sum (big-endian 16-bit words, an
// odd last byte padded with zero). It adds 64-bit words with end-around
// carry (2^64-1 is a multiple of 2^16-1, so the 16-bit sum is the same),
// four to an iteration, and returns a value below 2^33, so callers may add
// small terms to it. sum must be below 2^62.
func csumAdd(sum uint64, b []byte) uint64 {
	var c uint64
	for len(b) >= 32 {
		sum, c = bits.Add64(sum, binary.BigEndian.Uint64(b), c)
		sum, c = bits.Add64(sum, binary.BigEndian.Uint64(b[8:]), c)
		sum, c = bits.Add64(sum, binary.BigEndian.Uint64(b[16:]), c)
		sum, c = bits.Add64(sum, binary.BigEndian.Uint64(b[24:]), c)
		b = b[32:]
	}
	for len(b) >= 8 {
		sum, c = bits.Add64(sum, binary.BigEndian.Uint64(b), c)
		b = b[8:]
	}
	sum, c = bits.Add64(sum, 0, c)
	sum += c // sum was all ones: it is 0 now, with room for the carry
	sum = sum>>32 + sum&0xffffffff
	sum = sum>>32 + sum&0xffffffff
	for len(b) >= 2 {
		sum += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	return sum
}

// csumFold folds a sum to 16 bits and complements it.
func csumFold(sum uint64) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
