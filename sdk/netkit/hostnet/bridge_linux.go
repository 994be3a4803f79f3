//go:build linux

package hostnet

// Bridge mode: the kernel fast path.
//
//	host (gateway .1) = Linux bridge anka-<name>0
//	  ├─ anka-<name>sw  TAP: the plugin's user-space switch (socket VMs, DHCP server)
//	  ├─ aks1a2b3c4d    TAP of a VM on the fast path (QEMU opens it by name)
//	  └─ ...
//
// Frames between fast-path VMs, and between them and the host, never leave
// the kernel. Each VM TAP is filtered in the nftables bridge table
// anka-br-<name> (prerouting, before the bridge forwards or delivers): the
// VM's dynamic MAC as the only source, IPv4 and ARP only from its pinned
// address (PinPort; before that DHCP from 0.0.0.0 only), no DHCP server
// replies, router advertisements or VLAN tags. DHCP requests from VM TAPs
// are steered to the switch's service MAC (ServiceMAC), which a static
// forwarding entry puts behind the uplink: even a unicast renewal to the
// gateway reaches the plugin's DHCP server instead of the host's stack.
//
// A VM TAP is persistent: the VM's process holds it by file descriptor,
// and the plugin may stop and start again meanwhile. Close and the
// cleanup at Setup remove every VM TAP of the network that no process
// holds, and keep (down, off the bridge, which is gone) those a running VM
// still holds, so that AddPort of the next run takes them back and the VM
// keeps its NIC. A TAP has carrier exactly while a process holds it. A
// Setup that adopts the bridge of a killed run keeps such TAPs on it, up
// and filtered (adopt_linux.go).

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	mnl "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/vswitch"
)

// bridgeState is what bridge mode adds to a Network; n.mu guards it.
type bridgeState struct {
	svcMAC    net.HardwareAddr
	uplinkIdx int
	uplinkMAC net.HardwareAddr // random per TAP: tells this run's uplink from a later one's
	table     *nftables.Table
	ports     *nftables.Set // iifname -> jump vm-<iifname>
	vms       map[string]*bridgePort
	claim     *time.Timer // ends the claim window of adopted VM TAPs

	cmu  sync.Mutex
	caps map[*portCapture]struct{}
}

// bridgePort is one VM TAP this run added (or took back).
type bridgePort struct {
	id      string
	mac     net.HardwareAddr
	pin     netip.Addr
	chain   *nftables.Chain
	carried map[string]uint64 // drops counted by rules since replaced
	// kept: adopted from an earlier run by Setup, not yet taken back by
	// AddPort. seenBefore: a "seen" rule replaced since the pin matched.
	kept, seenBefore bool
}

// sweep says which VM TAPs belong to a network: tagged "<tag> vm ...",
// or named prefix + 8 hex digits and untagged (made by a run that died
// before it tagged it); a TAP tagged by another network is never ours,
// whatever its name.
type sweep struct {
	prefix, tag string
}

func (s *sweep) owns(l netlink.Link) bool {
	a := l.Attrs()
	if strings.HasPrefix(a.Alias, s.tag+" vm ") {
		return true
	}
	return a.Alias == "" && isPortName(s.prefix, a.Name)
}

func (s *sweep) bridgeTable() string { return "anka-br-" + strings.TrimPrefix(s.tag, "anka-") }

func (n *Network) sweep() *sweep {
	if !n.cfg.Bridge {
		return nil
	}
	return &sweep{prefix: n.cfg.PortPrefix, tag: n.tag}
}

