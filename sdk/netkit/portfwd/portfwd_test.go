package portfwd

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestTCPEcho(t *testing.T) {
	g := startTCPGuest(t, "127.0.0.1", 0, echo)
	f := newForwarder(t)
	host := add(t, f, Rule{Name: "echo", Proto: "tcp", GuestPort: int(g.addr.Port())}, fixed(loopback))

	c := dialTCP(t, host)
	for _, msg := range []string{"hello", "guest"} {
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, len(msg))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo %q: got %q, %v", msg, buf, err)
		}
	}
}

func TestTCPLargeTransfer(t *testing.T) {
	g := startTCPGuest(t, "127.0.0.1", 0, echo)
	f := newForwarder(t)
	host := add(t, f, Rule{Name: "big", Proto: "tcp", GuestPort: int(g.addr.Port())}, fixed(loopback))

	data := make([]byte, 8<<20+12345)
	rand.Read(data)
	c := dialTCP(t, host)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c) // ends when the guest's half-close comes through
	if err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if len(got) != len(data) || sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("got %d bytes back (sha256 differs: %v), sent %d", len(got), !bytes.Equal(got, data), len(data))
	}
}

func TestTCPHalfClose(t *testing.T) {
	// The client says everything and half-closes; the guest answers only
	// after the end (like `nc -N` or an HTTP/1.0 upload).
	t.Run("client first", func(t *testing.T) {
		g := startTCPGuest(t, "127.0.0.1", 0, func(c *net.TCPConn) {
			n, _ := io.Copy(io.Discard, c)
			fmt.Fprintf(c, "got %d bytes", n)
		})
		f := newForwarder(t)
		host := add(t, f, Rule{Name: "hc", Proto: "tcp", GuestPort: int(g.addr.Port())}, fixed(loopback))
		c := dialTCP(t, host)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write(bytes.Repeat([]byte("x"), 100000))
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "got 100000 bytes" {
			t.Fatalf("got %q, %v", got, err)
		}
	})
	// The guest speaks first and half-closes; the client still sends
	// afterwards and the guest still reads it.
	t.Run("guest first", func(t *testing.T) {
		received := make(chan string, 1)
		g := startTCPGuest(t, "127.0.0.1", 0, func(c *net.TCPConn) {
			c.Write([]byte("banner"))
			c.CloseWrite()
			b, _ := io.ReadAll(c)
			received <- string(b)
		})
		f := newForwarder(t)
		host := add(t, f, Rule{Name: "hc", Proto: "tcp", GuestPort: int(g.addr.Port())}, fixed(loopback))
		c := dialTCP(t, host)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "banner" {
			t.Fatalf("client read %q, %v", got, err)
		}
		c.Write([]byte("after the guest's EOF"))
		c.CloseWrite()
		select {
		case s := <-received:
			if s != "after the guest's EOF" {
				t.Errorf("guest read %q", s)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("guest never saw the client's EOF")
		}
	})
}

func TestUDPEcho(t *testing.T) {
	guest := udpEcho(t, "127.0.0.1", 0, "re:")
	f := newForwarder(t)
	host := add(t, f, Rule{Name: "dns", Proto: "udp", GuestPort: int(guest.Port())}, fixed(loopback))

	a, b := dialUDP(t, host), dialUDP(t, host)
	for i := range 3 {
		for name, c := range map[string]*net.UDPConn{"a": a, "b": b} {
			msg := fmt.Sprintf("%s%d", name, i)
			if got := exchangeUDP(t, c, msg, 5*time.Second); got != "re:"+msg {
				t.Fatalf("client %s: got %q, want %q", name, got, "re:"+msg)
			}
		}
	}
	if n := f.udp("dns").sessionCount(); n != 2 {
		t.Errorf("%d sessions, want 2 (one per client)", n)
	}
	// A datagram of nearly the maximum size goes through whole.
	big := strings.Repeat("z", 60000)
	if got := exchangeUDP(t, a, big, 5*time.Second); got != "re:"+big {
		t.Errorf("60000-byte datagram: got %d bytes back", len(got))
	}
}

func TestUDPIdleTimeout(t *testing.T) {
	guest := udpEcho(t, "127.0.0.1", 0, "")
	f := newForwarder(t)
	f.UDPIdleTimeout = 100 * time.Millisecond
	host := add(t, f, Rule{Name: "u", Proto: "udp", GuestPort: int(guest.Port())}, fixed(loopback))
	u := f.udp("u")
	c := dialUDP(t, host)
	if got := exchangeUDP(t, c, "one", 5*time.Second); got != "one" {
		t.Fatalf("got %q", got)
	}
	if u.sessionCount() != 1 {
		t.Fatalf("%d sessions", u.sessionCount())
	}
	eventually(t, "the idle session to end", func() bool { return u.sessionCount() == 0 })
	// The same client starts a new session.
	if got := exchangeUDP(t, c, "two", 5*time.Second); got != "two" {
		t.Fatalf("after idle: got %q", got)
	}
}

func TestUDPActiveSessionKept(t *testing.T) {
	guest := udpEcho(t, "127.0.0.1", 0, "")
	f := newForwarder(t)
	f.UDPIdleTimeout = 300 * time.Millisecond
	host := add(t, f, Rule{Name: "u", Proto: "udp", GuestPort: int(guest.Port())}, fixed(loopback))
	u := f.udp("u")
	c := dialUDP(t, host)
	exchangeUDP(t, c, "0", 5*time.Second)
	u.mu.Lock()
	first := u.sessions[sessionKey{client: netip.MustParseAddrPort(c.LocalAddr().String())}]
	u.mu.Unlock()
	// Traffic every 50ms for 3 idle periods keeps the one session.
	for i := range 18 {
		if got := exchangeUDP(t, c, fmt.Sprint(i), 5*time.Second); got != fmt.Sprint(i) {
			t.Fatalf("got %q", got)
		}
		time.Sleep(50 * time.Millisecond)
	}
	u.mu.Lock()
	now := u.sessions[sessionKey{client: netip.MustParseAddrPort(c.LocalAddr().String())}]
	u.mu.Unlock()
	if first == nil || now != first {
		t.Error("an active session was replaced")
	}
}

func TestUDPSessionCap(t *testing.T) {
	guest := udpEcho(t, "127.0.0.1", 0, "")
	f := newForwarder(t)
	f.MaxUDPSessions = 2
	host := add(t, f, Rule{Name: "u", Proto: "udp", GuestPort: int(guest.Port())}, fixed(loopback))
	a, b, c := dialUDP(t, host), dialUDP(t, host), dialUDP(t, host)
	exchangeUDP(t, a, "a", 5*time.Second)
	exchangeUDP(t, b, "b", 5*time.Second)
	if got := exchangeUDP(t, c, "c", 200*time.Millisecond); got != "" {
		t.Errorf("third client over a cap of 2 got %q", got)
	}
	if got := exchangeUDP(t, a, "a2", 5*time.Second); got != "a2" {
		t.Errorf("existing session after the cap: %q", got)
	}
}

func TestUDPGuestNotListening(t *testing.T) {
	// The guest service starts after the first datagrams: ICMP errors from
	// the guest must not end the session or lose later datagrams.
	port := freePort(t, "udp")
	f := newForwarder(t)
	host := add(t, f, Rule{Name: "u", Proto: "udp", GuestPort: port}, fixed(loopback))
	c := dialUDP(t, host)
	for range 3 {
		if got := exchangeUDP(t, c, "early", 50*time.Millisecond); got != "" {
			t.Fatalf("got %q from nobody", got)
		}
	}
	udpEcho(t, "127.0.0.1", uint16(port), "")
	if got := exchangeUDP(t, c, "late", 5*time.Second); got != "late" {
		t.Errorf("after the guest started: %q", got)
	}
}

func TestTargetUnknown(t *testing.T) {
	g := startTCPGuest(t, "127.0.0.1", 0, echo)
	uguest := udpEcho(t, "127.0.0.1", 0, "")
	var to switchable
	f := newForwarder(t)
	tcpHost := add(t, f, Rule{Name: "t", Proto: "tcp", GuestPort: int(g.addr.Port())}, to.target)
	udpHost := add(t, f, Rule{Name: "u", Proto: "udp", GuestPort: int(uguest.Port())}, to.target)

	if ok, err := refused(t, tcpHost); !ok {
		t.Errorf("TCP with no guest address: connection not refused (%v)", err)
	}
	uc := dialUDP(t, udpHost)
	if got := exchangeUDP(t, uc, "hi", 200*time.Millisecond); got != "" {
		t.Errorf("UDP with no guest address: got %q", got)
	}
	if n := f.udp("u").sessionCount(); n != 0 {
		t.Errorf("%d sessions without a guest address", n)
	}

	// The lease arrives: the next connection goes through.
	to.set(loopback)
	c := dialTCP(t, tcpHost)
	c.Write([]byte("hi"))
	buf := make([]byte, 2)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hi" {
		t.Errorf("TCP after the lease: %q, %v", buf, err)
	}
	if got := exchangeUDP(t, uc, "hi", 5*time.Second); got != "hi" {
		t.Errorf("UDP after the lease: %q", got)
	}
}

