//go:build linux

package frameio

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
)

// TAP offloads. A TAP opened with IFF_VNET_HDR carries a virtio-net
// header (struct virtio_net_hdr) before every packet, both ways, and the
// port tells the kernel (TUNSETOFFLOAD) what it takes: TCP segments up to
// 64 KiB over IPv4 and IPv6 (TSO4, TSO6) and frames whose checksum is
// left partial (CSUM). The host's stack then hands the port one large
// segment where it would have handed it forty-odd frames, so each of
// bridge, netfilter, TCP and the read costs one pass per 64 KiB instead
// of one per frame.
//
// TAPOptions.Offload (the switch's uplink): the port cuts those segments
// to the MTU with a Segmenter, so ReadBatch returns frames no larger than
// the MTU, and hands TCP up with its checksum partial (Frame.Off): the
// segments it cuts and a single TCP frame the kernel left partial
// (untagged IPv4 or IPv6, the checksum at the TCP header's), for a port
// that takes them (a vhost-user guest with GUEST_CSUM) or the switch to
// complete. Any other partial checksum (UDP, ICMPv6, a tagged frame) is
// completed (Finish): MAC translation patches those, services read them. On
// write it takes frames with a partial checksum (TakesPartial) and hands
// them on with NEEDS_CSUM for the kernel to complete, and it merges runs
// of one TCP flow's segments into one (coalesceRun).
//
// TAPOptions.PassOffload (a stand-in for a virtio guest): the port hands
// packets over as the kernel gives them, their Offload filled from the
// header (GSO segments up to MaxGSOLen included), and writes each frame
// behind the header its Offload describes.

// vnetHdrLen is struct virtio_net_hdr (the default TUNSETVNETHDRSZ).
const vnetHdrLen = 10

const (
	vnetNeedsCsum = 1    // VIRTIO_NET_HDR_F_NEEDS_CSUM
	gsoNone       = 0    // VIRTIO_NET_HDR_GSO_NONE
	gsoTCPv4      = 1    // VIRTIO_NET_HDR_GSO_TCPV4
	gsoTCPv6      = 4    // VIRTIO_NET_HDR_GSO_TCPV6
	gsoECN        = 0x80 // VIRTIO_NET_HDR_GSO_ECN
)

// offloadBufLen holds the largest segment the kernel hands and its
// virtio header.
const offloadBufLen = vnetHdrLen + MaxGSOLen

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

// offload is what the header asks of a packet of n bytes; false for what
// no port takes: GSO other than TCP, a GSO segment without a size, a
// checksum's place outside the packet. The ECN bit is dropped: a
// segment's CWR stays on its first piece. The kernel's GSO segments have
// their checksum partial (TCP and GRO leave them so); one without is
// taken too, as the kernel takes it on write.
func (h vnetHdr) offload(n int) (o Offload, ok bool) {
	if h.flags&vnetNeedsCsum != 0 {
		o = Offload{Partial: true, CsumStart: h.csumStart, CsumOffset: h.csumOffset}
		if int(o.CsumStart) < MinFrameLen || int(o.CsumStart)+int(o.CsumOffset)+2 > n {
			return o, false
		}
	}
	switch t := GSOType(h.gsoType &^ gsoECN); t {
	case GSONone:
	case GSOTCPv4, GSOTCPv6:
		if h.gsoSize == 0 {
			return o, false
		}
		o.GSO, o.GSOSize = t, h.gsoSize
	default:
		return o, false
	}
	return o, true
}

// putVnetHdr writes into h the header for frame pkt with offload o: what
// the kernel is to complete (NEEDS_CSUM) and cut (gso_type, gso_size, and
// with a partial checksum the headers' length, from the TCP header's data
// offset; without, the kernel finds the headers itself).
func putVnetHdr(h []byte, o Offload, pkt []byte) {
	clear(h[:vnetHdrLen])
	if o.Partial {
		h[0] = vnetNeedsCsum
		binary.NativeEndian.PutUint16(h[6:], o.CsumStart)
		binary.NativeEndian.PutUint16(h[8:], o.CsumOffset)
	}
	if o.GSO != GSONone {
		h[1] = byte(o.GSO)
		binary.NativeEndian.PutUint16(h[4:], o.GSOSize)
		if o.Partial {
			hl := int(o.CsumStart) + int(o.CsumOffset) + 2
			if th := int(o.CsumStart) + 12; th < len(pkt) {
				hl = max(hl, int(o.CsumStart)+int(pkt[th]>>4)*4)
			}
			binary.NativeEndian.PutUint16(h[2:], uint16(min(hl, len(pkt))))
		}
	}
}

