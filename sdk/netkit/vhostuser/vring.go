//go:build linux

package vhostuser

import (
	"encoding/binary"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/vhostuser/internal/vuproto"
	"golang.org/x/sys/unix"
)

var le = binary.LittleEndian

// vring is one split virtqueue as the back-end sees it. mu guards all of
// it; the data path holds it for a batch, the control path to change it.
type vring struct {
	mu  sync.Mutex
	idx int

	num     uint16 // queue size (a power of 2), 0 until SET_VRING_NUM
	addr    vuproto.VringAddr
	addrSet bool
	mem     *memTable

	// The rings in the front-end's memory, nil until resolved.
	desc, avail, used []byte
	availHdr, usedHdr *uint32 // flags in the low half, idx in the high half

	lastAvail uint16 // next avail entry to take
	usedIdx   uint16 // next used entry to fill
	published uint16 // used idx the driver has been shown
	usedFlags uint16

	kick, call, errfd int // -1: none
	kickNoFD          bool
	started           bool // a kick fd (or no-fd) came since the last stop
	enabled           bool
	broken            bool
	hdrLen            int
	indirectOK        bool   // VIRTIO_RING_F_INDIRECT_DESC negotiated
	indirectUsed      uint64 // indirect tables walked since Listen (tests read it)

	// Offloads the driver acknowledged (the transmit queue uses them):
	// partial checksums, TCP segments to cut over IPv4 and IPv6.
	csumOK, tso4OK, tso6OK bool
	// guestCsum (the receive queue's): the driver negotiated
	// VIRTIO_NET_F_GUEST_CSUM, so WriteBatch hands it partial checksums.
	guestCsum bool
	// guestTSO4, guestTSO6 (the receive queue's): the driver negotiated
	// VIRTIO_NET_F_GUEST_TSO4 (TSO6), so WriteBatch hands it GSO frames
	// of that kind whole; any other it cuts (seg, into fin).
	guestTSO4, guestTSO6 bool
	hdr                  [12]byte // the virtio-net header of the chain being read
	// A GSO frame is copied out of guest memory into scratch (its only
	// read of guest memory) and cut from there by seg; segments a full
	// batch had no room for wait in seg for the next ReadBatch, which
	// returns them before it takes another chain. scratch holds
	// frameio.MaxGSOLen bytes once a front-end negotiated TSO.
	scratch   []byte
	seg       frameio.Segmenter
	gsoFrames uint64 // GSO frames taken since Listen (tests read it)
	// wholeFrames: of those, the ones handed up whole (GSOBuffers): copied
	// straight into a caller's large frame buffer instead of scratch.
	wholeFrames uint64
	// fin is where WriteBatch completes a partial checksum or puts the
	// segments it cuts a GSO frame into (the receive queue's), so the
	// caller's frame stays as it was.
	fin frameio.Frame

	one [8]byte // eventfd increment
	buf [8]byte // eventfd drain
}

func (q *vring) init(i int) {
	q.idx = i
	q.kick, q.call, q.errfd = -1, -1, -1
	q.hdrLen = 12
	q.one[0] = 1
}

// reset forgets the front-end's ring state; fds are closed by the caller.
func (q *vring) reset() {
	q.num, q.addr, q.addrSet, q.mem = 0, vuproto.VringAddr{}, false, nil
	q.desc, q.avail, q.used, q.availHdr, q.usedHdr = nil, nil, nil, nil, nil
	q.lastAvail, q.usedIdx, q.published, q.usedFlags = 0, 0, 0, 0
	q.kickNoFD, q.started, q.enabled, q.broken = false, false, false, false
	q.hdrLen, q.indirectOK = 12, false
	q.csumOK, q.tso4OK, q.tso6OK, q.guestCsum = false, false, false, false
	q.guestTSO4, q.guestTSO6 = false, false
	// seg keeps segments already taken from the guest (in scratch, not
	// in its memory): the next ReadBatch still returns them.
}

// resolve maps the ring addresses (front-end user addresses) into the
// mapped memory.
func (q *vring) resolve() error {
	q.desc, q.avail, q.used, q.availHdr, q.usedHdr = nil, nil, nil, nil, nil
	if q.num == 0 {
		return fmt.Errorf("queue %d: ring addresses before SET_VRING_NUM", q.idx)
	}
	n := int(q.num)
	a := q.addr
	if a.Desc%16 != 0 || a.Avail%4 != 0 || a.Used%4 != 0 {
		return fmt.Errorf("queue %d: misaligned rings (desc %#x, avail %#x, used %#x): want desc on 16 bytes, avail and used on 4", q.idx, a.Desc, a.Avail, a.Used)
	}
	desc := q.mem.uva(a.Desc, vuproto.DescSize(n))
	avail := q.mem.uva(a.Avail, vuproto.AvailSize(n))
	used := q.mem.uva(a.Used, vuproto.UsedSize(n))
	if desc == nil || avail == nil || used == nil {
		return fmt.Errorf("queue %d: rings (desc %#x, avail %#x, used %#x, size %d) are not inside the memory table", q.idx, a.Desc, a.Avail, a.Used, n)
	}
	q.desc, q.avail, q.used = desc, avail, used
	q.availHdr = (*uint32)(unsafe.Pointer(&avail[0]))
	q.usedHdr = (*uint32)(unsafe.Pointer(&used[0]))
	return nil
}

