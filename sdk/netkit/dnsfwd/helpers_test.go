package dnsfwd

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fakeUpstream is a DNS server on loopback answering every A query with
// one address (or many, when big), counting queries per transport.
type fakeUpstream struct {
	addr      netip.AddrPort
	answer    netip.Addr
	big       bool // answer with 60 A records, more than 512 bytes, and truncate UDP answers at 512 whatever the EDNS size
	rcode     int  // answer with this rcode instead
	wrongName bool // answer for another name, as a spoofed packet might
	udp, tcp  atomic.Int64
	udpServer *dns.Server
	tcpServer *dns.Server
}

func (u *fakeUpstream) String() string { return u.addr.String() }

// startUpstream serves on ip:port (port 0: a free one for UDP and TCP).
func startUpstream(tb testing.TB, ip string, port uint16, answer string, opts ...func(*fakeUpstream)) *fakeUpstream {
	tb.Helper()
	u := &fakeUpstream{answer: netip.MustParseAddr(answer)}
	for _, o := range opts {
		o(u)
	}
	var (
		pc  *net.UDPConn
		ln  *net.TCPListener
		err error
	)
	for range 20 {
		pc, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), port)))
		if err != nil {
			tb.Fatal(err)
		}
		ap := pc.LocalAddr().(*net.UDPAddr).AddrPort()
		u.addr = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		ln, err = net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(u.addr))
		if err == nil {
			break
		}
		pc.Close()
		if port != 0 {
			tb.Fatal(err)
		}
	}
	if err != nil {
		tb.Fatal(err)
	}
	h := dns.HandlerFunc(u.serve)
	u.udpServer = &dns.Server{PacketConn: pc, Handler: h}
	u.tcpServer = &dns.Server{Listener: ln, Handler: h}
	for _, s := range []*dns.Server{u.udpServer, u.tcpServer} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go s.ActivateAndServe()
		<-started
	}
	tb.Cleanup(func() {
		u.udpServer.Shutdown()
		u.tcpServer.Shutdown()
	})
	return u
}

func withWrongName(u *fakeUpstream) { u.wrongName = true }
func withBig(u *fakeUpstream)       { u.big = true }
func withRcode(rc int) func(*fakeUpstream) {
	return func(u *fakeUpstream) { u.rcode = rc }
}

func (u *fakeUpstream) serve(w dns.ResponseWriter, r *dns.Msg) {
	_, overTCP := w.RemoteAddr().(*net.TCPAddr)
	if overTCP {
		u.tcp.Add(1)
	} else {
		u.udp.Add(1)
	}
	m := new(dns.Msg)
	m.SetReply(r)
	if u.wrongName {
		m.Question[0].Name = "evil.example."
	}
	if u.rcode != 0 {
		m.Rcode = u.rcode
		w.WriteMsg(m)
		return
	}
	n := 1
	if u.big {
		n = 60
	}
	for _, q := range r.Question {
		if q.Qtype != dns.TypeA {
			continue
		}
		for i := range n {
			ip := u.answer.AsSlice()
			ip[3] += byte(i)
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A:   ip,
			})
		}
	}
	if !overTCP {
		size := dns.MinMsgSize
		if opt := r.IsEdns0(); opt != nil && !u.big {
			size = int(opt.UDPSize())
		}
		m.Truncate(size)
	}
	w.WriteMsg(m)
}

// deadUDP returns a loopback address where nothing listens: UDP queries
// get ICMP port unreachable, TCP connections are refused.
func deadAddr(tb testing.TB) string {
	tb.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

// blackhole returns an address that accepts UDP queries and never
// answers them.
func blackhole(tb testing.TB) string {
	tb.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().String()
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testLogger logs through t.Log, so failures show what the forwarder said.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p[:len(p)-1]))
	return len(p), nil
}

func startForwarder(tb testing.TB, cfg Config) *Forwarder {
	tb.Helper()
	if !cfg.Listen.IsValid() {
		cfg.Listen = netip.MustParseAddrPort("127.0.0.1:0")
	}
	if cfg.Logger == nil {
		if t, ok := tb.(*testing.T); ok {
			cfg.Logger = testLogger(t)
		} else {
			cfg.Logger = quietLogger()
		}
	}
	f, err := Start(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { f.Close() })
	return f
}

// query asks addr for name's A records over network.
func query(tb testing.TB, network string, addr netip.AddrPort, name string, edns uint16) (*dns.Msg, error) {
	tb.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	m.Id = 0xbeef
	if edns > 0 {
		m.SetEdns0(edns, false)
	}
	c := &dns.Client{Net: network, Timeout: 3 * time.Second, UDPSize: 65535}
	r, _, err := c.Exchange(m, addr.String())
	if err != nil {
		return nil, err
	}
	if r.Id != m.Id {
		return nil, fmt.Errorf("answer has ID %#x, query had %#x", r.Id, m.Id)
	}
	return r, nil
}

func firstA(tb testing.TB, r *dns.Msg) string {
	tb.Helper()
	if r.Rcode != dns.RcodeSuccess {
		tb.Fatalf("rcode %s, want NOERROR", dns.RcodeToString[r.Rcode])
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A.String()
		}
	}
	tb.Fatalf("no A record in %v", r)
	return ""
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

func isAddrInUse(err error) bool { return errors.Is(err, syscall.EADDRINUSE) }

// freeListenAddr returns an address on ip whose port is free for both UDP
// and TCP right now. Tests pass an address no other test uses, so the
// port cannot be taken in between by another test's client socket.
func freeListenAddr(tb testing.TB, ip string) netip.AddrPort {
	tb.Helper()
	for range 20 {
		pc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(ip), 0)))
		if err != nil {
			tb.Fatal(err)
		}
		ap := pc.LocalAddr().(*net.UDPAddr).AddrPort()
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(ap))
		pc.Close()
		if err == nil {
			ln.Close()
			return ap
		}
	}
	tb.Fatal("no free port")
	return netip.AddrPort{}
}