func isPortName(prefix, name string) bool {
	if len(name) != len(prefix)+8 || !strings.HasPrefix(name, prefix) {
		return false
	}
	for _, c := range name[len(prefix):] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// sweepPorts removes the VM TAPs of the network that no process holds and
// sets down those a VM still holds, so a later run takes them back.
func (e *env) sweepPorts(sw *sweep, log *slog.Logger) ([]string, error) {
	links, err := retryDump(e.nl.LinkList)
	if err != nil {
		return nil, fmt.Errorf("listing interfaces: %w", err)
	}
	var removed []string
	for _, l := range links {
		if _, ok := l.(*netlink.Tuntap); !ok || !sw.owns(l) {
			continue
		}
		name := l.Attrs().Name
		held, err := e.held(l.Attrs().Index)
		if err != nil {
			return removed, fmt.Errorf("VM TAP %s: %w", name, err)
		}
		if held {
			// A VM's process holds it: deleting it would cut the VM off
			// for good. Down, it passes nothing until taken back.
			if err := e.nl.LinkSetDown(l); err != nil && !errors.Is(err, os.ErrNotExist) {
				return removed, fmt.Errorf("setting VM TAP %s down: %w", name, err)
			}
			log.Info("hostnet: kept a VM TAP a running VM holds; attaching the VM again takes it back", "tap", name, "alias", l.Attrs().Alias)
			continue
		}
		if err := e.nl.LinkDel(l); err != nil && !errors.Is(err, os.ErrNotExist) {
			return removed, fmt.Errorf("removing VM TAP %s: %w", name, err)
		}
		removed = append(removed, "VM TAP "+name)
	}
	return removed, nil
}

// held reports whether a process holds the TAP with index idx: a TAP has
// carrier exactly while a file descriptor is attached to it, up or down
// (IFLA_CARRIER; the queue count is reported for multi-queue TAPs only).
func (e *env) held(idx int) (bool, error) {
	c, err := mnl.Dial(unix.NETLINK_ROUTE, &mnl.Config{NetNS: e.netNS()})
	if err != nil {
		return false, fmt.Errorf("netlink: %w", err)
	}
	defer c.Close()
	ifi := make([]byte, unix.SizeofIfInfomsg)
	binary.NativeEndian.PutUint32(ifi[4:8], uint32(idx))
	msgs, err := c.Execute(mnl.Message{Header: mnl.Header{Type: unix.RTM_GETLINK, Flags: mnl.Request}, Data: ifi})
	if err != nil {
		return false, fmt.Errorf("reading link %d: %w", idx, err)
	}
	for _, m := range msgs {
		if len(m.Data) < unix.SizeofIfInfomsg {
			continue
		}
		ad, err := mnl.NewAttributeDecoder(m.Data[unix.SizeofIfInfomsg:])
		if err != nil {
			return false, err
		}
		for ad.Next() {
			if ad.Type() == unix.IFLA_CARRIER {
				return ad.Uint8() != 0, nil
			}
		}
	}
	return false, fmt.Errorf("link %d: the kernel reports no carrier state", idx)
}

// derived is a stable locally administered unicast MAC for what, of
// network name.
func derived(what, name string) net.HardwareAddr {
	h := sha256.Sum256([]byte("anka-hostnet-" + what + ":" + name))
	mac := net.HardwareAddr(h[:6])
	mac[0] = mac[0]&0xfc | 0x02
	return mac
}

// setupBridge makes the bridge with the gateway, the switch's uplink and
// the rules; n.setup has cleaned up and checked the prefix.
func (n *Network) setupBridge() error {
	cfg := &n.cfg
	nl := n.env.nl
	// The bridge's MAC is the gateway's as guests cache it: stable across
	// runs, so a guest that outlives a plugin restart still has it right.
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: cfg.TAP, MTU: cfg.MTU, HardwareAddr: derived("gateway", cfg.Name)}}
	if err := nl.LinkAdd(br); err != nil {
		return fmt.Errorf("hostnet: creating bridge %s: %w", cfg.TAP, err)
	}
	link, err := nl.LinkByName(cfg.TAP)
	if err != nil {
		return fmt.Errorf("hostnet: finding the new bridge %s: %w", cfg.TAP, err)
	}
	n.ifindex = link.Attrs().Index
	var up *frameio.TAPPort
	fail := func(err error) error {
		if up != nil {
			up.Close()
		}
		nl.LinkDel(link)
		return err
	}
	if err := nl.LinkSetAlias(link, n.tag); err != nil {
		return fail(fmt.Errorf("hostnet: tagging bridge %s: %w", cfg.TAP, err))
	}
	// Set by hand, the bridge keeps its MTU whatever its ports have, also
	// when the uplink dies with a killed plugin and the bridge is left
	// without ports (adoption checks it). The kernel counts it as set by
	// hand only when the value changes: the MTU given at creation does
	// not count, so step through another value.
	for _, mtu := range []int{cfg.MTU + 1, cfg.MTU} {
		if err := nl.LinkSetMTU(link, mtu); err != nil {
			return fail(fmt.Errorf("hostnet: MTU %d on bridge %s: %w", cfg.MTU, cfg.TAP, err))
		}
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: cfg.Gateway.AsSlice(), Mask: net.CIDRMask(cfg.Prefix.Bits(), 32)}}
	if err := nl.AddrAdd(link, addr); err != nil {
		return fail(fmt.Errorf("hostnet: adding %s to %s: %w", addr.IPNet, cfg.TAP, err))
	}
	svc := derived("service", cfg.Name)
	var ul netlink.Link
	if up, ul, err = n.openUplink(link, svc); err != nil {
		return fail(err)
	}
	if err := nl.LinkSetUp(link); err != nil {
		return fail(fmt.Errorf("hostnet: bringing %s up: %w", cfg.TAP, err))
	}
	if cfg.Mode == NAT {
		if err := enableForwarding(n.log); err != nil {
			return fail(err)
		}
	}
	if err := n.env.install(cfg, n.tag, n.log); err != nil {
		return fail(err)
	}
	bs := &bridgeState{svcMAC: svc, uplinkIdx: ul.Attrs().Index, uplinkMAC: ul.Attrs().HardwareAddr, vms: map[string]*bridgePort{}, caps: map[*portCapture]struct{}{}}
	if err := n.env.installBridge(bs, bridgeTableName(cfg.Name)); err != nil {
		n.env.removeTable(n.tag)
		n.env.removeRules(n.tag)
		return fail(err)
	}
	n.tap, n.br = up, bs
	return nil
}