func (q *vring) ready() bool {
	return q.started && q.enabled && !q.broken && q.desc != nil
}

func (q *vring) usedWord() uint32 { return atomic.LoadUint32(q.usedHdr) }

// availIdx and availFlags read the driver's avail header atomically.
func (q *vring) availWord() uint32 { return atomic.LoadUint32(q.availHdr) }

func (q *vring) publish() {
	atomic.StoreUint32(q.usedHdr, uint32(q.usedFlags)|uint32(q.usedIdx)<<16)
	q.published = q.usedIdx
}

// setNotify turns the driver's kicks on or off; the store is a full
// barrier, so a re-check of avail after turning them on cannot miss one.
func (q *vring) setNotify(on bool) {
	if on {
		q.usedFlags &^= vuproto.UsedFNoNotify
	} else {
		q.usedFlags |= vuproto.UsedFNoNotify
	}
	atomic.StoreUint32(q.usedHdr, uint32(q.usedFlags)|uint32(q.published)<<16)
}

// flush publishes the used entries filled since the last flush and
// interrupts the driver unless it asked not to be.
func (q *vring) flush() {
	if q.usedIdx == q.published {
		return
	}
	q.publish()
	if q.call >= 0 && q.availWord()&vuproto.AvailFNoInterrupt == 0 {
		unix.Write(q.call, q.one[:])
	}
}

func (q *vring) drainKick() {
	if q.kick >= 0 {
		unix.Read(q.kick, q.buf[:])
	}
}

// pending is how many avail entries wait; ok is false when the driver
// claims more than the ring holds.
func (q *vring) pending() (n uint16, ok bool) {
	n = uint16(q.availWord()>>16) - q.lastAvail
	return n, n <= q.num
}

func (q *vring) nextHead() uint16 {
	off := 4 + 2*int(q.lastAvail&(q.num-1))
	q.lastAvail++
	return le.Uint16(q.avail[off:])
}

func (q *vring) putUsed(head uint16, n uint32) {
	off := 4 + 8*int(q.usedIdx&(q.num-1))
	le.PutUint32(q.used[off:], uint32(head))
	le.PutUint32(q.used[off+4:], n)
	q.usedIdx++
}

// maxIndirect bounds an indirect table: a descriptor chain is at most a
// queue long, and no queue is longer than this.
const maxIndirect = vuproto.MaxQueueSize

// Why a chain is dropped, for the rate-limited log.
const (
	chainOK = iota
	chainBadIndex
	chainTooLong
	chainBadFlags
	chainBadAddr
	chainShort
	chainOversize
	chainIndirectNext
	chainNested
	chainTableSize
	chainTableAddr
	chainCsumOff
	chainCsumBad
	chainGSOOff
	chainGSOType
	chainGSOCsum
	chainGSOHdrLen
	chainGSOSize
	chainGSOBad
	chainGSOMTU
	chainGSOVersion
	chainGSOLength
)

var chainErrs = [...]string{"", "descriptor index out of range", "descriptor chain longer than its table (a loop?)",
	"descriptor with the wrong direction or INDIRECT (not negotiated)", "descriptor outside the memory table",
	"frame shorter than an Ethernet header (with its virtio-net header)", "frame larger than the port's MTU or the buffer (or a GSO frame larger than 64 KiB)",
	"INDIRECT descriptor with NEXT", "INDIRECT descriptor inside an indirect table",
	"indirect table of 0 bytes, not a multiple of 16 or of more than 32768 descriptors", "indirect table outside the memory table",
	"partial checksum (NEEDS_CSUM) without VIRTIO_NET_F_CSUM negotiated",
	"partial checksum whose csum_start or csum_offset lies outside the frame",
	"GSO frame without VIRTIO_NET_F_HOST_TSO4/TSO6 negotiated",
	"GSO type other than TCPv4 or TCPv6 as negotiated (UDP, the ECN bit, unknown)",
	"GSO frame without NEEDS_CSUM on its TCP header (csum_start, csum_offset 16)",
	"GSO frame whose hdr_len is larger than the frame",
	"GSO frame with gso_size below 48",
	"GSO frame that is not a TCP segment to cut (headers, fragment, length)",
	"GSO frame whose segments would be larger than the port's MTU",
	"GSO frame whose type (TCPv4, TCPv6) is not its IP version",
	"GSO frame whose IP length is not the frame's"}