// writable says whether a frame of n bytes with offload o may go to a TAP
// with offloads: a partial checksum must lie inside the frame, and a GSO
// segment (only where gso allows it) must be TCP, with a size, within
// MaxGSOLen; other frames within max.
func writable(o Offload, n, max int, gso bool) bool {
	if o.Partial && (int(o.CsumStart) < MinFrameLen || int(o.CsumStart)+int(o.CsumOffset)+2 > n) {
		return false
	}
	switch o.GSO {
	case GSONone:
		return n <= max && (o.Partial || o == Offload{})
	case GSOTCPv4, GSOTCPv6:
		return gso && o.GSOSize > 0 && n <= MaxGSOLen
	}
	return false
}

// enableOffload tells the kernel what the TAP takes: checksum offload,
// TSO over IPv4 and IPv6 and, with ecn, TSO of segments whose first piece
// carries CWR (a port that cuts them keeps CWR on the first; one that
// passes them on cannot say so in an Offload, so the kernel cuts those).
func enableOffload(fd int, ecn bool) error {
	flags := unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6
	if ecn {
		flags |= unix.TUN_F_TSO_ECN
	}
	return unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, flags)
}

// gsoReader turns what an offloading TAP read into frames no larger than
// the MTU: one frame, or a TCP segment cut to its gso_size by a
// Segmenter. TCP keeps its checksum partial (PartialTCP); any other
// partial checksum is completed (Finish). A segment may need more frames
// than a ReadBatch has: the rest stays pending for the next call.
type gsoReader struct {
	buf  []byte  // the last read: virtio header, then the packet
	pkt  []byte  // a plain packet left to hand out; nil when none
	off  Offload // its offload
	keep bool    // pkt's checksum stays partial (PartialTCP)
	seg  Segmenter
}

// load takes the packet just read (n bytes of buf with its header) and
// says whether it is worth handing out; false drops it.
func (r *gsoReader) load(n int) bool {
	r.pkt = nil
	if n < vnetHdrLen+MinFrameLen || n > len(r.buf) {
		return false
	}
	pkt := r.buf[vnetHdrLen:n]
	o, ok := parseVnetHdr(r.buf).offload(len(pkt))
	if !ok {
		return false
	}
	if o.GSO != GSONone {
		return r.seg.Load(pkt, o) == nil
	}
	r.pkt, r.off, r.keep = pkt, o, PartialTCP(pkt, o)
	return true
}

// pending says whether frames are left to take with next.
func (r *gsoReader) pending() bool { return r.pkt != nil || r.seg.Pending() }

// next writes the next frame into f, at most max bytes, and reports
// whether it did; f.Off is set either way (zero for a complete frame),
// as the caller's buffers are reused. A frame that does not fit, or
// whose checksum cannot be completed, is dropped (false). A segment that
// does not fit gives up its rest.
func (r *gsoReader) next(f *Frame, max int) bool {
	lim := min(cap(f.Buf), max)
	if r.seg.Pending() {
		g := Frame{Buf: f.Buf[:0:lim]}
		if !r.seg.Next(&g, r.seg.PartialTravels()) {
			f.Off = Offload{}
			return false
		}
		f.N, f.Off = g.N, g.Off
		return true
	}
	pkt := r.pkt
	r.pkt = nil
	if len(pkt) > lim {
		f.Off = Offload{}
		return false
	}
	f.N, f.Off = copy(f.Buf[:lim], pkt), r.off
	return settlePlain(f, r.keep)
}

// settlePlain applies the read path's rule to a plain frame in f, its Off as
// the kernel handed it: a partial checksum stays partial when keep (a
// TCP one that may travel so: PartialTCP) and is completed otherwise.
// False (f.Off cleared) when it cannot be completed: drop the frame.
func settlePlain(f *Frame, keep bool) bool {
	if keep {
		return true
	}
	if !f.Finish() {
		f.Off = Offload{}
		return false
	}
	return true
}

