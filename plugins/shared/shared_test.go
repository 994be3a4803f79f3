package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anka-net/anka/plugins/shared/routed"
	"github.com/anka-net/anka/plugins/shared/routed/routedtest"
	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"github.com/anka-net/anka/sdk/netkit/lan/lantest"
)

var (
	gateway = netip.MustParseAddr("192.168.64.1")
	subnet  = netip.MustParsePrefix("192.168.64.0/24")
)

func start(t *testing.T, dataDir string, settings map[string]string) *routed.Plugin {
	t.Helper()
	p, err := New(sdk.Env{DataDir: dataDir, Settings: settings, Logger: routedtest.TestLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if _, err := p.Validate(t.Context(), &sdk.ValidateRequest{Card: sdk.Card{Type: "shared"}}); err != nil {
		t.Fatalf("the network is not up: %v", err)
	}
	return p
}

func vmRef(name string) sdk.VMRef { return sdk.VMRef{ID: "id-" + name, Name: name} }

func dyn(n byte) string { return fmt.Sprintf("02:a4:6b:00:10:%02x", n) }

func status(t *testing.T, p sdk.NetworkPlugin, vm sdk.VMRef) *sdk.StatusResponse {
	t.Helper()
	st, err := p.Status(t.Context(), &sdk.StatusRequest{VM: vm})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func inRange(ip netip.Addr) bool {
	return !ip.Less(netip.MustParseAddr("192.168.64.2")) && !netip.MustParseAddr("192.168.64.254").Less(ip)
}

// TestSharedNetwork: a guest gets a lease by udhcpc, the host and the
// guest reach each other, the guest reaches the outside through NAT and
// resolves a name through the gateway; on every path: a QEMU VM on its
// TAP on the kernel bridge, a socket VM on the user-space switch, and a
// vhost-user VM (its queues read in place) on the same switch.
func TestSharedNetwork(t *testing.T) {
	routedtest.Skip(t)
	for _, tc := range []struct {
		name  string
		kinds []sdk.EndpointKind
		want  sdk.EndpointKind
		path  string
	}{
		{"kernel bridge", routedtest.QEMU, sdk.EndpointTAP, "kernel bridge (TAP aks"},
		{"user-space switch", routedtest.Sockets, sdk.EndpointDgram, "user-space switch"},
		{"vhost-user", []sdk.EndpointKind{sdk.EndpointVhostUser, sdk.EndpointDgram}, sdk.EndpointVhostUser, "user-space switch over vhost-user"},
	} {
		t.Run(tc.name, func(t *testing.T) { testSharedNetwork(t, tc.kinds, tc.want, tc.path) })
	}
}

func testSharedNetwork(t *testing.T, kinds []sdk.EndpointKind, want sdk.EndpointKind, path string) {
	outside := routedtest.Outside(t)
	routedtest.ServeDNS(t, "web.outside.test", routedtest.OutsideAddr)
	p := start(t, t.TempDir(), nil)
	vm := vmRef("vm1")
	g, ep := routedtest.AttachWith(t, p, vm, sdk.Card{Type: "shared", DynamicMAC: dyn(1)}, kinds)
	if ep.Kind != want || ep.MTU != 1500 || !ep.LinkUp || ep.MAC != dyn(1) {
		t.Errorf("endpoint %+v; want %s", ep, want)
	}
	pcap := filepath.Join(t.TempDir(), "vm1.pcap")
	ctx := context.Background()
	if _, err := p.StartCapture(ctx, &sdk.CaptureRequest{VM: vm, Type: "shared", Path: pcap}); err != nil {
		t.Fatal(err)
	}
	l := g.DHCP(t)
	if res, err := p.StopCapture(ctx, &sdk.CaptureRequest{VM: vm, Type: "shared"}); err != nil || res.Frames < 4 {
		t.Errorf("the capture of the DHCP exchange holds %+v: %v", res, err)
	}
	if !inRange(l.IP) || l.MTU != 1500 || l.Router != gateway || len(l.DNS) != 1 || l.DNS[0] != gateway || l.LeaseTime != 24*time.Hour {
		t.Errorf("lease %+v; want 192.168.64.2-254, MTU 1500, router and DNS %v, 24h", l, gateway)
	}
	if ones, _ := l.Mask.Size(); ones != 24 {
		t.Errorf("mask /%d", ones)
	}
	st := status(t, p, vm)
	if st.IP != l.IP.String() || !st.Attached || st.LeaseExpiry.Before(time.Now().Add(23*time.Hour)) {
		t.Errorf("Status: IP %q attached %v expiry %v; the guest got %v", st.IP, st.Attached, st.LeaseExpiry, l.IP)
	}
	if !strings.HasPrefix(st.Path, path) {
		t.Errorf("Status: path %q; want %q...", st.Path, path)
	}
	if !lantest.Ping(5*time.Second, "busybox", "ping", "-c", "1", "-W", "1", l.IP.String()) {
		t.Error("the host cannot ping the guest")
	}
	if !g.Reaches(gateway, 5*time.Second) {
		t.Error("the guest cannot ping the gateway")
	}
	if !g.Reaches(routedtest.OutsideAddr, 5*time.Second) {
		t.Error("the guest cannot reach the outside through NAT")
	}
	// The outside has no way back to the guest but NAT.
	if out := outside.Exec(t, "ip", "route"); strings.Contains(out, "192.168.64") {
		t.Fatalf("the outside has a route to the guests: %s", out)
	}
	out, err := g.Run("busybox", "nslookup", "web.outside.test", gateway.String())
	if err != nil || !strings.Contains(out, routedtest.OutsideAddr.String()) {
		t.Errorf("the guest cannot resolve through the gateway: %v\n%s", err, out)
	}
	// Nothing comes in from the outside unasked, even with a route.
	outside.IP(t, "route", "add", subnet.String(), "via", routedtest.OutsideHost.String())
	if lantest.Ping(time.Second, "ip", "netns", "exec", outside.Name, "busybox", "ping", "-c", "1", "-W", "1", l.IP.String()) {
		t.Error("the outside reached the guest without a port forward")
	}
}

// TestStaticAndClones: a static card gets exactly its address and pins
// it; a second VM asking for it is refused; two clones sharing an
// internal MAC get two addresses and reach each other.
func TestStaticAndClones(t *testing.T) {
	routedtest.Skip(t)
	p := start(t, t.TempDir(), nil)
	fixed := netip.MustParseAddr("192.168.64.50")
	card := sdk.Card{Type: "static", IP: fixed.String(), DynamicMAC: dyn(1)}
	if _, err := p.Validate(t.Context(), &sdk.ValidateRequest{VM: vmRef("fixed"), Card: card}); err != nil {
		t.Fatal(err)
	}
	g, _ := routedtest.Attach(t, p, vmRef("fixed"), card)
	if l := g.DHCP(t); l.IP != fixed {
		t.Errorf("the static VM got %v; want %v", l.IP, fixed)
	}
	if st := status(t, p, vmRef("fixed")); st.IP != fixed.String() || st.Details["static_ip"] != fixed.String() {
		t.Errorf("Status %+v", st)
	}
	other := sdk.Card{Type: "static", IP: fixed.String(), DynamicMAC: dyn(2)}
	_, err := p.Validate(t.Context(), &sdk.ValidateRequest{VM: vmRef("other"), Card: other})
	if sdk.CodeOf(err) != sdk.CodeConflict || !strings.Contains(err.Error(), "taken on network shared by VM fixed") {
		t.Errorf("Validate of a second VM with %v: %v", fixed, err)
	}
	_, err = p.Attach(t.Context(), &sdk.AttachRequest{VM: vmRef("other"), Card: other, RunDir: frameiotest.TempDir(t)})
	if sdk.CodeOf(err) != sdk.CodeConflict {
		t.Errorf("Attach of a second VM with %v: %v", fixed, err)
	}
	// The guest may set its fixed address by hand; another is cut off.
	g.NS.IP(t, "addr", "flush", "dev", "eth0")
	g.NS.IP(t, "addr", "add", "192.168.64.51/24", "dev", "eth0")
	if g.Reaches(gateway, 2*time.Second) {
		t.Error("the static VM reaches the gateway from an address not its own")
	}
	g.NS.IP(t, "addr", "flush", "dev", "eth0")
	g.NS.IP(t, "addr", "add", "192.168.64.50/24", "dev", "eth0")
	if !g.Reaches(gateway, 5*time.Second) {
		t.Error("the static VM with its address set by hand cannot reach the gateway")
	}

	const internal = "52:54:00:12:34:56"
	var clones []*lantest.Guest
	var ips []netip.Addr
	for i, name := range []string{"clone1", "clone2"} {
		g, ep := routedtest.Attach(t, p, vmRef(name), sdk.Card{Type: "shared", InternalMAC: internal, DynamicMAC: dyn(byte(10 + i))})
		if ep.MAC != internal {
			t.Errorf("%s's NIC gets %s; want the internal MAC", name, ep.MAC)
		}
		clones, ips = append(clones, g), append(ips, g.DHCP(t).IP)
	}
	if ips[0] == ips[1] || !inRange(ips[0]) || !inRange(ips[1]) {
		t.Fatalf("clones got %v", ips)
	}
	if !clones[0].Reaches(ips[1], 5*time.Second) || !clones[1].Reaches(ips[0], 5*time.Second) {
		t.Error("the clones cannot reach each other")
	}
	if st := status(t, p, vmRef("clone2")); st.InternalMAC != internal || st.DynamicMAC != dyn(11) || st.IP != ips[1].String() {
		t.Errorf("Status of clone2: %+v", st)
	}
}

// TestPortForwards: TCP and UDP from the host's loopback reach the guest
// while it is attached; Detach drops them.
func TestPortForwards(t *testing.T) {
	routedtest.Skip(t)
	p := start(t, t.TempDir(), nil)
	vm := vmRef("web")
	g, _ := routedtest.Attach(t, p, vm, sdk.Card{Type: "shared", DynamicMAC: dyn(1)})
	g.DHCP(t)
	// Servers inside the guest: a TCP greeter on 8080, a UDP echo on 9000.
	var ln net.Listener
	var pc net.PacketConn
	if err := g.NS.Run(func() (err error) {
		if ln, err = net.Listen("tcp4", ":8080"); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", ":9000")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	defer pc.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "hello from the guest\n")
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("echo: "), buf[:n]...), from)
		}
	}()

	ctx := t.Context()
	rules := []sdk.PortForward{
		{Name: "web", Protocol: "tcp", HostIP: "127.0.0.1", HostPort: 18080, GuestPort: 8080},
		{Name: "echo", Protocol: "udp", HostPort: 19000, GuestPort: 9000},
	}
	for _, r := range rules {
		if _, err := p.AddPortForward(ctx, &sdk.PortForwardRequest{VM: vm, Rule: r}); err != nil {
			t.Fatal(err)
		}
		if _, err := p.AddPortForward(ctx, &sdk.PortForwardRequest{VM: vm, Rule: r}); err != nil {
			t.Errorf("adding rule %s again: %v", r.Name, err)
		}
	}
	list, err := p.ListPortForwards(ctx, &sdk.ListPortForwardsRequest{VM: vm})
	if err != nil || len(list.Rules) != 2 || list.Rules[0].Name != "echo" || list.Rules[0].HostIP != "0.0.0.0" {
		t.Errorf("ListPortForwards: %+v %v", list, err)
	}
	if got := tcpGet(t, "127.0.0.1:18080"); got != "hello from the guest\n" {
		t.Errorf("TCP through the forward: %q", got)
	}
	if got := udpAsk(t, "127.0.0.1:19000", "ping"); got != "echo: ping" {
		t.Errorf("UDP through the forward: %q", got)
	}

	// Conflicts are refused with the reason.
	other := vmRef("other")
	routedtest.Attach(t, p, other, sdk.Card{Type: "shared", DynamicMAC: dyn(2)})
	_, err = p.AddPortForward(ctx, &sdk.PortForwardRequest{VM: other, Rule: sdk.PortForward{Name: "x", Protocol: "tcp", HostPort: 18080, GuestPort: 22}})
	if sdk.CodeOf(err) != sdk.CodeConflict || !strings.Contains(err.Error(), "already forwarded by rule web") {
		t.Errorf("a second forward of one port: %v", err)
	}
	busy, _ := net.Listen("tcp4", "127.0.0.1:0")
	defer busy.Close()
	_, err = p.AddPortForward(ctx, &sdk.PortForwardRequest{VM: other, Rule: sdk.PortForward{Name: "x", HostIP: "127.0.0.1", HostPort: busy.Addr().(*net.TCPAddr).Port, GuestPort: 22}})
	if sdk.CodeOf(err) != sdk.CodeConflict || !strings.Contains(err.Error(), "in use") {
		t.Errorf("a forward of a port in use: %v", err)
	}
	_, err = p.AddPortForward(ctx, &sdk.PortForwardRequest{VM: vmRef("stopped"), Rule: sdk.PortForward{Name: "x", HostPort: 18081, GuestPort: 22}})
	if sdk.CodeOf(err) != sdk.CodeConflict {
		t.Errorf("a forward to a VM not running: %v", err)
	}

	if _, err := p.RemovePortForward(ctx, &sdk.PortForwardRequest{VM: vm, Rule: sdk.PortForward{Name: "echo"}}); err != nil {
		t.Fatal(err)
	}
	if got := udpAsk(t, "127.0.0.1:19000", "ping"); got != "" {
		t.Errorf("UDP after the rule was removed: %q", got)
	}
	if _, err := p.Detach(ctx, &sdk.DetachRequest{VM: vm}); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp4", "127.0.0.1:18080", time.Second); err == nil {
		c.Close()
		t.Error("the TCP forward outlived Detach")
	}
	if list, _ := p.ListPortForwards(ctx, &sdk.ListPortForwardsRequest{VM: vm}); len(list.Rules) != 0 {
		t.Errorf("rules after Detach: %+v", list.Rules)
	}
}

