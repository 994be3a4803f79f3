// Package routedtest runs the tests of routed network plugins where they
// may set up their network: in a network namespace (and mount namespace)
// of the test process's own, so the plugin's TAP, nftables table, sysctls
// and DNS forwarder never touch the host's. It also plays guests (network
// namespaces behind the plugin's sockets, or behind the TAPs of its kernel
// fast path, opened by name as QEMU opens them) and the outside world.
package routedtest

import (
	"context"
	"fmt"
	"io"
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

	"github.com/google/nftables"
	"github.com/miekg/dns"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/host"
	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"github.com/anka-net/anka/sdk/netkit/lan/lantest"
)

// envIsolated is set in the test process re-executed in its own
// namespaces.
const envIsolated = "ANKA_ROUTEDTEST_ISOLATED"

// UpstreamDNS is where the test's resolv.conf points (a loopback
// resolver, as systemd-resolved's 127.0.0.53 on a real host); ServeDNS
// answers there.
const UpstreamDNS = "127.0.0.1"

// Main is a plugin test's TestMain: as root, with /dev/net/tun and
// unshare(1), it runs the tests again in new network and mount
// namespaces, with loopback up and a private /etc/resolv.conf naming
// UpstreamDNS; otherwise it runs them here and Isolated reports false.
func Main(m *testing.M) {
	if os.Getenv(envIsolated) == "" && canIsolate() {
		os.Exit(frameiotest.RerunIsolated(envIsolated))
	}
	if !Isolated() {
		os.Exit(m.Run())
	}
	resolv, err := setUpNamespace()
	if err != nil {
		fmt.Fprintf(os.Stderr, "routedtest: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	os.Remove(resolv)
	os.Exit(code)
}

func canIsolate() bool {
	if os.Geteuid() != 0 {
		return false
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return false
	}
	for _, tool := range []string{"unshare", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			return false
		}
	}
	return true
}

// setUpNamespace brings loopback up and returns the resolv.conf it
// mounted.
func setUpNamespace() (string, error) {
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return "", fmt.Errorf("ip link set lo up: %v: %s", err, out)
	}
	// The plugin's DNS forwarder reads /etc/resolv.conf: in this mount
	// namespace only, it names the test's resolver.
	f, err := os.CreateTemp("", "routedtest-resolv-")
	if err != nil {
		return "", err
	}
	fmt.Fprintf(f, "# routedtest\nnameserver %s\n", UpstreamDNS)
	f.Close()
	if err := syscall.Mount(f.Name(), "/etc/resolv.conf", "", syscall.MS_BIND, ""); err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("bind-mounting a resolv.conf for the tests: %w", err)
	}
	return f.Name(), nil
}

// Isolated reports whether the tests run in namespaces of their own,
// where a plugin may set up its network.
func Isolated() bool { return os.Getenv(envIsolated) != "" }

// Skip skips t unless the test process runs in its own namespaces (see
// Main) with what guests need.
func Skip(t testing.TB) {
	t.Helper()
	if !Isolated() {
		if os.Getenv("ANKA_E2E") != "" && os.Geteuid() == 0 {
			t.Fatal("the tests did not get namespaces of their own: call routedtest.Main from TestMain, and install unshare (util-linux) and iproute2")
		}
		t.Skip("sets up a network: needs root, /dev/net/tun, unshare and ip (run by routedtest.Main in namespaces of its own)")
	}
	lantest.Skip(t)
}

// Quiet is a logger for plugins whose logs are noise in a test.
var Quiet = slog.New(slog.DiscardHandler)

