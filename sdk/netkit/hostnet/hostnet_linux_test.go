//go:build linux

package hostnet_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"github.com/anka-net/anka/sdk/netkit/hostnet"
)

const (
	netName = "hnt" // table anka-hnt, TAP anka-hnt0
	table   = "anka-hnt"
	tapName = "anka-hnt0"
)

var (
	subnet    = netip.MustParsePrefix("192.168.64.0/24")
	gateway   = netip.MustParseAddr("192.168.64.1")
	guestIP   = netip.MustParseAddr("192.168.64.10")
	guestMAC  = net.HardwareAddr{0x02, 0xa4, 0x6b, 0, 0, 0x10}
	outsideIP = netip.MustParseAddr("10.77.0.2") // the "internet", in its own namespace
	uplinkIP  = netip.MustParseAddr("10.77.0.1") // the test host's address toward it
)

func config(mode hostnet.Mode) hostnet.Config {
	return hostnet.Config{Name: netName, Prefix: subnet, Gateway: gateway, MTU: 4000, Mode: mode, Logger: frameiotest.Quiet}
}

// hostGuard records the host's own anka-* tables and interfaces and its
// ip_forward, and fails the test if any of them changed: everything must
// happen inside the test's namespaces. Call it before making those, so
// its final check runs after they are gone.
func hostGuard(t *testing.T) func() {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	snap := func() (tables, links []string, fwd string) {
		c, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		ts, err := c.ListTables()
		if err != nil {
			t.Fatalf("listing the host's nftables tables: %v", err)
		}
		for _, tb := range ts {
			if strings.HasPrefix(tb.Name, "anka-") {
				tables = append(tables, tb.Name)
			}
		}
		ls, err := netlink.LinkList()
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			t.Fatal(err)
		}
		for _, l := range ls {
			if strings.HasPrefix(l.Attrs().Name, "anka-hnt") {
				links = append(links, l.Attrs().Name)
			}
		}
		b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		if err != nil {
			t.Fatal(err)
		}
		return tables, links, string(b)
	}
	t0, l0, f0 := snap()
	check := func() {
		t.Helper()
		t1, l1, f1 := snap()
		for _, tb := range t1 {
			if !slices.Contains(t0, tb) {
				t.Errorf("the host's own nftables gained table %s", tb)
			}
		}
		if !slices.Equal(l0, l1) {
			t.Errorf("the host's interfaces changed: %v, then %v", l0, l1)
		}
		if f0 != f1 {
			t.Errorf("the host's ip_forward changed from %q to %q", f0, f1)
		}
	}
	t.Cleanup(check)
	return check
}

// view is a test namespace plus handles that inspect it from outside,
// from any goroutine.
type view struct {
	ns  *frameiotest.Netns
	nft *nftables.Conn
	nl  *netlink.Handle
}

// newUplinkedViews is a host namespace with an uplink (up0, uplinkIP) to
// an outside namespace (outsideIP) that routes the subnet back through it.
func newUplinkedViews(t *testing.T) (host, outside *view) {
	t.Helper()
	host, outside = newView(t), newView(t)
	host.ns.IP(t, "link", "add", "up0", "type", "veth", "peer", "name", "down0", "netns", outside.ns.Name)
	host.ns.IP(t, "addr", "add", uplinkIP.String()+"/24", "dev", "up0")
	host.ns.IP(t, "link", "set", "up0", "up")
	outside.ns.IP(t, "addr", "add", outsideIP.String()+"/24", "dev", "down0")
	outside.ns.IP(t, "link", "set", "down0", "up")
	outside.ns.IP(t, "route", "add", subnet.String(), "via", uplinkIP.String())
	return host, outside
}

func newView(t *testing.T) *view {
	t.Helper()
	ns := frameiotest.NewNetns(t)
	ns.IP(t, "link", "set", "lo", "up")
	h, err := netns.GetFromName(ns.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nl.Close)
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		t.Fatal(err)
	}
	return &view{ns: ns, nft: c, nl: nl}
}

// setup runs hostnet.Setup on the namespace's thread; the network is
// closed (from the test's goroutine) when t ends.
func (v *view) setup(t *testing.T, cfg hostnet.Config) (*hostnet.Network, error) {
	t.Helper()
	var n *hostnet.Network
	err := v.ns.Run(func() (err error) {
		n, err = hostnet.Setup(cfg)
		return err
	})
	if err == nil {
		t.Cleanup(func() { n.Close() })
	}
	return n, err
}