// Coalescing on write (the other half of Offload): a run of frames the
// switch hands WriteBatch often holds consecutive full-size segments of
// one TCP flow (a guest's bulk send). They go to the kernel as one
// segment of up to 64 KiB with gso_size set, as a virtio NIC with TSO
// would send it, so the host's stack makes one pass where it made forty.
// Only what Linux's own GRO would merge is merged: untagged TCP over
// IPv4 (no options, no fragments) or IPv6 (no extension headers), the
// same Ethernet, IP and TCP headers but for lengths, IPv4 id and the
// sequence number, identical TCP options, ACK only (PSH allowed on the
// last), contiguous sequence numbers, every segment but the last of the
// first's size. A merged segment's checksum is the kernel's to compute,
// so a corrupt segment must not get in: each complete frame's checksums
// are verified. A frame whose TCP checksum is partial (Offload, at the
// TCP checksum's place) has nothing to verify there: it would reach the
// kernel partial anyway; its IPv4 header checksum is still verified.

// maxCoalesce caps the frames merged into one write.
const maxCoalesce = 64

// tcpSeg describes a frame that can join a merged segment.
type tcpSeg struct {
	l4        int // offset of TCP: 34 over IPv4, 54 over IPv6
	thl, plen int // TCP header length, payload length
	seq       uint32
	flags     byte
	partial   bool // the TCP checksum is left partial
}