func tcpGet(t *testing.T, addr string) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp4", addr, time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(3 * time.Second))
			b, _ := io.ReadAll(c)
			c.Close()
			if len(b) > 0 {
				return string(b)
			}
		}
		if time.Now().After(deadline) {
			return ""
		}
		time.Sleep(100 * time.Millisecond) // the guest's ARP entry may not be there yet: retry
	}
}

func udpAsk(t *testing.T, addr, msg string) string {
	t.Helper()
	c, err := net.Dial("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 1500)
	for range 10 {
		c.Write([]byte(msg))
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if n, err := c.Read(buf); err == nil {
			return string(buf[:n])
		}
	}
	return ""
}

// TestRestartKeepsTheLease: a plugin started again over the same data
// folder gives the guest the same address, and reaches it again through
// the socket it binds again.
func TestRestartKeepsTheLease(t *testing.T) {
	routedtest.Skip(t)
	dir := t.TempDir()
	p := start(t, dir, nil)
	vm := vmRef("vm1")
	card := sdk.Card{Type: "shared", DynamicMAC: dyn(1)}
	runDir := frameiotest.TempDir(t)
	// Another VM first, so the address is not simply the first one.
	g0, _ := routedtest.Attach(t, p, vmRef("vm0"), sdk.Card{Type: "shared", DynamicMAC: dyn(2)})
	g0.DHCP(t)
	resp, err := p.Attach(t.Context(), &sdk.AttachRequest{VM: vm, Card: card, RunDir: runDir})
	if err != nil {
		t.Fatal(err)
	}
	ep := resp.Endpoint
	mac, _ := net.ParseMAC(ep.MAC)
	g := lantest.NewGuest(t, lantest.Plug{PluginPath: ep.PluginPath, VMPath: ep.VMPath, MAC: mac, MTU: ep.MTU})
	first := g.DHCP(t)
	p.Close()

	p = start(t, dir, nil)
	if st := status(t, p, vm); st.Attached || st.DynamicMAC != dyn(1) {
		t.Errorf("the restarted plugin's Status: %+v", st)
	}
	if _, err := p.Attach(t.Context(), &sdk.AttachRequest{VM: vm, Card: card, RunDir: runDir}); err != nil {
		t.Fatal(err)
	}
	// The guest kept its address and socket, as a QEMU guest would.
	if !lantest.Ping(5*time.Second, "busybox", "ping", "-c", "1", "-W", "1", first.IP.String()) {
		t.Error("the host cannot reach the guest after the plugin restarted")
	}
	if st := status(t, p, vm); st.IP != first.IP.String() {
		t.Errorf("Status IP %q after the guest spoke; want %v", st.IP, first.IP)
	}
	if again := g.DHCP(t); again.IP != first.IP {
		t.Errorf("after the restart the guest got %v; before %v", again.IP, first.IP)
	}
}

// TestBinaryStartsAndStops: the built plugin sets the network up when it
// starts and removes the bridge and the nftables tables when anka stops it;
// after a kill -9 the next start cleans up what was left.
func TestBinaryStartsAndStops(t *testing.T) {
	cfg, launch := routedtest.BinaryLauncher(t, "shared", "debug")
	up := func() bool {
		return routedtest.LinkExists("anka-shared0") && routedtest.TableExists(t, "anka-shared") && routedtest.BridgeTableExists(t, "anka-br-shared")
	}
	gone := func() bool {
		return !routedtest.LinkExists("anka-shared0") && !routedtest.LinkExists("anka-sharedsw") &&
			!routedtest.TableExists(t, "anka-shared") && !routedtest.BridgeTableExists(t, "anka-br-shared")
	}
	defer func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(cfg.DataDir, "plugin.log"))
			t.Logf("plugin log:\n%s", b)
		}
	}()

	pl := launch()
	if !up() {
		t.Fatal("the started plugin has no bridge anka-shared0 or no tables anka-shared")
	}
	pl.Kill() // gracefully: go-plugin's shutdown call
	if !gone() {
		t.Fatal("the stopped plugin left its bridge, uplink or a table")
	}

	pl = launch()
	if err := syscall.Kill(pl.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	pl.Kill() // waits for the process
	if !routedtest.TableExists(t, "anka-shared") {
		t.Fatal("a killed plugin left no table: the leftover test tests nothing")
	}
	pl = launch()
	if _, err := pl.Client().Validate(t.Context(), &sdk.ValidateRequest{Card: sdk.Card{Type: "shared"}}); err != nil {
		t.Fatalf("the plugin started after a crash: %v", err)
	}
	if !up() {
		t.Fatal("the plugin started after a crash has no network")
	}
	pl.Kill()
	if !gone() {
		t.Fatal("the stopped plugin left its bridge, uplink or a table")
	}
}