// A descriptor chain is zero or more descriptors of the ring's table
// then, with VIRTIO_RING_F_INDIRECT_DESC, at most one indirect table
// (the virtio 1.x rules: the INDIRECT descriptor ends the ring part, no
// NEXT with it, no INDIRECT inside a table, its WRITE flag ignored).
// readChain and writeChain walk it with locals (tbl, size, i, steps):
// every step is bounded by the table it is in, so a loop ends there.

// table checks the INDIRECT descriptor (addr, l, flags) met inside a
// table (nested) or not and returns its table.
func (q *vring) table(addr uint64, l uint32, flags uint16, nested bool) ([]byte, int) {
	switch {
	case !q.indirectOK:
		return nil, chainBadFlags
	case nested:
		return nil, chainNested
	case flags&vuproto.DescFNext != 0:
		return nil, chainIndirectNext
	case l == 0 || l%16 != 0 || l/16 > maxIndirect:
		return nil, chainTableSize
	}
	t := q.mem.gpa(addr, l)
	if t == nil {
		return nil, chainTableAddr
	}
	q.indirectUsed++
	return t, chainOK
}

// step bounds a walk: the next index and the steps taken, against the
// table's size.
func step(i, steps, size uint32) int {
	if i >= size {
		return chainBadIndex
	}
	if steps >= size {
		return chainTooLong
	}
	return chainOK
}

// readChain copies the chain at head: its virtio-net header into q.hdr,
// then the frame into dst, or into big when big is not nil and the header
// asks for GSO (gso set). It reads guest memory once, in order, and
// decides from the copied header only.
func (q *vring) readChain(head uint16, dst, big []byte) (n int, gso bool, why int) {
	hl, hn := q.hdrLen, 0
	q.hdr = [12]byte{}
	tbl, size, i, steps, nested := q.desc, uint32(q.num), uint32(head), uint32(0), false
	for {
		if why := step(i, steps, size); why != chainOK {
			return 0, gso, why
		}
		steps++
		d := tbl[int(i)*16:][:16]
		addr, l, flags, next := le.Uint64(d), le.Uint32(d[8:]), le.Uint16(d[12:]), le.Uint16(d[14:])
		if flags&vuproto.DescFIndirect != 0 {
			t, why := q.table(addr, l, flags, nested)
			if why != chainOK {
				return 0, gso, why
			}
			tbl, size, i, steps, nested = t, l/16, 0, 0, true
			continue
		}
		if flags&vuproto.DescFWrite != 0 {
			return 0, gso, chainBadFlags
		}
		b := q.mem.gpa(addr, l)
		if b == nil {
			return 0, gso, chainBadAddr
		}
		if hn == 0 && hl == 12 && len(b) >= 12 {
			q.hdr, hn, b = [12]byte(b), 12, b[12:] // the usual case, without a call
			if big != nil && q.hdr[1] != vuproto.NetHdrGSONone {
				dst, gso = big, true
			}
		} else if hn < hl {
			k := copy(q.hdr[hn:hl], b)
			hn, b = hn+k, b[k:]
			if hn == hl && big != nil && q.hdr[1] != vuproto.NetHdrGSONone {
				dst, gso = big, true
			}
		}
		if len(b) > len(dst)-n {
			return 0, gso, chainOversize
		}
		n += copy(dst[n:], b)
		if flags&vuproto.DescFNext == 0 {
			break
		}
		i = uint32(next)
	}
	if hn < hl || n < frameio.MinFrameLen {
		return 0, gso, chainShort
	}
	return n, gso, chainOK
}

// netHdr is struct virtio_net_hdr (little-endian: VERSION_1, or a legacy
// little-endian guest; num_buffers is of no use on transmit).
type netHdr struct {
	flags, gsoType                         uint8
	hdrLen, gsoSize, csumStart, csumOffset uint16
}

func parseNetHdr(b *[12]byte) netHdr {
	return netHdr{flags: b[0], gsoType: b[1], hdrLen: le.Uint16(b[2:]), gsoSize: le.Uint16(b[4:]),
		csumStart: le.Uint16(b[6:]), csumOffset: le.Uint16(b[8:])}
}