// installBridge adds the bridge table: one base chain at prerouting that
// sends each VM TAP's frames to the VM's chain through a verdict map.
func (e *env) installBridge(bs *bridgeState, name string) error {
	if err := e.queueBridge(bs, name); err != nil {
		return err
	}
	if err := e.nft.Flush(); err != nil {
		return fmt.Errorf("hostnet: installing nftables table bridge %s: %w", name, err)
	}
	return nil
}

// queueBridge queues what installBridge sends, without sending it.
func (e *env) queueBridge(bs *bridgeState, name string) error {
	c := e.nft
	bs.table = c.AddTable(&nftables.Table{Name: name, Family: nftables.TableFamilyBridge})
	pre := c.AddChain(&nftables.Chain{
		Name: "prerouting", Table: bs.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(-200), Policy: &acceptPolicy,
	})
	bs.ports = &nftables.Set{Table: bs.table, Name: "ports", IsMap: true, KeyType: nftables.TypeIFName, DataType: nftables.TypeVerdict}
	if err := c.AddSet(bs.ports, nil); err != nil {
		return fmt.Errorf("hostnet: nftables set: %w", err)
	}
	c.AddRule(&nftables.Rule{Table: bs.table, Chain: pre, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: bs.ports.Name, SetID: bs.ports.ID, IsDestRegSet: true, DestRegister: 0},
	}})
	return nil
}

func (n *Network) bridgeMode() error {
	if n.br == nil {
		return errors.New("hostnet: the network has no bridge: set Config.Bridge for VM ports")
	}
	if n.closed {
		return errors.New("hostnet: the network is closed")
	}
	return nil
}

// ServiceMAC is where the bridge steers the DHCP requests of VM TAPs: the
// MAC the plugin's switch answers DHCP from (its service port), reached
// through the uplink. Nil outside bridge mode.
func (n *Network) ServiceMAC() net.HardwareAddr {
	if n.br == nil {
		return nil
	}
	return append(net.HardwareAddr(nil), n.br.svcMAC...)
}

// PortName is the name of VM id's TAP: Config.PortPrefix and 8 hex digits
// of a hash of id, the same in every run.
func (n *Network) PortName(id string) string {
	h := sha256.Sum256([]byte(id))
	return n.cfg.PortPrefix + hex.EncodeToString(h[:4])
}

