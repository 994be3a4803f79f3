//go:build linux

package hostnet_test

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"github.com/anka-net/anka/sdk/netkit/hostnet"
)

// crash drops n as kill -9 would: nothing of it is closed but the
// process's file descriptors, so the switch's (non-persistent) uplink TAP
// goes; the bridge, the VM TAPs and the tables stay.
func crash(t *testing.T, n *hostnet.Network) {
	t.Helper()
	if err := n.Link().Close(); err != nil {
		t.Fatalf("closing the uplink's descriptor: %v", err)
	}
}

// holdTAP opens VM TAP name in v as the VM's process would.
func holdTAP(t *testing.T, v *view, name string) *frameio.TAPPort {
	t.Helper()
	var p *frameio.TAPPort
	if err := v.ns.Run(func() (err error) {
		p, err = frameio.OpenTAP(name, frameio.TAPOptions{MTU: 4000, Logger: frameiotest.Quiet})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// watchLink records every netlink update of interface name in v until
// the returned stop is called; stop returns them. It returns once an
// update it provoked (a new txqueuelen) has come, so the watch is known
// to work.
func watchLink(t *testing.T, v *view, name string) (stop func() []netlink.LinkUpdate) {
	t.Helper()
	h, err := netns.GetFromName(v.ns.Name)
	if err != nil {
		t.Fatal(err)
	}
	ch, done := make(chan netlink.LinkUpdate, 256), make(chan struct{})
	var (
		mu      sync.Mutex
		got     []netlink.LinkUpdate
		stopped bool
	)
	if err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{Namespace: &h,
		ErrorCallback: func(err error) {
			mu.Lock()
			defer mu.Unlock()
			if !stopped { // closing the socket ends the receive with an error
				t.Errorf("watching %s: %v", name, err)
			}
		}}); err != nil {
		h.Close()
		t.Fatal(err)
	}
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for u := range ch {
			if u.Link.Attrs().Name == name {
				mu.Lock()
				got = append(got, u)
				mu.Unlock()
			}
		}
	}()
	var once sync.Once
	stop = func() []netlink.LinkUpdate {
		once.Do(func() {
			// Let updates of what happened so far arrive, then stop.
			time.Sleep(50 * time.Millisecond)
			mu.Lock()
			stopped = true
			mu.Unlock()
			close(done)
			<-finished
			h.Close()
		})
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
	t.Cleanup(func() { stop() })
	v.ns.IP(t, "link", "set", "dev", name, "txqueuelen", "1234")
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		got = got[:0]
		mu.Unlock()
		if n > 0 {
			return stop
		}
		if time.Now().After(deadline) {
			t.Fatalf("no netlink update of %s after changing its txqueuelen: the watch does not work", name)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// mark gives the bridge a device group no Setup sets: a bridge made anew
// does not have it.
func mark(t *testing.T, v *view) {
	t.Helper()
	v.ns.IP(t, "link", "set", "dev", tapName, "group", "77")
}

func marked(t *testing.T, v *view) bool {
	t.Helper()
	l := v.link(t, tapName)
	return l != nil && l.Attrs().Group == 77
}

// portRules lists the rules of VM TAP name's chain, nil if it has none.
func (v *view) portRules(t *testing.T, name string) []*nftables.Rule {
	t.Helper()
	if _, ok := v.chains(t, brTable)["vm-"+name]; !ok {
		return nil
	}
	rs, err := v.nft.GetRules(&nftables.Table{Name: brTable, Family: nftables.TableFamilyBridge}, &nftables.Chain{Name: "vm-" + name})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// portsMap is the bridge table's ports map: TAP -> the chain it jumps to.
func (v *view) portsMap(t *testing.T) map[string]string {
	t.Helper()
	tb := &nftables.Table{Name: brTable, Family: nftables.TableFamilyBridge}
	s, err := v.nft.GetSetByName(tb, "ports")
	if err != nil {
		t.Fatal(err)
	}
	els, err := v.nft.GetSetElements(s)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, el := range els {
		// el.Val holds the verdict's attributes undecoded; the chain's
		// name is the one NUL-terminated string in them.
		chain := ""
		if i := strings.Index(string(el.Val), "vm-"); i >= 0 {
			chain, _, _ = strings.Cut(string(el.Val[i:]), "\x00")
		}
		m[strings.TrimRight(string(el.Key), "\x00")] = chain
	}
	return m
}

func (v *view) ourIPTRules(t *testing.T) int {
	t.Helper()
	n := 0
	for _, r := range v.iptRules(t) {
		if comment(r) == table {
			n++
		}
	}
	return n
}

// TestBridgeAdopt: a Setup after a crash adopts the running bridge: the
// bridge keeps its index, a VM TAP its VM holds and attaches again never
// leaves it and keeps its anti-spoofing, a VM TAP nobody holds is removed,
// the tables and our FORWARD rules are replaced (not doubled); a changed
// subnet makes everything anew, as without adoption.
func TestBridgeAdopt(t *testing.T) {
	hostGuard(t)
	v := newView(t)
	v.addIPTablesFilter(t)
	n1 := v.mustSetup(t, bridgeConfig(hostnet.NAT))
	const idA, idB = "vm-a-0000-4000-8000-00000000000a", "vm-b-0000-4000-8000-00000000000b"
	macA, macB := guestMAC, net.HardwareAddr{0x02, 0xa4, 0x6b, 0, 0, 0x11}
	tapA, _, err := n1.AddPort(idA, macA)
	if err != nil {
		t.Fatal(err)
	}
	tapB, _, err := n1.AddPort(idB, macB)
	if err != nil {
		t.Fatal(err)
	}
	if err := n1.PinPort(tapA, guestIP); err != nil {
		t.Fatal(err)
	}
	vmA := holdTAP(t, v, tapA) // A's VM runs; B's died with the plugin
	toA := collect(t, vmA)
	// Until the bridge has seen the TAP's carrier (the kernel's link
	// watch, up to a second) the port drops what it sends: repeat.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		write(t, vmA, udpFrame(t, macA, layers.EthernetBroadcast, netip.AddrPortFrom(guestIP, 1),
			netip.AddrPortFrom(netip.MustParseAddr("192.168.64.255"), 9), "before"))
		if _, seen, _ := n1.PortStats(tapA); seen {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the VM's frame from its address was never counted as seen")
		}
	}
	brIdx := v.link(t, tapName).Attrs().Index
	upIdx := v.link(t, uplink).Attrs().Index
	aIdx := v.link(t, tapA).Attrs().Index
	rulesBefore := v.portRules(t, tapA)
	if len(rulesBefore) == 0 || v.ourIPTRules(t) != 2 {
		t.Fatalf("before the crash: %d rules for %s, %d of ours in FORWARD", len(rulesBefore), tapA, v.ourIPTRules(t))
	}

	watch := watchLink(t, v, tapA)
	mark(t, v)
	crash(t, n1)
	n2 := v.mustSetup(t, bridgeConfig(hostnet.NAT))
	name, adopted, err := n2.AddPort(idA, macA)
	if err != nil || !adopted || name != tapA {
		t.Fatalf("AddPort after the restart: %s %v %v; want %s taken back", name, adopted, err, tapA)
	}
	if err := n2.PinPort(tapA, guestIP); err != nil {
		t.Fatal(err)
	}
	updates := watch()

	br := v.link(t, tapName)
	if br == nil || br.Attrs().Index != brIdx || !marked(t, v) {
		t.Fatalf("the bridge was replaced (index %d, then %+v)", brIdx, br)
	}
	if up := v.link(t, uplink); up == nil || up.Attrs().Index == upIdx || up.Attrs().MasterIndex != brIdx {
		t.Errorf("uplink after the restart: %+v; want a new one on the bridge", up)
	}
	a := v.link(t, tapA)
	if a == nil || a.Attrs().Index != aIdx || a.Attrs().MasterIndex != brIdx || a.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("VM TAP %s after the restart: %+v; want the same TAP, up, on the bridge", tapA, a)
	}
	for _, u := range updates {
		if u.Attrs().MasterIndex != brIdx || u.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("VM TAP %s left the bridge or went down during the restart: master %d, flags %v",
				tapA, u.Attrs().MasterIndex, u.Attrs().Flags)
		}
	}
	t.Logf("%d netlink updates of %s during the restart, all on the bridge and up", len(updates), tapA)
	if v.link(t, tapB) != nil {
		t.Errorf("VM TAP %s, which nobody holds, survived the restart", tapB)
	}
	if got := v.ourIPTRules(t); got != 2 {
		t.Errorf("%d rules of ours in ip filter FORWARD after the restart, want 2", got)
	}
	if _, ok := v.chains(t, table)["postrouting"]; !ok {
		t.Error("no postrouting (NAT) chain after the restart")
	}
	if m := v.portsMap(t); len(m) != 1 || m[tapA] != "vm-"+tapA {
		t.Errorf("ports map after the restart: %v; want only %s", m, tapA)
	}
	if got := v.portRules(t, tapA); len(got) != len(rulesBefore) {
		t.Errorf("%s has %d rules after the restart, %d before", tapA, len(got), len(rulesBefore))
	}
	if v.portRules(t, tapB) != nil {
		t.Errorf("the rules of %s survived", tapB)
	}
	if _, seen, err := n2.PortStats(tapA); err != nil || !seen {
		t.Errorf("PortStats after the restart: seen %v, %v; the VM used its address before", seen, err)
	}

	// The rules still hold: its own frames pass, forged ones do not.
	fromVM := collect(t, n2.Link())
	bcast := netip.AddrPortFrom(netip.MustParseAddr("192.168.64.255"), 9)
	write(t, vmA, udpFrame(t, macA, layers.EthernetBroadcast, netip.AddrPortFrom(guestIP, 1), bcast, "after"))
	if _, ok := fromVM.wait(time.Second, payloadIs("after")); !ok {
		t.Error("the adopted TAP passes nothing")
	}
	write(t, vmA, udpFrame(t, macA, layers.EthernetBroadcast, netip.AddrPortFrom(netip.MustParseAddr("192.168.64.77"), 1), bcast, "forged-ip"))
	write(t, vmA, udpFrame(t, macB, layers.EthernetBroadcast, netip.AddrPortFrom(guestIP, 1), bcast, "forged-mac"))
	if _, ok := fromVM.wait(300*time.Millisecond, func(fr []byte) bool {
		return payloadIs("forged-ip")(fr) || payloadIs("forged-mac")(fr)
	}); ok {
		t.Error("a forged frame passed the adopted TAP's rules")
	}
	write(t, n2.Link(), udpFrame(t, br.Attrs().HardwareAddr, macA, netip.AddrPortFrom(gateway, 1), netip.AddrPortFrom(guestIP, 2), "to-a"))
	if _, ok := toA.wait(time.Second, payloadIs("to-a")); !ok {
		t.Error("the uplink does not reach the adopted TAP")
	}

	// The dead run's Network closing late (in this process) leaves the
	// new one alone.
	n1.Close() // may say its uplink's descriptor is closed already
	if v.link(t, tapName) == nil || v.link(t, uplink) == nil || v.ourIPTRules(t) != 2 || v.portsMap(t)[tapA] != "vm-"+tapA {
		t.Fatal("closing the stale network removed the new one's state")
	}

	// Another subnet: nothing is adopted.
	crash(t, n2)
	cfg := bridgeConfig(hostnet.NAT)
	cfg.Prefix, cfg.Gateway = netip.MustParsePrefix("192.168.65.0/24"), netip.MustParseAddr("192.168.65.1")
	mark(t, v)
	n3 := v.mustSetup(t, cfg)
	if br := v.link(t, tapName); br == nil || marked(t, v) {
		t.Fatal("a bridge with another subnet was adopted")
	}
	if a := v.link(t, tapA); a == nil || a.Attrs().Index != aIdx || a.Attrs().MasterIndex != 0 || a.Attrs().Flags&net.FlagUp != 0 {
		t.Errorf("VM TAP %s after a restart on another subnet: %+v; want it kept, down, off the bridge", tapA, a)
	}
	if got := v.ourIPTRules(t); got != 2 {
		t.Errorf("%d rules of ours in ip filter FORWARD, want 2", got)
	}
	if _, adopted, err := n3.AddPort(idA, macA); err != nil || !adopted {
		t.Fatalf("AddPort on the new bridge: %v %v", adopted, err)
	}
	if err := n3.Close(); err != nil {
		t.Fatal(err)
	}
	vmA.Close()
	if err := v.ns.Run(func() error { return hostnet.Cleanup(netName) }); err != nil {
		t.Fatal(err)
	}
	v.assertGone(t)
}

