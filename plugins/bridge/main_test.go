package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"github.com/anka-net/anka/sdk/netkit/lan/lantest"
)

// envIsolated is set in the test process re-executed in namespaces of its
// own.
const envIsolated = "ANKA_BRIDGE_TEST_ISOLATED"

// TestMain runs the tests again in new network and mount namespaces when
// it can (root, unshare, ip): the tests bridge interfaces, switch
// offloads and set default routes, never on the host's own.
func TestMain(m *testing.M) {
	for _, a := range os.Args[1:] {
		if strings.HasPrefix(a, "-test.fuzzworker") {
			os.Exit(m.Run()) // a fuzz worker needs no namespace, and its coordinator talks to it over inherited pipes
		}
	}
	if os.Getenv(envIsolated) == "" && canIsolate() {
		os.Exit(frameiotest.RerunIsolated(envIsolated))
	}
	if isolated() {
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "ip link set lo up: %v: %s\n", err, out)
			os.Exit(1)
		}
		// sysfs shows the interfaces of the namespace that mounted it:
		// mount it again here (our own mount namespace), as ip netns exec
		// does, so /sys/class/net lists this namespace's.
		if err := syscall.Mount("sysfs", "/sys", "sysfs", 0, ""); err != nil {
			fmt.Fprintf(os.Stderr, "mounting sysfs for the test's namespace: %v\n", err)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

func canIsolate() bool {
	if os.Geteuid() != 0 {
		return false
	}

	for _, tool := range []string{"unshare", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			return false
		}
	}
	return true
}

func isolated() bool { return os.Getenv(envIsolated) != "" }

// skipUnlessIsolated skips tests that bridge interfaces unless the test
// process has namespaces of its own and what guests need.
func skipUnlessIsolated(t testing.TB) {
	t.Helper()
	if !isolated() {
		if os.Getenv("ANKA_E2E") != "" && os.Geteuid() == 0 {
			t.Fatal("the tests did not get namespaces of their own: install unshare (util-linux) and iproute2")
		}
		t.Skip("bridges interfaces: needs root, unshare and ip (TestMain runs the tests in namespaces of their own)")
	}
	lantest.Skip(t)
}

var quiet = slog.New(slog.DiscardHandler)

// testLogger logs to t until it ends.
func testLogger(t testing.TB) *slog.Logger {
	var mu sync.Mutex
	done := false
	t.Cleanup(func() { mu.Lock(); done = true; mu.Unlock() })
	return slog.New(slog.NewTextHandler(writerFunc(func(b []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		if !done {
			t.Log(strings.TrimRight(string(b), "\n"))
		}
		return len(b), nil
	}), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// The LAN of the tests: lanHost is the LAN namespace's address (DHCP
// server, web server, router); hostAddr the test's namespace's, which is
// the host the plugin runs on.
const (
	uplinkIf   = "uplink0"
	lanHost    = "10.77.0.1"
	hostAddr   = "10.77.0.2"
	rangeFirst = "10.77.0.100"
	rangeLast  = "10.77.0.150"
	lanPage    = "hello from the LAN\n"
)

// testLAN is a namespace "lan" joined by a veth to the test's namespace,
// whose end (uplinkIf) carries the default route and is the interface
// the VMs are bridged to. With DHCP it runs dnsmasq and busybox httpd.
type testLAN struct {
	ns     *frameiotest.Netns
	dir    string
	leases string
}

func newLAN(t *testing.T, dhcp bool) *testLAN {
	t.Helper()
	skipUnlessIsolated(t)
	l := &testLAN{ns: frameiotest.NewNetns(t), dir: t.TempDir()}
	l.leases = filepath.Join(l.dir, "leases")
	run(t, "ip", "link", "add", uplinkIf, "type", "veth", "peer", "name", "eth0", "netns", l.ns.Name)
	t.Cleanup(func() { exec.Command("ip", "link", "del", uplinkIf).Run() })
	run(t, "ip", "addr", "add", hostAddr+"/24", "dev", uplinkIf)
	run(t, "ip", "link", "set", uplinkIf, "up")
	run(t, "ip", "route", "add", "default", "via", lanHost)
	l.ns.IP(t, "link", "set", "lo", "up")
	l.ns.IP(t, "addr", "add", lanHost+"/24", "dev", "eth0")
	l.ns.IP(t, "link", "set", "eth0", "up")
	// The kernel reports the veth's link a moment after both ends are up
	// (later still on a loaded machine); the plugin refuses it until then.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(run(t, "ip", "-o", "link", "show", uplinkIf), "state UP") {
		if time.Now().After(deadline) {
			t.Fatalf("%s has no link 10 s after both ends came up: %s", uplinkIf, run(t, "ip", "-o", "link", "show", uplinkIf))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !dhcp {
		return l
	}
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		if os.Getenv("ANKA_E2E") != "" {
			t.Fatal("dnsmasq is missing: make deps installs dnsmasq-base")
		}
		t.Skip("needs dnsmasq (dnsmasq-base)")
	}
	www := filepath.Join(l.dir, "www")
	os.Mkdir(www, 0o755)
	os.WriteFile(filepath.Join(www, "index.html"), []byte(lanPage), 0o644)
	// A file larger than any merged packet: the guest fetches it through
	// the segmentation of what the veth's TSO hands the packet socket.
	big := make([]byte, 3<<20)
	for i := range big {
		big[i] = byte(i*7 + i>>9)
	}
	os.WriteFile(filepath.Join(www, "big.bin"), big, 0o644)
	// --no-ping: dnsmasq would wait 3 s before each offer to check the
	// address is free, which tests nothing of ours.
	l.background(t, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--port=0", "--interface=eth0",
		"--bind-interfaces", "--dhcp-range="+rangeFirst+","+rangeLast+",1h", "--no-ping",
		"--dhcp-leasefile="+l.leases, "--pid-file="+filepath.Join(l.dir, "dnsmasq.pid"))
	l.background(t, "busybox", "httpd", "-f", "-p", lanHost+":80", "-h", www)
	return l
}

// background runs a command in the LAN until the test ends.
func (l *testLAN) background(t *testing.T, name string, args ...string) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", l.ns.Name, name}, args...)...)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s in the LAN: %v", name, err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("%s in the LAN said:\n%s", name, out)
		}
	})
}