func TestTargetFollowsNewAddress(t *testing.T) {
	a := startTCPGuest(t, "127.0.0.2", 0, func(c *net.TCPConn) { c.Write([]byte("A")) })
	startTCPGuest(t, "127.0.0.3", a.addr.Port(), func(c *net.TCPConn) { c.Write([]byte("B")) })
	var to switchable
	to.set(netip.MustParseAddr("127.0.0.2"))
	f := newForwarder(t)
	host := add(t, f, Rule{Name: "t", Proto: "tcp", GuestPort: int(a.addr.Port())}, to.target)
	read := func() string {
		c := dialTCP(t, host)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(c)
		return string(b)
	}
	if got := read(); got != "A" {
		t.Fatalf("got %q, want A", got)
	}
	to.set(netip.MustParseAddr("127.0.0.3"))
	if got := read(); got != "B" {
		t.Fatalf("after the address changed: got %q, want B", got)
	}
}

func TestGuestRefusesTCP(t *testing.T) {
	f := newForwarder(t)
	host := add(t, f, Rule{Name: "t", Proto: "tcp", GuestPort: freePort(t, "tcp")}, fixed(loopback))
	if ok, err := refused(t, host); !ok || !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("forward to a closed guest port: %v, want a reset", err)
	}
}

func TestTCPConnCap(t *testing.T) {
	g := startTCPGuest(t, "127.0.0.1", 0, echo)
	f := newForwarder(t)
	f.MaxTCPConns = 1
	host := add(t, f, Rule{Name: "t", Proto: "tcp", GuestPort: int(g.addr.Port())}, fixed(loopback))
	first := dialTCP(t, host)
	first.Write([]byte("1"))
	first.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(first, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if ok, err := refused(t, host); !ok {
		t.Errorf("a connection over the cap was not refused (%v)", err)
	}
	first.Close()
	eventually(t, "the first connection to end", func() bool { return g.open.Load() == 0 })
	third := dialTCP(t, host)
	third.Write([]byte("3"))
	third.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(third, make([]byte, 1)); err != nil {
		t.Errorf("after the first closed: %v", err)
	}
}

func TestPortConflict(t *testing.T) {
	for _, proto := range []string{"tcp", "udp"} {
		t.Run(proto, func(t *testing.T) {
			var port int
			if proto == "tcp" {
				ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				port = ln.Addr().(*net.TCPAddr).Port
			} else {
				pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
				if err != nil {
					t.Fatal(err)
				}
				defer pc.Close()
				port = pc.LocalAddr().(*net.UDPAddr).Port
			}
			f := newForwarder(t)
			err := f.Add(Rule{Name: "ssh", Proto: proto, HostIP: loopback, HostPort: port, GuestPort: 22}, fixed(loopback))
			if err == nil {
				t.Fatal("no error for a taken port")
			}
			want := fmt.Sprintf("%s 127.0.0.1:%d", proto, port)
			for _, s := range []string{want, "pick another host port", `"ssh"`} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
			if !errors.Is(err, syscall.EADDRINUSE) {
				t.Errorf("error does not wrap EADDRINUSE: %v", err)
			}
			if len(f.Rules()) != 0 {
				t.Errorf("failed rule listed: %v", f.Rules())
			}
			// A zero HostIP means 0.0.0.0, which a 127.0.0.1 socket on the
			// port also blocks (nothing gets bound on the wildcard here).
			err = f.Add(Rule{Name: "ssh", Proto: proto, HostPort: port, GuestPort: 22}, fixed(loopback))
			if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%s 0.0.0.0:%d", proto, port)) {
				t.Errorf("zero HostIP: %v", err)
			}
		})
	}
	// Two rules on one port: the second fails.
	f := newForwarder(t)
	host := add(t, f, Rule{Name: "a", Proto: "tcp", GuestPort: 1}, fixed(loopback))
	err := f.Add(Rule{Name: "b", Proto: "tcp", HostIP: loopback, HostPort: int(host.Port()), GuestPort: 2}, fixed(loopback))
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("second rule on one port: %v", err)
	}
}