// AddPort gives VM id its TAP on the bridge, with the network's MTU, and
// the rules that let only mac send, and IPv4 and ARP only DHCP from
// 0.0.0.0 until PinPort. A TAP of that name already there (a VM's, kept
// by an earlier run) is taken back, and adopted says so. A VM's process
// opens the TAP by name (QEMU -netdev tap,ifname=NAME) and holds it; it
// outlives this process until RemovePort or, once no process holds it,
// Close.
func (n *Network) AddPort(id string, mac net.HardwareAddr) (name string, adopted bool, err error) {
	if len(mac) != 6 || mac[0]&1 != 0 {
		return "", false, fmt.Errorf("hostnet: VM MAC %v is not a unicast Ethernet address", mac)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.bridgeMode(); err != nil {
		return "", false, err
	}
	name = n.PortName(id)
	bs, nl := n.br, n.env.nl
	if p := bs.vms[name]; p != nil {
		if p.id != id {
			return "", false, fmt.Errorf("hostnet: VM TAP %s belongs to another VM (%s): the names of VM %s and %s collide", name, p.id, id, p.id)
		}
		if p.kept {
			return n.claimLocked(name, p, mac)
		}
		return name, true, nil
	}
	link, err := nl.LinkByName(name)
	switch {
	case err == nil && link.Type() != "tuntap":
		return "", false, fmt.Errorf("hostnet: interface %s exists and is not a TAP (it is %s): remove it", name, link.Type())
	case err == nil:
		adopted = true
	default:
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return "", false, fmt.Errorf("hostnet: looking for %s: %w", name, err)
		}
		if err := n.env.do(func() error {
			tap, err := frameio.OpenTAP(name, frameio.TAPOptions{MTU: n.cfg.MTU, Persist: true, Logger: n.log})
			err = tunHint(err)
			if err != nil {
				return err
			}
			return tap.Close()
		}); err != nil {
			return "", false, fmt.Errorf("hostnet: creating VM TAP %s: %w", name, err)
		}
		if link, err = nl.LinkByName(name); err != nil {
			return "", false, fmt.Errorf("hostnet: finding the new VM TAP %s: %w", name, err)
		}
	}
	fail := func(err error) (string, bool, error) {
		if !adopted {
			nl.LinkDel(link)
		}
		return "", false, err
	}
	br, err := nl.LinkByIndex(n.ifindex)
	if err != nil {
		return fail(fmt.Errorf("hostnet: the bridge %s: %w", n.cfg.TAP, err))
	}
	steps := []struct {
		what string
		do   func() error
	}{
		{"tagging", func() error { return nl.LinkSetAlias(link, n.tag+" vm "+id) }},
		{"setting the MTU of", func() error { return nl.LinkSetMTU(link, n.cfg.MTU) }},
		{"joining to the bridge", func() error { return nl.LinkSetMaster(link, br) }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fail(fmt.Errorf("hostnet: %s VM TAP %s: %w", s.what, name, err))
		}
	}
	p := &bridgePort{id: id, mac: append(net.HardwareAddr(nil), mac...), carried: map[string]uint64{}}
	p.chain = n.env.nft.AddChain(&nftables.Chain{Name: "vm-" + name, Table: bs.table})
	n.env.nft.FlushChain(p.chain)
	n.addPortRules(p)
	if err := n.env.nft.SetAddElements(bs.ports, []nftables.SetElement{{Key: ifname(name), VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: p.chain.Name}}}); err != nil {
		return fail(fmt.Errorf("hostnet: VM TAP %s: %w", name, err))
	}
	if err := n.env.nft.Flush(); err != nil {
		return fail(fmt.Errorf("hostnet: anti-spoofing rules of VM TAP %s: %w", name, err))
	}
	// Up only once the rules stand: nothing passes unfiltered.
	if err := nl.LinkSetUp(link); err != nil {
		n.removePortRules(name, p)
		return fail(fmt.Errorf("hostnet: bringing VM TAP %s up: %w", name, err))
	}
	bs.vms[name] = p
	n.log.Info("hostnet: VM TAP on the bridge", "tap", name, "vm", id, "mac", mac.String(), "taken_back", adopted)
	return name, adopted, nil
}