// TestLogger logs to t until it ends.
func TestLogger(t testing.TB) *slog.Logger {
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

var _ io.Writer = writerFunc(nil)

// QEMU is what the core offers for a QEMU VM: a TAP (the plugin takes it
// for its fast path when it can), vhost-user or a datagram socket.
var QEMU = []sdk.EndpointKind{sdk.EndpointTAP, sdk.EndpointVhostUser, sdk.EndpointDgram}

// Sockets is what the core offers a hypervisor it does not launch.
var Sockets = []sdk.EndpointKind{sdk.EndpointDgram, sdk.EndpointStream}

// Attach attaches a VM with card as a QEMU VM (offering QEMU's endpoints)
// and returns a guest namespace behind its endpoint: behind its TAP, on
// the fast path, relayed as QEMU relays it.
func Attach(t testing.TB, p sdk.NetworkPlugin, vm sdk.VMRef, card sdk.Card) (*lantest.Guest, sdk.Endpoint) {
	t.Helper()
	return AttachWith(t, p, vm, card, QEMU)
}

// AttachWith is Attach offering kinds.
func AttachWith(t testing.TB, p sdk.NetworkPlugin, vm sdk.VMRef, card sdk.Card, kinds []sdk.EndpointKind) (*lantest.Guest, sdk.Endpoint) {
	t.Helper()
	resp, err := p.Attach(t.Context(), &sdk.AttachRequest{VM: vm, Card: card, RunDir: frameiotest.TempDir(t), Endpoints: kinds})
	if err != nil {
		t.Fatalf("Attach of %s: %v", vm.Name, err)
	}
	ep := resp.Endpoint
	return NewGuest(t, ep), ep
}

// NewGuest is a guest namespace behind an endpoint the plugin handed out.
func NewGuest(t testing.TB, ep sdk.Endpoint) *lantest.Guest {
	t.Helper()
	return lantest.NewGuest(t, Plug(t, ep))
}

// Plug is the endpoint as lantest takes it.
func Plug(t testing.TB, ep sdk.Endpoint) lantest.Plug {
	t.Helper()
	mac, err := net.ParseMAC(ep.MAC)
	if err != nil {
		t.Fatal(err)
	}
	return lantest.Plug{Kind: frameio.Kind(ep.Kind), PluginPath: ep.PluginPath, VMPath: ep.VMPath, TAP: ep.TAP, MAC: mac, MTU: ep.MTU}
}

// Outside is a namespace playing the world beyond the host: a veth joins
// it to the test's namespace, which is the host (host side OutsideHost,
// its side OutsideAddr). It has no route back to the guests, so a guest
// reaches it only through NAT.
func Outside(t testing.TB) *frameiotest.Netns {
	t.Helper()
	ns := frameiotest.NewNetns(t)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("link", "add", "rt-out0", "type", "veth", "peer", "name", "eth0", "netns", ns.Name)
	t.Cleanup(func() { exec.Command("ip", "link", "del", "rt-out0").Run() })
	run("addr", "add", OutsideHost.String()+"/24", "dev", "rt-out0")
	run("link", "set", "rt-out0", "up")
	ns.IP(t, "addr", "add", OutsideAddr.String()+"/24", "dev", "eth0")
	ns.IP(t, "link", "set", "eth0", "up")
	ns.IP(t, "link", "set", "lo", "up")
	return ns
}

// Addresses of Outside's link.
var (
	OutsideHost = netip.MustParseAddr("10.99.0.1")
	OutsideAddr = netip.MustParseAddr("10.99.0.2")
)

// ServeDNS answers A queries for name with ip on UpstreamDNS:53 (UDP)
// until t ends: the host's resolver as the plugin's forwarder sees it.
func ServeDNS(t testing.TB, name string, ip netip.Addr) {
	t.Helper()
	pc, err := net.ListenPacket("udp4", UpstreamDNS+":53")
	if err != nil {
		t.Fatalf("the test's DNS server: %v", err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		switch q := r.Question; {
		case len(q) != 1 || !strings.EqualFold(q[0].Name, dns.Fqdn(name)):
			m.Rcode = dns.RcodeNameError
		case q[0].Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: ip.AsSlice()})
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
}

// LinkExists reports whether the test's namespace has interface name.
func LinkExists(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}

// TableExists reports whether nftables table name (family inet) exists
// in the test's namespace.
func TableExists(t testing.TB, name string) bool {
	t.Helper()
	return TableOfExists(t, nftables.TableFamilyINet, name)
}

// BridgeTableExists reports whether nftables table name of family bridge
// (the fast path's anti-spoofing) exists in the test's namespace.
func BridgeTableExists(t testing.TB, name string) bool {
	t.Helper()
	return TableOfExists(t, nftables.TableFamilyBridge, name)
}

// TableOfExists reports whether nftables table name of family exists in
// the test's namespace.
func TableOfExists(t testing.TB, family nftables.TableFamily, name string) bool {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	ts, err := c.ListTablesOfFamily(family)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range ts {
		if tb.Name == name {
			return true
		}
	}
	return false
}

// BuildBinary builds the plugin in dir (a main package) as
// anka-net-<typ>.
func BuildBinary(t testing.TB, dir, typ string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), sdk.BinaryName(typ))
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// BinaryLauncher builds the plugin in the test's package folder as
// anka-net-<typ> (skipped with -short, and outside a test namespace) and
// returns how anka would run it: its host config and a launch that waits
// up to 30 s. A test that fails logs the plugin's log.
func BinaryLauncher(t *testing.T, typ, logLevel string) (host.Config, func() *host.Plugin) {
	t.Helper()
	Skip(t)
	if testing.Short() {
		t.Skip("builds the plugin")
	}
	cfg := host.Config{Path: BuildBinary(t, ".", typ), SocketDir: frameiotest.TempDir(t), DataDir: t.TempDir(), LogLevel: logLevel, Logger: Quiet}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(cfg.DataDir, "plugin.log"))
			t.Logf("plugin log:\n%s", b)
		}
	})
	return cfg, func() *host.Plugin {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		pl, err := host.Launch(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return pl
	}
}