func TestBadRules(t *testing.T) {
	f := newForwarder(t)
	add(t, f, Rule{Name: "ssh", Proto: "tcp", GuestPort: 22}, fixed(loopback))
	for _, tc := range []struct {
		r    Rule
		to   Target
		want string
	}{
		{Rule{Name: "ssh", Proto: "tcp", HostIP: loopback, GuestPort: 22}, fixed(loopback), "exists already"},
		{Rule{Proto: "tcp", HostIP: loopback, GuestPort: 22}, fixed(loopback), "needs a name"},
		{Rule{Name: "x", Proto: "sctp", HostIP: loopback, GuestPort: 22}, fixed(loopback), "tcp or udp"},
		{Rule{Name: "x", Proto: "tcp", HostIP: loopback, GuestPort: 0}, fixed(loopback), "guest port 0"},
		{Rule{Name: "x", Proto: "udp", HostIP: loopback, GuestPort: 70000}, fixed(loopback), "guest port 70000"},
		{Rule{Name: "x", Proto: "udp", HostIP: loopback, HostPort: -1, GuestPort: 1}, fixed(loopback), "host port -1"},
		{Rule{Name: "x", Proto: "udp", HostIP: loopback, GuestPort: 1}, nil, "no Target"},
	} {
		err := f.Add(tc.r, tc.to)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Add(%+v) = %v, want an error saying %q", tc.r, err, tc.want)
		}
	}
	if got := f.Rules(); len(got) != 1 {
		t.Errorf("Rules() = %v", got)
	}
	err := f.Remove("nope")
	if !errors.Is(err, ErrNoRule) || !strings.Contains(err.Error(), "nope") {
		t.Errorf("Remove of an unknown rule: %v", err)
	}
	// Proto is case-insensitive and listed in lower case.
	add(t, f, Rule{Name: "web", Proto: "TCP", GuestPort: 80}, fixed(loopback))
	for _, r := range f.Rules() {
		if r.Name == "web" && r.Proto != "tcp" {
			t.Errorf("Proto listed as %q", r.Proto)
		}
	}
}

