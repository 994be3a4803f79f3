//go:build linux

package frameio

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
)

// TAP offloads (TAPOptions.Offload). The TAP is opened with IFF_VNET_HDR
// and tells the kernel (TUNSETOFFLOAD) that it takes TCP/IPv4 segments up
// to 64 KiB (TSO4) and frames whose checksum is left partial (CSUM). The
// host's stack then hands the port one large segment where it would have
// handed it forty-odd frames, so each of bridge, netfilter, TCP and the
// read costs one pass per 64 KiB instead of one per frame. The port cuts
// those segments to the MTU and completes the checksums itself, so
// ReadBatch still returns plain frames no larger than the MTU: what the
// switch and the guests see is unchanged. Writes carry an empty virtio
// header (no offload asked of the kernel).

// vnetHdrLen is struct virtio_net_hdr (the default TUNSETVNETHDRSZ).
const vnetHdrLen = 10

const (
	vnetNeedsCsum = 1    // VIRTIO_NET_HDR_F_NEEDS_CSUM
	gsoNone       = 0    // VIRTIO_NET_HDR_GSO_NONE
	gsoTCPv4      = 1    // VIRTIO_NET_HDR_GSO_TCPV4
	gsoECN        = 0x80 // VIRTIO_NET_HDR_GSO_ECN
)

// offloadBufLen holds the largest segment the kernel hands (an IPv4
// packet of 64 KiB behind an Ethernet header and a VLAN tag) and its
// virtio header.
const offloadBufLen = vnetHdrLen + EthHeaderLen + VLANTagLen + 65535

// vnetHdr is a virtio_net_hdr in the host's byte order (a TAP's default).
type vnetHdr struct {
	flags, gsoType                         byte
	hdrLen, gsoSize, csumStart, csumOffset uint16
}

func parseVnetHdr(b []byte) vnetHdr {
	return vnetHdr{
		flags: b[0], gsoType: b[1],
		hdrLen: binary.NativeEndian.Uint16(b[2:]), gsoSize: binary.NativeEndian.Uint16(b[4:]),
		csumStart: binary.NativeEndian.Uint16(b[6:]), csumOffset: binary.NativeEndian.Uint16(b[8:]),
	}
}

func enableOffload(fd int) error {
	return unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, unix.TUN_F_CSUM|unix.TUN_F_TSO4|unix.TUN_F_TSO_ECN)
}

// segmenter turns what an offloading TAP read into plain frames: one
// frame, its checksum completed, or a TCP segment cut to gso_size. A
// segment may need more frames than a ReadBatch has: the rest stays
// pending for the next call.
type segmenter struct {
	buf []byte // the last read: virtio header, then the packet
	pkt []byte // the packet being cut; nil when nothing is pending
	hdr vnetHdr
	// the TCP segment being cut
	l3, l4, hlen int    // offsets of IP and TCP, length of all headers
	off          int    // next payload byte to send
	seq          uint32 // sequence number of the first payload byte
	id           uint16 // IP id of the first segment
	first        bool
}

// load takes the packet just read (n bytes of buf with its header) and
// says whether it is worth cutting; false drops it.
func (s *segmenter) load(n int) bool {
	if n < vnetHdrLen+MinFrameLen {
		return false
	}
	s.hdr = parseVnetHdr(s.buf)
	pkt := s.buf[vnetHdrLen:n]
	switch s.hdr.gsoType &^ gsoECN {
	case gsoNone:
		if s.hdr.flags&vnetNeedsCsum != 0 {
			cs, co := int(s.hdr.csumStart), int(s.hdr.csumOffset)
			if cs+co+2 > len(pkt) {
				return false
			}
			// The field holds the pseudo-header's sum, folded, not
			// complemented; complete it over the rest.
			c := csumFold(csumAdd(0, pkt[cs:]))
			if c == 0 {
				c = 0xffff // UDP's "no checksum"; the same zero for TCP
			}
			binary.BigEndian.PutUint16(pkt[cs+co:], c)
		}
		s.pkt, s.off, s.hlen = pkt, 0, 0
		return true
	case gsoTCPv4:
		l3 := EthHeaderLen
		etype := binary.BigEndian.Uint16(pkt[12:14])
		if etype == etherTypeVLAN {
			l3 += VLANTagLen
			if len(pkt) < l3 {
				return false
			}
			etype = binary.BigEndian.Uint16(pkt[16:18])
		}
		if etype != etherTypeIPv4 || len(pkt) < l3+20 || pkt[l3]>>4 != 4 || pkt[l3+9] != unix.IPPROTO_TCP {
			return false
		}
		l4 := l3 + int(pkt[l3]&0x0f)*4
		if l4 < l3+20 || len(pkt) < l4+20 {
			return false
		}
		hlen := l4 + int(pkt[l4+12]>>4)*4
		if hlen < l4+20 || len(pkt) < hlen || s.hdr.gsoSize == 0 {
			return false
		}
		s.pkt, s.l3, s.l4, s.hlen, s.off, s.first = pkt, l3, l4, hlen, hlen, true
		s.seq = binary.BigEndian.Uint32(pkt[l4+4:])
		s.id = binary.BigEndian.Uint16(pkt[l3+4:])
		return true
	}
	return false
}