func (v *view) mustSetup(t *testing.T, cfg hostnet.Config) *hostnet.Network {
	t.Helper()
	n, err := v.setup(t, cfg)
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	return n
}

func (v *view) ipForward(t *testing.T) string {
	t.Helper()
	var b []byte
	if err := v.ns.Run(func() (err error) {
		b, err = os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func (v *view) tables(t *testing.T) []string {
	t.Helper()
	ts, err := v.nft.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tb := range ts {
		names = append(names, tb.Name)
	}
	return names
}

func (v *view) chains(t *testing.T, tableName string) map[string]*nftables.Chain {
	t.Helper()
	cs, err := v.nft.ListChains()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]*nftables.Chain{}
	for _, c := range cs {
		if c.Table.Name == tableName {
			m[c.Name] = c
		}
	}
	return m
}

// link is the interface name, or nil.
func (v *view) link(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := v.nl.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		t.Fatal(err)
	}
	return l
}

// assertGone checks that nothing of network hnt is left in v.
func (v *view) assertGone(t *testing.T) {
	t.Helper()
	if l := v.link(t, tapName); l != nil {
		t.Errorf("TAP %s still there", tapName)
	}
	if slices.Contains(v.tables(t), table) {
		t.Errorf("table %s still there", table)
	}
	if rs := v.iptRules(t); len(rs) > 0 {
		for _, r := range rs {
			if comment(r) == table {
				t.Errorf("a rule of ours is still in ip filter FORWARD")
			}
		}
	}
}

var (
	iptFilter = &nftables.Table{Name: "filter", Family: nftables.TableFamilyIPv4}
	iptChain  = &nftables.Chain{Name: "FORWARD", Table: iptFilter}
)

// addIPTablesFilter makes what iptables-nft makes for `iptables -P
// FORWARD DROP` plus one rule of its own: table ip filter, chain
// FORWARD, policy drop.
func (v *view) addIPTablesFilter(t *testing.T) {
	t.Helper()
	drop := nftables.ChainPolicyDrop
	tb := v.nft.AddTable(iptFilter)
	ch := v.nft.AddChain(&nftables.Chain{Name: "FORWARD", Table: tb, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &drop})
	v.nft.AddRule(&nftables.Rule{Table: tb, Chain: ch, UserData: userdata.AppendString(nil, userdata.TypeComment, "docker"),
		Exprs: []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{172, 17, 0, 2}},
			&expr.Counter{},
			&expr.Verdict{Kind: expr.VerdictAccept},
		}})
	if err := v.nft.Flush(); err != nil {
		t.Fatal(err)
	}
}

