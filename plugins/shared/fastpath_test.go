package main

import (
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anka-net/anka/plugins/shared/routed/routedtest"
	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/host"
	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"github.com/anka-net/anka/sdk/netkit/lan/lantest"
)

// The kernel fast path: a QEMU VM (offered a TAP) without an internal MAC
// gets a TAP on the plugin's bridge; socket VMs and VMs with -m are on the
// user-space switch, whose uplink is a port of the same bridge.

const (
	bridgeName  = "anka-shared0"
	uplinkName  = "anka-sharedsw"
	bridgeTable = "anka-br-shared"
)

// master is the interface tap is a port of, "" for none.
func master(tap string) string {
	out, err := exec("ip", "-o", "link", "show", "dev", tap)
	if err != nil {
		return ""
	}
	f := strings.Fields(out)
	for i := range len(f) - 1 {
		if f[i] == "master" {
			return f[i+1]
		}
	}
	return ""
}

// waitForwarding waits until the bridge forwards frames of port tap: a
// TAP's carrier, when its VM opens it, reaches the bridge a moment later.
func waitForwarding(t *testing.T, tap string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := exec("ip", "-d", "-o", "link", "show", "dev", tap)
		if strings.Contains(out, "state forwarding") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the bridge does not forward for %s: %s", tap, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func linkUp(name string) bool {
	ifc, err := net.InterfaceByName(name)
	return err == nil && ifc.Flags&net.FlagUp != 0
}

func pingFromHost(ip netip.Addr, within time.Duration) bool {
	return lantest.Ping(within, "busybox", "ping", "-c", "1", "-W", "1", ip.String())
}

// TestFastPathAndSockets: a fast-path VM, a socket VM and a VM with an
// internal MAC (on vhost-user although offered a TAP) share one network:
// one subnet, one DHCP server; they reach each other and the host, and
// Status says which path each takes.
func TestFastPathAndSockets(t *testing.T) {
	routedtest.Skip(t)
	p := start(t, t.TempDir(), nil)
	fast, sock, clone := vmRef("fast"), vmRef("sock"), vmRef("clone")
	gf, epf := routedtest.Attach(t, p, fast, sdk.Card{Type: "shared", DynamicMAC: dyn(1)})
	gs, eps := routedtest.AttachWith(t, p, sock, sdk.Card{Type: "shared", DynamicMAC: dyn(2)}, routedtest.Sockets)
	gc, epc := routedtest.Attach(t, p, clone, sdk.Card{Type: "shared", DynamicMAC: dyn(3), InternalMAC: "52:54:00:00:00:07"})
	if epf.Kind != sdk.EndpointTAP || epf.TAP == "" || epf.PluginPath != "" || epf.MAC != dyn(1) {
		t.Errorf("fast-path endpoint %+v", epf)
	}
	if eps.Kind != sdk.EndpointDgram || epc.Kind != sdk.EndpointVhostUser || epc.MAC != "52:54:00:00:00:07" {
		t.Errorf("socket endpoints %+v, %+v", eps, epc)
	}
	if master(epf.TAP) != bridgeName || master(uplinkName) != bridgeName || !linkUp(epf.TAP) {
		t.Errorf("%s on %q, %s on %q; want both on %s", epf.TAP, master(epf.TAP), uplinkName, master(uplinkName), bridgeName)
	}
	// The VM's TAP is there before the VM: QEMU opens it by name.
	if st := status(t, p, fast); st.IP != "" || !st.Attached {
		t.Errorf("Status before the guest's DHCP: %+v", st)
	}

	ips := map[string]netip.Addr{}
	for name, g := range map[string]*lantest.Guest{"fast": gf, "sock": gs, "clone": gc} {
		l := g.DHCP(t)
		if !inRange(l.IP) || l.Router != gateway || l.MTU != 1500 {
			t.Errorf("%s: lease %+v", name, l)
		}
		for other, ip := range ips {
			if ip == l.IP {
				t.Fatalf("%s and %s both got %v", name, other, ip)
			}
		}
		ips[name] = l.IP
	}
	for name, vm := range map[string]sdk.VMRef{"fast": fast, "sock": sock, "clone": clone} {
		st := status(t, p, vm)
		if st.IP != ips[name].String() {
			t.Errorf("Status of %s: IP %q; the guest got %v", name, st.IP, ips[name])
		}
		want := "user-space switch"
		if name == "clone" {
			want = "user-space switch over vhost-user"
		}
		if name == "fast" {
			want = "kernel bridge (TAP " + epf.TAP + " on " + bridgeName + ")"
			if st.Details["tap"] != epf.TAP || st.Counters["frames_from_vm"] == 0 || st.Counters["frames_to_vm"] == 0 {
				t.Errorf("Status of the fast-path VM: details %v counters %v", st.Details, st.Counters)
			}
		}
		if !strings.HasPrefix(st.Path, want) {
			t.Errorf("Status of %s: path %q; want %q...", name, st.Path, want)
		}
	}
	for name, ip := range ips {
		if !pingFromHost(ip, 5*time.Second) {
			t.Errorf("the host cannot ping %s at %v", name, ip)
		}
	}
	pairs := [][2]string{{"fast", "sock"}, {"sock", "fast"}, {"fast", "clone"}, {"clone", "fast"}}
	guests := map[string]*lantest.Guest{"fast": gf, "sock": gs, "clone": gc}
	for _, pr := range pairs {
		if !guests[pr[0]].Reaches(ips[pr[1]], 5*time.Second) {
			t.Errorf("%s cannot ping %s at %v", pr[0], pr[1], ips[pr[1]])
		}
	}
	if !gf.Reaches(gateway, 5*time.Second) {
		t.Error("the fast-path guest cannot ping the gateway")
	}
	// Big frames cross the bridge whole at the network's MTU.
	if out, err := gf.Run("busybox", "ping", "-c", "1", "-W", "2", "-s", "1472", ips["sock"].String()); err != nil {
		t.Errorf("a 1500-byte ping from the fast path to a socket VM: %v\n%s", err, out)
	}
}