// TestBridgeAdoptMismatch: what differs from the configuration is never
// adopted: another MTU, a bridge with a foreign address, a VM TAP whose
// rules were tampered with (set down and taken off the bridge; AddPort
// takes it back with fresh rules).
func TestBridgeAdoptMismatch(t *testing.T) {
	t.Run("MTU", func(t *testing.T) {
		hostGuard(t)
		v := newView(t)
		n := v.mustSetup(t, bridgeConfig(hostnet.Isolated))
		mark(t, v)
		crash(t, n)
		if mtu := v.link(t, tapName).Attrs().MTU; mtu != 4000 {
			t.Errorf("the bridge left without ports has MTU %d; want the 4000 it was given", mtu)
		}
		cfg := bridgeConfig(hostnet.Isolated)
		cfg.MTU = 1500
		v.mustSetup(t, cfg)
		if l := v.link(t, tapName); marked(t, v) || l.Attrs().MTU != 1500 {
			t.Errorf("bridge after a restart with another MTU: adopted %v, MTU %d", marked(t, v), l.Attrs().MTU)
		}
	})
	t.Run("foreign address", func(t *testing.T) {
		hostGuard(t)
		v := newView(t)
		n := v.mustSetup(t, bridgeConfig(hostnet.Isolated))
		mark(t, v)
		crash(t, n)
		v.ns.IP(t, "addr", "add", "10.9.9.9/24", "dev", tapName)
		v.mustSetup(t, bridgeConfig(hostnet.Isolated))
		if marked(t, v) {
			t.Error("a bridge with an address of someone else's was adopted")
		}
	})
	t.Run("tampered rules", func(t *testing.T) {
		hostGuard(t)
		v := newView(t)
		n := v.mustSetup(t, bridgeConfig(hostnet.Isolated))
		tap, _, err := n.AddPort(vmID, guestMAC)
		if err != nil {
			t.Fatal(err)
		}
		holdTAP(t, v, tap)
		// Someone deletes the port's first rule (the MAC check).
		tb := &nftables.Table{Name: brTable, Family: nftables.TableFamilyBridge}
		rs := v.portRules(t, tap)
		if err := v.nft.DelRule(&nftables.Rule{Table: tb, Chain: &nftables.Chain{Name: "vm-" + tap, Table: tb}, Handle: rs[0].Handle}); err != nil {
			t.Fatal(err)
		}
		if err := v.nft.Flush(); err != nil {
			t.Fatal(err)
		}
		mark(t, v)
		crash(t, n)
		n2 := v.mustSetup(t, bridgeConfig(hostnet.Isolated))
		if !marked(t, v) {
			t.Error("the bridge was not adopted")
		}
		if l := v.link(t, tap); l == nil || l.Attrs().MasterIndex != 0 || l.Attrs().Flags&net.FlagUp != 0 {
			t.Fatalf("a TAP with tampered rules after the restart: %+v; want it down, off the bridge", l)
		}
		if v.portRules(t, tap) != nil {
			t.Error("the tampered rules survived")
		}
		if _, adopted, err := n2.AddPort(vmID, guestMAC); err != nil || !adopted {
			t.Fatalf("AddPort: %v %v", adopted, err)
		}
		if got, want := len(v.portRules(t, tap)), len(rs); got != want {
			t.Errorf("%d rules after AddPort, want %d", got, want)
		}
	})
}