// TestSubnetInUse: a plugin whose subnet the host already uses starts,
// and says why at every call that needs the network.
func TestSubnetInUse(t *testing.T) {
	routedtest.Skip(t)
	out, err := exec("ip", "link", "add", "busy0", "type", "veth", "peer", "name", "busy1")
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	defer exec("ip", "link", "del", "busy0")
	exec("ip", "addr", "add", "192.168.64.200/24", "dev", "busy0")
	p, err := New(sdk.Env{DataDir: t.TempDir(), Logger: routedtest.Quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, call := range []func() error{
		func() error {
			_, err := p.Validate(t.Context(), &sdk.ValidateRequest{Card: sdk.Card{Type: "shared"}})
			return err
		},
		func() error {
			_, err := p.Attach(t.Context(), &sdk.AttachRequest{VM: vmRef("a"), Card: sdk.Card{Type: "shared", DynamicMAC: dyn(1)}, RunDir: frameiotest.TempDir(t)})
			return err
		},
	} {
		err := call()
		if sdk.CodeOf(err) != sdk.CodeUnavailable || !strings.Contains(err.Error(), "busy0") || !strings.Contains(err.Error(), "start_address") {
			t.Errorf("%v; want unavailable naming busy0 and the keys to change", err)
		}
	}
	// Once the subnet is free, the network comes up.
	exec("ip", "link", "del", "busy0")
	if _, err := p.Validate(t.Context(), &sdk.ValidateRequest{Card: sdk.Card{Type: "shared"}}); err != nil {
		t.Errorf("with the subnet free: %v", err)
	}
}

func exec(name string, args ...string) (string, error) {
	out, err := osexec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// TestSettings: the subnet, range, lease time and MTU come from anka's
// configuration; the guest gets the MTU by DHCP and big frames cross.
func TestSettings(t *testing.T) {
	routedtest.Skip(t)
	p := start(t, t.TempDir(), map[string]string{
		"start_address": "10.77.1.10", "end_address": "10.77.1.20", "subnet_mask": "255.255.0.0",
		"lease_time": "1h", "mtu": "9000",
	})
	g, ep := routedtest.Attach(t, p, vmRef("big"), sdk.Card{Type: "shared", DynamicMAC: dyn(1)})
	if ep.MTU != 9000 {
		t.Errorf("endpoint MTU %d", ep.MTU)
	}
	l := g.DHCP(t)
	ones, _ := l.Mask.Size()
	if l.IP.Less(netip.MustParseAddr("10.77.1.10")) || netip.MustParseAddr("10.77.1.20").Less(l.IP) || ones != 16 ||
		l.Router != netip.MustParseAddr("10.77.0.1") || l.MTU != 9000 || l.LeaseTime != time.Hour {
		t.Errorf("lease %+v /%d", l, ones)
	}
	if !lantest.Ping(5*time.Second, "busybox", "ping", "-c", "1", "-W", "1", "-s", "8900", l.IP.String()) {
		t.Error("the host cannot ping the guest with 8900 bytes")
	}
	// A runtime asking for less than the network's MTU is refused.
	_, err := p.Attach(t.Context(), &sdk.AttachRequest{VM: vmRef("small"), Card: sdk.Card{Type: "shared", DynamicMAC: dyn(2)}, RunDir: frameiotest.TempDir(t), MTU: 1500})
	if sdk.CodeOf(err) != sdk.CodeConflict || !strings.Contains(err.Error(), "runs with MTU 9000") {
		t.Errorf("Attach with MTU 1500: %v", err)
	}
}