// TestFastPathAntiSpoofing: a fast-path VM that forges another VM's MAC,
// another address, or answers as a DHCP server gets nothing through:
// the target never sees it, and the VM's counters say why.
func TestFastPathAntiSpoofing(t *testing.T) {
	routedtest.Skip(t)
	p := start(t, t.TempDir(), nil)
	// The target: a socket guest listening for UDP on 7777.
	target, tep := routedtest.AttachWith(t, p, vmRef("target"), sdk.Card{Type: "shared", DynamicMAC: dyn(2)}, routedtest.Sockets)
	tip := target.DHCP(t).IP
	tmac, _ := net.ParseMAC(tep.MAC)
	var conn *net.UDPConn
	if err := target.NS.Run(func() (err error) {
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 7777})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	got := make(chan string, 64)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			got <- string(buf[:n])
		}
	}()
	arrives := func(payload string, within time.Duration) bool {
		deadline := time.After(within)
		for {
			select {
			case s := <-got:
				if s == payload {
					return true
				}
			case <-deadline:
				return false
			}
		}
	}

	// The attacker: a fast-path VM played by a Go DHCP client on its TAP.
	vm := vmRef("attacker")
	resp, err := p.Attach(t.Context(), &sdk.AttachRequest{VM: vm, Card: sdk.Card{Type: "shared", DynamicMAC: dyn(1)}, Endpoints: routedtest.QEMU, RunDir: frameiotest.TempDir(t)})
	if err != nil || resp.Endpoint.Kind != sdk.EndpointTAP {
		t.Fatalf("Attach: %+v %v", resp, err)
	}
	own, _ := net.ParseMAC(dyn(1))
	port := lantest.Open(t, routedtest.Plug(t, resp.Endpoint))
	c := lantest.NewClient(t, port, own)
	waitForwarding(t, resp.Endpoint.TAP)
	send := func(src net.HardwareAddr, from netip.Addr, sport uint16, payload string) {
		t.Helper()
		if err := c.Send(lantest.UDPFrame(src, tmac, from, tip, sport, 7777, []byte(payload))); err != nil {
			t.Fatal(err)
		}
	}
	// Before its lease only DHCP leaves the VM.
	send(own, netip.MustParseAddr("192.168.64.200"), 5000, "before-lease")
	if arrives("before-lease", 500*time.Millisecond) {
		t.Error("a fast-path VM without a lease reached another VM")
	}
	l, err := c.DORA(10 * time.Second)
	if err != nil {
		t.Fatalf("DHCP on the fast path: %v", err)
	}
	if st := status(t, p, vm); st.IP != l.IP.String() {
		t.Errorf("Status IP %q after the ACK; want %v", st.IP, l.IP)
	}
	send(own, l.IP, 5000, "honest")
	if !arrives("honest", 3*time.Second) {
		t.Fatal("the fast-path VM's own datagram did not reach the target: the test proves nothing")
	}
	other := l.IP.Next()
	if other == tip {
		other = other.Next()
	}
	for _, f := range []struct {
		what    string
		src     net.HardwareAddr
		from    netip.Addr
		sport   uint16
		payload string
	}{
		{"the target's own MAC", tmac, l.IP, 5000, "forged-mac"},
		{"another address", own, other, 5000, "forged-ip"},
		{"the target's address", own, tip, 5000, "forged-target-ip"},
		{"a DHCP server's port", own, l.IP, 67, "forged-dhcp-server"},
	} {
		send(f.src, f.from, f.sport, f.payload)
		if arrives(f.payload, 500*time.Millisecond) {
			t.Errorf("a datagram from %s reached the target", f.what)
		}
	}
	st := status(t, p, vm)
	for _, reason := range []string{"source MAC not the port's", "source IP not the port's", "DHCP server reply from a VM"} {
		if st.Details["dropped: "+reason] == "" {
			t.Errorf("Status does not count %q drops: %v", reason, st.Details)
		}
	}
	if st.Counters["frames_dropped"] < 5 {
		t.Errorf("frames_dropped %d; want the 5 forged frames at least: %v", st.Counters["frames_dropped"], st.Details)
	}
}

