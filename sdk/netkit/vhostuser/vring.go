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
)

var chainErrs = [...]string{"", "descriptor index out of range", "descriptor chain longer than its table (a loop?)",
	"descriptor with the wrong direction or INDIRECT (not negotiated)", "descriptor outside the memory table",
	"frame shorter than an Ethernet header", "frame larger than the port's MTU or the buffer",
	"INDIRECT descriptor with NEXT", "INDIRECT descriptor inside an indirect table",
	"indirect table of 0 bytes, not a multiple of 16 or of more than 32768 descriptors", "indirect table outside the memory table"}

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

// readChain copies the frame in the chain at head into dst, skipping the
// virtio-net header.
func (q *vring) readChain(head uint16, dst []byte) (int, int) {
	skip, n := q.hdrLen, 0
	tbl, size, i, steps, nested := q.desc, uint32(q.num), uint32(head), uint32(0), false
	for {
		if why := step(i, steps, size); why != chainOK {
			return 0, why
		}
		steps++
		d := tbl[int(i)*16:][:16]
		addr, l, flags, next := le.Uint64(d), le.Uint32(d[8:]), le.Uint16(d[12:]), le.Uint16(d[14:])
		if flags&vuproto.DescFIndirect != 0 {
			t, why := q.table(addr, l, flags, nested)
			if why != chainOK {
				return 0, why
			}
			tbl, size, i, steps, nested = t, l/16, 0, 0, true
			continue
		}
		if flags&vuproto.DescFWrite != 0 {
			return 0, chainBadFlags
		}
		b := q.mem.gpa(addr, l)
		if b == nil {
			return 0, chainBadAddr
		}
		if skip > 0 {
			s := min(skip, len(b))
			b, skip = b[s:], skip-s
		}
		if len(b) > len(dst)-n {
			return 0, chainOversize
		}
		n += copy(dst[n:], b)
		if flags&vuproto.DescFNext == 0 {
			break
		}
		i = uint32(next)
	}
	if skip > 0 || n < frameio.MinFrameLen {
		return 0, chainShort
	}
	return n, chainOK
}

// writeChain writes the header and frame into the writable chain at head
// and returns the bytes written.
func (q *vring) writeChain(head uint16, frame []byte) (uint32, int) {
	var hdr [12]byte
	if q.hdrLen == 12 {
		hdr[10] = 1 // num_buffers
	}
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
	// A disabled transmit queue is still drained, its frames discarded
	// (the vhost-user spec's rule), so a guest does not stall on it.
	if !q.started || q.broken || q.desc == nil {
		return 0, false
	}
	discard := !q.enabled
	bytes, dropped := 0, 0
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
			n, why := q.readChain(head, dst)
			q.putUsed(head, 0)
			if why != chainOK {
				dropped++
				p.badChain(q, why)
				continue
			}
			if discard {
				dropped++
				continue
			}
			f.N = n
			bytes += n
			got++
		}
	}
	q.flush()
	p.ctr.AddRx(got, bytes)
	p.ctr.AddRxDropped(dropped)
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
	sent, bytes := p.push(frames, timeout)
	p.ctr.AddTx(sent, bytes)
	p.ctr.AddTxDropped(len(frames) - sent)
	return sent, nil
}

func (p *Port) push(frames []frameio.Frame, timeout time.Duration) (sent, bytes int) {
	q := &p.q[rxQ]
	q.mu.Lock()
	defer q.mu.Unlock()
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer p.guard(q)
	if !q.ready() {
		return 0, 0
	}
	if q.usedFlags&vuproto.UsedFNoNotify == 0 {
		q.setNotify(false)
	}
	var deadline time.Time
	avail := uint16(0)
	for i := range frames {
		f := &frames[i]
		if f.N < frameio.MinFrameLen || f.N > p.frameSize || f.N > len(f.Buf) {
			continue
		}
		if avail == 0 {
			var ok bool
			if avail, ok = q.pending(); !ok {
				p.kill(q, fmt.Sprintf("avail index moved %d entries, more than the queue's %d", avail, q.num))
				return sent, bytes
			}
			for avail == 0 && timeout >= 0 {
				if deadline.IsZero() {
					deadline = time.Now().Add(timeout)
				}
				left := time.Until(deadline)
				if left <= 0 {
					break
				}
				avail = p.waitBuffers(q, left)
			}
			if avail == 0 {
				break
			}
		}
		head := q.nextHead()
		avail--
		n, why := q.writeChain(head, f.Bytes())
		if why != chainOK {
			q.putUsed(head, 0)
			p.badChain(q, why)
			continue
		}
		q.putUsed(head, n)
		sent++
		bytes += f.N
	}
	q.flush()
	return sent, bytes
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