// PinPort lets VM TAP name send IPv4 and ARP from ip only (its lease or
// fixed address); an invalid ip lets only DHCP from 0.0.0.0 through.
func (n *Network) PinPort(name string, ip netip.Addr) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.bridgeMode(); err != nil {
		return err
	}
	p := n.br.vms[name]
	if p == nil {
		return fmt.Errorf("hostnet: no VM TAP %s on the bridge", name)
	}
	if ip == p.pin || (!ip.Is4() && !p.pin.IsValid()) {
		return nil
	}
	// Replacing the rules resets their counters: keep the drops.
	if drops, _, err := n.portCounters(p); err == nil {
		for k, v := range drops {
			p.carried[k] += v
		}
	}
	old, oldSeen := p.pin, p.seenBefore
	p.pin, p.seenBefore = netip.Addr{}, false
	if ip.Is4() {
		p.pin = ip
	}
	n.env.nft.FlushChain(p.chain)
	n.addPortRules(p)
	if err := n.env.nft.Flush(); err != nil {
		p.pin, p.seenBefore = old, oldSeen
		return fmt.Errorf("hostnet: pinning VM TAP %s to %v: %w", name, ip, err)
	}
	return nil
}

// PortStats counts VM TAP name's frames (Rx: from the VM, Tx: to it, as
// a switch port counts) and what its rules dropped, by reason; seen says
// whether the VM has sent from its pinned address since it was pinned.
func (n *Network) PortStats(name string) (st vswitch.Stats, seen bool, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.bridgeMode(); err != nil {
		return st, false, err
	}
	p := n.br.vms[name]
	if p == nil {
		return st, false, fmt.Errorf("hostnet: no VM TAP %s on the bridge", name)
	}
	st.Drops = map[string]uint64{}
	if l, err := n.env.nl.LinkByName(name); err == nil && l.Attrs().Statistics != nil {
		s := l.Attrs().Statistics
		st.RxFrames, st.RxBytes, st.TxFrames, st.TxBytes, st.TxErrors = s.RxPackets, s.RxBytes, s.TxPackets, s.TxBytes, s.TxDropped
	}
	drops, seen, err := n.portCounters(p)
	if err != nil {
		return st, false, err
	}
	for k, v := range p.carried {
		st.Drops[k] += v
	}
	for k, v := range drops {
		st.Drops[k] += v
	}
	return st, seen || p.seenBefore, nil
}

// RemovePort deletes VM id's TAP (the VM stopped) and its rules. A TAP
// this run never added is deleted too (a VM kept from an earlier run and
// never attached again); none at all is not an error.
func (n *Network) RemovePort(name string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.bridgeMode(); err != nil {
		return err
	}
	var errs []error
	n.br.stopCapturesOf(name)
	// The TAP goes before its rules: it never passes a frame unfiltered.
	if l, err := n.env.nl.LinkByName(name); err == nil && l.Type() == "tuntap" {
		if err := n.env.nl.LinkDel(l); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("hostnet: removing VM TAP %s: %w", name, err)
		}
	}
	if p := n.br.vms[name]; p != nil {
		if err := n.removePortRules(name, p); err != nil {
			errs = append(errs, err)
		}
	}
	delete(n.br.vms, name)
	if len(errs) == 0 {
		n.log.Info("hostnet: VM TAP removed", "tap", name)
	}
	return errors.Join(errs...)
}

func (n *Network) removePortRules(name string, p *bridgePort) error {
	c := n.env.nft
	if err := c.SetDeleteElements(n.br.ports, []nftables.SetElement{{Key: ifname(name)}}); err != nil {
		return err
	}
	c.FlushChain(p.chain)
	c.DelChain(p.chain)
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("hostnet: removing the rules of VM TAP %s: %w", name, err)
	}
	return nil
}

// Rule comments: what a rule's counter counts.
const (
	tagSeen = "seen"
	tagDrop = "drop:"
)

// Reasons, as the user-space switch names the same drops.
const (
	dropSrcMAC  = "source MAC not the port's"
	dropSrcIP   = "source IP not the port's"
	dropARP     = "ARP sender not the port's"
	dropDHCPSrv = "DHCP server reply from a VM"
	dropRA      = "IPv6 router advertisement from a VM"
	dropBad     = "malformed frame"
	dropVLAN    = "VLAN tag"
)

// addPortRules queues the VM chain's rules for p's MAC and pin.
func (n *Network) addPortRules(p *bridgePort) {
	for _, r := range portRules(n.br.table, p.chain, n.br.svcMAC, p) {
		n.env.nft.AddRule(r)
	}
}