// TestFastPathLifecycle: Detach removes the VM's TAP and its rules and
// keeps the lease; attached again the VM gets a new TAP and the same
// address; Release forgets it; the plugin's Close removes the bridge, the
// TAPs and both tables.
func TestFastPathLifecycle(t *testing.T) {
	routedtest.Skip(t)
	p := start(t, t.TempDir(), nil)
	vm := vmRef("vm1")
	card := sdk.Card{Type: "shared", DynamicMAC: dyn(1)}
	g, ep := routedtest.Attach(t, p, vm, card)
	first := g.DHCP(t).IP
	g.Close() // the VM stops
	if _, err := p.Detach(t.Context(), &sdk.DetachRequest{VM: vm}); err != nil {
		t.Fatal(err)
	}
	if routedtest.LinkExists(ep.TAP) {
		t.Error("Detach left the VM's TAP")
	}
	if out, _ := exec("nft", "list", "table", "bridge", bridgeTable); strings.Contains(out, ep.TAP) {
		t.Errorf("Detach left the VM's rules:\n%s", out)
	}
	if st := status(t, p, vm); st.Attached || st.IP != "" {
		t.Errorf("Status after Detach: %+v", st)
	}

	g, ep2 := routedtest.Attach(t, p, vm, card)
	if ep2.TAP != ep.TAP {
		t.Errorf("attached again the VM has TAP %s; before %s (its name follows the VM)", ep2.TAP, ep.TAP)
	}
	if again := g.DHCP(t).IP; again != first {
		t.Errorf("attached again the VM got %v; before %v", again, first)
	}
	if _, err := p.Release(t.Context(), &sdk.ReleaseRequest{VM: vm}); err != nil {
		t.Fatal(err)
	}
	if routedtest.LinkExists(ep.TAP) {
		t.Error("Release left the VM's TAP")
	}
	if _, err := p.Status(t.Context(), &sdk.StatusRequest{VM: vm}); sdk.CodeOf(err) != sdk.CodeNotFound {
		t.Errorf("Status after Release: %v", err)
	}

	// Close with a fast-path VM attached whose VM has stopped.
	g3, ep3 := routedtest.Attach(t, p, vmRef("vm3"), sdk.Card{Type: "shared", DynamicMAC: dyn(3)})
	g3.DHCP(t)
	g3.Close()
	p.Close()
	for _, l := range []string{bridgeName, uplinkName, ep3.TAP} {
		if routedtest.LinkExists(l) {
			t.Errorf("the closed plugin left %s", l)
		}
	}
	if routedtest.TableExists(t, "anka-shared") || routedtest.BridgeTableExists(t, bridgeTable) {
		t.Error("the closed plugin left a table")
	}
}