// next writes the next frame of the pending packet into f (at most max
// bytes) and reports whether it did; the packet is done when pending is
// false. A frame that does not fit is dropped (ok false).
func (s *segmenter) next(f *Frame, max int) (ok bool) {
	pkt := s.pkt
	b := f.Buf[:cap(f.Buf)]
	if s.hlen == 0 { // a plain frame
		s.pkt = nil
		if len(pkt) > max || len(pkt) > len(b) {
			return false
		}
		f.N = copy(b, pkt)
		return true
	}
	mss := int(s.hdr.gsoSize)
	end := min(s.off+mss, len(pkt))
	last := end == len(pkt)
	n := s.hlen + end - s.off
	if n > max || n > len(b) {
		s.pkt = nil
		return false
	}
	copy(b, pkt[:s.hlen])
	copy(b[s.hlen:], pkt[s.off:end])
	ip, tcp := b[s.l3:s.l4], b[s.l4:n]
	seg := (s.off - s.hlen) / mss
	binary.BigEndian.PutUint16(ip[2:], uint16(n-s.l3))
	binary.BigEndian.PutUint16(ip[4:], s.id+uint16(seg))
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:], csumFold(csumAdd(0, ip)))
	binary.BigEndian.PutUint32(tcp[4:], s.seq+uint32(s.off-s.hlen))
	if !last {
		tcp[13] &^= 0x09 // FIN, PSH: the last segment's
	}
	if !s.first {
		tcp[13] &^= 0x80 // CWR: the first segment's
	}
	tcp[16], tcp[17] = 0, 0
	sum := csumAdd(0, ip[12:20]) + unix.IPPROTO_TCP + uint64(len(tcp))
	binary.BigEndian.PutUint16(tcp[16:], csumFold(csumAdd(sum, tcp)))
	f.N = n
	s.off, s.first = end, false
	if last {
		s.pkt = nil
	}
	return true
}

// Coalescing on write (the other half of Offload): a run of frames the
// switch hands WriteBatch often holds consecutive full-size segments of
// one TCP/IPv4 flow (a guest's bulk send). They go to the kernel as one
// segment of up to 64 KiB with gso_size set, as a virtio NIC with TSO
// would send it, so the host's stack makes one pass where it made forty.
// Only what Linux's own GRO would merge is merged: the same Ethernet, IP
// (no options, no fragments) and TCP headers but for the sequence number,
// identical TCP options, ACK only (PSH allowed on the last), contiguous
// sequence numbers, every segment but the last of the first's size, and
// each segment's checksum verified (a merged segment's checksum is the
// kernel's to compute, so a corrupt one must not get in).

// maxCoalesce caps the frames merged into one write.
const maxCoalesce = 64

// tcp4Seg describes a frame that can join a merged segment.
type tcp4Seg struct {
	thl, plen int // TCP header length, payload length
	seq       uint32
	flags     byte
}

// parseTCP4 says whether frame f is an untagged TCP/IPv4 segment that may
// be merged, with its valid checksums.
func parseTCP4(f []byte) (s tcp4Seg, ok bool) {
	if len(f) < 54 || f[12] != 0x08 || f[13] != 0x00 {
		return s, false
	}
	ip := f[14:]
	if ip[0] != 0x45 || ip[9] != unix.IPPROTO_TCP || binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 ||
		int(binary.BigEndian.Uint16(ip[2:])) != len(ip) {
		return s, false
	}
	tcp := ip[20:]
	s.thl = int(tcp[12]>>4) * 4
	if s.thl < 20 || s.thl > len(tcp) {
		return s, false
	}
	s.flags = tcp[13]
	if s.flags != 0x10 && s.flags != 0x18 { // ACK, ACK|PSH
		return s, false
	}
	s.plen = len(tcp) - s.thl
	s.seq = binary.BigEndian.Uint32(tcp[4:])
	return s, s.plen > 0
}

// validSums checks a parsed segment's IP and TCP checksums.
func validSums(f []byte) bool {
	ip := f[14:34]
	if csumFold(csumAdd(0, ip)) != 0 {
		return false
	}
	tcp := f[34:]
	return csumFold(csumAdd(csumAdd(0, ip[12:20])+unix.IPPROTO_TCP+uint64(len(tcp)), tcp)) == 0
}

// sameFlow says whether b may follow a (whose segment is sa) in a merge:
// every header byte equal but IP length, id and checksum, TCP sequence
// number, flags and checksum.
func sameFlow(a, b []byte, sa tcp4Seg) bool {
	hl := 34 + sa.thl
	if len(b) < hl || string(a[:16]) != string(b[:16]) || // Ethernet, IP version, TOS
		string(a[20:24]) != string(b[20:24]) || // flags, TTL, protocol
		string(a[26:38]) != string(b[26:38]) || // addresses, ports
		string(a[42:47]) != string(b[42:47]) || // ACK, data offset
		string(a[48:50]) != string(b[48:50]) || // window
		string(a[52:hl]) != string(b[52:hl]) { // urgent pointer, options
		return false
	}
	return true
}

// coalesceRun finds how many frames from frames[i] merge into one
// segment (1: none) and the size of its gso segments.
func coalesceRun(frames []Frame, fsize int) (n, mss int) {
	first := frames[0].Bytes()
	s0, ok := parseTCP4(first)
	if !ok || s0.flags != 0x10 || len(frames) < 2 {
		return 1, 0
	}
	mss = s0.plen
	total := 20 + s0.thl + s0.plen
	prev, next := s0, s0.seq+uint32(s0.plen)
	verified := false
	for n = 1; n < len(frames) && n < maxCoalesce; n++ {
		f := &frames[n]
		if f.N < MinFrameLen || f.N > fsize || f.N > len(f.Buf) || prev.flags != 0x10 || prev.plen != mss {
			break
		}
		b := f.Bytes()
		s, ok := parseTCP4(b)
		if !ok || s.thl != s0.thl || s.seq != next || s.plen > mss || total+s.plen > 65535 || !sameFlow(first, b, s0) {
			break
		}
		if !verified {
			if !validSums(first) {
				return 1, 0
			}
			verified = true
		}
		if !validSums(b) {
			break
		}
		total += s.plen
		prev, next = s, next+uint32(s.plen)
	}
	return n, mss
}
