package netkit_test

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/arp"
	"github.com/anka-net/anka/sdk/netkit/dhcpserver"
	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"github.com/anka-net/anka/sdk/netkit/mactrans"
	"github.com/anka-net/anka/sdk/netkit/vswitch"
)

// network is the smallest real network the kit makes: a switch, a DHCP
// server and an ARP responder for the gateway, with no host side.
type network struct {
	sw    *vswitch.Switch
	srv   *dhcpserver.Server
	ports sync.Map // identity -> *vswitch.Port
}

var (
	gwIP  = netip.MustParseAddr("10.77.0.1")
	gwMAC = net.HardwareAddr{0x02, 0xa7, 0, 0, 0, 1}
)

func newNetwork(t *testing.T) *network {
	n := &network{sw: vswitch.New(vswitch.Config{})}
	t.Cleanup(func() { n.sw.Close() })
	store, err := dhcpserver.OpenStore(filepath.Join(t.TempDir(), "leases.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	n.srv, err = dhcpserver.New(dhcpserver.Config{
		ServerIP: gwIP, ServerMAC: gwMAC, Subnet: netip.MustParsePrefix("10.77.0.0/24"), Router: gwIP,
		RangeStart: netip.MustParseAddr("10.77.0.10"), RangeEnd: netip.MustParseAddr("10.77.0.50"),
		LeaseTime: time.Hour,
		OnLease: func(l dhcpserver.Lease) {
			if p, ok := n.ports.Load(l.Identity); ok {
				p.(*vswitch.Port).SetIP(l.IP) // anti-spoofing pins the port to its lease
			}
		},
	}, store)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.srv.Close() })
	gw, err := n.sw.AttachService(vswitch.PortConfig{Name: "gateway", MAC: gwMAC}, func([]frameio.Frame) {})
	if err != nil {
		t.Fatal(err)
	}
	resp := &arp.Responder{}
	resp.Add(gwIP, gwMAC)
	n.sw.Intercept(func(from *vswitch.Port, fr []byte) bool {
		if n.srv.HandleFrame(from.Identity(), fr, func(b []byte) { gw.Send(b) }) {
			return true
		}
		var reply [64]byte
		if k, ok := resp.HandleFrame(fr, reply[:]); ok {
			gw.Send(reply[:k])
			return true
		}
		return false
	})
	return n
}

// guest is a namespace whose eth0 is a TAP the switch holds: a real
// Linux network stack on the far side of frameio.
func (n *network) guest(t *testing.T, identity string, mac net.HardwareAddr) *frameiotest.Netns {
	return n.clone(t, identity, mac, mac)
}