// portRules are the rules of VM chain ch in table t for p's MAC and pin;
// svc is the service MAC DHCP requests are steered to.
func portRules(t *nftables.Table, ch *nftables.Chain, svc net.HardwareAddr, p *bridgePort) []*nftables.Rule {
	var rules []*nftables.Rule
	add := func(comment string, parts ...[]expr.Any) {
		r := &nftables.Rule{Table: t, Chain: ch, Exprs: join(parts...)}
		if comment != "" {
			r.UserData = userdata.AppendString(nil, userdata.TypeComment, comment)
		}
		rules = append(rules, r)
	}
	drop := []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}
	seen := []expr.Any{&expr.Counter{}, accept()}
	pass := []expr.Any{accept()}
	var zero [4]byte

	add(tagDrop+dropSrcMAC, ll(6, p.mac, expr.CmpOpNeq), drop)
	ip := etherType(0x0800)
	if p.pin.IsValid() {
		// The bulk of the traffic first: IPv4 from its address, not UDP
		// (so neither DHCP request nor server reply) is the VM's.
		a := p.pin.As4()
		add(tagSeen, ip, nh(12, a[:], expr.CmpOpEq), []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		}, seen)
	}
	add(tagDrop+dropVLAN, etherType(0x8100), drop)
	add(tagDrop+dropVLAN, etherType(0x88a8), drop)

	// ARP (Ethernet/IPv4 only): sender MAC its own; sender IP its pin,
	// or 0.0.0.0 for a probe.
	arp := etherType(0x0806)
	add(tagDrop+dropBad, arp, nh(4, []byte{6, 4}, expr.CmpOpNeq), drop)
	add(tagDrop+dropARP, arp, nh(8, p.mac, expr.CmpOpNeq), drop)
	if p.pin.IsValid() {
		a := p.pin.As4()
		add(tagSeen, arp, nh(14, a[:], expr.CmpOpEq), seen)
	}
	add("", arp, nh(14, zero[:], expr.CmpOpEq), pass)
	add(tagDrop+dropARP, arp, drop)

	// IPv4: never a DHCP server; DHCP requests to the service port;
	// from its pin only, or DHCP from 0.0.0.0.
	add(tagDrop+dropDHCPSrv, ip, l4(unix.IPPROTO_UDP), th(0, 67), drop)
	add("", ip, l4(unix.IPPROTO_UDP), th(2, 67), []expr.Any{
		&expr.Immediate{Register: 1, Data: svc},
		&expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 0, Len: 6},
	})
	if p.pin.IsValid() {
		a := p.pin.As4()
		add(tagSeen, ip, nh(12, a[:], expr.CmpOpEq), seen)
	}
	add("", ip, nh(12, zero[:], expr.CmpOpEq), l4(unix.IPPROTO_UDP), th(0, 68), th(2, 67), pass)
	add(tagDrop+dropSrcIP, ip, drop)

	// IPv6: link-local among guests is theirs; no router or DHCPv6
	// server among them.
	ip6 := etherType(0x86dd)
	add(tagDrop+dropRA, ip6, l4(unix.IPPROTO_ICMPV6), thByte(0, 134), drop)
	add(tagDrop+dropDHCPSrv, ip6, l4(unix.IPPROTO_UDP), th(0, 547), drop)
	return rules
}

// portCounters reads the counters of p's rules: drops by reason, and
// whether a "seen" rule matched.
func (n *Network) portCounters(p *bridgePort) (map[string]uint64, bool, error) {
	rules, err := n.env.nft.GetRules(n.br.table, p.chain)
	if err != nil {
		return nil, false, fmt.Errorf("hostnet: reading the rules of %s: %w", p.chain.Name, err)
	}
	drops := map[string]uint64{}
	seen := false
	for _, r := range rules {
		c, _ := userdata.GetString(r.UserData, userdata.TypeComment)
		var pkts uint64
		for _, e := range r.Exprs {
			if ctr, ok := e.(*expr.Counter); ok {
				pkts += ctr.Packets
			}
		}
		switch {
		case c == tagSeen:
			seen = seen || pkts > 0
		case strings.HasPrefix(c, tagDrop) && pkts > 0:
			drops[strings.TrimPrefix(c, tagDrop)] += pkts
		}
	}
	return drops, seen, nil
}