// TestBridgeAdoptClaimWindow: an adopted VM TAP no AddPort claims goes
// down and off the bridge when the window ends (its VM still holds it);
// AddPort then takes it back as after a restart without adoption.
func TestBridgeAdoptClaimWindow(t *testing.T) {
	hostGuard(t)
	v := newView(t)
	n := v.mustSetup(t, bridgeConfig(hostnet.NAT))
	tap, _, err := n.AddPort(vmID, guestMAC)
	if err != nil {
		t.Fatal(err)
	}
	holdTAP(t, v, tap)
	brIdx := v.link(t, tapName).Attrs().Index
	mark(t, v)
	crash(t, n)
	cfg := bridgeConfig(hostnet.NAT)
	cfg.ClaimWindow = 100 * time.Millisecond
	n2 := v.mustSetup(t, cfg)
	if !marked(t, v) {
		t.Fatal("the bridge was not adopted")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		l := v.link(t, tap)
		if l.Attrs().MasterIndex == 0 && l.Attrs().Flags&net.FlagUp == 0 && v.portRules(t, tap) == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the unclaimed TAP after its window: %+v, %d rules; want it down, off the bridge, without rules", l.Attrs(), len(v.portRules(t, tap)))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, ok := v.portsMap(t)[tap]; ok {
		t.Error("the unclaimed TAP is still in the ports map")
	}
	if _, adopted, err := n2.AddPort(vmID, guestMAC); err != nil || !adopted {
		t.Fatalf("AddPort after the window: %v %v", adopted, err)
	}
	if l := v.link(t, tap); l.Attrs().MasterIndex != brIdx || l.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("the TAP taken back: %+v", l.Attrs())
	}
}