// clone is a guest whose NIC has the internal MAC while the network sees
// the dynamic one: MAC translation both ways on the port.
func (n *network) clone(t *testing.T, identity string, internal, dynamic net.HardwareAddr) *frameiotest.Netns {
	ns := frameiotest.NewNetns(t)
	var tap *frameio.TAPPort
	if err := ns.Run(func() (err error) {
		tap, err = frameio.OpenTAP("eth0", frameio.TAPOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ns.IP(t, "link", "set", "eth0", "address", internal.String())
	ns.IP(t, "link", "set", "lo", "up")
	ns.IP(t, "link", "set", "eth0", "up")
	pc := vswitch.PortConfig{Name: identity, Identity: identity, MAC: dynamic, AntiSpoof: true}
	if internal.String() != dynamic.String() {
		// One translator per direction: each runs on one goroutine.
		out, err := mactrans.New(internal, dynamic)
		if err != nil {
			t.Fatal(err)
		}
		in, _ := mactrans.New(internal, dynamic)
		pc.FromLink = func(f []byte) bool { out.ToNetwork(f); return true }
		pc.ToLink = in.ToGuest
	}
	p, err := n.sw.Attach(tap, pc)
	if err != nil {
		t.Fatal(err)
	}
	n.ports.Store(identity, p)
	return ns
}

const udhcpcScript = `#!/bin/sh
case "$1" in
bound|renew)
	busybox ip addr flush dev "$interface"
	busybox ip addr add "$ip/$mask" dev "$interface"
	[ -n "$router" ] && busybox ip route replace default via "$router"
	;;
esac
`

// TestUdhcpcThroughSwitch: busybox's udhcpc gets leases from the kit's DHCP
// server through TAPs joined to the switch, and the two namespaces ping
// each other through it.
func TestUdhcpcThroughSwitch(t *testing.T) {
	if _, err := exec.LookPath("busybox"); err != nil {
		if os.Getenv("ANKA_E2E") != "" {
			t.Fatal("busybox is missing: make deps installs busybox-static")
		}
		t.Skip("needs busybox (udhcpc)")
	}
	n := newNetwork(t)
	script := filepath.Join(t.TempDir(), "udhcpc.sh")
	os.WriteFile(script, []byte(udhcpcScript), 0o755)
	macs := []net.HardwareAddr{{0x02, 0xa7, 0, 0, 0, 0x11}, {0x02, 0xa7, 0, 0, 0, 0x12}}
	var guests []*frameiotest.Netns
	var ips []netip.Addr
	for i, id := range []string{"vm-1", "vm-2"} {
		ns := n.guest(t, id, macs[i])
		out := ns.Exec(t, "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-s", script)
		l, ok := n.srv.Lease(id)
		if !ok || !l.IP.IsValid() {
			t.Fatalf("%s has no lease after udhcpc:\n%s", id, out)
		}
		if addr := ns.IP(t, "-4", "-o", "addr", "show", "dev", "eth0"); !strings.Contains(addr, l.IP.String()+"/24") {
			t.Fatalf("%s: lease %s not configured: %s", id, l.IP, addr)
		}
		guests, ips = append(guests, ns), append(ips, l.IP)
	}
	if ips[0] == ips[1] {
		t.Fatalf("both guests got %s", ips[0])
	}
	out := guests[1].Exec(t, "busybox", "ping", "-c", "3", "-W", "2", ips[0].String())
	if !strings.Contains(out, "3 packets received") {
		t.Fatalf("ping through the switch:\n%s", out)
	}
	// Anti-spoofing pinned each port to its lease: vm-2 taking another
	// address gets nothing through.
	guests[1].IP(t, "addr", "flush", "dev", "eth0")
	guests[1].IP(t, "addr", "add", "10.77.0.99/24", "dev", "eth0")
	if _, err := exec.Command("ip", "netns", "exec", guests[1].Name, "busybox", "ping", "-c", "2", "-W", "1", ips[0].String()).CombinedOutput(); err == nil {
		t.Fatal("a guest with a forged address still reached the other")
	}
	p, _ := n.ports.Load("vm-2")
	if st := p.(*vswitch.Port).Stats(); st.Drops["source IP not the port's"] == 0 && st.Drops["ARP sender not the port's"] == 0 {
		t.Fatalf("no spoofing drop counted: %+v", st)
	}
}

// TestClonesWithOneMAC: two guests with the same internal MAC (clones of
// one VM, `-m`) get two addresses and reach each other, because the
// network only ever sees their distinct dynamic MACs.
func TestClonesWithOneMAC(t *testing.T) {
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Skip("needs busybox (udhcpc)")
	}
	n := newNetwork(t)
	script := filepath.Join(t.TempDir(), "udhcpc.sh")
	os.WriteFile(script, []byte(udhcpcScript), 0o755)
	internal := net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	var guests []*frameiotest.Netns
	var ips []netip.Addr
	for i, id := range []string{"clone-1", "clone-2"} {
		ns := n.clone(t, id, internal, net.HardwareAddr{0x02, 0xa7, 0, 0, 1, byte(i)})
		out := ns.Exec(t, "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-s", script)
		l, ok := n.srv.Lease(id)
		if !ok {
			t.Fatalf("%s got no lease:\n%s", id, out)
		}
		if l.MAC.String() != fmt.Sprintf("02:a7:00:00:01:%02x", i) {
			t.Errorf("the DHCP server saw MAC %s, not the dynamic one", l.MAC)
		}
		guests, ips = append(guests, ns), append(ips, l.IP)
	}
	if ips[0] == ips[1] {
		t.Fatalf("clones share %s", ips[0])
	}
	if out := guests[0].Exec(t, "busybox", "ping", "-c", "2", "-W", "2", ips[1].String()); !strings.Contains(out, "2 packets received") {
		t.Fatalf("clone-1 cannot reach clone-2:\n%s", out)
	}
}
