package dnsfwd

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestForwardsUDPAndTCP(t *testing.T) {
	up := startUpstream(t, "127.0.0.1", 0, "10.0.0.1")
	f := startForwarder(t, Config{Upstreams: []string{up.String()}})
	if f.Addr().Port() == 0 || f.Addr().Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("Addr() = %v", f.Addr())
	}
	for _, network := range []string{"udp", "tcp"} {
		r, err := query(t, network, f.Addr(), "guest.example", 0)
		if err != nil {
			t.Fatalf("%s: %v", network, err)
		}
		if got := firstA(t, r); got != "10.0.0.1" {
			t.Errorf("%s: A = %s, want 10.0.0.1", network, got)
		}
		if r.Question[0].Name != "guest.example." {
			t.Errorf("%s: question %v", network, r.Question)
		}
	}
	if up.udp.Load() != 1 || up.tcp.Load() != 1 {
		t.Errorf("upstream saw udp=%d tcp=%d, want 1 and 1 (a TCP query goes upstream over TCP)", up.udp.Load(), up.tcp.Load())
	}
	if got, want := f.Stats(), (Stats{Queries: 2, Answered: 2}); got != want {
		t.Errorf("Stats() = %+v, want %+v", got, want)
	}
}

func TestIDsKeptUnderConcurrency(t *testing.T) {
	up := startUpstream(t, "127.0.0.1", 0, "10.0.0.1")
	f := startForwarder(t, Config{Upstreams: []string{up.String()}})
	c := &dns.Client{Net: "udp", Timeout: 3 * time.Second}
	co, err := c.Dial(f.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	// Many queries in flight on one socket: each answer must carry its
	// query's ID and name.
	const n = 64
	for i := range n {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn("q"+string(rune('a'+i%26))+".example"), dns.TypeA)
		m.Id = uint16(1000 + i)
		if err := co.WriteMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	seen := make(map[uint16]bool)
	co.SetReadDeadline(time.Now().Add(5 * time.Second))
	for range n {
		r, err := co.ReadMsg()
		if err != nil {
			t.Fatal(err)
		}
		i := int(r.Id) - 1000
		if i < 0 || i >= n || seen[r.Id] {
			t.Fatalf("unexpected ID %d", r.Id)
		}
		seen[r.Id] = true
		if want := dns.Fqdn("q" + string(rune('a'+i%26)) + ".example"); r.Question[0].Name != want {
			t.Errorf("ID %d answers %s, want %s", r.Id, r.Question[0].Name, want)
		}
	}
}

func TestDeadFirstUpstreamFallsToSecond(t *testing.T) {
	for _, tc := range []struct {
		name string
		dead func(testing.TB) string
	}{
		{"refused", deadAddr},
		{"timeout", blackhole},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startUpstream(t, "127.0.0.2", 0, "10.0.0.2")
			f := startForwarder(t, Config{
				Upstreams: []string{tc.dead(t), up.String()},
				Timeout:   200 * time.Millisecond,
			})
			for _, network := range []string{"udp", "tcp"} {
				r, err := query(t, network, f.Addr(), "example.org", 0)
				if err != nil {
					t.Fatalf("%s: %v", network, err)
				}
				if got := firstA(t, r); got != "10.0.0.2" {
					t.Errorf("%s: A = %s, want 10.0.0.2", network, got)
				}
			}
			if s := f.Stats(); s.Answered != 2 || s.Failed != 0 {
				t.Errorf("Stats() = %+v", s)
			}
		})
	}
}