// parseTCP says whether frame f is an untagged TCP segment that may be
// merged: over IPv4 without options or fragments, or over IPv6 without
// extension headers; complete, or with its TCP checksum partial.
func parseTCP(f *Frame) (s tcpSeg, ok bool) {
	b := f.Bytes()
	if len(b) < 54 {
		return s, false
	}
	switch {
	case b[12] == 0x08 && b[13] == 0x00:
		ip := b[14:]
		if ip[0] != 0x45 || ip[9] != ipProtoTCP || binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 ||
			int(binary.BigEndian.Uint16(ip[2:])) != len(ip) {
			return s, false
		}
		s.l4 = 34
	case b[12] == 0x86 && b[13] == 0xdd:
		ip := b[14:]
		if len(b) < 74 || ip[0]>>4 != 6 || ip[6] != ipProtoTCP || int(binary.BigEndian.Uint16(ip[4:])) != len(ip)-40 {
			return s, false
		}
		s.l4 = 54
	default:
		return s, false
	}
	if o := f.Off; o != (Offload{}) {
		if o.GSO != GSONone || !o.Partial || int(o.CsumStart) != s.l4 || o.CsumOffset != 16 {
			return s, false
		}
		s.partial = true
	}
	tcp := b[s.l4:]
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

// validSums checks a parsed segment's IPv4 header checksum and, unless
// it is partial, its TCP checksum.
func validSums(f []byte, s tcpSeg) bool {
	var pseudo uint64
	if s.l4 == 34 {
		ip := f[14:34]
		if csumFold(csumAdd(0, ip)) != 0 {
			return false
		}
		pseudo = csumAdd(0, ip[12:20])
	} else {
		pseudo = csumAdd(0, f[22:54])
	}
	if s.partial {
		return true
	}
	tcp := f[s.l4:]
	return csumFold(csumAdd(pseudo+ipProtoTCP+uint64(len(tcp)), tcp)) == 0
}

// sameFlow says whether b may follow a (whose segment is sa) in a merge:
// every header byte equal but IP length, IPv4 id and checksum, TCP
// sequence number, flags and checksum.
func sameFlow(a, b []byte, sa tcpSeg) bool {
	l4 := sa.l4
	hl := l4 + sa.thl
	if len(b) < hl {
		return false
	}
	if l4 == 34 {
		if string(a[:16]) != string(b[:16]) || // Ethernet, IP version, TOS
			string(a[20:24]) != string(b[20:24]) || // flags, TTL, protocol
			string(a[26:34]) != string(b[26:34]) { // addresses
			return false
		}
	} else if string(a[:18]) != string(b[:18]) || // Ethernet, version, class, flow label
		string(a[20:54]) != string(b[20:54]) { // next header, hop limit, addresses
		return false
	}
	return string(a[l4:l4+4]) == string(b[l4:l4+4]) && // ports
		string(a[l4+8:l4+13]) == string(b[l4+8:l4+13]) && // ACK, data offset
		string(a[l4+14:l4+16]) == string(b[l4+14:l4+16]) && // window
		string(a[l4+18:hl]) == string(b[l4+18:hl]) // urgent pointer, options
}

// coalesceRun finds how many frames from frames[0] merge into one
// segment (1: none) and the size of its gso segments.
func coalesceRun(frames []Frame, fsize int) (n, mss int) {
	if len(frames) < 2 {
		return 1, 0
	}
	first := frames[0].Bytes()
	s0, ok := parseTCP(&frames[0])
	if !ok || s0.flags != 0x10 || s0.plen < MinGSOSize { // a segment size no Segmenter takes
		return 1, 0
	}
	mss = s0.plen
	total := s0.thl + s0.plen // what the IP length counts: IPv4 adds its header
	if s0.l4 == 34 {
		total += 20
	}
	prev, next := s0, s0.seq+uint32(s0.plen)
	verified := false
	for n = 1; n < len(frames) && n < maxCoalesce; n++ {
		f := &frames[n]
		if f.N < MinFrameLen || f.N > fsize || f.N > len(f.Buf) || prev.flags != 0x10 || prev.plen != mss {
			break
		}
		b := f.Bytes()
		s, ok := parseTCP(f)
		if !ok || s.l4 != s0.l4 || s.thl != s0.thl || s.seq != next || s.plen > mss || total+s.plen > 65535 || !sameFlow(first, b, s0) {
			break
		}
		if !verified {
			if !validSums(first, s0) {
				return 1, 0
			}
			verified = true
		}
		if !validSums(b, s) {
			break
		}
		total += s.plen
		prev, next = s, next+uint32(s.plen)
	}
	return n, mss
}

// mergeHeader writes into h the virtio header and the headers of the
// segment that frames (a run coalesceRun found) merge into: the first
// frame's, with the IP length of the whole (and the IPv4 header checksum
// redone), the last frame's TCP flags, and the TCP checksum partial, for
// the kernel to complete and to cut at mss. It returns the length of h
// used.
func mergeHeader(h []byte, frames []Frame, mss int) int {
	first := frames[0].Bytes()
	l4 := 34
	if first[12] == 0x86 {
		l4 = 54
	}
	hl := l4 + int(first[l4+12]>>4)*4
	pkt := h[vnetHdrLen : vnetHdrLen+hl]
	copy(pkt, first[:hl])
	total := hl
	for i := range frames {
		total += frames[i].N - hl
	}
	tcp := pkt[l4:]
	var sum uint64
	gso := byte(gsoTCPv4)
	if l4 == 34 {
		ip := pkt[14:34]
		binary.BigEndian.PutUint16(ip[2:], uint16(total-14))
		ip[10], ip[11] = 0, 0
		binary.BigEndian.PutUint16(ip[10:], csumFold(csumAdd(0, ip)))
		sum = csumAdd(0, ip[12:20])
	} else {
		gso = gsoTCPv6
		binary.BigEndian.PutUint16(pkt[18:], uint16(total-54))
		sum = csumAdd(0, pkt[22:54])
	}
	tcp[13] = frames[len(frames)-1].Buf[l4+13] // PSH, if the last has it
	// Left partial: the pseudo-header's sum, for the kernel to complete.
	binary.BigEndian.PutUint16(tcp[16:], ^csumFold(sum+ipProtoTCP+uint64(total-l4)))
	vh := h[:vnetHdrLen]
	vh[0], vh[1] = vnetNeedsCsum, gso
	binary.NativeEndian.PutUint16(vh[2:], uint16(hl))
	binary.NativeEndian.PutUint16(vh[4:], uint16(mss))
	binary.NativeEndian.PutUint16(vh[6:], uint16(l4))
	binary.NativeEndian.PutUint16(vh[8:], 16)
	return vnetHdrLen + hl
}
