package lantest

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

// Skip skips tb unless guests can be made here: root, /dev/net/tun, ip
// and busybox (udhcpc, ping). With ANKA_E2E set, a missing tool fails tb
// instead, as the project's CI installs them all.
func Skip(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: makes network namespaces and TAPs")
	}
	missing := ""
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		missing = "/dev/net/tun"
	}
	for _, tool := range []string{"ip", "busybox"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = tool
		}
	}
	if missing == "" {
		return
	}
	if os.Getenv("ANKA_E2E") != "" {
		tb.Fatalf("%s is missing: make deps installs busybox-static and iproute2", missing)
	}
	tb.Skipf("needs %s", missing)
}

// Guest is a network namespace whose eth0 is a TAP relayed to a VM's
// endpoint (its socket, or its TAP on the plugin's bridge), frame by
// frame, as QEMU relays its NIC: a real Linux network stack behind the
// plugin's port. It ends with the test.
type Guest struct {
	NS  *frameiotest.Netns
	MAC net.HardwareAddr
	dir string

	mu     sync.Mutex
	sock   frameio.Port // the VM's end of its endpoint
	tap    *frameio.TAPPort
	wg     sync.WaitGroup
	closed bool
}

// NewGuest makes a guest on endpoint p with eth0 up (MAC p.MAC, MTU
// p.MTU) and no address.
func NewGuest(tb testing.TB, p Plug) *Guest {
	tb.Helper()
	Skip(tb)
	if p.MTU == 0 {
		p.MTU = frameio.DefaultMTU
	}
	g := &Guest{NS: frameiotest.NewNetns(tb), MAC: p.MAC, dir: tb.TempDir()}
	if err := g.NS.Run(func() (err error) {
		g.tap, err = frameio.OpenTAP("eth0", frameio.TAPOptions{MTU: p.MTU, Logger: frameiotest.Quiet})
		return err
	}); err != nil {
		tb.Fatalf("lantest: the guest's TAP: %v", err)
	}
	g.NS.IP(tb, "link", "set", "eth0", "address", p.MAC.String())
	g.NS.IP(tb, "link", "set", "lo", "up")
	g.NS.IP(tb, "link", "set", "eth0", "up")
	g.sock = Open(tb, p)
	g.wg.Add(2)
	go func() { defer g.wg.Done(); frameio.Relay(context.Background(), g.tap, g.sock, 16) }()
	go func() { defer g.wg.Done(); frameio.Relay(context.Background(), g.sock, g.tap, 16) }()
	tb.Cleanup(g.Close)
	return g
}

// GuestIn is a guest on a namespace whose eth0 the caller made and brought
// up (a veth on a plugin's bridge, say): DHCP, Reaches and Run work as on
// any guest; nothing is relayed, and Close does nothing.
func GuestIn(tb testing.TB, ns *frameiotest.Netns, mac net.HardwareAddr) *Guest {
	tb.Helper()
	Skip(tb)
	return &Guest{NS: ns, MAC: mac, dir: tb.TempDir(), closed: true}
}

// Close stops relaying and closes the guest's end of the endpoint, as a
// VM that stops: a TAP endpoint is let go, a socket closed. The
// namespace stays until the test ends.
func (g *Guest) Close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return
	}
	g.closed = true
	g.tap.Close()
	g.sock.Close()
	g.wg.Wait()
}

// udhcpcScript configures what udhcpc got and writes it down for DHCP.
const udhcpcScript = `#!/bin/sh
case "$1" in
bound|renew)
	busybox ip addr flush dev "$interface"
	busybox ip addr add "$ip/$mask" dev "$interface"
	[ -n "$mtu" ] && busybox ip link set dev "$interface" mtu "$mtu"
	[ -n "$router" ] && busybox ip route replace default via "$router"
	{
		echo "ip=$ip"; echo "mask=$mask"; echo "router=$router"; echo "dns=$dns"
		echo "mtu=$mtu"; echo "lease=$lease"; echo "serverid=$serverid"
	} > "$LANTEST_LEASE"
	;;
esac
`

// DHCP runs busybox udhcpc on eth0 until it has a lease (or fails tb),
// configures it (address, MTU, default route) and returns what it got.
func (g *Guest) DHCP(tb testing.TB) Lease {
	tb.Helper()
	l, out, err := g.TryDHCP()
	if err != nil {
		tb.Fatalf("udhcpc in %s: %v\n%s", g.NS.Name, err, out)
	}
	return l
}

// TryDHCP is DHCP returning the failure and udhcpc's output.
func (g *Guest) TryDHCP() (Lease, string, error) {
	script := filepath.Join(g.dir, "udhcpc.sh")
	leaseFile := filepath.Join(g.dir, "lease.env")
	os.Remove(leaseFile)
	if err := os.WriteFile(script, []byte(udhcpcScript), 0o755); err != nil {
		return Lease{}, "", err
	}
	cmd := exec.Command("ip", "netns", "exec", g.NS.Name, "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n",
		"-t", "10", "-T", "1", "-O", "mtu", "-s", script)
	cmd.Env = append(os.Environ(), "LANTEST_LEASE="+leaseFile)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return Lease{}, string(out), err
	}
	f, err := os.Open(leaseFile)
	if err != nil {
		return Lease{}, string(out), err
	}
	defer f.Close()
	var l Lease
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "ip":
			l.IP, _ = netip.ParseAddr(v)
		case "mask":
			if n, err := strconv.Atoi(v); err == nil {
				l.Mask = net.CIDRMask(n, 32)
			}
		case "router":
			if f := strings.Fields(v); len(f) > 0 {
				l.Router, _ = netip.ParseAddr(f[0])
			}
		case "dns":
			for _, d := range strings.Fields(v) {
				if a, err := netip.ParseAddr(d); err == nil {
					l.DNS = append(l.DNS, a)
				}
			}
		case "mtu":
			l.MTU, _ = strconv.Atoi(v)
		case "lease":
			n, _ := strconv.Atoi(v)
			l.LeaseTime = time.Duration(n) * time.Second
		case "serverid":
			l.Server, _ = netip.ParseAddr(v)
		}
	}
	return l, string(out), nil
}

// Run runs a command in the guest and returns its output.
func (g *Guest) Run(name string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", g.NS.Name, name}, args...)...).CombinedOutput()
	return string(out), err
}

// Reaches pings addr from the guest until a reply comes (true) or within
// passes (false).
func (g *Guest) Reaches(addr netip.Addr, within time.Duration) bool {
	return Ping(within, "ip", "netns", "exec", g.NS.Name, "busybox", "ping", "-c", "1", "-W", "1", addr.String())
}

// Ping runs a ping command (its arguments) until it succeeds (true) or
// within passes (false).
func Ping(within time.Duration, cmd ...string) bool {
	deadline := time.Now().Add(within)
	for {
		if exec.Command(cmd[0], cmd[1:]...).Run() == nil {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}