func TestServfailFromUpstreamTriesNext(t *testing.T) {
	bad := startUpstream(t, "127.0.0.1", 0, "10.0.0.9", withRcode(dns.RcodeServerFailure))
	refused := startUpstream(t, "127.0.0.1", 0, "10.0.0.9", withRcode(dns.RcodeRefused))
	good := startUpstream(t, "127.0.0.1", 0, "10.0.0.3")
	f := startForwarder(t, Config{Upstreams: []string{bad.String(), refused.String(), good.String()}})
	r, err := query(t, "udp", f.Addr(), "example.org", 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := firstA(t, r); got != "10.0.0.3" {
		t.Errorf("A = %s, want 10.0.0.3", got)
	}

	// Nothing better: the upstream's own SERVFAIL is relayed.
	f2 := startForwarder(t, Config{Upstreams: []string{refused.String(), bad.String()}})
	r, err = query(t, "udp", f2.Addr(), "example.org", 0)
	if err != nil {
		t.Fatal(err)
	}
	if r.Rcode != dns.RcodeRefused {
		t.Errorf("rcode %s, want the first upstream's REFUSED", dns.RcodeToString[r.Rcode])
	}
}

func TestAllUpstreamsDeadServfail(t *testing.T) {
	f := startForwarder(t, Config{
		Upstreams: []string{deadAddr(t), blackhole(t)},
		Timeout:   150 * time.Millisecond,
	})
	for _, network := range []string{"udp", "tcp"} {
		for _, edns := range []uint16{0, 1232} {
			start := time.Now()
			r, err := query(t, network, f.Addr(), "example.org", edns)
			if err != nil {
				t.Fatalf("%s: %v", network, err)
			}
			if r.Rcode != dns.RcodeServerFailure {
				t.Errorf("%s: rcode %s, want SERVFAIL", network, dns.RcodeToString[r.Rcode])
			}
			if len(r.Question) != 1 || r.Question[0].Name != "example.org." {
				t.Errorf("%s: SERVFAIL without the question: %v", network, r)
			}
			if (r.IsEdns0() != nil) != (edns > 0) {
				t.Errorf("%s: EDNS in answer %v, in query %v", network, r.IsEdns0() != nil, edns > 0)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("%s: SERVFAIL took %v", network, d)
			}
		}
	}
	if got, want := f.Stats(), (Stats{Queries: 4, Failed: 4}); got != want {
		t.Errorf("Stats() = %+v, want %+v", got, want)
	}
}

func TestTruncatedAnswerRetriedOverTCP(t *testing.T) {
	up := startUpstream(t, "127.0.0.1", 0, "10.1.0.1", withBig)
	f := startForwarder(t, Config{Upstreams: []string{up.String()}})

	// A guest offering 4096 bytes gets the whole answer over UDP, though
	// the upstream truncated its UDP answer at 512 (as servers capping UDP
	// answers do).
	r, err := query(t, "udp", f.Addr(), "big.example", 4096)
	if err != nil {
		t.Fatal(err)
	}
	if r.Truncated || len(r.Answer) != 60 {
		t.Errorf("EDNS 4096: TC=%v with %d answers, want the full 60", r.Truncated, len(r.Answer))
	}
	if up.udp.Load() != 1 || up.tcp.Load() != 1 {
		t.Errorf("upstream saw udp=%d tcp=%d, want a UDP try then TCP", up.udp.Load(), up.tcp.Load())
	}

	// Without EDNS the answer must fit 512 bytes: TC set, then the guest's
	// own TCP retry gets everything.
	r, err = query(t, "udp", f.Addr(), "big.example", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Truncated {
		t.Errorf("no EDNS: TC not set on a %d-answer reply", len(r.Answer))
	}
	r.Compress = true // as sent
	if b, _ := r.Pack(); len(b) > 512 {
		t.Errorf("no EDNS: %d-byte UDP answer", len(b))
	}
	r, err = query(t, "tcp", f.Addr(), "big.example", 0)
	if err != nil {
		t.Fatal(err)
	}
	if r.Truncated || len(r.Answer) != 60 {
		t.Errorf("TCP: TC=%v with %d answers", r.Truncated, len(r.Answer))
	}
}

func TestParseResolvConf(t *testing.T) {
	conf := `# generated by NetworkManager
; another comment style
search lan example.com
domain lan
options edns0 trust-ad ndots:2
nameserver 127.0.0.53
nameserver	1.1.1.1   # trailing comment
nameserver 2606:4700:4700::1111
nameserver fe80::1%eth0
nameserver 1.1.1.1
nameserver not-an-address
nameserver
  nameserver 9.9.9.9
#nameserver 8.8.8.8
sortlist 130.155.160.0/255.255.240.0
nameserver 10.0.0.1;comment
`
	got := ParseResolvConf([]byte(conf))
	want := []string{
		"127.0.0.53:53",
		"1.1.1.1:53",
		"[2606:4700:4700::1111]:53",
		"[fe80::1%eth0]:53",
		"9.9.9.9:53",
		"10.0.0.1:53",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseResolvConf:\n got %q\nwant %q", got, want)
	}
	if got := ParseResolvConf([]byte("search lan\noptions rotate\n")); len(got) != 0 {
		t.Errorf("no nameserver lines: %q", got)
	}
}

func TestNormalizeUpstream(t *testing.T) {
	for in, want := range map[string]string{
		"1.1.1.1:53":    "1.1.1.1:53",
		"1.1.1.1":       "1.1.1.1:53",
		" 9.9.9.9:5353": "9.9.9.9:5353",
		"::1":           "[::1]:53",
		"[::1]:5300":    "[::1]:5300",
	} {
		got, err := normalizeUpstream(in)
		if err != nil || got != want {
			t.Errorf("normalizeUpstream(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "dns.google", "1.1.1.1:0", "1.1.1.1:x"} {
		if _, err := normalizeUpstream(bad); err == nil {
			t.Errorf("normalizeUpstream(%q): no error", bad)
		}
	}
	if _, err := Start(Config{Listen: netip.MustParseAddrPort("127.0.0.1:0"), Upstreams: []string{"dns.google"}}); err == nil || !strings.Contains(err.Error(), "dns.google") {
		t.Errorf("Start with a bad upstream: %v", err)
	}
}

// withResolvConfPort makes resolv.conf nameservers use port, as if the
// fake upstreams listened on 53.
func withResolvConfPort(t *testing.T, port uint16) {
	old, oldEvery := resolvConfPort, resolvConfCheckEvery
	resolvConfPort, resolvConfCheckEvery = port, 0
	t.Cleanup(func() { resolvConfPort, resolvConfCheckEvery = old, oldEvery })
}

func TestResolvConfReloadedOnChange(t *testing.T) {
	a := startUpstream(t, "127.0.0.2", 0, "10.0.0.2")
	b := startUpstream(t, "127.0.0.3", a.addr.Port(), "10.0.0.3")
	withResolvConfPort(t, a.addr.Port())

	path := filepath.Join(t.TempDir(), "resolv.conf")
	write := func(content string, mtime time.Time) {
		t.Helper()
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		// Set the time: two writes within one clock tick keep the mtime.
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Now().Add(-time.Hour)
	write("# first\nnameserver 127.0.0.2\n", t0)

	f := startForwarder(t, Config{ResolvConf: path})
	ask := func() string {
		t.Helper()
		r, err := query(t, "udp", f.Addr(), "host.example", 0)
		if err != nil {
			t.Fatal(err)
		}
		return firstA(t, r)
	}
	if got := ask(); got != "10.0.0.2" {
		t.Fatalf("before the change: %s, want 10.0.0.2", got)
	}

	// Same length, new content and mtime: the host switched resolvers.
	write("# first\nnameserver 127.0.0.3\n", t0.Add(time.Second))
	if got := ask(); got != "10.0.0.3" {
		t.Errorf("after the change: %s, want 10.0.0.3", got)
	}
	if got := f.Upstreams(); !reflect.DeepEqual(got, []string{b.String()}) {
		t.Errorf("Upstreams() = %q", got)
	}

	// A file without nameservers (mid-rewrite, or broken) keeps the old ones.
	write("search lan\n", t0.Add(2*time.Second))
	if got := ask(); got != "10.0.0.3" {
		t.Errorf("after an unusable file: %s, want 10.0.0.3", got)
	}

	// A file replaced by rename (how resolvconf and NetworkManager write).
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte("nameserver 127.0.0.2\nnameserver 127.0.0.3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	if got := ask(); got != "10.0.0.2" {
		t.Errorf("after a rename: %s, want 10.0.0.2", got)
	}

	// A file gone for a moment keeps them too.
	os.Remove(path)
	if got := ask(); got != "10.0.0.2" {
		t.Errorf("with no file: %s, want 10.0.0.2", got)
	}
}

func TestResolvConfCheckedAtMostEverySecond(t *testing.T) {
	a := startUpstream(t, "127.0.0.2", 0, "10.0.0.2")
	startUpstream(t, "127.0.0.3", a.addr.Port(), "10.0.0.3")
	withResolvConfPort(t, a.addr.Port())
	resolvConfCheckEvery = time.Hour

	path := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(path, []byte("nameserver 127.0.0.2\n"), 0o644)
	f := startForwarder(t, Config{ResolvConf: path})
	os.WriteFile(path, []byte("nameserver 127.0.0.3\nnameserver 127.0.0.2\n"), 0o644)
	if got := f.upstreams(); !reflect.DeepEqual(got, []string{a.String()}) {
		t.Errorf("re-read before the interval: %q", got)
	}
}

func TestResolvConfErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.conf")
	os.WriteFile(empty, []byte("# nothing here\nsearch lan\n"), 0o644)
	_, err := Start(Config{Listen: netip.MustParseAddrPort("127.0.0.1:0"), ResolvConf: empty, Logger: quietLogger()})
	if err == nil || !strings.Contains(err.Error(), empty) || !strings.Contains(err.Error(), "no usable nameserver") {
		t.Errorf("resolv.conf without nameservers: %v", err)
	}
	missing := filepath.Join(dir, "missing.conf")
	_, err = Start(Config{Listen: netip.MustParseAddrPort("127.0.0.1:0"), ResolvConf: missing, Logger: quietLogger()})
	if err == nil || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), "Config.Upstreams") {
		t.Errorf("missing resolv.conf: %v", err)
	}
	// The sockets of a failed Start are released: the same port binds again.
	ap := freeListenAddr(t, "127.0.0.10")
	if _, err := Start(Config{Listen: ap, ResolvConf: empty, Logger: quietLogger()}); err == nil {
		t.Fatal("no error")
	}
	f := startForwarder(t, Config{Listen: ap, Upstreams: []string{"127.0.0.1:53"}})
	f.Close()
}

func TestSelfAsUpstreamIgnored(t *testing.T) {
	up := startUpstream(t, "127.0.0.1", 0, "10.0.0.1")
	// Listen on a known port so the upstream list can name it.
	ap := freeListenAddr(t, "127.0.0.11")
	self := ap.String()
	f := startForwarder(t, Config{Listen: ap, Upstreams: []string{self, up.String()}})
	if got := f.Upstreams(); !reflect.DeepEqual(got, []string{up.String()}) {
		t.Errorf("Upstreams() = %q, want only %s", got, up)
	}
	f.Close()
	if _, err := Start(Config{Listen: ap, Upstreams: []string{self}, Logger: quietLogger()}); err == nil {
		t.Error("only itself as upstream: no error")
	}
}

func TestPortTaken(t *testing.T) {
	for _, proto := range []string{"udp", "tcp"} {
		t.Run(proto, func(t *testing.T) {
			var ap netip.AddrPort
			if proto == "udp" {
				pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer pc.Close()
				ap = netip.MustParseAddrPort(pc.LocalAddr().String())
			} else {
				ln, err := net.Listen("tcp4", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				ap = netip.MustParseAddrPort(ln.Addr().String())
			}
			_, err := Start(Config{Listen: ap, Upstreams: []string{"127.0.0.1:53"}, Logger: quietLogger()})
			if err == nil {
				t.Fatal("Start on a taken port: no error")
			}
			for _, want := range []string{proto, ap.String(), "already in use"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			if !isAddrInUse(err) {
				t.Errorf("error %v does not wrap EADDRINUSE", err)
			}
		})
	}
	if _, err := Start(Config{Upstreams: []string{"127.0.0.1:53"}}); err == nil {
		t.Error("Start without Listen: no error")
	}
}

func TestInFlightCap(t *testing.T) {
	hole := blackhole(t)
	f := startForwarder(t, Config{
		Upstreams:   []string{hole},
		Timeout:     10 * time.Second,
		MaxInFlight: 2,
	})
	c := &dns.Client{Net: "udp", Timeout: 3 * time.Second}
	co, err := c.Dial(f.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	for i := range 5 {
		m := new(dns.Msg)
		m.SetQuestion("flood.example.", dns.TypeA)
		m.Id = uint16(i)
		co.WriteMsg(m)
	}
	// Two are stuck upstream, three are dropped.
	deadline := time.Now().Add(5 * time.Second)
	for f.Stats().Dropped < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("Stats() = %+v, want 3 dropped", f.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if s := f.Stats(); s.Queries != 5 || s.Dropped != 3 || s.Answered+s.Failed != 0 {
		t.Errorf("Stats() = %+v", s)
	}

	// Close does not wait out the 10s upstream timeout.
	start := time.Now()
	if err := f.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Close took %v with queries in flight", d)
	}
}

func TestTCPConnectionCap(t *testing.T) {
	up := startUpstream(t, "127.0.0.1", 0, "10.0.0.1")
	f := startForwarder(t, Config{Upstreams: []string{up.String()}, MaxInFlight: 1})
	idle, err := net.Dial("tcp", f.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	// The idle connection holds the only slot: a second one waits in the
	// backlog and gets no answer.
	m := new(dns.Msg)
	m.SetQuestion("a.example.", dns.TypeA)
	c := &dns.Client{Net: "tcp", Timeout: 300 * time.Millisecond}
	if _, _, err := c.Exchange(m, f.Addr().String()); err == nil {
		t.Error("second TCP connection served while the cap was used")
	}
	idle.Close()
	c.Timeout = 3 * time.Second
	if _, _, err := c.Exchange(m, f.Addr().String()); err != nil {
		t.Errorf("after the idle connection closed: %v", err)
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	base := runtime.NumGoroutine()
	up := startUpstream(t, "127.0.0.1", 0, "10.0.0.1")
	f, err := Start(Config{Listen: netip.MustParseAddrPort("127.0.0.1:0"), Upstreams: []string{up.String(), blackhole(t)}, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			for _, network := range []string{"udp", "tcp"} {
				if _, err := query(t, network, f.Addr(), "x.example", 0); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	idle, _ := net.Dial("tcp", f.Addr().String()) // an open TCP client
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	idle.Close()
	up.udpServer.Shutdown()
	up.tcpServer.Shutdown()
	waitGoroutines(t, base)
}

func TestAnswerForAnotherQuestionIgnored(t *testing.T) {
	evil := startUpstream(t, "127.0.0.1", 0, "10.6.6.6", withWrongName)
	good := startUpstream(t, "127.0.0.1", 0, "10.0.0.1")
	f := startForwarder(t, Config{Upstreams: []string{evil.String(), good.String()}})
	r, err := query(t, "udp", f.Addr(), "bank.example", 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := firstA(t, r); got != "10.0.0.1" {
		t.Errorf("A = %s: an answer to another question was relayed", got)
	}
	// Dns 0x20: a change of case only is the same question.
	r, err = query(t, "udp", f.Addr(), "BaNk.ExAmPlE", 0)
	if err != nil || r.Question[0].Name != "BaNk.ExAmPlE." {
		t.Errorf("mixed case: %v, %v", r, err)
	}
}

func TestListenAddressNotOnHost(t *testing.T) {
	// 192.0.2.1 (TEST-NET-1) is on no interface: the bind fails, nothing
	// is sent.
	_, err := Start(Config{Listen: netip.MustParseAddrPort("192.0.2.1:0"), Upstreams: []string{"127.0.0.1:53"}, Logger: quietLogger()})
	if err == nil || !strings.Contains(err.Error(), "no interface on this host has that address") {
		t.Errorf("Start on an address the host lacks: %v", err)
	}
}

func TestIPv6(t *testing.T) {
	up := startUpstream(t, "127.0.0.1", 0, "10.0.0.1")
	f, err := Start(Config{Listen: netip.MustParseAddrPort("[::1]:0"), Upstreams: []string{up.String()}, Logger: testLogger(t)})
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer f.Close()
	for _, network := range []string{"udp", "tcp"} {
		r, err := query(t, network, f.Addr(), "v6.example", 0)
		if err != nil {
			t.Fatalf("%s: %v", network, err)
		}
		if got := firstA(t, r); got != "10.0.0.1" {
			t.Errorf("%s: A = %s", network, got)
		}
	}
}