// ll compares bytes of the Ethernet header.
func ll(off uint32, b []byte, op expr.CmpOp) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: off, Len: uint32(len(b))},
		&expr.Cmp{Op: op, Register: 1, Data: append([]byte(nil), b...)},
	}
}

// nh compares bytes of the network header (after the Ethernet header).
func nh(off uint32, b []byte, op expr.CmpOp) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(len(b))},
		&expr.Cmp{Op: op, Register: 1, Data: append([]byte(nil), b...)},
	}
}

// etherType is `ether type T` (a VLAN tag shows as 0x8100 here, the
// kernel puts offloaded tags back for the LL header).
func etherType(t uint16) []expr.Any {
	return ll(12, binary.BigEndian.AppendUint16(nil, t), expr.CmpOpEq)
}

func l4(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

// th is a 16-bit port of the transport header equal to v.
func th(off uint32, v uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, v)},
	}
}

func thByte(off uint32, v byte) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{v}},
	}
}

// do runs f on a thread in the network's namespace (TAPs and packet
// sockets belong to the namespace of the thread that makes them). The
// thread is thrown away afterwards, never reused in the wrong namespace.
func (e *env) do(f func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if e.own {
			done <- f() // every thread is in it already
			return
		}
		if err := netns.Set(e.ns); err != nil {
			done <- fmt.Errorf("entering the network's namespace: %w", err)
			return
		}
		done <- f()
	}()
	return <-done
}

// CapturePort hands sink every frame to and from VM TAP name (an
// AF_PACKET socket on it, both directions) until stop is called, the TAP
// is removed or the network closed. sink runs on one goroutine.
func (n *Network) CapturePort(name string, sink func(frame []byte)) (stop func(), err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.bridgeMode(); err != nil {
		return nil, err
	}
	if n.br.vms[name] == nil {
		return nil, fmt.Errorf("hostnet: no VM TAP %s on the bridge", name)
	}
	var fd int
	if err := n.env.do(func() error {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			return err
		}
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return err
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("hostnet: capturing VM TAP %s: %w", name, err)
	}
	c := &portCapture{name: name, f: os.NewFile(uintptr(fd), "capture:"+name), done: make(chan struct{})}
	rc, err := c.f.SyscallConn()
	if err != nil {
		c.f.Close()
		return nil, fmt.Errorf("hostnet: capturing VM TAP %s: %w", name, err)
	}
	go c.run(rc, sink)
	n.br.cmu.Lock()
	n.br.caps[c] = struct{}{}
	n.br.cmu.Unlock()
	return func() {
		n.br.cmu.Lock()
		delete(n.br.caps, c)
		n.br.cmu.Unlock()
		c.stop()
	}, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// portCapture is one AF_PACKET reader.
type portCapture struct {
	name string
	f    *os.File
	once sync.Once
	done chan struct{}
}

func (c *portCapture) run(rc interface {
	Read(func(fd uintptr) bool) error
}, sink func([]byte)) {
	defer close(c.done)
	// A TAP with offloads (vhost-net) hands up segments of up to 64 KiB.
	buf := make([]byte, 1<<17)
	for {
		var n int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_TRUNC)
			return rerr != unix.EAGAIN
		})
		if err != nil {
			return // closed
		}
		if rerr != nil {
			if rerr == unix.EINTR || rerr == unix.ENETDOWN {
				continue
			}
			return // the TAP is gone
		}
		sink(buf[:min(n, len(buf))])
	}
}

func (c *portCapture) stop() {
	c.once.Do(func() { c.f.Close() })
	<-c.done
}

func (bs *bridgeState) stopCapturesOf(name string) {
	bs.cmu.Lock()
	var cs []*portCapture
	for c := range bs.caps {
		if name == "" || c.name == name {
			cs = append(cs, c)
			delete(bs.caps, c)
		}
	}
	bs.cmu.Unlock()
	for _, c := range cs {
		c.stop()
	}
}

func (bs *bridgeState) stopCaptures() {
	if bs.claim != nil {
		bs.claim.Stop()
	}
	bs.stopCapturesOf("")
}
