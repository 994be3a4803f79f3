package portfwd

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var loopback = netip.MustParseAddr("127.0.0.1")

// testLogger logs through t.Log, so failures show what the forwarder said.
func testLogger(tb testing.TB) *slog.Logger {
	if _, ok := tb.(*testing.B); ok {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(tlogWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tlogWriter struct{ tb testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.tb.Log(string(p[:len(p)-1]))
	return len(p), nil
}

func newForwarder(tb testing.TB) *Forwarder {
	f := New(testLogger(tb))
	tb.Cleanup(func() { f.Close() })
	return f
}

func fixed(ip netip.Addr) Target { return func() (netip.Addr, bool) { return ip, true } }

// switchable is a Target whose answer a test changes.
type switchable struct{ ip atomic.Pointer[netip.Addr] }

func (s *switchable) set(ip netip.Addr) { s.ip.Store(&ip) }
func (s *switchable) unset()            { s.ip.Store(nil) }
func (s *switchable) target() (netip.Addr, bool) {
	if p := s.ip.Load(); p != nil {
		return *p, true
	}
	return netip.Addr{}, false
}

// add adds r on 127.0.0.1 and a free port unless set, and returns the
// host address it listens on.
func add(tb testing.TB, f *Forwarder, r Rule, to Target) netip.AddrPort {
	tb.Helper()
	if !r.HostIP.IsValid() {
		r.HostIP = loopback
	}
	if err := f.Add(r, to); err != nil {
		tb.Fatal(err)
	}
	for _, got := range f.Rules() {
		if got.Name == r.Name {
			return netip.AddrPortFrom(got.HostIP, uint16(got.HostPort))
		}
	}
	tb.Fatalf("rule %q not listed", r.Name)
	return netip.AddrPort{}
}

// tcpGuest is a "guest" service on loopback: it runs handle on every
// connection and tracks them so a test can see them close.
type tcpGuest struct {
	ln    net.Listener
	addr  netip.AddrPort
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]bool
	open  atomic.Int64
}

func startTCPGuest(tb testing.TB, ip string, port uint16, handle func(*net.TCPConn)) *tcpGuest {
	tb.Helper()
	ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), port)))
	if err != nil {
		tb.Fatal(err)
	}
	g := &tcpGuest{ln: ln, addr: ln.Addr().(*net.TCPAddr).AddrPort(), conns: make(map[net.Conn]bool)}
	g.wg.Go(func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			g.mu.Lock()
			g.conns[c] = true
			g.mu.Unlock()
			g.open.Add(1)
			g.wg.Go(func() {
				defer g.open.Add(-1)
				defer c.Close()
				handle(c)
			})
		}
	})
	tb.Cleanup(func() {
		ln.Close()
		g.mu.Lock()
		for c := range g.conns {
			c.Close()
		}
		g.mu.Unlock()
		g.wg.Wait()
	})
	return g
}

// echo copies back what it reads, then half-closes. It hides ReadFrom so
// the echo never splices a socket into itself.
func echo(c *net.TCPConn) {
	io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c})
	c.CloseWrite()
}

// udpEcho is a UDP "guest" service that answers each datagram with
// prefix+datagram.
func udpEcho(tb testing.TB, ip string, port uint16, prefix string) netip.AddrPort {
	tb.Helper()
	pc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), port)))
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			pc.WriteToUDPAddrPort(append([]byte(prefix), buf[:n]...), from)
		}
	}()
	tb.Cleanup(func() { pc.Close(); <-done })
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// exchangeUDP sends msg from c and returns the reply, or "" on timeout.
func exchangeUDP(tb testing.TB, c *net.UDPConn, msg string, wait time.Duration) string {
	tb.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		tb.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, maxDatagram)
	n, err := c.Read(buf)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.ECONNREFUSED) {
			return "" // no answer, or nothing listens
		}
		tb.Fatal(err)
	}
	return string(buf[:n])
}

func dialUDP(tb testing.TB, to netip.AddrPort) *net.UDPConn {
	tb.Helper()
	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(to))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

func dialTCP(tb testing.TB, to netip.AddrPort) *net.TCPConn {
	tb.Helper()
	c, err := net.DialTCP("tcp4", nil, net.TCPAddrFromAddrPort(to))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// freePort returns a port free on 127.0.0.1 for proto right now.
func freePort(tb testing.TB, proto string) int {
	tb.Helper()
	if proto == "udp" {
		pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			tb.Fatal(err)
		}
		defer pc.Close()
		return pc.LocalAddr().(*net.UDPAddr).Port
	}
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// eventually polls cond until it holds or 5s pass.
func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitGoroutines polls until the goroutine count is back to at most base.
func waitGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("%d goroutines, want <= %d:\n%s", runtime.NumGoroutine(), base, buf[:n])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// refused reports whether a connection to host is refused: reset while
// connecting (on loopback the forwarder's reset can beat connect's return)
// or closed at the first read. It returns the error seen.
func refused(tb testing.TB, host netip.AddrPort) (bool, error) {
	tb.Helper()
	c, err := net.DialTCP("tcp4", nil, net.TCPAddrFromAddrPort(host))
	if err != nil {
		return errors.Is(err, syscall.ECONNRESET), err
	}
	defer c.Close()
	c.Write([]byte("hi"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout()), err
}

// readsClosed reports whether c's next read ends (EOF or reset) within
// wait rather than timing out.
func readsClosed(c net.Conn, wait time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(wait))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

func (u *udpForward) sessionCount() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.sessions)
}

func (f *Forwarder) udp(name string) *udpForward {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rules[name].impl.(*udpForward)
}