// TestFastPathRestart: a plugin stopped and started again while a
// fast-path VM runs leaves the VM's TAP (the VM holds it) and takes it
// back when the VM is attached again: the guest keeps its address and
// its NIC and is reached again without asking DHCP. A socket VM running
// through the restart keeps its socket although offered a TAP.
func TestFastPathRestart(t *testing.T) {
	routedtest.Skip(t)
	dir := t.TempDir()
	p := start(t, dir, nil)
	fast, sock := vmRef("fast"), vmRef("sock")
	fcard, scard := sdk.Card{Type: "shared", DynamicMAC: dyn(1)}, sdk.Card{Type: "shared", DynamicMAC: dyn(2)}
	gf, ep := routedtest.Attach(t, p, fast, fcard)
	fip := gf.DHCP(t).IP
	sockDir := frameiotest.TempDir(t)
	resp, err := p.Attach(t.Context(), &sdk.AttachRequest{VM: sock, Card: scard, Endpoints: routedtest.Sockets, RunDir: sockDir})
	if err != nil {
		t.Fatal(err)
	}
	gs := routedtest.NewGuest(t, resp.Endpoint)
	sip := gs.DHCP(t).IP

	p.Close()
	if !routedtest.LinkExists(ep.TAP) || linkUp(ep.TAP) {
		t.Fatalf("after the plugin stopped: TAP %s there %v, up %v; want it kept (its VM holds it), down", ep.TAP, routedtest.LinkExists(ep.TAP), linkUp(ep.TAP))
	}
	if routedtest.LinkExists(bridgeName) || routedtest.TableExists(t, "anka-shared") || routedtest.BridgeTableExists(t, bridgeTable) {
		t.Fatal("the stopped plugin left its bridge or a table")
	}
	if gf.Reaches(gateway, time.Second) {
		t.Error("the guest reaches the gateway with the plugin stopped")
	}

	p = start(t, dir, nil)
	if !routedtest.LinkExists(ep.TAP) {
		t.Fatal("the new plugin removed the TAP a running VM holds")
	}
	// The core attaches the running VMs again, offering what it offered.
	_, err = p.Attach(t.Context(), &sdk.AttachRequest{VM: fast, Card: fcard, Endpoints: routedtest.QEMU, RunDir: frameiotest.TempDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	r2, err := p.Attach(t.Context(), &sdk.AttachRequest{VM: sock, Card: scard, Endpoints: routedtest.QEMU, RunDir: sockDir})
	if err != nil {
		t.Fatal(err)
	}
	if r2.Endpoint.Kind != sdk.EndpointDgram || r2.Endpoint.PluginPath != resp.Endpoint.PluginPath {
		t.Errorf("the running socket VM attached again got %+v; want its socket back", r2.Endpoint)
	}
	if master(ep.TAP) != bridgeName || !linkUp(ep.TAP) {
		t.Fatalf("the TAP taken back is on %q, up %v", master(ep.TAP), linkUp(ep.TAP))
	}
	if !pingFromHost(fip, 5*time.Second) {
		t.Error("the host cannot reach the fast-path guest after the restart")
	}
	if !gf.Reaches(sip, 5*time.Second) || !gs.Reaches(fip, 5*time.Second) {
		t.Error("the guests cannot reach each other after the restart")
	}
	st := status(t, p, fast)
	if st.IP != fip.String() || !strings.HasPrefix(st.Path, "kernel bridge") {
		t.Errorf("Status after the restart: IP %q path %q; want %v on the kernel bridge", st.IP, st.Path, fip)
	}
	if l := gf.DHCP(t); l.IP != fip {
		t.Errorf("the guest's DHCP after the restart: %v; before %v", l.IP, fip)
	}
}

// TestBinaryCrashWithFastPath: the built plugin killed with -9 while a
// fast-path guest runs leaves bridge, tables and the VM's TAP; the guest
// still reaches the host through the kernel meanwhile. The next plugin
// adopts the bridge (the same device) with the VM's TAP on it, up, before
// the core attaches the VM again, takes the TAP back then, and the guest
// works on. Stopped while the VM runs, the plugin keeps only
// the VM's TAP; once the VM is gone, the next start removes it too.
func TestBinaryCrashWithFastPath(t *testing.T) {
	_, launch := routedtest.BinaryLauncher(t, "shared", "debug")
	vm, card := vmRef("vm1"), sdk.Card{Type: "shared", DynamicMAC: dyn(1)}
	attach := func(pl *host.Plugin) sdk.Endpoint {
		resp, err := pl.Client().Attach(t.Context(), &sdk.AttachRequest{VM: vm, Card: card, Endpoints: routedtest.QEMU, RunDir: frameiotest.TempDir(t)})
		if err != nil {
			t.Fatal(err)
		}
		return resp.Endpoint
	}

	pl := launch()
	ep := attach(pl)
	g := routedtest.NewGuest(t, ep)
	ip := g.DHCP(t).IP
	if err := syscall.Kill(pl.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	pl.Kill()
	if !routedtest.LinkExists(bridgeName) || !routedtest.LinkExists(ep.TAP) || !routedtest.BridgeTableExists(t, bridgeTable) {
		t.Fatal("a killed plugin left no bridge, TAP or table: the leftover test tests nothing")
	}
	if !g.Reaches(gateway, 5*time.Second) {
		t.Error("with the plugin dead the fast-path guest no longer reaches the host: the kernel path needs no plugin")
	}
	// A mark no plugin sets: a bridge made anew has not got it.
	if out, err := exec("ip", "link", "set", "dev", bridgeName, "group", "77"); err != nil {
		t.Fatalf("marking the bridge: %v %s", err, out)
	}

	pl = launch()
	if out, _ := exec("ip", "-o", "link", "show", "dev", bridgeName); !strings.Contains(out, "group 77") {
		t.Errorf("the restarted plugin made its bridge anew instead of adopting it: %s", out)
	}
	if master(ep.TAP) != bridgeName || !linkUp(ep.TAP) {
		t.Errorf("before the VM is attached again its TAP is on %q, up %v; want it kept on the bridge, up", master(ep.TAP), linkUp(ep.TAP))
	}
	if !g.Reaches(gateway, 5*time.Second) {
		t.Error("after the restart, before the VM is attached again, the fast-path guest does not reach the host")
	}
	if got := attach(pl); got.TAP != ep.TAP || got.Kind != sdk.EndpointTAP {
		t.Fatalf("attached again after the crash: %+v; want TAP %s", got, ep.TAP)
	}
	if !pingFromHost(ip, 5*time.Second) || !g.Reaches(gateway, 5*time.Second) {
		t.Error("the fast-path guest and the host do not reach each other after the crash")
	}
	if st, err := pl.Client().Status(t.Context(), &sdk.StatusRequest{VM: vm, Type: "shared"}); err != nil || st.IP != ip.String() {
		t.Errorf("Status after the crash: %+v %v; want IP %v", st, err, ip)
	}

	pl.Kill() // gracefully, while the VM runs
	if routedtest.LinkExists(bridgeName) || routedtest.TableExists(t, "anka-shared") || routedtest.BridgeTableExists(t, bridgeTable) {
		t.Fatal("the stopped plugin left its bridge or a table")
	}
	if !routedtest.LinkExists(ep.TAP) {
		t.Fatal("the stopped plugin removed the TAP its running VM holds")
	}
	g.Close() // the VM goes away while no plugin runs
	pl = launch()
	if routedtest.LinkExists(ep.TAP) {
		t.Error("the plugin's start left a VM TAP no VM holds")
	}
	pl.Kill()
	for _, l := range []string{bridgeName, uplinkName, ep.TAP} {
		if routedtest.LinkExists(l) {
			t.Errorf("%s left at the end", l)
		}
	}
}

var _ = frameio.KindTAP