// exec runs a command in the LAN namespace.
func (l *testLAN) exec(name string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", l.ns.Name, name}, args...)...).CombinedOutput()
	return string(out), err
}

// reaches pings addr from the LAN host until it answers or within passes.
func (l *testLAN) reaches(addr string, within time.Duration) bool {
	return lantest.Ping(within, "ip", "netns", "exec", l.ns.Name, "busybox", "ping", "-c", "1", "-W", "1", addr)
}

// fetch gets url from the LAN host.
func (l *testLAN) fetch(url string) (string, error) {
	return l.exec("timeout", "10", "busybox", "wget", "-q", "-O", "-", url)
}

// leaseFile is dnsmasq's lease file: MAC -> address.
func (l *testLAN) leaseFile(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(l.leases)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		// expiry MAC IP hostname client-id
		if f := strings.Fields(line); len(f) >= 3 {
			m[f[1]] = f[2]
		}
	}
	return m
}

// sniffer records what reaches the LAN namespace's interface.
type sniffer struct {
	mu     sync.Mutex
	frames [][]byte
}

func (l *testLAN) sniff(t *testing.T) *sniffer {
	t.Helper()
	var port *frameio.PacketPort
	if err := l.ns.Run(func() (err error) {
		port, err = frameio.OpenPacket("eth0", frameio.PacketOptions{Logger: quiet})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	s := &sniffer{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := frameio.NewBatch(16, port.MTU())
		for {
			n, err := port.ReadBatch(b)
			s.mu.Lock()
			for i := range n {
				s.frames = append(s.frames, append([]byte(nil), b[i].Bytes()...))
			}
			s.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { port.Close(); <-done })
	return s
}

// from counts frames with source MAC mac whose IPv4 or ARP sender is ip.
func (s *sniffer) from(mac net.HardwareAddr, ip netip.Addr) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, f := range s.frames {
		if src, ok := sourceIPv4(f); ok && src == ip && string(f[6:12]) == string(mac) {
			n++
		}
	}
	return n
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// start makes a plugin over a fresh data folder, closed when t ends.
func start(t *testing.T, settings map[string]string) *Plugin {
	t.Helper()
	p, err := New(sdk.Env{DataDir: t.TempDir(), Settings: settings, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func vmRef(name string) sdk.VMRef { return sdk.VMRef{ID: "id-" + name, Name: name} }

func dyn(n byte) string { return fmt.Sprintf("02:a4:6b:00:20:%02x", n) }

func card(bridge string, n byte) sdk.Card {
	return sdk.Card{Type: typeName, Bridge: bridge, DynamicMAC: dyn(n)}
}

// attach attaches vm and puts a guest namespace behind its endpoint.
func attach(t *testing.T, p sdk.NetworkPlugin, vm sdk.VMRef, c sdk.Card, settings map[string]string) (*lantest.Guest, sdk.Endpoint) {
	t.Helper()
	resp, err := p.Attach(t.Context(), &sdk.AttachRequest{VM: vm, Card: c, RunDir: frameiotest.TempDir(t),
		Endpoints: []sdk.EndpointKind{sdk.EndpointDgram}, Settings: settings})
	if err != nil {
		t.Fatalf("Attach of %s: %v", vm.Name, err)
	}
	ep := resp.Endpoint
	mac, err := net.ParseMAC(ep.MAC)
	if err != nil {
		t.Fatal(err)
	}
	g := lantest.NewGuest(t, lantest.Plug{Kind: frameio.Kind(ep.Kind), PluginPath: ep.PluginPath, VMPath: ep.VMPath, MAC: mac, MTU: ep.MTU})
	return g, ep
}

func status(t *testing.T, p sdk.NetworkPlugin, vm sdk.VMRef) *sdk.StatusResponse {
	t.Helper()
	st, err := p.Status(t.Context(), &sdk.StatusRequest{VM: vm, Type: typeName})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// waitIP polls Status until it reports an IP or within passes.
func waitIP(t *testing.T, p sdk.NetworkPlugin, vm sdk.VMRef, within time.Duration) *sdk.StatusResponse {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st := status(t, p, vm)
		if st.IP != "" || time.Now().After(deadline) {
			return st
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func inRange(ip netip.Addr) bool {
	return !ip.Less(netip.MustParseAddr(rangeFirst)) && !netip.MustParseAddr(rangeLast).Less(ip)
}