// tcpOffset finds the TCP header behind an Ethernet header and at most
// one VLAN tag: IPv4 that is not a fragment, any header length, or IPv6
// whose next header is TCP. ok is false for anything else.
func tcpOffset(b []byte) (l3, l4 int, ok bool) {
	if len(b) < frameio.EthHeaderLen {
		return 0, 0, false
	}
	l3, et := frameio.EthHeaderLen, uint16(b[12])<<8|uint16(b[13])
	if et == 0x8100 {
		if len(b) < l3+frameio.VLANTagLen {
			return 0, 0, false
		}
		l3, et = l3+frameio.VLANTagLen, uint16(b[16])<<8|uint16(b[17])
	}
	ip := b[l3:]
	switch {
	case et == 0x0800 && len(ip) >= 20 && ip[0]>>4 == 4 && ip[9] == 6 && (uint16(ip[6])<<8|uint16(ip[7]))&0x3fff == 0:
		l4 = l3 + int(ip[0]&0xf)*4
		ok = l4 >= l3+20
	case et == 0x86dd && len(ip) >= 40 && ip[0]>>4 == 6 && ip[6] == 6:
		l4, ok = l3+40, true
	}
	return l3, l4, ok && len(b) >= l4+20
}

// takeFrame applies the chain's virtio-net header to the frame readChain
// copied: n bytes in f.Buf, or when gso in q.scratch (or in f.Buf, a
// large one, when inBuf). It sets f.N and f.Off for a frame to return; a
// GSO frame is loaded into q.seg instead (its segments go out through
// nextSegments), unless it is handed up whole in f (whole). It returns
// chainOK or why the frame is dropped.
func (p *Port) takeFrame(q *vring, f *frameio.Frame, n int, gso, inBuf bool) (why int, whole bool) {
	h := parseNetHdr(&q.hdr)
	if gso {
		if inBuf {
			return p.takeGSO(q, h, f.Buf[:n], f)
		}
		return p.takeGSO(q, h, q.scratch[:n], nil)
	}
	f.N, f.Off = n, frameio.Offload{}
	if h.gsoType != vuproto.NetHdrGSONone {
		return chainGSOOff, false
	}
	if h.flags&vuproto.NetHdrFNeedsCsum == 0 {
		return chainOK, false
	}
	if !q.csumOK {
		return chainCsumOff, false
	}
	f.Off = frameio.Offload{Partial: true, CsumStart: h.csumStart, CsumOffset: h.csumOffset}
	// TCP stays partial for whoever sends it on; anything else (UDP,
	// ICMPv6, a VLAN tag) is completed here, as MAC translation patches
	// and services read such frames.
	if frameio.PartialTCP(f.Bytes(), f.Off) {
		return chainOK, false
	}
	if !f.Finish() {
		return chainCsumBad, false
	}
	return chainOK, false
}

// takeGSO checks a GSO frame and loads it to be cut, from q.scratch
// where readChain copied it. With f (pkt is then f.Buf, a buffer of
// frameio.MaxGSOLen bytes or more, and readChain's only copy), a frame
// the switch may carry whole (frameio.WholeGSO, its IP length the
// frame's) is handed up in f as it is (whole); any other is copied into
// q.scratch and cut from there, as f's buffer takes the first segment.
// Either way it decides from the copy only.
func (p *Port) takeGSO(q *vring, h netHdr, pkt []byte, f *frameio.Frame) (why int, whole bool) {
	switch {
	case h.gsoType == vuproto.NetHdrGSOTCPv4 && q.tso4OK, h.gsoType == vuproto.NetHdrGSOTCPv6 && q.tso6OK:
	case h.gsoType&^vuproto.NetHdrGSOECN == vuproto.NetHdrGSOTCPv4 && !q.tso4OK, h.gsoType&^vuproto.NetHdrGSOECN == vuproto.NetHdrGSOTCPv6 && !q.tso6OK:
		return chainGSOOff, false
	default:
		return chainGSOType, false
	}
	l3, l4, ok := tcpOffset(pkt)
	switch {
	case !ok:
		return chainGSOBad, false
	case h.flags&vuproto.NetHdrFNeedsCsum == 0 || int(h.csumStart) != l4 || h.csumOffset != 16:
		return chainGSOCsum, false
	case int(h.hdrLen) > len(pkt):
		return chainGSOHdrLen, false
	case h.gsoSize < frameio.MinGSOSize:
		return chainGSOSize, false
	}
	off := frameio.Offload{Partial: true, CsumStart: h.csumStart, CsumOffset: 16, GSO: frameio.GSOType(h.gsoType), GSOSize: h.gsoSize}
	if err := q.seg.Load(pkt, off); err != nil {
		return chainGSOBad, false
	}
	if q.seg.SegmentLen()-l3 > p.mtu {
		q.seg = frameio.Segmenter{}
		return chainGSOMTU, false
	}
	q.gsoFrames++
	if f != nil {
		if frameio.WholeGSO(pkt, off) { // its IP length the frame's, among others
			q.seg = frameio.Segmenter{}
			f.N, f.Off = len(pkt), off
			q.wholeFrames++
			return chainOK, true
		}
		// Cut it, from a copy of the copy: the segments go into f.
		if q.seg.Load(q.scratch[:copy(q.scratch, pkt)], off) != nil {
			q.seg = frameio.Segmenter{} // the same bytes: not expected
			return chainGSOBad, false
		}
	}
	return chainOK, false
}

