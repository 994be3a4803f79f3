//go:build linux

package hostnet_test

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"github.com/anka-net/anka/sdk/netkit/hostnet"
)

const (
	brTable  = "anka-br-hnt"
	uplink   = "anka-hntsw"
	vmID     = "0a1b2c3d-0000-4000-8000-00000000000a"
	otherMAC = "02:a4:6b:00:00:99"
)

func bridgeConfig(mode hostnet.Mode) hostnet.Config {
	c := config(mode)
	c.Bridge = true
	if os.Getenv("HOSTNET_DEBUG") != "" {
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return c
}

// frames collects what a port reads until the test ends.
type frames struct {
	mu  sync.Mutex
	got [][]byte
}

func collect(t *testing.T, p frameio.Port) *frames {
	f := &frames{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := frameio.NewBatch(16, p.MTU())
		for {
			n, err := p.ReadBatch(b)
			f.mu.Lock()
			for i := range n {
				f.got = append(f.got, append([]byte(nil), b[i].Bytes()...))
			}
			f.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { p.Close(); <-done })
	return f
}

// wait returns the first frame match accepts within d.
func (f *frames) wait(d time.Duration, match func([]byte) bool) ([]byte, bool) {
	deadline := time.Now().Add(d)
	for {
		f.mu.Lock()
		for _, fr := range f.got {
			if match(fr) {
				f.mu.Unlock()
				return fr, true
			}
		}
		f.mu.Unlock()
		if time.Now().After(deadline) {
			return nil, false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func write(t *testing.T, p frameio.Port, fr []byte) {
	t.Helper()
	b := frameio.NewBatch(1, p.MTU())
	b[0].N = copy(b[0].Buf, fr)
	if _, err := p.WriteBatch(b); err != nil {
		t.Fatalf("writing a frame: %v", err)
	}
}

func payloadIs(s string) func([]byte) bool {
	return func(fr []byte) bool { return bytes.Contains(fr, []byte(s)) }
}

func arpFrame(t *testing.T, src net.HardwareAddr, sha net.HardwareAddr, spa, tpa netip.Addr) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: src, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP}
	arp := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: layers.ARPRequest, SourceHwAddress: sha, SourceProtAddress: spa.AsSlice(),
		DstHwAddress: make([]byte, 6), DstProtAddress: tpa.AsSlice()}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, eth, arp); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestBridgeSetupAndClose: bridge mode makes the bridge holding the
// gateway with a stable MAC, the switch's uplink on it with the service
// MAC behind it, and both tables; Close removes all of it.
func TestBridgeSetupAndClose(t *testing.T) {
	guard := hostGuard(t)
	v := newView(t)
	n := v.mustSetup(t, bridgeConfig(hostnet.Isolated))
	guard()

	br := v.link(t, tapName)
	if br == nil || br.Type() != "bridge" || br.Attrs().MTU != 4000 || br.Attrs().Alias != table || br.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("bridge %s: %+v", tapName, br)
	}
	addrs, _ := v.nl.AddrList(br, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "192.168.64.1/24" {
		t.Errorf("bridge addresses %v", addrs)
	}
	gw, err := n.GatewayMAC()
	if err != nil || !bytes.Equal(gw, br.Attrs().HardwareAddr) || gw[0]&3 != 2 {
		t.Errorf("GatewayMAC %v %v; the bridge has %v, locally administered", gw, err, br.Attrs().HardwareAddr)
	}
	if n.Link().Name() != uplink || n.Device() != tapName {
		t.Errorf("Link %s, Device %s", n.Link().Name(), n.Device())
	}
	up := v.link(t, uplink)
	if up == nil || up.Type() != "tuntap" || up.Attrs().MasterIndex != br.Attrs().Index || up.Attrs().Alias != table {
		t.Fatalf("uplink %+v", up)
	}
	fdb, err := v.nl.NeighList(up.Attrs().Index, unix.AF_BRIDGE)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(fdb, func(e netlink.Neigh) bool {
		return bytes.Equal(e.HardwareAddr, n.ServiceMAC()) && e.State&netlink.NUD_NOARP != 0
	}) {
		t.Errorf("no static forwarding entry for the service MAC %v on the uplink: %v", n.ServiceMAC(), fdb)
	}
	if got := v.tables(t); !slices.Contains(got, table) || !slices.Contains(got, brTable) {
		t.Errorf("tables %v", got)
	}
	if n.PortName(vmID) != n.PortName(vmID) || !strings.HasPrefix(n.PortName(vmID), "akh") || len(n.PortName(vmID)) != 11 {
		t.Errorf("PortName %q", n.PortName(vmID))
	}

	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	v.assertGone(t)
	if v.link(t, uplink) != nil || slices.Contains(v.tables(t), brTable) {
		t.Error("Close left the uplink or the bridge table")
	}
	n2 := v.mustSetup(t, bridgeConfig(hostnet.Isolated))
	if gw2, _ := n2.GatewayMAC(); !bytes.Equal(gw, gw2) {
		t.Errorf("the gateway MAC changed from %v to %v between runs", gw, gw2)
	}
}

// bridged is a bridge-mode network with one VM TAP, the VM's side of it,
// and what reaches the uplink.
type bridged struct {
	v      *view
	n      *hostnet.Network
	tap    string
	vm     *frameio.TAPPort
	fromVM *frames // what the switch's uplink reads
	toVM   *frames
}

func newBridged(t *testing.T) *bridged {
	hostGuard(t)
	v := newView(t)
	n := v.mustSetup(t, bridgeConfig(hostnet.NAT))
	name, adopted, err := n.AddPort(vmID, guestMAC)
	if err != nil || adopted {
		t.Fatalf("AddPort: %q %v %v", name, adopted, err)
	}
	if name != n.PortName(vmID) {
		t.Errorf("AddPort named the TAP %s; PortName says %s", name, n.PortName(vmID))
	}
	var vm *frameio.TAPPort
	if err := v.ns.Run(func() (err error) {
		vm, err = frameio.OpenTAP(name, frameio.TAPOptions{MTU: 4000, Logger: frameiotest.Quiet})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	b := &bridged{v: v, n: n, tap: name, vm: vm}
	b.toVM = collect(t, vm)
	b.fromVM = collect(t, n.Link())
	return b
}

// TestBridgePorts: a VM TAP on the bridge passes only its own MAC and,
// for IPv4 and ARP, DHCP until it is pinned and then its address; DHCP
// goes to the service MAC; the counters say what was dropped and whether
// the VM used its address.
func TestBridgePorts(t *testing.T) {
	b := newBridged(t)
	l := b.v.link(t, b.tap)
	if l == nil || l.Type() != "tuntap" || l.Attrs().MTU != 4000 || l.Attrs().Flags&net.FlagUp == 0 ||
		l.Attrs().MasterIndex != b.v.link(t, tapName).Attrs().Index || !strings.HasPrefix(l.Attrs().Alias, table+" vm ") {
		t.Fatalf("VM TAP %+v", l)
	}
	if tun, ok := l.(*netlink.Tuntap); !ok || tun.NonPersist {
		t.Errorf("the VM TAP is not persistent: %+v", l)
	}
	gw := b.v.link(t, tapName).Attrs().HardwareAddr
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	send := func(fr []byte) { write(t, b.vm, fr) }
	udp := func(src net.HardwareAddr, ip netip.Addr, payload string) []byte {
		return udpFrame(t, src, bcast, netip.AddrPortFrom(ip, 5000), netip.AddrPortFrom(netip.MustParseAddr("192.168.64.255"), 5000), payload)
	}
	passes := func(what string, fr []byte, payload string, want bool) {
		t.Helper()
		send(fr)
		wait := time.Second
		if !want {
			wait = 300 * time.Millisecond
		}
		if _, got := b.fromVM.wait(wait, payloadIs(payload)); got != want {
			t.Errorf("%s: reached the uplink %v, want %v", what, got, want)
		}
	}

	// Before a pin: DHCP only, and it goes to the service MAC, even a
	// broadcast, even one addressed to the gateway's MAC.
	disc := udpFrame(t, guestMAC, bcast, netip.AddrPortFrom(netip.IPv4Unspecified(), 68), netip.AddrPortFrom(netip.MustParseAddr("255.255.255.255"), 67), "dhcp-discover")
	send(disc)
	if fr, ok := b.fromVM.wait(time.Second, payloadIs("dhcp-discover")); !ok || !bytes.Equal(fr[0:6], b.n.ServiceMAC()) {
		t.Errorf("DHCP from the VM: reached the uplink %v, to %v; want the service MAC %v", ok, net.HardwareAddr(fr[0:6]), b.n.ServiceMAC())
	}
	renew := udpFrame(t, guestMAC, gw, netip.AddrPortFrom(netip.IPv4Unspecified(), 68), netip.AddrPortFrom(gateway, 67), "dhcp-to-gateway")
	send(renew)
	if fr, ok := b.fromVM.wait(time.Second, payloadIs("dhcp-to-gateway")); !ok || !bytes.Equal(fr[0:6], b.n.ServiceMAC()) {
		t.Errorf("DHCP to the gateway's MAC: reached the uplink %v; want it steered to the service MAC", ok)
	}
	passes("UDP before the pin", udp(guestMAC, guestIP, "early"), "early", false)
	passes("ARP probe from 0.0.0.0", arpFrame(t, guestMAC, guestMAC, netip.IPv4Unspecified(), guestIP), "", true)

	if err := b.n.PinPort(b.tap, guestIP); err != nil {
		t.Fatal(err)
	}
	if _, seen, _ := b.n.PortStats(b.tap); seen {
		t.Error("seen before the VM sent from its address")
	}
	passes("UDP from its address", udp(guestMAC, guestIP, "mine"), "mine", true)
	if _, seen, _ := b.n.PortStats(b.tap); !seen {
		t.Error("not seen after the VM sent from its address")
	}
	passes("UDP from another address", udp(guestMAC, netip.MustParseAddr("192.168.64.11"), "forged-ip"), "forged-ip", false)
	forged, _ := net.ParseMAC(otherMAC)
	passes("UDP from another MAC", udp(forged, guestIP, "forged-mac"), "forged-mac", false)
	passes("UDP from the gateway's MAC", udp(gw, guestIP, "gateway-mac"), "gateway-mac", false)
	srvReply := udpFrame(t, guestMAC, bcast, netip.AddrPortFrom(guestIP, 67), netip.AddrPortFrom(netip.MustParseAddr("255.255.255.255"), 68), "rogue-dhcp")
	passes("a DHCP server reply", srvReply, "rogue-dhcp", false)
	arpOK := arpFrame(t, guestMAC, guestMAC, guestIP, gateway)
	send(arpOK)
	if _, ok := b.fromVM.wait(time.Second, func(fr []byte) bool { return bytes.Equal(fr, arpOK) }); !ok {
		t.Error("the VM's own ARP request did not reach the uplink")
	}
	for _, bad := range [][]byte{
		arpFrame(t, guestMAC, forged, guestIP, gateway),                               // another sender MAC
		arpFrame(t, guestMAC, guestMAC, netip.MustParseAddr("192.168.64.1"), guestIP), // the gateway's address
	} {
		send(bad)
		if _, ok := b.fromVM.wait(300*time.Millisecond, func(fr []byte) bool { return bytes.Equal(fr, bad) }); ok {
			t.Errorf("a forged ARP frame reached the uplink: % x", bad[:42])
		}
	}
	// A VLAN tag hides nothing.
	tagged := udp(guestMAC, guestIP, "tagged")
	tagged = slices.Concat(tagged[:12], []byte{0x81, 0x00, 0x00, 0x05}, tagged[12:])
	passes("a VLAN-tagged frame", tagged, "tagged", false)

	st, _, err := b.n.PortStats(b.tap)
	if err != nil {
		t.Fatal(err)
	}
	for reason, min := range map[string]uint64{
		"source MAC not the port's": 2, "source IP not the port's": 2, "ARP sender not the port's": 2,
		"DHCP server reply from a VM": 1, "VLAN tag": 1,
	} {
		if st.Drops[reason] < min {
			t.Errorf("drops %q: %d, want at least %d (all: %v)", reason, st.Drops[reason], min, st.Drops)
		}
	}
	if st.RxFrames < 10 {
		t.Errorf("frames from the VM: %d", st.RxFrames)
	}
	// Pinned again, the drops counted so far stay.
	before := st.Drops["source IP not the port's"]
	if err := b.n.PinPort(b.tap, netip.MustParseAddr("192.168.64.11")); err != nil {
		t.Fatal(err)
	}
	passes("UDP from the new address", udp(guestMAC, netip.MustParseAddr("192.168.64.11"), "new"), "new", true)
	passes("UDP from the old address", udp(guestMAC, guestIP, "old"), "old", false)
	if st, _, _ := b.n.PortStats(b.tap); st.Drops["source IP not the port's"] != before+1 {
		t.Errorf("drops after the new pin: %d, want %d", st.Drops["source IP not the port's"], before+1)
	}

	// The host side reaches the VM through the bridge.
	toVM := udpFrame(t, gw, guestMAC, netip.AddrPortFrom(gateway, 1), netip.AddrPortFrom(guestIP, 2), "to-the-vm")
	write(t, b.n.Link(), toVM)
	if _, ok := b.toVM.wait(time.Second, payloadIs("to-the-vm")); !ok {
		t.Error("a frame from the uplink did not reach the VM")
	}

	if err := b.n.RemovePort(b.tap); err != nil {
		t.Fatal(err)
	}
	if b.v.link(t, b.tap) != nil {
		t.Error("RemovePort left the TAP")
	}
	if _, ok := b.v.chains(t, brTable)["vm-"+b.tap]; ok {
		t.Error("RemovePort left the VM's chain")
	}
	if err := b.n.RemovePort(b.tap); err != nil {
		t.Errorf("RemovePort again: %v", err)
	}
}

// TestBridgeCapture: a capture on a VM TAP sees both directions.
func TestBridgeCapture(t *testing.T) {
	b := newBridged(t)
	if err := b.n.PinPort(b.tap, guestIP); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen [][]byte
	stop, err := b.n.CapturePort(b.tap, func(fr []byte) {
		mu.Lock()
		seen = append(seen, append([]byte(nil), fr...))
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	gw := b.v.link(t, tapName).Attrs().HardwareAddr
	write(t, b.vm, udpFrame(t, guestMAC, gw, netip.AddrPortFrom(guestIP, 1), netip.AddrPortFrom(gateway, 9), "out-of-vm"))
	write(t, b.n.Link(), udpFrame(t, gw, guestMAC, netip.AddrPortFrom(gateway, 9), netip.AddrPortFrom(guestIP, 1), "into-vm"))
	deadline := time.Now().Add(2 * time.Second)
	for {
		mu.Lock()
		both := slices.ContainsFunc(seen, payloadIs("out-of-vm")) && slices.ContainsFunc(seen, payloadIs("into-vm"))
		mu.Unlock()
		if both {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the capture saw %d frames, not both directions", len(seen))
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	mu.Lock()
	n := len(seen)
	mu.Unlock()
	write(t, b.vm, udpFrame(t, guestMAC, gw, netip.AddrPortFrom(guestIP, 1), netip.AddrPortFrom(gateway, 9), "after"))
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != n {
		t.Error("the capture went on after stop")
	}
}

// TestBridgeKeepsHeldTAPs: Close and the next Setup remove the VM TAPs no
// process holds and keep, down, those a VM holds; AddPort takes such a
// TAP back and it passes frames again.
func TestBridgeKeepsHeldTAPs(t *testing.T) {
	b := newBridged(t)
	idle, _, err := b.n.AddPort("idle-vm", net.HardwareAddr{0x02, 0xa4, 0x6b, 0, 0, 0x11})
	if err != nil {
		t.Fatal(err)
	}
	// A leftover of a crashed run: named by the scheme, nobody holds it.
	stale := "akh0badc0de"
	if err := b.v.ns.Run(func() error {
		p, err := frameio.OpenTAP(stale, frameio.TAPOptions{Persist: true})
		if err != nil {
			return err
		}
		return p.Close()
	}); err != nil {
		t.Fatal(err)
	}
	// Another network's TAP whose name happens to fit the scheme.
	foreign := "akh0000beef"
	if err := b.v.ns.Run(func() error {
		p, err := frameio.OpenTAP(foreign, frameio.TAPOptions{Persist: true})
		if err != nil {
			return err
		}
		return p.Close()
	}); err != nil {
		t.Fatal(err)
	}
	b.v.ns.IP(t, "link", "set", "dev", foreign, "alias", "anka-hntx vm other")
	t.Cleanup(func() { b.v.ns.IP(t, "link", "del", foreign) })
	heldIdx := b.v.link(t, b.tap).Attrs().Index
	if err := b.n.Close(); err != nil {
		t.Fatal(err)
	}
	if b.v.link(t, idle) != nil || b.v.link(t, stale) != nil {
		t.Error("Close left a VM TAP nobody holds")
	}
	if b.v.link(t, foreign) == nil {
		t.Error("Close removed another network's TAP")
	}
	l := b.v.link(t, b.tap)
	if l == nil || l.Attrs().Index != heldIdx || l.Attrs().Flags&net.FlagUp != 0 {
		t.Fatalf("the TAP the VM holds: %+v; want it kept, down", l)
	}
	if b.v.link(t, tapName) != nil || slices.Contains(b.v.tables(t), brTable) || slices.Contains(b.v.tables(t), table) {
		t.Fatal("Close left the bridge or a table")
	}

	// The next run: a stale TAP again, and the held one.
	if err := b.v.ns.Run(func() error {
		p, err := frameio.OpenTAP(stale, frameio.TAPOptions{Persist: true})
		if err != nil {
			return err
		}
		return p.Close()
	}); err != nil {
		t.Fatal(err)
	}
	n := b.v.mustSetup(t, bridgeConfig(hostnet.NAT))
	if b.v.link(t, stale) != nil {
		t.Error("Setup left a stale VM TAP")
	}
	name, adopted, err := n.AddPort(vmID, guestMAC)
	if err != nil || !adopted || name != b.tap {
		t.Fatalf("AddPort after a restart: %s %v %v; want %s taken back", name, adopted, err, b.tap)
	}
	l = b.v.link(t, b.tap)
	if l.Attrs().Index != heldIdx || l.Attrs().Flags&net.FlagUp == 0 || l.Attrs().MasterIndex != b.v.link(t, tapName).Attrs().Index {
		t.Fatalf("the TAP taken back: %+v", l)
	}
	if err := n.PinPort(name, guestIP); err != nil {
		t.Fatal(err)
	}
	fromVM := collect(t, n.Link())
	write(t, b.vm, udpFrame(t, guestMAC, net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		netip.AddrPortFrom(guestIP, 1), netip.AddrPortFrom(netip.MustParseAddr("192.168.64.255"), 9), "again"))
	if _, ok := fromVM.wait(time.Second, payloadIs("again")); !ok {
		t.Error("the TAP taken back passes nothing")
	}

	// The VM stops: its TAP goes with the next Close.
	b.vm.Close()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if b.v.link(t, b.tap) != nil {
		t.Error("Close kept a TAP no VM holds any more")
	}
	b.v.assertGone(t)
}

// TestBridgeRulesOrder: with br_netfilter handing bridged frames to the
// IP hooks, the isolated network's forward drops and a FORWARD drop
// policy still leave VM to VM traffic alone: the bridged accept comes
// first.
func TestBridgeRulesOrder(t *testing.T) {
	hostGuard(t)
	v := newView(t)
	v.addIPTablesFilter(t)
	v.mustSetup(t, bridgeConfig(hostnet.Isolated))
	rs, err := v.nft.GetRules(&nftables.Table{Name: table, Family: nftables.TableFamilyINet}, &nftables.Chain{Name: "forward"})
	if err != nil || len(rs) != 3 {
		t.Fatalf("forward chain: %d rules, %v", len(rs), err)
	}
	if !bytes.Contains(ruleBytes(rs[0]), []byte(tapName)) {
		t.Error("the first forward rule is not the bridged accept")
	}
	ipt := v.iptRules(t)
	if len(ipt) != 2 || comment(ipt[0]) != table {
		t.Errorf("ip filter FORWARD: %d rules; want ours first", len(ipt))
	}
}

func ruleBytes(r *nftables.Rule) []byte {
	var b []byte
	for _, e := range r.Exprs {
		if c, ok := e.(*expr.Cmp); ok {
			b = append(b, c.Data...)
		}
	}
	return b
}
