//go:build linux

package frameio

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// StreamOptions configure a stream port.
type StreamOptions struct {
	// MTU is the largest IP packet; 0 means DefaultMTU.
	MTU int
	// SocketBuffer is SO_SNDBUF and SO_RCVBUF; 0 means DefaultSocketBuffer.
	SocketBuffer int
	// ReadBuffer is the reassembly buffer; 0 means DefaultStreamReadBuffer.
	ReadBuffer int
	// WriteTimeout is how long WriteBatch waits for room before dropping;
	// 0 means DefaultWriteTimeout, negative means never wait. A frame
	// half written by then is finished by the next WriteBatch, so the
	// stream stays in step.
	WriteTimeout time.Duration
	// Logger gets connection changes and malformed input; nil means
	// slog.Default().
	Logger *slog.Logger
}

// iovMax is the most iovecs one writev takes (Linux UIO_MAXIOV).
const iovMax = 1024

// streamConn is one stream connection: a reassembling reader and a writer
// gathering a batch into writev calls. Like mmsgSock it waits for its
// socket in poll(2) (parker), not on the Go runtime poller.
type streamConn struct {
	pk        parker
	rd        frameReader
	name      string
	frameSize int
	timeout   time.Duration
	log       *slog.Logger
	ctr       *Counters
	limit     *logLimiter

	wmu     sync.Mutex
	hdr     []byte
	iov     []unix.Iovec
	off     int    // 1 when iov[0] is pend
	n, pos  int    // iovecs set up; next to write
	partial bool   // iov[pos] is partly written
	wbytes  int    // frame bytes of the frames written whole
	pend    []byte // the unwritten tail of a frame begun, in pendBuf
	pendBuf []byte
	wwait   bool
	wagain  bool
	werr    unix.Errno
	writeFn func(uintptr) bool

	// Read's arguments and results, for readFn (the frame reader reads
	// serially).
	rb     []byte
	rn     int
	rerr   unix.Errno
	readFn func(uintptr) bool
}

// newStreamConn takes c over: its socket leaves the runtime poller (c is
// closed, a duplicate of its descriptor kept), whatever the outcome.
func newStreamConn(c *net.UnixConn, name string, mtu int, o StreamOptions, log *slog.Logger, ctr *Counters, limit *logLimiter) (*streamConn, error) {
	fd, err := detach(c)
	if err != nil {
		return nil, err
	}
	if err := setSocketBuffers(fd, o.SocketBuffer); err != nil {
		unix.Close(fd)
		return nil, err
	}
	bufSize := o.ReadBuffer
	if bufSize <= 0 {
		bufSize = DefaultStreamReadBuffer
	}
	sc := &streamConn{
		name: name, frameSize: FrameSize(mtu), timeout: timeoutOrDefault(o.WriteTimeout),
		log: log, ctr: ctr, limit: limit,
	}
	if err := sc.pk.init(fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	sc.rd = newFrameReader(sc, mtu, bufSize)
	sc.writeFn = sc.doWrite
	sc.readFn = sc.doRead
	return sc, nil
}

// detach takes c's socket off the runtime poller: a duplicate of its
// descriptor, non-blocking, and c closed.
func detach(c *net.UnixConn) (int, error) {
	defer c.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(f uintptr) { fd, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, os.NewSyscallError("fcntl", derr)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, os.NewSyscallError("fcntl", err)
	}
	return fd, nil
}

// Read is the frame reader's source: one read(2), waiting for input. It
// returns io.EOF when the peer has closed, ErrClosed after close.
func (c *streamConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	c.rb, c.rn, c.rerr = b, 0, 0
	if err := c.pk.read(c.readFn); err != nil {
		return 0, err
	}
	switch {
	case c.rerr != 0:
		return 0, os.NewSyscallError("read", c.rerr)
	case c.rn == 0:
		return 0, io.EOF
	}
	return c.rn, nil
}

func (c *streamConn) doRead(fd uintptr) bool {
	for {
		n, _, e := unix.Syscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&c.rb[0])), uintptr(len(c.rb)))
		switch e {
		case 0:
			c.rn = int(n)
			return true
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			c.rerr = e
			return true
		}
	}
}