// nextSegments writes pending segments of a GSO frame into frames from
// index got on and returns the new count, the bytes and the drops (a
// segment larger than a caller's buffer gives up the rest of its frame).
func (p *Port) nextSegments(q *vring, frames []frameio.Frame, got int) (int, int, int) {
	bytes := 0
	for ; got < len(frames) && q.seg.Pending(); got++ {
		f := &frames[got]
		if q.seg.SegmentLen() > min(cap(f.Buf), p.frameSize) || !q.seg.Next(f, q.seg.PartialTravels()) {
			q.seg = frameio.Segmenter{}
			p.badChain(q, chainOversize)
			return got, bytes, 1
		}
		bytes += f.N
	}
	return got, bytes, 0
}

// rxHdr is the virtio-net header of a frame with offload o for the
// guest: zero but for num_buffers (1, when the header has it) for a
// complete frame; NEEDS_CSUM with csum_start and csum_offset for a
// partial checksum (only where GUEST_CSUM was negotiated); and for a GSO
// frame (only where the matching GUEST_TSO was) gso_type, gso_size and
// hdr_len, the length of its headers (Ethernet, IP, TCP).
func (q *vring) rxHdr(o *frameio.Offload, hdrLen int) [12]byte {
	var hdr [12]byte
	if q.hdrLen == 12 {
		hdr[10] = 1 // num_buffers
	}
	if o.Partial {
		hdr[0] = vuproto.NetHdrFNeedsCsum
		le.PutUint16(hdr[6:], o.CsumStart)
		le.PutUint16(hdr[8:], o.CsumOffset)
	}
	if o.GSO != frameio.GSONone {
		hdr[1] = byte(o.GSO)
		le.PutUint16(hdr[2:], uint16(hdrLen))
		le.PutUint16(hdr[4:], o.GSOSize)
	}
	return hdr
}

// writeChain writes the header (rxHdr) and frame into the writable chain
// at head and returns the bytes written.
func (q *vring) writeChain(head uint16, frame []byte, hdr *[12]byte) (uint32, int) {
	h := hdr[:q.hdrLen]
	written := uint32(0)
	tbl, size, i, steps, nested := q.desc, uint32(q.num), uint32(head), uint32(0), false
	for {
		if why := step(i, steps, size); why != chainOK {
			return written, why
		}
		steps++
		d := tbl[int(i)*16:][:16]
		addr, l, flags, next := le.Uint64(d), le.Uint32(d[8:]), le.Uint16(d[12:]), le.Uint16(d[14:])
		if flags&vuproto.DescFIndirect != 0 {
			t, why := q.table(addr, l, flags, nested)
			if why != chainOK {
				return written, why
			}
			tbl, size, i, steps, nested = t, l/16, 0, 0, true
			continue
		}
		if flags&vuproto.DescFWrite == 0 {
			return written, chainBadFlags
		}
		b := q.mem.gpa(addr, l)
		if b == nil {
			return written, chainBadAddr
		}
		if len(h) > 0 {
			k := copy(b, h)
			h, b = h[k:], b[k:]
			written += uint32(k)
		}
		k := copy(b, frame)
		frame = frame[k:]
		written += uint32(k)
		if len(h) == 0 && len(frame) == 0 {
			return written, chainOK
		}
		if flags&vuproto.DescFNext == 0 {
			return 0, chainOversize
		}
		i = uint32(next)
	}
}

// guard turns a fault in the front-end's memory (a region shrunk under
// the mapping) or any other panic of the data path into a dropped
// front-end. It is deferred right after the queue lock.
func (p *Port) guard(q *vring) {
	if r := recover(); r != nil {
		p.faults.Add(1)
		p.kill(q, fmt.Sprintf("data path fault: %v", r))
	}
}

func (p *Port) badChain(q *vring, why int) {
	if p.limiter.allow() {
		p.log.Warn("vhostuser: frame dropped", "path", p.path, "queue", q.idx, "reason", chainErrs[why])
	}
}