func TestRules(t *testing.T) {
	f := newForwarder(t)
	if got := f.Rules(); len(got) != 0 {
		t.Fatalf("new forwarder: %v", got)
	}
	udpPort := freePort(t, "udp")
	add(t, f, Rule{Name: "web", Proto: "tcp", GuestPort: 80}, fixed(loopback))
	add(t, f, Rule{Name: "dns", Proto: "udp", HostPort: udpPort, GuestPort: 53}, fixed(loopback))
	add(t, f, Rule{Name: "ssh", Proto: "tcp", GuestPort: 22}, fixed(loopback))
	got := f.Rules()
	var names []string
	for _, r := range got {
		names = append(names, r.Name)
		if r.HostIP != loopback || r.HostPort == 0 {
			t.Errorf("rule %q: host %v:%d", r.Name, r.HostIP, r.HostPort)
		}
	}
	if !reflect.DeepEqual(names, []string{"dns", "ssh", "web"}) {
		t.Errorf("names %v, want sorted", names)
	}
	if got[0] != (Rule{Name: "dns", Proto: "udp", HostIP: loopback, HostPort: udpPort, GuestPort: 53}) {
		t.Errorf("dns rule listed as %+v", got[0])
	}
	if err := f.Remove("ssh"); err != nil {
		t.Fatal(err)
	}
	if got := f.Rules(); len(got) != 2 || got[0].Name != "dns" || got[1].Name != "web" {
		t.Errorf("after Remove: %v", got)
	}
	// The name is free again.
	add(t, f, Rule{Name: "ssh", Proto: "udp", GuestPort: 22}, fixed(loopback))
}

