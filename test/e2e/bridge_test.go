package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

// bridgeLab is a LAN namespace with dnsmasq as its DHCP server and a web
// server, joined by a veth to the daemon's namespace, where the other end
// (lan0) is the interface VMs are bridged to; the default route goes
// through it, so `-b auto` picks it. decoy1..3 are other Ethernet
// interfaces there for the precedence checks.
type bridgeLab struct {
	*lab
	lanNS *frameiotest.Netns
}

const lanHost = "10.77.0.1"

func newBridgeLab(t *testing.T) *bridgeLab {
	t.Helper()
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Skip("needs dnsmasq (make deps installs dnsmasq-base)")
	}
	guestDir(t)
	h, n := frameiotest.NewNetns(t), frameiotest.NewNetns(t)
	h.IP(t, "link", "set", "lo", "up")
	h.IP(t, "link", "add", "lan0", "type", "veth", "peer", "name", "vl", "netns", n.Name)
	h.IP(t, "addr", "add", "10.77.0.2/24", "dev", "lan0")
	h.IP(t, "link", "set", "lan0", "up")
	h.IP(t, "route", "add", "default", "via", lanHost)
	for _, d := range []string{"decoy1", "decoy2", "decoy3"} {
		h.IP(t, "link", "add", d, "type", "veth", "peer", "name", d+"p")
		h.IP(t, "link", "set", d, "up")
		h.IP(t, "link", "set", d+"p", "up")
	}
	n.IP(t, "link", "set", "lo", "up")
	n.IP(t, "addr", "add", lanHost+"/24", "dev", "vl")
	n.IP(t, "link", "set", "vl", "up")
	// The kernel reports a veth's link a moment after both ends are up;
	// the bridge plugin refuses an interface without one.
	for _, d := range []string{"lan0", "decoy1", "decoy2", "decoy3"} {
		waitFor(t, d+"'s link", 10*time.Second, func() bool {
			return strings.Contains(h.IP(t, "-o", "link", "show", d), "state UP")
		})
	}

	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "index.html"), []byte("lan-page\n"), 0o644)
	httpd := exec.Command("ip", "netns", "exec", n.Name, "busybox", "httpd", "-f", "-p", lanHost+":80", "-h", dir)
	dnsmasq := exec.Command("ip", "netns", "exec", n.Name, "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv",
		"--port=0", "--interface=vl", "--bind-interfaces", "--dhcp-range=10.77.0.100,10.77.0.150,1h",
		"--dhcp-leasefile="+filepath.Join(dir, "leases"), "--pid-file="+filepath.Join(dir, "dnsmasq.pid"))
	for _, c := range []*exec.Cmd{httpd, dnsmasq} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill(); c.Wait() })
	}
	e := newEnv(t)
	e.ns = h.Name
	return &bridgeLab{lab: &lab{e: e, host: h}, lanNS: n}
}

// lanFetch gets a URL from the LAN host.
func (b *bridgeLab) lanFetch(url string) (string, error) {
	out, err := exec.Command("ip", "netns", "exec", b.lanNS.Name, "timeout", "10", "busybox", "wget", "-q", "-O", "-", url).CombinedOutput()
	return string(out), err
}

// A QEMU guest bridged to the LAN gets its address from the LAN's DHCP
// server, anka shows it, and the LAN host reaches the guest there.
func TestBridgedGuest(t *testing.T) {
	b := newBridgeLab(t)
	e := b.e
	b.guest("b1", "")
	e.ok("modify", "b1", "set", "network-card", "-t", "bridge", "-b", "lan0")
	ip := b.start("b1")
	if !inRange(ip, "10.77.0.100", "10.77.0.150") {
		t.Fatalf("bridged guest got %s, outside dnsmasq's range", ip)
	}
	if got := consoleLine(e, "b1", "anka-guest: ip ", 30*time.Second); got != ip {
		t.Fatalf("anka start said %s, the guest's DHCP client %s", ip, got)
	}
	if c := b.card("b1"); c.IP != ip || c.Mode != "bridge" {
		t.Fatalf("show b1 network: %+v", c)
	}
	if page, err := b.lanFetch("http://" + ip + "/"); err != nil || !strings.Contains(page, "anka-guest b1") {
		t.Fatalf("LAN host -> bridged guest %s: %v %s", ip, err, page)
	}
}

// The interface a bridged card uses, layer by layer: card, flag, env,
// user config, automatic (the default route's interface).
func TestBridgeInterfacePrecedence(t *testing.T) {
	b := newBridgeLab(t)
	e := b.e
	e.ok("create", "x1", "--runtime", "external")
	e.ok("modify", "x1", "set", "network-card", "-t", "bridge")
	uses := func(want, why string, args ...string) {
		t.Helper()
		e.ok(append(args, "start", "x1")...)
		out := e.ok(append(args, "show", "x1", "network")...)
		e.ok("stop", "x1")
		if !strings.Contains(out, want) || !strings.Contains(strings.ToLower(out), why) {
			t.Fatalf("want interface %s (%s):\n%s", want, why, out)
		}
	}
	uses("lan0", "default route")
	e.ok("config", "bridge_name", "decoy1")
	uses("decoy1", "user config")
	e.extra = []string{"ANKA_BRIDGE_NAME=decoy2"}
	uses("decoy2", "anka_bridge_name")
	uses("decoy3", "--bridge-name", "--bridge-name", "decoy3")
	e.ok("modify", "x1", "set", "network-card", "-b", "lan0")
	uses("lan0", "card", "--bridge-name", "decoy3")
	e.extra = nil
}