// ReadBatch waits for frames the guest transmitted and returns them
// without their virtio-net header.
func (p *Port) ReadBatch(frames []frameio.Frame) (int, error) {
	woke := false
	for {
		if p.closed.Load() {
			return 0, frameio.ErrClosed
		}
		if len(frames) == 0 {
			return 0, nil
		}
		n, poll := p.readOnce(frames, woke)
		if n > 0 {
			return n, nil
		}
		p.waitMu.RLock()
		if p.closed.Load() {
			p.waitMu.RUnlock()
			return 0, frameio.ErrClosed
		}
		timeout := -1
		if poll {
			timeout = 1
		}
		unix.EpollWait(p.epfd, p.evs[:], timeout)
		var b [8]byte
		unix.Read(p.wakefd, b[:])
		p.waitMu.RUnlock()
		woke = true
	}
}

// readOnce drains what the TX queue holds; with nothing, it turns kicks on
// and reports whether the reader must poll (a queue without a kick fd).
func (p *Port) readOnce(frames []frameio.Frame, woke bool) (got int, poll bool) {
	q := &p.q[txQ]
	q.mu.Lock()
	defer q.mu.Unlock()
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer p.guard(q)
	if woke {
		q.drainKick()
	}
	// Segments of a GSO frame already taken go first, whatever became of
	// the front-end since: they are in scratch, not in its memory.
	got, bytes, dropped := p.nextSegments(q, frames, 0)
	defer func() {
		p.ctr.AddRx(got, bytes)
		p.ctr.AddRxDropped(dropped)
	}()
	// A disabled transmit queue is still drained, its frames discarded
	// (the vhost-user spec's rule), so a guest does not stall on it.
	if !q.started || q.broken || q.desc == nil {
		return got, false
	}
	discard := !q.enabled
	var big []byte
	if q.tso4OK || q.tso6OK {
		big = q.scratch
	}
	for got < len(frames) {
		avail, ok := q.pending()
		if !ok {
			p.kill(q, fmt.Sprintf("avail index moved %d entries, more than the queue's %d", avail, q.num))
			break
		}
		if avail == 0 {
			if got > 0 {
				break
			}
			if q.usedFlags&vuproto.UsedFNoNotify != 0 {
				q.setNotify(true)
				continue // re-check: a frame may have come before the flag
			}
			break
		}
		if q.usedFlags&vuproto.UsedFNoNotify == 0 {
			q.setNotify(false)
		}
		for ; avail > 0 && got < len(frames); avail-- {
			head := q.nextHead()
			f := &frames[got]
			dst := f.Buf
			if len(dst) > p.frameSize {
				dst = dst[:p.frameSize]
			}
			// A large buffer takes a GSO frame straight from the chain,
			// to be handed up whole if it may be (takeGSO).
			into, inBuf := big, big != nil && cap(f.Buf) >= frameio.MaxGSOLen
			if inBuf {
				into = f.Buf[:frameio.MaxGSOLen]
			}
			n, gso, why := q.readChain(head, dst, into)
			q.putUsed(head, 0)
			whole := false
			if why == chainOK && discard {
				dropped++
				continue
			}
			switch {
			case why != chainOK:
			case !gso && q.hdr[0]&vuproto.NetHdrFNeedsCsum == 0 && q.hdr[1] == vuproto.NetHdrGSONone:
				f.N, f.Off = n, frameio.Offload{} // a plain frame
			default:
				why, whole = p.takeFrame(q, f, n, gso, inBuf)
			}
			if why != chainOK {
				dropped++
				p.badChain(q, why)
				continue
			}
			if gso && !whole {
				g, b, d := p.nextSegments(q, frames, got)
				got, bytes, dropped = g, bytes+b, dropped+d
				continue
			}
			bytes += f.N
			got++
		}
	}
	q.flush()
	return got, q.kickNoFD && got == 0
}

// WriteBatch puts frames into the guest's receive queue, waiting up to
// Options.WriteTimeout for buffers; what does not fit is dropped and
// counted. Without a front-end every frame is dropped.
func (p *Port) WriteBatch(frames []frameio.Frame) (int, error) {
	return p.writeBatch(frames, p.writeTimeout)
}

// WriteBatchNoWait is WriteBatch without the wait (frameio.NoWaitWriter).
func (p *Port) WriteBatchNoWait(frames []frameio.Frame) (int, error) {
	return p.writeBatch(frames, -1)
}

