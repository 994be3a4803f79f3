package frameio

import (
	"io"
	"sync"
	"sync/atomic"
)

// PipeQueue is how many frames a pipe end holds for its reader; more are
// dropped, as a full socket would.
const PipeQueue = 256

// PipePort is one end of an in-process frame pipe: a service (the DHCP
// server, say) plugged into a switch without a socket, and tests. Writing
// copies frames into the other end's queue.
type PipePort struct {
	mtu   int
	fsize int
	ctr   Counters
	peer  *PipePort
	done  chan struct{}
	once  sync.Once
	shut  atomic.Bool
	rmu   sync.Mutex
	ready chan struct{} // a token when frames were queued

	mu    sync.Mutex // guards the queue
	slots [][]byte   // allocated on first use, FrameSize(mtu) each
	lens  []int
	head  int
	count int
}

// Pipe returns the two connected ends of an in-process pipe.
func Pipe(mtu int) (a, b *PipePort) {
	if mtu == 0 {
		mtu = DefaultMTU
	}
	if checkMTU(mtu) != nil {
		panic("frameio: Pipe: " + checkMTU(mtu).Error())
	}
	a, b = newPipeEnd(mtu), newPipeEnd(mtu)
	a.peer, b.peer = b, a
	return a, b
}

func newPipeEnd(mtu int) *PipePort {
	return &PipePort{
		mtu: mtu, fsize: FrameSize(mtu), done: make(chan struct{}), ready: make(chan struct{}, 1),
		slots: make([][]byte, PipeQueue), lens: make([]int, PipeQueue),
	}
}

func (p *PipePort) Kind() Kind   { return KindPipe }
func (p *PipePort) MTU() int     { return p.mtu }
func (p *PipePort) Stats() Stats { return p.ctr.Snapshot() }

// ReadBatch waits for frames written to the other end. Once that end is
// closed and the queue drained it returns io.EOF.
func (p *PipePort) ReadBatch(frames []Frame) (int, error) {
	p.rmu.Lock()
	defer p.rmu.Unlock()
	for {
		if p.shut.Load() {
			return 0, ErrClosed
		}
		p.mu.Lock()
		n, bytes, dropped := 0, 0, 0
		for n < len(frames) && p.count > 0 {
			l := p.lens[p.head]
			b := frames[n].Buf[:cap(frames[n].Buf)]
			if l <= len(b) {
				frames[n].N = copy(b, p.slots[p.head][:l])
				bytes += l
				n++
			} else {
				dropped++
			}
			p.head = (p.head + 1) % len(p.slots)
			p.count--
		}
		p.mu.Unlock()
		p.ctr.AddRx(n, bytes)
		p.ctr.AddRxDropped(dropped)
		if n > 0 {
			return n, nil
		}
		select {
		case <-p.ready:
		case <-p.done:
			return 0, ErrClosed
		case <-p.peer.done:
			p.mu.Lock()
			empty := p.count == 0
			p.mu.Unlock()
			if empty {
				return 0, io.EOF
			}
		}
	}
}

// WriteBatch copies frames into the other end's queue, dropping what
// does not fit.
func (p *PipePort) WriteBatch(frames []Frame) (int, error) {
	if p.shut.Load() {
		return 0, ErrClosed
	}
	q := p.peer
	if q.shut.Load() {
		p.ctr.AddTxDropped(len(frames))
		return 0, nil
	}
	sent, bytes, dropped := 0, 0, 0
	q.mu.Lock()
	for i := range frames {
		l := frames[i].N
		if l < MinFrameLen || l > p.fsize || l > len(frames[i].Buf) || q.count == len(q.slots) {
			dropped++
			continue
		}
		tail := (q.head + q.count) % len(q.slots)
		if q.slots[tail] == nil {
			q.slots[tail] = make([]byte, q.fsize)
		}
		q.lens[tail] = copy(q.slots[tail], frames[i].Buf[:l])
		q.count++
		sent++
		bytes += l
	}
	q.mu.Unlock()
	if sent > 0 {
		select {
		case q.ready <- struct{}{}:
		default:
		}
	}
	p.ctr.AddTx(sent, bytes)
	p.ctr.AddTxDropped(dropped)
	return sent, nil
}

// Close closes this end: its reads return ErrClosed, the other end's
// return io.EOF once drained, and writes to it are dropped.
func (p *PipePort) Close() error {
	p.once.Do(func() {
		p.shut.Store(true)
		close(p.done)
	})
	return nil
}

var _ Port = (*PipePort)(nil)
