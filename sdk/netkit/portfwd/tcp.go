package portfwd

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// tcpForward accepts on the host and splices each connection to the guest.
type tcpForward struct {
	ln          *net.TCPListener
	to          Target
	guestPort   uint16
	dialTimeout time.Duration
	maxConns    int64
	log         *slog.Logger
	refusedLog  logLimiter

	ctx    context.Context // cancelled by close: dials in progress end
	cancel context.CancelFunc
	wg     sync.WaitGroup // the accept loop and every connection's goroutines
	active atomic.Int64   // connections being served

	mu     sync.Mutex
	conns  map[*net.TCPConn]struct{} // open sockets, both sides
	closed bool
}

func startTCP(r Rule, to Target, dialTimeout time.Duration, maxConns int, log *slog.Logger) (*tcpForward, error) {
	network := "tcp4"
	if r.HostIP.Is6() {
		network = "tcp6"
	}
	ln, err := net.ListenTCP(network, net.TCPAddrFromAddrPort(r.hostAddr()))
	if err != nil {
		return nil, err
	}
	t := &tcpForward{
		ln:          ln,
		to:          to,
		guestPort:   uint16(r.GuestPort),
		dialTimeout: dialTimeout,
		maxConns:    int64(maxConns),
		log:         log,
		conns:       make(map[*net.TCPConn]struct{}),
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.wg.Add(1)
	go t.acceptLoop()
	return t, nil
}

func (t *tcpForward) acceptLoop() {
	defer t.wg.Done()
	var backoff time.Duration
	for {
		c, err := t.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and the like: wait a little rather than spin.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			t.refusedLog.warn(t.log, "portfwd: accept failed", "err", err)
			select {
			case <-time.After(backoff):
			case <-t.ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		if t.active.Add(1) > t.maxConns {
			t.active.Add(-1)
			t.refusedLog.warn(t.log, "portfwd: too many connections; resetting", "from", c.RemoteAddr(), "max", t.maxConns)
			reset(c)
			continue
		}
		if !t.track(c) {
			t.active.Add(-1)
			reset(c)
			return
		}
		t.wg.Add(1)
		go t.serve(c)
	}
}

// track registers an open socket so close can end it; false once closing.
func (t *tcpForward) track(c *net.TCPConn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.conns[c] = struct{}{}
	return true
}

func (t *tcpForward) untrack(cs ...*net.TCPConn) {
	t.mu.Lock()
	for _, c := range cs {
		delete(t.conns, c)
	}
	t.mu.Unlock()
}

// serve connects client to the guest and copies both ways until both
// directions are done.
func (t *tcpForward) serve(client *net.TCPConn) {
	defer t.wg.Done()
	defer t.active.Add(-1)

	ip, ok := t.to()
	if !ok {
		t.refusedLog.warn(t.log, "portfwd: guest address not known yet; refusing", "from", client.RemoteAddr())
		t.untrack(client)
		reset(client)
		return
	}
	guestAddr := netip.AddrPortFrom(ip, t.guestPort)
	d := net.Dialer{Timeout: t.dialTimeout}
	gc, err := d.DialContext(t.ctx, "tcp", guestAddr.String())
	if err != nil {
		if t.ctx.Err() == nil {
			t.refusedLog.warn(t.log, "portfwd: cannot reach the guest; refusing", "from", client.RemoteAddr(), "guest", guestAddr, "err", err)
		}
		t.untrack(client)
		reset(client)
		return
	}
	guest := gc.(*net.TCPConn)
	if !t.track(guest) {
		t.untrack(client)
		client.Close()
		guest.Close()
		return
	}
	t.log.Debug("portfwd: connected", "from", client.RemoteAddr(), "guest", guestAddr)

	// One direction here, the other on a goroutine. io.Copy between two
	// *net.TCPConn splices on Linux.
	var once sync.Once
	abort := func() {
		once.Do(func() {
			// An error one way (a reset, or close tearing down) ends both
			// ways, and the peer sees a reset rather than a clean end.
			client.SetLinger(0)
			guest.SetLinger(0)
			client.Close()
			guest.Close()
		})
	}
	t.wg.Add(1)
	done := make(chan struct{})
	go func() {
		defer t.wg.Done()
		defer close(done)
		pipe(guest, client, abort)
	}()
	pipe(client, guest, abort)
	<-done
	client.Close()
	guest.Close()
	t.untrack(client, guest)
}

// pipe copies src to dst; at src's end it half-closes dst so the peer sees
// the end too, and the other direction keeps going.
func pipe(dst, src *net.TCPConn, abort func()) {
	if _, err := io.Copy(dst, src); err != nil {
		abort()
		return
	}
	if err := dst.CloseWrite(); err != nil {
		abort()
	}
}

// reset closes c so its peer gets a RST: the nearest a user-space forward
// comes to "connection refused".
func reset(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

func (t *tcpForward) close() {
	t.mu.Lock()
	t.closed = true
	conns := t.conns
	t.conns = nil
	t.mu.Unlock()
	t.cancel()
	t.ln.Close()
	for c := range conns {
		c.SetLinger(0)
		c.Close()
	}
	t.wg.Wait()
}