func (p *Port) writeBatch(frames []frameio.Frame, timeout time.Duration) (int, error) {
	if p.closed.Load() {
		return 0, frameio.ErrClosed
	}
	if len(frames) == 0 {
		return 0, nil
	}
	sent, chains, bytes := p.push(frames, timeout)
	p.ctr.AddTx(chains, bytes)
	p.ctr.AddTxDropped(len(frames) - sent)
	return sent, nil
}

// noOffload is the header of a frame WriteBatch hands over complete.
var noOffload frameio.Offload

// rxWait is push's supply of receive buffers: how many the guest has
// posted that push has not taken, and its deadline for more.
type rxWait struct {
	avail    uint16
	timeout  time.Duration
	deadline time.Time
	killed   bool // the front-end was dropped: stop at once
}

// take returns the head of the guest's next receive buffer, waiting up
// to the batch's deadline for one; !ok when none came (or the front-end
// was dropped for an avail index out of bounds, w.killed).
func (p *Port) take(q *vring, w *rxWait) (uint16, bool) {
	if w.avail == 0 {
		var ok bool
		if w.avail, ok = q.pending(); !ok {
			p.kill(q, fmt.Sprintf("avail index moved %d entries, more than the queue's %d", w.avail, q.num))
			w.avail, w.killed = 0, true
			return 0, false
		}
		for w.avail == 0 && w.timeout >= 0 {
			if w.deadline.IsZero() {
				w.deadline = time.Now().Add(w.timeout)
			}
			left := time.Until(w.deadline)
			if left <= 0 {
				break
			}
			w.avail = p.waitBuffers(q, left)
		}
		if w.avail == 0 {
			return 0, false
		}
	}
	w.avail--
	return q.nextHead(), true
}

// put writes frame behind hdr into the next receive buffer; filled is
// false when the chain was bad (returned to the guest unused, logged),
// stop when there was no buffer.
func (p *Port) put(q *vring, w *rxWait, frame []byte, hdr *[12]byte) (filled, stop bool) {
	head, ok := p.take(q, w)
	if !ok {
		return false, true
	}
	n, why := q.writeChain(head, frame, hdr)
	if why != chainOK {
		q.putUsed(head, 0)
		p.badChain(q, why)
		return false, false
	}
	q.putUsed(head, n)
	return true, false
}

// push writes frames into the receive queue and returns how many of them
// went (whole or in segments, all of them), the chains filled and their
// frames' bytes.
func (p *Port) push(frames []frameio.Frame, timeout time.Duration) (sent, chains, bytes int) {
	q := &p.q[rxQ]
	q.mu.Lock()
	defer q.mu.Unlock()
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer p.guard(q)
	if !q.ready() {
		return 0, 0, 0
	}
	if q.usedFlags&vuproto.UsedFNoNotify == 0 {
		q.setNotify(false)
	}
	w := rxWait{timeout: timeout}
	for i := range frames {
		f := &frames[i]
		if f.N < frameio.MinFrameLen || f.N > len(f.Buf) {
			continue
		}
		if f.Off.GSO != frameio.GSONone {
			c, b, ok, stop := p.pushGSO(q, &w, f)
			chains, bytes = chains+c, bytes+b
			if ok {
				sent++
			}
			if w.killed {
				return sent, chains, bytes
			}
			if stop {
				break
			}
			continue
		}
		if f.N > p.frameSize {
			continue
		}
		data, off := f.Bytes(), &noOffload
		if f.Off != (frameio.Offload{}) {
			if !f.Off.Partial {
				continue // an Off that says nothing it could mean
			}
			// A partial checksum goes to a guest that negotiated
			// GUEST_CSUM as it is, behind NEEDS_CSUM; for any other it
			// is completed in a copy.
			switch {
			case q.guestCsum:
				if int(f.Off.CsumStart) < frameio.MinFrameLen || int(f.Off.CsumStart)+int(f.Off.CsumOffset)+2 > f.N {
					continue // as Finish would refuse it
				}
				off = &f.Off
			default:
				p.finBuf(q)
				q.fin.N, q.fin.Off = copy(q.fin.Buf, data), f.Off
				if !q.fin.Finish() {
					continue
				}
				data = q.fin.Bytes()
			}
		}
		hdr := q.rxHdr(off, 0)
		filled, stop := p.put(q, &w, data, &hdr)
		if w.killed {
			return sent, chains, bytes
		}
		if stop {
			break
		}
		if filled {
			sent++
			chains++
			bytes += f.N
		}
	}
	q.flush()
	return sent, chains, bytes
}

// finBuf allocates q.fin's buffer, once.
func (p *Port) finBuf(q *vring) {
	if q.fin.Buf == nil {
		q.fin.Buf = make([]byte, p.frameSize)
	}
}