// probeFlow is one stream of numbered UDP probes from the guest and the
// echoes that came back.
type probeFlow struct {
	mu     sync.Mutex
	sentAt []time.Time
	echoed map[int]bool
}

func (f *probeFlow) lost(from, to time.Time) (sent, lost int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, at := range f.sentAt {
		if at.Before(from) || at.After(to) {
			continue
		}
		sent++
		if !f.echoed[i] {
			lost++
		}
	}
	return sent, lost
}

// echo answers every datagram on c with itself.
func echo(c *net.UDPConn) {
	buf := make([]byte, 2048)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		c.WriteToUDPAddrPort(buf[:n], from)
	}
}

// TestBridgeAdoptTraffic: a guest on a VM TAP probes the host at the
// gateway and, through NAT, a host outside, every 5 ms while the network
// crashes and is set up again: probes keep getting answers, and a NAT
// binding made before the crash still lets the outside's reply in.
func TestBridgeAdoptTraffic(t *testing.T) {
	hostGuard(t)
	host, outside := newUplinkedViews(t)

	n1 := host.mustSetup(t, bridgeConfig(hostnet.NAT))
	tap, _, err := n1.AddPort(vmID, guestMAC)
	if err != nil {
		t.Fatal(err)
	}
	if err := n1.PinPort(tap, guestIP); err != nil {
		t.Fatal(err)
	}
	host.ns.IP(t, "neigh", "replace", guestIP.String(), "lladdr", guestMAC.String(), "dev", tapName, "nud", "permanent")
	gwMAC := host.link(t, tapName).Attrs().HardwareAddr
	vm := holdTAP(t, host, tap)

	gwAt, outAt := netip.AddrPortFrom(gateway, 7), netip.AddrPortFrom(outsideIP, 7)
	go echo(listenUDPRaw(t, host, gwAt))
	go echo(listenUDPRaw(t, outside, outAt))
	late, atOutside := listenUDP(t, outside, netip.AddrPortFrom(outsideIP, 9))

	flows := map[uint16]*probeFlow{40000: {echoed: map[int]bool{}}, 40001: {echoed: map[int]bool{}}}
	dst := map[uint16]netip.AddrPort{40000: gwAt, 40001: outAt}
	gotLate := make(chan struct{}, 1)
	go func() { // the guest's receiver
		b := frameio.NewBatch(16, vm.MTU())
		for {
			k, err := vm.ReadBatch(b)
			if err != nil {
				return
			}
			for i := range k {
				pkt := gopacket.NewPacket(b[i].Bytes(), layers.LayerTypeEthernet, gopacket.NoCopy)
				if arp, _ := pkt.Layer(layers.LayerTypeARP).(*layers.ARP); arp != nil {
					if arp.Operation == layers.ARPRequest && netip.AddrFrom4([4]byte(arp.DstProtAddress)) == guestIP {
						answerARP(vm, arp)
					}
					continue
				}
				udp, _ := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
				if udp == nil {
					continue
				}
				if string(udp.Payload) == "late" {
					select {
					case gotLate <- struct{}{}:
					default:
					}
					continue
				}
				f := flows[uint16(udp.DstPort)]
				if f == nil || len(udp.Payload) != 4 {
					continue
				}
				f.mu.Lock()
				f.echoed[int(binary.BigEndian.Uint32(udp.Payload))] = true
				f.mu.Unlock()
			}
		}
	}()
	send := func(port uint16, to netip.AddrPort, payload []byte) {
		fr := udpFrame(t, guestMAC, gwMAC, netip.AddrPortFrom(guestIP, port), to, string(payload))
		b := frameio.NewBatch(1, vm.MTU())
		b[0].N = copy(b[0].Buf, fr)
		vm.WriteBatch(b)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // the guest's prober
		defer close(done)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for seq := 0; ; seq++ {
			for port, f := range flows {
				f.mu.Lock()
				f.sentAt = append(f.sentAt, time.Now())
				f.mu.Unlock()
				send(port, dst[port], binary.BigEndian.AppendUint32(nil, uint32(seq)))
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	// A NAT binding made before the crash, used again only after it.
	d, ok := exchange(func() { send(41000, netip.AddrPortFrom(outsideIP, 9), []byte("bind")) }, atOutside, "bind", 3*time.Second)
	if !ok {
		t.Fatal("the guest's datagram did not reach the outside")
	}
	time.Sleep(300 * time.Millisecond)

	t0 := time.Now()
	crash(t, n1)
	n2 := host.mustSetup(t, bridgeConfig(hostnet.NAT))
	tSetup := time.Now()
	if _, adopted, err := n2.AddPort(vmID, guestMAC); err != nil || !adopted {
		t.Fatalf("AddPort: %v %v", adopted, err)
	}
	if err := n2.PinPort(tap, guestIP); err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	if _, err := late.WriteToUDPAddrPort([]byte("late"), d.from); err != nil {
		t.Fatal(err)
	}
	lateOK := false
	select {
	case <-gotLate:
		lateOK = true
	case <-time.After(3 * time.Second):
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	<-done
	time.Sleep(100 * time.Millisecond) // the last echoes

	if !lateOK {
		t.Error("the outside's reply to a NAT binding made before the crash did not reach the guest")
	}
	for port, f := range flows {
		what := map[uint16]string{40000: "host at the gateway", 40001: "outside, through NAT"}[port]
		sentAll, lostAll := f.lost(time.Time{}, time.Now())
		sent, lost := f.lost(t0, t1)
		afterSent, afterLost := f.lost(t1, time.Now())
		t.Logf("%s: crash to port taken back %v (Setup %v): %d probes sent, %d lost; after: %d sent, %d lost; whole run %d sent, %d lost",
			what, t1.Sub(t0).Round(time.Millisecond), tSetup.Sub(t0).Round(time.Millisecond), sent, lost, afterSent, afterLost, sentAll, lostAll)
		if sent > 0 && lost == sent {
			t.Errorf("%s: every probe sent across the restart was lost", what)
		}
		if afterLost == afterSent {
			t.Errorf("%s: no answers after the restart", what)
		}
	}
}

// answerARP answers req, a request for the guest's address, from the
// guest's MAC (a real guest would; a network set up anew has lost the
// host's neighbour entries).
func answerARP(vm *frameio.TAPPort, req *layers.ARP) {
	eth := &layers.Ethernet{SrcMAC: guestMAC, DstMAC: req.SourceHwAddress, EthernetType: layers.EthernetTypeARP}
	arp := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: layers.ARPReply, SourceHwAddress: guestMAC, SourceProtAddress: guestIP.AsSlice(),
		DstHwAddress: req.SourceHwAddress, DstProtAddress: req.SourceProtAddress}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, eth, arp); err != nil {
		return
	}
	b := frameio.NewBatch(1, vm.MTU())
	b[0].N = copy(b[0].Buf, buf.Bytes())
	vm.WriteBatch(b)
}

// listenUDPRaw opens a UDP socket in v's namespace.
func listenUDPRaw(t *testing.T, v *view, at netip.AddrPort) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := v.ns.Run(func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(at))
		return err
	}); err != nil {
		t.Fatal(fmt.Errorf("listening on %v: %w", at, err))
	}
	t.Cleanup(func() { c.Close() })
	return c
}