// read is one ReadBatch on the connection; the caller serialises reads.
func (c *streamConn) read(frames []Frame) (int, error) {
	for {
		n, bytes, dropped, err := c.rd.readBatch(frames)
		c.ctr.AddRx(n, bytes)
		if dropped > 0 {
			c.ctr.AddRxDropped(dropped)
			c.limit.warn(c.log, "frameio: dropping stream frames longer than the read buffers", "port", c.name, "frames", dropped)
		}
		if c.rd.cut {
			c.rd.cut = false
			c.ctr.AddRxDropped(1)
		}
		if n > 0 || err != nil {
			return n, err
		}
	}
}

// write sends frames with writev, a header and a frame per pair of
// iovecs, after what is left of a frame begun by an earlier call. When the
// peer does not read for WriteTimeout, the frame being written is kept to
// be finished first next time and the rest are dropped, so the stream
// never falls out of step. It returns the frames sent and an error when
// the connection can no longer be used.
func (c *streamConn) write(frames []Frame) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	off := 0
	if len(c.pend) > 0 {
		off = 1
	}
	if need := off + 2*len(frames); need > len(c.iov) {
		c.iov = make([]unix.Iovec, 1+2*len(frames))
		c.hdr = make([]byte, StreamHeaderLen*len(frames))
	}
	if off == 1 {
		c.iov[0].Base = &c.pend[0]
		c.iov[0].SetLen(len(c.pend))
	}
	k, bad := 0, 0
	for i := range frames {
		n := frames[i].N
		if n < MinFrameLen || n > c.frameSize || n > len(frames[i].Buf) {
			bad++
			continue
		}
		h := c.hdr[StreamHeaderLen*k : StreamHeaderLen*(k+1)]
		binary.BigEndian.PutUint32(h, uint32(n))
		c.iov[off+2*k].Base = &h[0]
		c.iov[off+2*k].SetLen(StreamHeaderLen)
		c.iov[off+2*k+1].Base = &frames[i].Buf[0]
		c.iov[off+2*k+1].SetLen(n)
		k++
	}
	if bad > 0 {
		c.ctr.AddTxDropped(bad)
		c.limit.warn(c.log, "frameio: dropping frames to send that are shorter than an Ethernet header or longer than the MTU allows", "port", c.name, "frames", bad)
	}
	if k == 0 && off == 0 {
		return 0, nil
	}
	c.off, c.n, c.pos, c.partial, c.werr, c.wbytes = off, off+2*k, 0, false, 0, 0
	c.wwait, c.wagain = false, false
	if err := c.pk.write(c.writeFn, &c.wagain, &c.wwait, c.timeout); err != nil {
		return c.account(k, false), err
	}
	if c.werr != 0 {
		return c.account(k, false), fmt.Errorf("frameio: writing to %s: %w", c.name, c.werr)
	}
	return c.account(k, true), nil
}

// account counts the outcome of a write of k frames and, if keep, keeps
// the unwritten rest of a frame begun for the next write.
func (c *streamConn) account(k int, keep bool) int {
	sent := 0
	switch {
	case c.pos == c.n:
		c.pend = nil
		sent = k
	case c.pos < c.off:
		// Still on the old frame: trim what went.
		c.pend = c.pend[len(c.pend)-int(c.iov[0].Len):]
	default:
		c.pend = nil
		rel := c.pos - c.off
		sent = rel / 2
		if keep && (rel%2 == 1 || c.partial) {
			// Frame sent is begun: keep its tail, count it as sent.
			if c.pendBuf == nil {
				c.pendBuf = make([]byte, StreamHeaderLen+c.frameSize)
			}
			rest := c.pendBuf[:0]
			rest = append(rest, unsafe.Slice(c.iov[c.pos].Base, c.iov[c.pos].Len)...)
			if rel%2 == 0 {
				rest = append(rest, unsafe.Slice(c.iov[c.pos+1].Base, c.iov[c.pos+1].Len)...)
			}
			c.pend = rest
			c.wbytes += int(binary.BigEndian.Uint32(c.hdr[StreamHeaderLen*sent:]))
			sent++
		}
	}
	if len(c.pend) == 0 {
		c.pend = nil
	}
	c.ctr.AddTx(sent, c.wbytes)
	c.ctr.AddTxDropped(k - sent)
	return sent
}

func (c *streamConn) doWrite(fd uintptr) bool {
	for c.pos < c.n {
		cnt := min(c.n-c.pos, iovMax)
		w, _, e := unix.Syscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&c.iov[c.pos])), uintptr(cnt))
		switch e {
		case 0:
			c.advance(int(w))
			continue
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if c.wwait {
				return false
			}
			c.wagain = true
		default:
			c.werr = e
		}
		return true
	}
	return true
}