// pushGSO writes the GSO frame f: whole, behind a header that says how
// to cut it, to a guest that negotiated GUEST_TSO of its kind, else cut
// into frames of the MTU (in q.fin, one after the other), their
// checksums partial for a guest with GUEST_CSUM, complete for any other.
// It returns the chains filled and their bytes, whether all of f went
// (ok), and whether the batch stops for want of buffers (stop).
func (p *Port) pushGSO(q *vring, w *rxWait, f *frameio.Frame) (chains, bytes int, ok, stop bool) {
	data := f.Bytes()
	hl, why := gsoHeaders(data, f.Off, p.mtu)
	if why != chainOK {
		p.badChain(q, why)
		return 0, 0, false, false
	}
	if f.Off.GSO == frameio.GSOTCPv4 && q.guestTSO4 || f.Off.GSO == frameio.GSOTCPv6 && q.guestTSO6 {
		o := frameio.Offload{Partial: true, CsumStart: f.Off.CsumStart, CsumOffset: 16, GSO: f.Off.GSO, GSOSize: f.Off.GSOSize}
		hdr := q.rxHdr(&o, hl)
		filled, stop := p.put(q, w, data, &hdr)
		if !filled {
			return 0, 0, false, stop
		}
		return 1, f.N, true, false
	}
	p.finBuf(q)
	if q.seg.Load(data, f.Off) != nil {
		p.badChain(q, chainGSOBad) // gsoHeaders took it: not expected
		return 0, 0, false, false
	}
	for q.seg.Pending() {
		if !q.seg.Next(&q.fin, q.guestCsum) {
			p.badChain(q, chainGSOMTU) // gsoHeaders bounded it: not expected
			return chains, bytes, false, false
		}
		hdr := q.rxHdr(&q.fin.Off, 0)
		filled, stop := p.put(q, w, q.fin.Bytes(), &hdr)
		if !filled {
			q.seg = frameio.Segmenter{}
			return chains, bytes, false, stop
		}
		chains++
		bytes += q.fin.N
	}
	return chains, bytes, true, false
}

// gsoHeaders checks a GSO frame handed to WriteBatch before anything
// trusts it: untagged or with one VLAN tag, TCP over IPv4 (not a
// fragment) or IPv6 (no extension header) as its GSO type says, the IP
// length the frame's, the partial checksum at the TCP header (csum_offset
// 16), some payload after the headers, a gso_size of at least 48 and
// segments no larger than the MTU. It returns the length of the headers
// (hdr_len) or why the frame is dropped.
func gsoHeaders(b []byte, o frameio.Offload, mtu int) (int, int) {
	if o.GSO != frameio.GSOTCPv4 && o.GSO != frameio.GSOTCPv6 {
		return 0, chainGSOType
	}
	if len(b) > frameio.MaxGSOLen {
		return 0, chainOversize
	}
	l3, l4, ok := tcpOffset(b)
	if !ok {
		return 0, chainGSOBad
	}
	v6 := b[l3]>>4 == 6
	if v6 != (o.GSO == frameio.GSOTCPv6) {
		return 0, chainGSOVersion
	}
	if !o.Partial || int(o.CsumStart) != l4 || o.CsumOffset != 16 {
		return 0, chainGSOCsum
	}
	iplen, want := int(b[l3+2])<<8|int(b[l3+3]), len(b)-l3
	if v6 {
		iplen, want = int(b[l3+4])<<8|int(b[l3+5]), len(b)-l3-40
	}
	if iplen != want {
		return 0, chainGSOLength
	}
	hl := l4 + int(b[l4+12]>>4)*4
	switch {
	case hl < l4+20 || hl >= len(b):
		return 0, chainGSOBad
	case o.GSOSize < frameio.MinGSOSize:
		return 0, chainGSOSize
	case hl-l3+min(int(o.GSOSize), len(b)-hl) > mtu:
		return 0, chainGSOMTU
	}
	return hl, chainOK
}

// waitBuffers shows the guest what it has, asks for a kick and waits up
// to left for receive buffers.
func (p *Port) waitBuffers(q *vring, left time.Duration) uint16 {
	q.flush()
	q.setNotify(true)
	defer q.setNotify(false)
	if n, ok := q.pending(); !ok {
		return 0 // the next batch's check ends the session
	} else if n > 0 {
		return n
	}
	ms := int((left + time.Millisecond - 1) / time.Millisecond)
	if q.kick >= 0 {
		fds := [1]unix.PollFd{{Fd: int32(q.kick), Events: unix.POLLIN}}
		unix.Poll(fds[:], ms)
		q.drainKick()
	} else {
		unix.Poll(nil, min(ms, 1))
	}
	n, ok := q.pending()
	if !ok {
		return 0
	}
	return n
}