func (v *view) iptRules(t *testing.T) []*nftables.Rule {
	t.Helper()
	if _, ok := v.chains(t, "filter")["FORWARD"]; !ok {
		return nil
	}
	rs, err := v.nft.GetRules(iptFilter, iptChain)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func comment(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return s
}

// drops counts the packets our forward chain dropped.
func (v *view) drops(t *testing.T) uint64 {
	t.Helper()
	rs, err := v.nft.GetRules(&nftables.Table{Name: table, Family: nftables.TableFamilyINet}, &nftables.Chain{Name: "forward"})
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, r := range rs {
		var c *expr.Counter
		for _, e := range r.Exprs {
			switch e := e.(type) {
			case *expr.Counter:
				c = e
			case *expr.Verdict:
				if e.Kind == expr.VerdictDrop && c != nil {
					n += c.Packets
				}
			}
		}
	}
	return n
}

func TestSetupAndClose(t *testing.T) {
	for _, mode := range []hostnet.Mode{hostnet.NAT, hostnet.Isolated} {
		t.Run(mode.String(), func(t *testing.T) {
			guard := hostGuard(t)
			v := newView(t)
			n := v.mustSetup(t, config(mode))
			guard() // the namespace changed, the host did not

			if n.Link().Name() != tapName || n.Link().MTU() != 4000 {
				t.Errorf("Link() is %s with MTU %d", n.Link().Name(), n.Link().MTU())
			}
			l := v.link(t, tapName)
			if l == nil {
				t.Fatalf("no TAP %s in the namespace", tapName)
			}
			a := l.Attrs()
			if l.Type() != "tuntap" || a.MTU != 4000 || a.Flags&net.FlagUp == 0 || a.Alias != table {
				t.Errorf("TAP: type %s MTU %d flags %v alias %q", l.Type(), a.MTU, a.Flags, a.Alias)
			}
			addrs, err := v.nl.AddrList(l, netlink.FAMILY_V4)
			if err != nil {
				t.Fatal(err)
			}
			if len(addrs) != 1 || addrs[0].IPNet.String() != "192.168.64.1/24" {
				t.Errorf("TAP addresses %v, want 192.168.64.1/24", addrs)
			}

			type hook struct {
				typ  nftables.ChainType
				hook nftables.ChainHook
				prio nftables.ChainPriority
			}
			want := map[string]hook{"forward": {nftables.ChainTypeFilter, *nftables.ChainHookForward, *nftables.ChainPriorityFilter}}
			wantFwd := "1"
			if mode == hostnet.NAT {
				want["postrouting"] = hook{nftables.ChainTypeNAT, *nftables.ChainHookPostrouting, *nftables.ChainPriorityNATSource}
			} else {
				wantFwd = "0" // a new namespace starts with forwarding off; host-only needs none
			}
			got := v.chains(t, table)
			if len(got) != len(want) {
				t.Errorf("chains %v, want %v", got, want)
			}
			for name, w := range want {
				c := got[name]
				if c == nil || c.Table.Family != nftables.TableFamilyINet {
					t.Errorf("no chain %s in table inet %s", name, table)
					continue
				}
				if c.Type != w.typ || *c.Hooknum != w.hook || *c.Priority != w.prio || *c.Policy != nftables.ChainPolicyAccept {
					t.Errorf("chain %s: type %s hook %d priority %d policy %d", name, c.Type, *c.Hooknum, *c.Priority, *c.Policy)
				}
			}
			if f := v.ipForward(t); f != wantFwd {
				t.Errorf("ip_forward in the namespace is %s, want %s", f, wantFwd)
			}

			// Close from a goroutine outside the namespace: the Network
			// pinned it.
			if err := n.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			v.assertGone(t)
			if err := n.Close(); err != nil {
				t.Errorf("second Close: %v", err)
			}
		})
	}
}

func TestSetupAfterCrash(t *testing.T) {
	t.Run("earlier Setup never closed", func(t *testing.T) {
		hostGuard(t)
		v := newView(t)
		v.addIPTablesFilter(t)
		first := v.mustSetup(t, config(hostnet.NAT))
		firstIdx := v.link(t, tapName).Attrs().Index

		second := v.mustSetup(t, config(hostnet.NAT))
		l := v.link(t, tapName)
		if l == nil || l.Attrs().Index == firstIdx {
			t.Fatalf("the second Setup did not replace the TAP")
		}
		if got := v.tables(t); !slices.Contains(got, table) {
			t.Fatalf("tables %v", got)
		}
		ours := 0
		for _, r := range v.iptRules(t) {
			if comment(r) == table {
				ours++
			}
		}
		if ours != 2 {
			t.Errorf("%d rules of ours in ip filter FORWARD, want 2", ours)
		}

		// The stale Network closing late must not take the new one down.
		if err := first.Close(); err != nil {
			t.Fatalf("closing the stale network: %v", err)
		}
		if v.link(t, tapName) == nil || !slices.Contains(v.tables(t), table) || len(v.iptRules(t)) != 3 {
			t.Fatalf("closing the stale network removed the new one's state")
		}
		if err := second.Close(); err != nil {
			t.Fatal(err)
		}
		v.assertGone(t)
	})

	t.Run("persistent TAP and a stale table", func(t *testing.T) {
		hostGuard(t)
		v := newView(t)
		if err := v.ns.Run(func() error {
			p, err := frameio.OpenTAP(tapName, frameio.TAPOptions{Persist: true})
			if err != nil {
				return err
			}
			return p.Close()
		}); err != nil {
			t.Fatal(err)
		}
		tb := v.nft.AddTable(&nftables.Table{Name: table, Family: nftables.TableFamilyINet})
		v.nft.AddChain(&nftables.Chain{Name: "stale", Table: tb})
		if err := v.nft.Flush(); err != nil {
			t.Fatal(err)
		}
		n := v.mustSetup(t, config(hostnet.Isolated))
		if _, ok := v.chains(t, table)["stale"]; ok {
			t.Error("the stale table survived Setup")
		}
		// The leftover TAP was persistent: ours is not, reading works.
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
		v.assertGone(t)
	})

	t.Run("Cleanup by name", func(t *testing.T) {
		hostGuard(t)
		v := newView(t)
		v.addIPTablesFilter(t)
		cfg := config(hostnet.NAT)
		cfg.TAP = "vmtap7" // found by its tag, not its name
		n := v.mustSetup(t, cfg)
		if err := v.ns.Run(func() error { return hostnet.Cleanup(netName) }); err != nil {
			t.Fatalf("Cleanup: %v", err)
		}
		if v.link(t, "vmtap7") != nil {
			t.Error("Cleanup left the custom-named TAP")
		}
		v.assertGone(t)
		if rs := v.iptRules(t); len(rs) != 1 || comment(rs[0]) != "docker" {
			t.Errorf("ip filter FORWARD after Cleanup: %d rules", len(rs))
		}
		if err := n.Close(); err != nil {
			t.Errorf("Close after Cleanup: %v", err)
		}
		if err := v.ns.Run(func() error { return hostnet.Cleanup(netName) }); err != nil {
			t.Errorf("Cleanup with nothing to clean: %v", err)
		}
	})
}

func TestPrefixInUse(t *testing.T) {
	tests := []struct {
		name  string
		mode  hostnet.Mode
		setup [][]string // ip commands in the namespace
		want  []string   // in the error; none means Setup succeeds
		inUse bool
	}{
		{
			name:  "address",
			setup: [][]string{{"addr", "add", "192.168.64.5/24", "dev", "busy0"}},
			want:  []string{"busy0", "192.168.64.5/24", "anka config start_address"},
			inUse: true,
		},
		{
			name:  "address inside a larger one",
			setup: [][]string{{"addr", "add", "192.168.0.9/16", "dev", "busy0"}},
			want:  []string{"busy0", "192.168.0.9/16"},
			inUse: true,
		},
		{
			name:  "host-only hint",
			mode:  hostnet.Isolated,
			setup: [][]string{{"addr", "add", "192.168.64.5/24", "dev", "busy0"}},
			want:  []string{"busy0", "anka config host_start_address"},
			inUse: true,
		},
		{
			name: "route inside the subnet",
			setup: [][]string{
				{"addr", "add", "10.9.9.1/24", "dev", "busy0"},
				{"route", "add", "192.168.64.128/25", "via", "10.9.9.2", "dev", "busy0"},
			},
			want:  []string{"busy0", "192.168.64.128/25"},
			inUse: true,
		},
		{
			name: "broader route is fine",
			setup: [][]string{
				{"addr", "add", "10.9.9.1/24", "dev", "busy0"},
				{"route", "add", "192.168.0.0/16", "via", "10.9.9.2", "dev", "busy0"},
			},
		},
		{
			name:  "another kind of interface has the TAP's name",
			setup: [][]string{{"link", "add", tapName, "type", "veth", "peer", "name", "busy2"}},
			want:  []string{tapName, "not a TAP"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hostGuard(t)
			v := newView(t)
			// A veth stands in for any interface: some kernels lack dummy.
			v.ns.IP(t, "link", "add", "busy0", "type", "veth", "peer", "name", "busy1")
			v.ns.IP(t, "link", "set", "busy0", "up")
			for _, args := range tt.setup {
				v.ns.IP(t, args...)
			}
			n, err := v.setup(t, config(tt.mode))
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Setup: %v", err)
				}
				n.Close()
				return
			}
			if err == nil {
				t.Fatal("Setup succeeded")
			}
			if errors.Is(err, hostnet.ErrPrefixInUse) != tt.inUse {
				t.Errorf("errors.Is(err, ErrPrefixInUse) = %v: %v", !tt.inUse, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if slices.Contains(v.tables(t), table) {
				t.Error("a refused Setup left its table")
			}
			if l := v.link(t, tapName); l != nil && l.Type() == "tuntap" {
				t.Error("a refused Setup left its TAP")
			}
		})
	}
}

func TestIPTablesNFTForward(t *testing.T) {
	hostGuard(t)
	v := newView(t)
	v.addIPTablesFilter(t)

	iso := v.mustSetup(t, config(hostnet.Isolated))
	if rs := v.iptRules(t); len(rs) != 1 {
		t.Errorf("Isolated mode changed ip filter FORWARD: %d rules", len(rs))
	}
	if err := iso.Close(); err != nil {
		t.Fatal(err)
	}

	n := v.mustSetup(t, config(hostnet.NAT))
	rs := v.iptRules(t)
	if len(rs) != 3 || comment(rs[0]) != table || comment(rs[1]) != table || comment(rs[2]) != "docker" {
		var cs []string
		for _, r := range rs {
			cs = append(cs, comment(r))
		}
		t.Fatalf("ip filter FORWARD rules by comment: %q, want [%s %s docker]", cs, table, table)
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	rs = v.iptRules(t)
	if len(rs) != 1 || comment(rs[0]) != "docker" {
		t.Fatalf("after Close ip filter FORWARD has %d rules, want only the docker one", len(rs))
	}
	c := v.chains(t, "filter")["FORWARD"]
	if c == nil || *c.Policy != nftables.ChainPolicyDrop {
		t.Fatal("Close changed ip filter FORWARD itself")
	}
}

// udpFrame is an Ethernet frame carrying one UDP datagram.
func udpFrame(t *testing.T, src, dst net.HardwareAddr, from, to netip.AddrPort, payload string) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP,
		SrcIP: from.Addr().AsSlice(), DstIP: to.Addr().AsSlice()}
	udp := &layers.UDP{SrcPort: layers.UDPPort(from.Port()), DstPort: layers.UDPPort(to.Port())}
	udp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, udp, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type datagram struct {
	from, to netip.AddrPort
	payload  string
}

func (d datagram) String() string { return fmt.Sprintf("%v -> %v %q", d.from, d.to, d.payload) }

// guestSide plays the VM behind the TAP: it collects the UDP datagrams
// the host sends to the guest's address.
func guestSide(p *frameio.TAPPort) <-chan datagram {
	ch := make(chan datagram, 64)
	go func() {
		batch := frameio.NewBatch(16, p.MTU())
		for {
			k, err := p.ReadBatch(batch)
			if err != nil {
				return
			}
			for i := range k {
				pkt := gopacket.NewPacket(batch[i].Bytes(), layers.LayerTypeEthernet, gopacket.NoCopy)
				ip, _ := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
				udp, _ := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
				if ip == nil || udp == nil {
					continue
				}
				src, _ := netip.AddrFromSlice(ip.SrcIP)
				dst, _ := netip.AddrFromSlice(ip.DstIP)
				select {
				case ch <- datagram{netip.AddrPortFrom(src, uint16(udp.SrcPort)), netip.AddrPortFrom(dst, uint16(udp.DstPort)), string(udp.Payload)}:
				default:
				}
			}
		}
	}()
	return ch
}

// listenUDP opens a UDP socket in v's namespace and passes on what it
// receives.
func listenUDP(t *testing.T, v *view, at netip.AddrPort) (*net.UDPConn, <-chan datagram) {
	t.Helper()
	var c *net.UDPConn
	if err := v.ns.Run(func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(at))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ch := make(chan datagram, 64)
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			ch <- datagram{from: netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), to: at, payload: string(buf[:n])}
		}
	}()
	return c, ch
}