// advance consumes w written bytes from the iovecs.
func (c *streamConn) advance(w int) {
	for w > 0 && c.pos < c.n {
		iov := &c.iov[c.pos]
		if l := int(iov.Len); w >= l {
			w -= l
			if rel := c.pos - c.off; rel >= 0 && rel%2 == 1 {
				c.wbytes += int(binary.BigEndian.Uint32(c.hdr[StreamHeaderLen*(rel/2):]))
			}
			c.pos++
			c.partial = false
			continue
		}
		iov.Base = (*byte)(unsafe.Add(unsafe.Pointer(iov.Base), w))
		iov.SetLen(int(iov.Len) - w)
		c.partial = true
		return
	}
}

func (c *streamConn) close() {
	c.pk.close()
}

// endReason is the log line for a connection that ended with err.
func endReason(err error) (string, slog.Level) {
	var le *FrameLengthError
	switch {
	case errors.Is(err, io.EOF):
		return "frameio: stream peer disconnected", slog.LevelInfo
	case errors.As(err, &le):
		return "frameio: malformed stream length; closing the connection", slog.LevelWarn
	default:
		return "frameio: stream connection failed; closing it", slog.LevelWarn
	}
}

// StreamListener is a stream socket a hypervisor connects to (QEMU's
// -netdev stream in client mode, socket_vmnet's clients). It carries one
// connection at a time: a new one replaces the old, as a client that
// reconnects expects. Between connections reads wait and writes drop.
type StreamListener struct {
	ln     *net.UnixListener
	path   string
	id     fileID
	mtu    int
	opt    StreamOptions
	log    *slog.Logger
	ctr    Counters
	limit  logLimiter
	cur    atomic.Pointer[streamConn]
	notify chan struct{}
	done   chan struct{}
	rmu    sync.Mutex
	once   sync.Once
	wg     sync.WaitGroup
	conns  atomic.Uint64
}

// ListenStream listens on a stream socket at path, replacing a stale
// socket file left there.
func ListenStream(path string, o StreamOptions) (*StreamListener, error) {
	mtu, err := mtuOrDefault(o.MTU)
	if err != nil {
		return nil, err
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("frameio: %w", err)
	}
	// net would unlink the path on Close even if a newer listener (a
	// restarted plugin) had bound it since; Close checks first.
	ln.SetUnlinkOnClose(false)
	id, err := statID(path)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("frameio: %w", err)
	}
	l := &StreamListener{
		ln: ln, path: path, id: id, mtu: mtu, opt: o, log: loggerOrDefault(o.Logger),
		notify: make(chan struct{}, 1), done: make(chan struct{}),
	}
	l.wg.Add(1)
	go l.accept()
	return l, nil
}