func TestRemoveClosesLiveConnections(t *testing.T) {
	g := startTCPGuest(t, "127.0.0.1", 0, echo)
	uguest := udpEcho(t, "127.0.0.1", 0, "")
	f := newForwarder(t)
	tcpHost := add(t, f, Rule{Name: "t", Proto: "tcp", GuestPort: int(g.addr.Port())}, fixed(loopback))
	udpHost := add(t, f, Rule{Name: "u", Proto: "udp", GuestPort: int(uguest.Port())}, fixed(loopback))

	var clients []*net.TCPConn
	for range 3 {
		c := dialTCP(t, tcpHost)
		c.Write([]byte("x"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	uc := dialUDP(t, udpHost)
	if got := exchangeUDP(t, uc, "x", 5*time.Second); got != "x" {
		t.Fatal(got)
	}
	if g.open.Load() != 3 {
		t.Fatalf("guest has %d connections", g.open.Load())
	}

	if err := f.Remove("t"); err != nil {
		t.Fatal(err)
	}
	for i, c := range clients {
		if !readsClosed(c, 5*time.Second) {
			t.Errorf("client %d still open after Remove", i)
		}
	}
	eventually(t, "the guest's connections to close", func() bool { return g.open.Load() == 0 })
	if _, err := net.DialTCP("tcp4", nil, net.TCPAddrFromAddrPort(tcpHost)); err == nil {
		t.Error("the host port still accepts after Remove")
	}
	// The port is free for a new rule at once.
	add(t, f, Rule{Name: "t2", Proto: "tcp", HostPort: int(tcpHost.Port()), GuestPort: int(g.addr.Port())}, fixed(loopback))

	u := f.udp("u")
	if err := f.Remove("u"); err != nil {
		t.Fatal(err)
	}
	if n := u.sessionCount(); n != 0 {
		t.Errorf("%d UDP sessions after Remove", n)
	}
	if got := exchangeUDP(t, uc, "x", 200*time.Millisecond); got != "" {
		t.Errorf("UDP answered after Remove: %q", got)
	}
	if err := f.Remove("u"); !errors.Is(err, ErrNoRule) {
		t.Errorf("second Remove: %v", err)
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	base := runtime.NumGoroutine()
	g := startTCPGuest(t, "127.0.0.1", 0, echo)
	slow := startTCPGuest(t, "127.0.0.1", 0, func(c *net.TCPConn) { io.Copy(io.Discard, c) }) // never answers
	uguest := udpEcho(t, "127.0.0.1", 0, "")
	guestBase := runtime.NumGoroutine() - base

	f := New(testLogger(t))
	tcpHost := add(t, f, Rule{Name: "t", Proto: "tcp", GuestPort: int(g.addr.Port())}, fixed(loopback))
	slowHost := add(t, f, Rule{Name: "s", Proto: "tcp", GuestPort: int(slow.addr.Port())}, fixed(loopback))
	udpHost := add(t, f, Rule{Name: "u", Proto: "udp", GuestPort: int(uguest.Port())}, fixed(loopback))
	// A guest address that blackholes SYNs would hold a dial for 5s; a
	// refusing one ends at once. Both kinds are torn down by Close.
	add(t, f, Rule{Name: "r", Proto: "tcp", GuestPort: freePort(t, "tcp")}, fixed(loopback))

	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			c, err := net.DialTCP("tcp4", nil, net.TCPAddrFromAddrPort(tcpHost))
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			c.Write([]byte("ping"))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			io.ReadFull(c, make([]byte, 4))
		})
	}
	wg.Wait()
	live := dialTCP(t, slowHost) // stays open through Close
	live.Write([]byte("still here"))
	for range 5 {
		uc := dialUDP(t, udpHost)
		exchangeUDP(t, uc, "x", 5*time.Second)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if !readsClosed(live, 5*time.Second) {
		t.Error("live connection open after Close")
	}
	if err := f.Add(Rule{Name: "late", Proto: "tcp", HostIP: loopback, GuestPort: 1}, fixed(loopback)); !errors.Is(err, ErrClosed) {
		t.Errorf("Add after Close: %v", err)
	}
	eventually(t, "the guests' connections to close", func() bool { return g.open.Load() == 0 && slow.open.Load() == 0 })
	waitGoroutines(t, base+guestBase)
}

func TestHostAddressNotOnHost(t *testing.T) {
	f := newForwarder(t)
	// 192.0.2.1 (TEST-NET-1) is on no interface: the bind fails.
	err := f.Add(Rule{Name: "x", Proto: "tcp", HostIP: netip.MustParseAddr("192.0.2.1"), HostPort: 2222, GuestPort: 22}, fixed(loopback))
	if err == nil || !strings.Contains(err.Error(), "tcp 192.0.2.1:2222") || !strings.Contains(err.Error(), "no interface") {
		t.Errorf("Add on an address the host lacks: %v", err)
	}
}

func TestIPv6(t *testing.T) {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	ln.Close()
	// Host side on ::1, guest on IPv4: the forward does not care.
	g := startTCPGuest(t, "127.0.0.1", 0, echo)
	uguest := udpEcho(t, "127.0.0.1", 0, "")
	f := newForwarder(t)
	v6 := netip.MustParseAddr("::1")
	tcpHost := add(t, f, Rule{Name: "t", Proto: "tcp", HostIP: v6, GuestPort: int(g.addr.Port())}, fixed(loopback))
	udpHost := add(t, f, Rule{Name: "u", Proto: "udp", HostIP: v6, GuestPort: int(uguest.Port())}, fixed(loopback))
	if tcpHost.Addr() != v6 {
		t.Fatalf("listening on %v", tcpHost)
	}
	c, err := net.DialTCP("tcp6", nil, net.TCPAddrFromAddrPort(tcpHost))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("v6"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "v6" {
		t.Errorf("TCP over IPv6: %q, %v", buf, err)
	}
	uc, err := net.DialUDP("udp6", nil, net.UDPAddrFromAddrPort(udpHost))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	if got := exchangeUDP(t, uc, "v6", 5*time.Second); got != "v6" {
		t.Errorf("UDP over IPv6: %q", got)
	}
}