// exchange repeats send every 50 ms until a datagram with payload
// arrives on ch, or until wait has passed; it returns the datagram and
// whether it came.
func exchange(send func(), ch <-chan datagram, payload string, wait time.Duration) (datagram, bool) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(wait)
	send()
	for {
		select {
		case d := <-ch:
			if d.payload == payload {
				return d, true
			}
		case <-tick.C:
			send()
		case <-deadline:
			return datagram{}, false
		}
	}
}

// TestTraffic plays a guest on the TAP of a network in namespace "host",
// which has an uplink (veth) to namespace "outside".
func TestTraffic(t *testing.T) {
	tests := []struct {
		name      string
		mode      hostnet.Mode
		iptDrop   bool // iptables-nft's FORWARD policy drop is in place
		forwarded bool
	}{
		{name: "nat", mode: hostnet.NAT, forwarded: true},
		{name: "nat beside iptables-nft drop policy", mode: hostnet.NAT, iptDrop: true, forwarded: true},
		{name: "isolated", mode: hostnet.Isolated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hostGuard(t)
			host, outside := newUplinkedViews(t)
			if tt.iptDrop {
				host.addIPTablesFilter(t)
			}
			n := host.mustSetup(t, config(tt.mode))
			if tt.mode == hostnet.Isolated {
				// Forwarding on, so only our rules can stop the guest.
				if err := host.ns.Run(func() error {
					return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
				}); err != nil {
					t.Fatal(err)
				}
			}
			tapMAC := host.link(t, tapName).Attrs().HardwareAddr
			host.ns.IP(t, "neigh", "replace", guestIP.String(), "lladdr", guestMAC.String(), "dev", tapName, "nud", "permanent")

			toGuest := guestSide(n.Link())
			guestSend := func(to netip.AddrPort, payload string) func() {
				f := udpFrame(t, guestMAC, tapMAC, netip.AddrPortFrom(guestIP, 40000), to, payload)
				return func() {
					b := frameio.NewBatch(1, n.Link().MTU())
					b[0].N = copy(b[0].Buf, f)
					if _, err := n.Link().WriteBatch(b); err != nil {
						t.Errorf("writing to the TAP: %v", err)
					}
				}
			}

			// The host at the gateway: input is never filtered.
			gwAt := netip.AddrPortFrom(gateway, 9998)
			_, atGateway := listenUDP(t, host, gwAt)
			d, ok := exchange(guestSend(gwAt, "hello host"), atGateway, "hello host", 3*time.Second)
			if !ok || d.from.Addr() != guestIP {
				t.Fatalf("the host did not get the guest's datagram (got %v, %v)", d, ok)
			}

			outAt := netip.AddrPortFrom(outsideIP, 9999)
			out, atOutside := listenUDP(t, outside, outAt)
			drops := host.drops(t)
			if !tt.forwarded {
				if d, ok := exchange(guestSend(outAt, "hello out"), atOutside, "hello out", 300*time.Millisecond); ok {
					t.Fatalf("an isolated guest reached the outside: %v", d)
				}
				if host.drops(t) == drops {
					t.Error("the forward chain dropped nothing: the test proves nothing")
				}
			} else {
				d, ok := exchange(guestSend(outAt, "hello out"), atOutside, "hello out", 3*time.Second)
				if !ok {
					t.Fatal("the guest's datagram did not reach the outside")
				}
				if d.from.Addr() != uplinkIP {
					t.Fatalf("the outside saw the datagram from %v, want the host's uplink %v (masquerade)", d.from, uplinkIP)
				}
				// The reply finds its way back to the guest.
				reply := func() { out.WriteToUDPAddrPort([]byte("hello guest"), d.from) }
				r, ok := exchange(reply, toGuest, "hello guest", 3*time.Second)
				if !ok {
					t.Fatal("the outside's reply did not reach the guest")
				}
				if r.from != outAt || r.to != netip.AddrPortFrom(guestIP, 40000) {
					t.Errorf("reply %v -> %v, want %v -> %v:40000", r.from, r.to, outAt, guestIP)
				}
				drops = host.drops(t)
			}

			// Nothing unsolicited gets in, in either mode.
			var sock *net.UDPConn
			if err := outside.ns.Run(func() (err error) {
				sock, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(outsideIP, 9000)))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer sock.Close()
			knock := func() { sock.WriteToUDPAddrPort([]byte("knock"), netip.AddrPortFrom(guestIP, 41000)) }
			if d, ok := exchange(knock, toGuest, "knock", 300*time.Millisecond); ok {
				t.Fatalf("unsolicited traffic reached the guest: %v", d)
			}
			if host.drops(t) == drops {
				t.Error("the forward chain did not drop the unsolicited datagrams")
			}
			if !bytes.Equal(host.link(t, tapName).Attrs().HardwareAddr, tapMAC) {
				t.Error("the TAP changed under the test")
			}
		})
	}
}

// TestNamespacesDiffer checks the tests' premise: what runs through
// Netns.Run is in another namespace than the test's own goroutines.
func TestNamespacesDiffer(t *testing.T) {
	hostGuard(t)
	v := newView(t)
	var inside, outside unix.Stat_t
	if err := v.ns.Run(func() error { return unix.Stat("/proc/thread-self/ns/net", &inside) }); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat("/proc/self/ns/net", &outside); err != nil {
		t.Fatal(err)
	}
	if inside.Ino == outside.Ino {
		t.Fatal("the test namespace is the host's")
	}
}