func (l *StreamListener) accept() {
	defer l.wg.Done()
	for {
		c, err := l.ln.AcceptUnix()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			l.log.Warn("frameio: accepting a stream connection failed", "port", l.path, "err", err)
			select {
			case <-l.done:
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		sc, err := newStreamConn(c, "unix:"+l.path, l.mtu, l.opt, l.log, &l.ctr, &l.limit)
		if err != nil {
			l.log.Warn("frameio: setting up a stream connection failed", "port", l.path, "err", err)
			continue
		}
		old := l.cur.Swap(sc)
		l.conns.Add(1)
		if old != nil {
			l.log.Info("frameio: new stream connection replaces the old one", "port", l.path)
			old.close()
		} else {
			l.log.Info("frameio: stream peer connected", "port", l.path)
		}
		select {
		case <-l.done:
			// Close may have run before the Swap: do not leak sc.
			if l.cur.CompareAndSwap(sc, nil) {
				sc.close()
			}
			return
		default:
		}
		select {
		case l.notify <- struct{}{}:
		default:
		}
	}
}

// Path is the socket's path.
func (l *StreamListener) Path() string { return l.path }

// Connected reports whether a peer is connected.
func (l *StreamListener) Connected() bool { return l.cur.Load() != nil }

// Connections counts the connections accepted so far.
func (l *StreamListener) Connections() uint64 { return l.conns.Load() }

func (l *StreamListener) Kind() Kind   { return KindStream }
func (l *StreamListener) MTU() int     { return l.mtu }
func (l *StreamListener) Stats() Stats { return l.ctr.Snapshot() }

// ReadBatch waits for a connection and frames on it. Frames that arrive
// whole in one read are returned together. A malformed length closes that
// connection with a log line and the wait starts over.
func (l *StreamListener) ReadBatch(frames []Frame) (int, error) {
	l.rmu.Lock()
	defer l.rmu.Unlock()
	for {
		c := l.cur.Load()
		if c == nil {
			select {
			case <-l.notify:
				continue
			case <-l.done:
				return 0, ErrClosed
			}
		}
		n, err := c.read(frames)
		if n > 0 {
			return n, nil
		}
		select {
		case <-l.done:
			return 0, ErrClosed
		default:
		}
		l.end(c, err)
	}
}

// end closes c after err, unless it was replaced or closed already.
func (l *StreamListener) end(c *streamConn, err error) {
	if !l.cur.CompareAndSwap(c, nil) {
		return
	}
	if !c.pk.closed.Load() {
		msg, level := endReason(err)
		l.log.Log(context.Background(), level, msg, "port", l.path, "err", err)
	}
	c.close()
}

// WriteBatch writes frames to the current connection; without one they
// are dropped and counted.
func (l *StreamListener) WriteBatch(frames []Frame) (int, error) {
	select {
	case <-l.done:
		return 0, ErrClosed
	default:
	}
	if len(frames) == 0 {
		return 0, nil
	}
	c := l.cur.Load()
	if c == nil {
		l.ctr.AddTxDropped(len(frames))
		return 0, nil
	}
	sent, err := c.write(frames)
	if err != nil {
		l.end(c, err)
	}
	return sent, nil
}

// Close stops listening, closes the connection and removes the socket
// file.
func (l *StreamListener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.ln.Close()
		if c := l.cur.Swap(nil); c != nil {
			c.close()
		}
		if id, err := statID(l.path); err == nil && id == l.id {
			os.Remove(l.path)
		}
		l.wg.Wait()
	})
	return err
}

// StreamPort is the client end of a stream socket: tests, and QEMU's
// -netdev stream in server mode.
type StreamPort struct {
	c     *streamConn
	mtu   int
	log   *slog.Logger
	ctr   Counters
	limit logLimiter
	rmu   sync.Mutex
	done  atomic.Bool
}

// DialStream connects to a stream socket at path.
func DialStream(path string, o StreamOptions) (*StreamPort, error) {
	mtu, err := mtuOrDefault(o.MTU)
	if err != nil {
		return nil, err
	}
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("frameio: %w", err)
	}
	p := &StreamPort{mtu: mtu, log: loggerOrDefault(o.Logger)}
	p.c, err = newStreamConn(c, "unix:"+path, mtu, o, p.log, &p.ctr, &p.limit)
	if err != nil {
		return nil, fmt.Errorf("frameio: %s: %w", path, err)
	}
	return p, nil
}

func (p *StreamPort) Kind() Kind   { return KindStream }
func (p *StreamPort) MTU() int     { return p.mtu }
func (p *StreamPort) Stats() Stats { return p.ctr.Snapshot() }

// ReadBatch reads the frames that have arrived, waiting for one. When the
// stream ends (io.EOF) or turns malformed (*FrameLengthError) it logs,
// closes the connection and returns the error.
func (p *StreamPort) ReadBatch(frames []Frame) (int, error) {
	p.rmu.Lock()
	defer p.rmu.Unlock()
	n, err := p.c.read(frames)
	if n > 0 {
		return n, nil
	}
	if p.done.Load() {
		return 0, ErrClosed
	}
	if !p.c.pk.closed.Load() {
		msg, level := endReason(err)
		p.log.Log(context.Background(), level, msg, "port", p.c.name, "err", err)
		p.c.close()
	}
	return 0, err
}

// WriteBatch writes frames in as few writev calls as the socket allows.
// It fails once the connection is unusable.
func (p *StreamPort) WriteBatch(frames []Frame) (int, error) {
	if p.done.Load() {
		return 0, ErrClosed
	}
	if len(frames) == 0 {
		return 0, nil
	}
	sent, err := p.c.write(frames)
	if err != nil && !errors.Is(err, ErrClosed) {
		p.log.Warn("frameio: stream write failed; closing the connection", "port", p.c.name, "err", err)
		p.c.close()
	}
	return sent, err
}

// Close closes the connection.
func (p *StreamPort) Close() error {
	if p.done.Swap(true) {
		return nil
	}
	p.c.close()
	return nil
}

var (
	_ Port = (*StreamListener)(nil)
	_ Port = (*StreamPort)(nil)
)
