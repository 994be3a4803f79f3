//go:build linux

package hostnet

// Adoption: a plugin killed with SIGKILL closes nothing. Its bridge, the
// VM TAPs (persistent, held by the VMs' processes) and both nftables
// tables stay in the kernel and keep passing the fast-path VMs' traffic;
// only the switch's uplink TAP dies with the process. A Setup in bridge
// mode that finds that bridge matching its configuration takes it over
// instead of tearing it down:
//
//   - the bridge is kept when it is tagged as the network's, has the
//     configured MTU, the derived gateway MAC and exactly the gateway as
//     IPv4 address; anything else is removed and made anew, as at a first
//     start;
//   - a VM TAP of the network that a process holds, is a port of the
//     bridge and has, in the old bridge table, exactly the rules this
//     package writes for some MAC and pin (and the ports map entry that
//     sends its frames there) stays where it is, up, filtered by those
//     rules; it waits for AddPort (the VM attached again) for ClaimWindow
//     and is then handled as a Setup without adoption would have: set
//     down and taken off the bridge, or removed once nobody holds it;
//   - VM TAPs nobody holds are removed, held ones that fail the checks are
//     set down and taken off the bridge (AddPort takes them back), other
//     interfaces on the bridge are taken off it, and the dead run's uplink
//     is replaced by a new one;
//   - both tables and our rules in iptables-nft's FORWARD chain are
//     replaced in one nftables transaction (old table deleted, new one
//     added, in the same batch): packets see the old ruleset or the new
//     one, never none, so a kept TAP is never without its anti-spoofing and
//     conntrack's NAT bindings carry on.
//
// Whatever fails during adoption leaves what the old run had (the
// transaction is all or nothing) and Setup falls back to the cleanup and
// a new bridge.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	mnl "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/anka-net/anka/sdk/netkit/frameio"
)

// DefaultClaimWindow is how long a VM TAP adopted from an earlier run
// waits for AddPort when Config.ClaimWindow is 0.
const DefaultClaimWindow = time.Minute

// keptPort is a VM TAP adoption keeps on the bridge.
type keptPort struct {
	name string
	idx  int
	p    *bridgePort
}

// adoptBridge takes over the bridge an earlier run of the network left
// (see the top of this file). adopted false with a nil error: there is no
// bridge of that name; with an error: there is one and it was not
// adopted, for the reason the error gives, and nothing was changed that
// the cleanup does not undo.
func (n *Network) adoptBridge() (adopted bool, err error) {
	cfg := &n.cfg
	e, nl := n.env, n.env.nl
	link, err := nl.LinkByName(cfg.TAP)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return false, nil
		}
		return false, fmt.Errorf("looking for bridge %s: %w", cfg.TAP, err)
	}
	if why := n.mismatch(link); why != "" {
		return false, fmt.Errorf("bridge %s %s", cfg.TAP, why)
	}
	brIdx := link.Attrs().Index
	if err := e.checkPrefix(cfg, brIdx, n.log); err != nil {
		return false, err
	}

	inet, err := e.tableOf(nftables.TableFamilyINet, n.tag)
	if err != nil {
		return false, err
	}
	oldBT, err := e.tableOf(nftables.TableFamilyBridge, bridgeTableName(cfg.Name))
	if err != nil {
		return false, err
	}
	jumps := map[string]string{} // TAP -> chain its ports map entry jumps to
	if oldBT != nil {
		if jumps, err = e.portJumps(oldBT); err != nil {
			return false, err
		}
	}
	svc := derived("service", cfg.Name)

	// Sort the interfaces; nothing changes yet.
	links, err := retryDump(nl.LinkList)
	if err != nil {
		return false, fmt.Errorf("listing interfaces: %w", err)
	}
	sw := n.sweep()
	var (
		kept             []keptPort
		remove, setDown  []netlink.Link
		release          []netlink.Link
		removed, dropped []string
	)
	for _, l := range links {
		a := l.Attrs()
		if a.Index == brIdx {
			continue
		}
		_, tun := l.(*netlink.Tuntap)
		switch {
		case tun && sw.owns(l):
			held, err := e.held(a.Index)
			if err != nil {
				return false, fmt.Errorf("VM TAP %s: %w", a.Name, err)
			}
			if !held {
				remove = append(remove, l)
				continue
			}
			id, tagged := strings.CutPrefix(a.Alias, n.tag+" vm ")
			var p *bridgePort
			why := "not a port of the bridge"
			switch {
			case a.MasterIndex != brIdx:
			case !tagged || n.PortName(id) != a.Name:
				why = "its tag names no VM whose TAP it is"
			case oldBT == nil:
				why = "the bridge table is gone"
			case jumps[a.Name] != "vm-"+a.Name:
				why = "no ports map entry sends its frames to its rules"
			default:
				p, why = e.readPort(oldBT, a.Name, id, svc)
			}
			if p == nil {
				setDown = append(setDown, l)
				dropped = append(dropped, a.Name+" ("+why+")")
				continue
			}
			kept = append(kept, keptPort{name: a.Name, idx: a.Index, p: p})
		case tun && (a.Alias == n.tag || a.Name == cfg.Uplink):
			// The dead run's uplink (or a TAP it tagged).
			remove = append(remove, l)
		case a.Name == cfg.Uplink:
			return false, fmt.Errorf("interface %s exists and is not a TAP (it is %s)", a.Name, l.Type())
		case a.MasterIndex == brIdx:
			release = append(release, l)
		}
	}
	var ipt []uint64
	hasIPT, err := e.hasIPTablesForward()
	if err != nil {
		return false, err
	}
	if hasIPT {
		if ipt, err = e.taggedRules(iptFilter, iptForward, n.tag); err != nil {
			return false, err
		}
	}

	// Links: what goes, what leaves the bridge, the new uplink.
	for _, l := range remove {
		if err := nl.LinkDel(l); err != nil && !errors.Is(err, os.ErrNotExist) {
			return false, fmt.Errorf("removing %s: %w", l.Attrs().Name, err)
		}
		removed = append(removed, "TAP "+l.Attrs().Name)
	}
	for _, l := range setDown {
		// Down first: it passes nothing before its rules go.
		if err := nl.LinkSetDown(l); err != nil && !errors.Is(err, os.ErrNotExist) {
			return false, fmt.Errorf("setting VM TAP %s down: %w", l.Attrs().Name, err)
		}
		if err := nl.LinkSetNoMaster(l); err != nil && !errors.Is(err, os.ErrNotExist) {
			return false, fmt.Errorf("taking VM TAP %s off the bridge: %w", l.Attrs().Name, err)
		}
	}
	for _, l := range release {
		if err := nl.LinkSetNoMaster(l); err != nil && !errors.Is(err, os.ErrNotExist) {
			return false, fmt.Errorf("taking %s off bridge %s: %w", l.Attrs().Name, cfg.TAP, err)
		}
		removed = append(removed, "port "+l.Attrs().Name+" of the bridge (not the network's)")
	}
	up, ul, err := n.openUplink(link, svc)
	if err != nil {
		return false, err
	}
	fail := func(err error) (bool, error) {
		up.Close()
		nl.LinkDel(ul)
		return false, err
	}
	if err := nl.LinkSetUp(link); err != nil {
		return fail(fmt.Errorf("bringing %s up: %w", cfg.TAP, err))
	}

	// nftables: one transaction replaces both tables and our FORWARD
	// rules.
	c := e.nft
	if inet != nil {
		c.DelTable(inet)
	}
	for _, h := range ipt {
		if err := c.DelRule(&nftables.Rule{Table: iptFilter, Chain: iptFwdChain, Handle: h}); err != nil {
			return fail(err)
		}
	}
	if oldBT != nil {
		c.DelTable(oldBT)
	}
	if _, err := e.queueInstall(cfg, n.tag); err != nil {
		return fail(err)
	}
	bs := &bridgeState{svcMAC: svc, uplinkIdx: ul.Attrs().Index, uplinkMAC: ul.Attrs().HardwareAddr, vms: map[string]*bridgePort{}, caps: map[*portCapture]struct{}{}}
	if err := e.queueBridge(bs, bridgeTableName(cfg.Name)); err != nil {
		return fail(err)
	}
	var elems []nftables.SetElement
	for _, k := range kept {
		k.p.chain = c.AddChain(&nftables.Chain{Name: "vm-" + k.name, Table: bs.table})
		for _, r := range portRules(bs.table, k.p.chain, svc, k.p) {
			c.AddRule(r)
		}
		elems = append(elems, nftables.SetElement{Key: ifname(k.name), VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: k.p.chain.Name}})
	}
	if len(elems) > 0 {
		if err := c.SetAddElements(bs.ports, elems); err != nil {
			return fail(err)
		}
	}
	if err := c.Flush(); err != nil {
		return fail(fmt.Errorf("replacing the nftables tables in one transaction: %w", err))
	}
	if cfg.Mode == NAT {
		if err := enableForwarding(n.log); err != nil {
			// The new rules stand; the fallback's cleanup removes them.
			return fail(err)
		}
	}

	n.ifindex, n.tap, n.br = brIdx, up, bs
	var keptNames []string
	for _, k := range kept {
		k.p.kept = true
		bs.vms[k.name] = k.p
		keptNames = append(keptNames, k.name)
	}
	if len(kept) > 0 {
		w := cfg.ClaimWindow
		if w <= 0 {
			w = DefaultClaimWindow
		}
		bs.claim = time.AfterFunc(w, n.settleKept)
	}
	n.log.Info("hostnet: adopted the running bridge of an earlier run", "bridge", cfg.TAP, "ifindex", brIdx,
		"kept_vm_taps", strings.Join(keptNames, ", "), "removed", strings.Join(removed, ", "),
		"taken_off_the_bridge", strings.Join(dropped, "; "), "tables", "replaced in one transaction")
	return true, nil
}

// mismatch says how link differs from the bridge the configuration
// makes; "" when it does not.
func (n *Network) mismatch(link netlink.Link) string {
	cfg := &n.cfg
	a := link.Attrs()
	switch {
	case link.Type() != "bridge":
		return "is a " + link.Type() + ", not a bridge"
	case a.Alias != n.tag:
		return fmt.Sprintf("is not tagged %q (alias %q)", n.tag, a.Alias)
	case a.MTU != cfg.MTU:
		return fmt.Sprintf("has MTU %d, the configuration %d", a.MTU, cfg.MTU)
	case !bytes.Equal(a.HardwareAddr, derived("gateway", cfg.Name)):
		return fmt.Sprintf("has MAC %v, not the network's", a.HardwareAddr)
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return n.env.nl.AddrList(link, netlink.FAMILY_V4) })
	if err != nil {
		return "has addresses that cannot be listed: " + err.Error()
	}
	want := netip.PrefixFrom(cfg.Gateway, cfg.Prefix.Bits())
	var got []string
	ok := len(addrs) == 1
	for _, ad := range addrs {
		got = append(got, ad.IPNet.String())
		if p, isV4 := toPrefix(ad.IPNet); !isV4 || p != want {
			ok = false
		}
	}
	if !ok {
		return fmt.Sprintf("has IPv4 addresses [%s], the configuration %v", strings.Join(got, " "), want)
	}
	return ""
}

// openUplink makes the switch's uplink TAP on bridge link, with the
// service MAC pinned behind it.
func (n *Network) openUplink(link netlink.Link, svc net.HardwareAddr) (*frameio.TAPPort, netlink.Link, error) {
	cfg := &n.cfg
	nl := n.env.nl
	// Offload: the host hands the switch 64 KiB TCP segments. HandGSO:
	// the port hands them up whole into the switch's large buffers, so
	// a guest that takes TSO gets them whole and the switch cuts them to
	// the MTU for every other port (frameio.TAPOptions.HandGSO).
	up, err := frameio.OpenTAP(cfg.Uplink, frameio.TAPOptions{MTU: cfg.MTU, Logger: cfg.Logger, Offload: true, HandGSO: true})
	err = tunHint(err)
	if err != nil {
		return nil, nil, fmt.Errorf("hostnet: %w", err)
	}
	ul, err := nl.LinkByName(cfg.Uplink)
	if err != nil {
		up.Close()
		return nil, nil, fmt.Errorf("hostnet: finding the new TAP %s: %w", cfg.Uplink, err)
	}
	steps := []struct {
		what string
		do   func() error
	}{
		{"tagging", func() error { return nl.LinkSetAlias(ul, n.tag) }},
		{"joining to the bridge", func() error { return nl.LinkSetMaster(ul, link) }},
		{"bringing up", func() error { return nl.LinkSetUp(ul) }},
		// bridge fdb add SVC dev UPLINK master static: DHCP steered to the
		// service MAC always leaves through the uplink, learnt or not.
		{"pinning the service MAC behind", func() error {
			return nl.NeighSet(&netlink.Neigh{LinkIndex: ul.Attrs().Index, Family: unix.AF_BRIDGE,
				Flags: netlink.NTF_MASTER, State: netlink.NUD_NOARP, HardwareAddr: svc})
		}},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			up.Close()
			nl.LinkDel(ul)
			return nil, nil, fmt.Errorf("hostnet: %s TAP %s: %w", s.what, cfg.Uplink, err)
		}
	}
	return up, ul, nil
}

// tableOf is the table name of family, or nil.
func (e *env) tableOf(family nftables.TableFamily, name string) (*nftables.Table, error) {
	tables, err := e.nft.ListTablesOfFamily(family)
	if err != nil {
		return nil, fmt.Errorf("listing nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == name {
			return t, nil
		}
	}
	return nil, nil
}

// portJumps reads the ports map of bridge table t: which chain each VM
// TAP's frames jump to.
func (e *env) portJumps(t *nftables.Table) (map[string]string, error) {
	m := map[string]string{}
	set, err := e.nft.GetSetByName(t, "ports")
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return m, nil
		}
		return nil, fmt.Errorf("reading the ports map of nftables table bridge %s: %w", t.Name, err)
	}
	elems, err := e.nft.GetSetElements(set)
	if err != nil {
		return nil, fmt.Errorf("reading the ports map of nftables table bridge %s: %w", t.Name, err)
	}
	for _, el := range elems {
		// The library hands a verdict map's data over undecoded: the
		// attributes inside NFTA_DATA_VERDICT.
		if kind, chain := decodeVerdict(el.Val); kind == expr.VerdictJump {
			m[string(bytes.TrimRight(el.Key, "\x00"))] = chain
		}
	}
	return m, nil
}

// decodeVerdict reads NFTA_VERDICT_CODE and NFTA_VERDICT_CHAIN; a kind
// of 1 (no verdict there is 1) when b holds none.
func decodeVerdict(b []byte) (expr.VerdictKind, string) {
	kind, chain := expr.VerdictKind(1), ""
	ad, err := mnl.NewAttributeDecoder(b)
	if err != nil {
		return kind, chain
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_VERDICT_CODE:
			kind = expr.VerdictKind(int32(ad.Uint32()))
		case unix.NFTA_VERDICT_CHAIN:
			chain = ad.String()
		}
	}
	if ad.Err() != nil {
		return 1, ""
	}
	return kind, chain
}

// readPort reads VM TAP name's chain in the old bridge table t: the MAC
// and pin its rules were written for, and the drops they counted. It
// returns nil and the reason when the chain is not exactly what
// portRules writes for them.
func (e *env) readPort(t *nftables.Table, name, id string, svc net.HardwareAddr) (*bridgePort, string) {
	ch := &nftables.Chain{Name: "vm-" + name, Table: t}
	rules, err := e.nft.GetRules(t, ch)
	if err != nil {
		return nil, "its rules cannot be read: " + err.Error()
	}
	if len(rules) == 0 {
		return nil, "it has no rules"
	}
	mac := cmpData(rules[0], 0)
	if commentOfRule(rules[0]) != tagDrop+dropSrcMAC || len(mac) != 6 {
		return nil, "its rules do not start with its MAC"
	}
	p := &bridgePort{id: id, mac: net.HardwareAddr(mac), carried: map[string]uint64{}}
	for _, r := range rules {
		if commentOfRule(r) == tagSeen {
			// ether type, then the source address.
			if a, ok := netip.AddrFromSlice(cmpData(r, 1)); ok && a.Is4() {
				p.pin = a
			}
			break
		}
	}
	want := portRules(t, ch, svc, p)
	if len(want) != len(rules) {
		return nil, fmt.Sprintf("it has %d rules, not the %d written for MAC %v and address %v", len(rules), len(want), p.mac, p.pin)
	}
	for i := range want {
		if fingerprint(want[i]) != fingerprint(rules[i]) {
			return nil, fmt.Sprintf("its rule %d is not the one written for MAC %v and address %v", i+1, p.mac, p.pin)
		}
	}
	// The counters go with the old rules: keep what they counted.
	for _, r := range rules {
		c := commentOfRule(r)
		var pkts uint64
		for _, x := range r.Exprs {
			if ctr, ok := x.(*expr.Counter); ok {
				pkts += ctr.Packets
			}
		}
		switch {
		case c == tagSeen && pkts > 0:
			p.seenBefore = true
		case strings.HasPrefix(c, tagDrop) && pkts > 0:
			p.carried[strings.TrimPrefix(c, tagDrop)] += pkts
		}
	}
	return p, ""
}

func commentOfRule(r *nftables.Rule) string {
	c, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return c
}

// cmpData is the data of the i-th comparison of r, or nil.
func cmpData(r *nftables.Rule, i int) []byte {
	for _, x := range r.Exprs {
		if c, ok := x.(*expr.Cmp); ok {
			if i == 0 {
				return c.Data
			}
			i--
		}
	}
	return nil
}

// fingerprint is what a rule does, as the kernel lists it back: its
// comment and its expressions, without counter values or registers.
func fingerprint(r *nftables.Rule) string {
	var b strings.Builder
	b.WriteString(commentOfRule(r))
	for _, x := range r.Exprs {
		switch x := x.(type) {
		case *expr.Payload:
			fmt.Fprintf(&b, "|payload %d %d %d %d", x.OperationType, x.Base, x.Offset, x.Len)
		case *expr.Meta:
			fmt.Fprintf(&b, "|meta %d", x.Key)
		case *expr.Cmp:
			fmt.Fprintf(&b, "|cmp %d %x", x.Op, x.Data)
		case *expr.Immediate:
			fmt.Fprintf(&b, "|imm %x", x.Data)
		case *expr.Verdict:
			fmt.Fprintf(&b, "|verdict %d %s", x.Kind, x.Chain)
		case *expr.Counter:
			b.WriteString("|counter")
		default:
			fmt.Fprintf(&b, "|%T", x)
		}
	}
	return b.String()
}

// claimLocked is AddPort for a VM TAP adoption kept: it is on the bridge,
// up and filtered already; rules for another MAC are replaced (pin reset
// to DHCP only) in one transaction. n.mu is held.
func (n *Network) claimLocked(name string, p *bridgePort, mac net.HardwareAddr) (string, bool, error) {
	nl := n.env.nl
	link, err := nl.LinkByName(name)
	if err != nil {
		return "", false, fmt.Errorf("hostnet: the VM TAP %s kept from an earlier run: %w", name, err)
	}
	if !bytes.Equal(p.mac, mac) {
		if drops, _, err := n.portCounters(p); err == nil {
			for k, v := range drops {
				p.carried[k] += v
			}
		}
		old := *p
		p.mac, p.pin, p.seenBefore = append(net.HardwareAddr(nil), mac...), netip.Addr{}, false
		n.env.nft.FlushChain(p.chain)
		n.addPortRules(p)
		if err := n.env.nft.Flush(); err != nil {
			p.mac, p.pin, p.seenBefore = old.mac, old.pin, old.seenBefore
			return "", false, fmt.Errorf("hostnet: anti-spoofing rules of VM TAP %s: %w", name, err)
		}
	}
	if link.Attrs().MTU != n.cfg.MTU {
		if err := nl.LinkSetMTU(link, n.cfg.MTU); err != nil {
			return "", false, fmt.Errorf("hostnet: setting the MTU of VM TAP %s: %w", name, err)
		}
	}
	if err := nl.LinkSetUp(link); err != nil {
		return "", false, fmt.Errorf("hostnet: bringing VM TAP %s up: %w", name, err)
	}
	p.kept = false
	n.log.Info("hostnet: VM TAP taken back without leaving the bridge", "tap", name, "vm", p.id, "mac", mac.String(), "pin", p.pin)
	return name, true, nil
}

// settleKept ends the claim window: the VM TAPs adoption kept that no
// AddPort took back are handled as a Setup without adoption would have:
// set down and taken off the bridge while a process holds them (AddPort
// still takes them back), else removed.
func (n *Network) settleKept() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed || n.br == nil || n.supersededLocked() {
		return
	}
	nl := n.env.nl
	for name, p := range n.br.vms {
		if !p.kept {
			continue
		}
		delete(n.br.vms, name)
		n.br.stopCapturesOf(name)
		// The TAP goes, or goes down and off the bridge, before its
		// rules: it never passes a frame unfiltered.
		if l, err := nl.LinkByName(name); err == nil {
			if held, err := n.env.held(l.Attrs().Index); err == nil && !held {
				if err := nl.LinkDel(l); err != nil && !errors.Is(err, os.ErrNotExist) {
					n.log.Warn("hostnet: removing an unclaimed VM TAP", "tap", name, "error", err)
					continue
				}
				n.log.Info("hostnet: removed a VM TAP kept from an earlier run: no VM attached again and nobody holds it", "tap", name, "vm", p.id)
			} else {
				if err := nl.LinkSetDown(l); err != nil {
					n.log.Warn("hostnet: setting an unclaimed VM TAP down", "tap", name, "error", err)
					continue
				}
				nl.LinkSetNoMaster(l)
				n.log.Info("hostnet: a VM TAP kept from an earlier run was not claimed in time; set down and off the bridge until its VM attaches again", "tap", name, "vm", p.id)
			}
		}
		if err := n.removePortRules(name, p); err != nil {
			n.log.Warn("hostnet: removing the rules of an unclaimed VM TAP", "tap", name, "error", err)
		}
	}
}

// supersededLocked reports whether a later Setup of the same network
// replaced this one's devices: the gateway device, or in bridge mode the
// uplink (an adopted bridge keeps its index; the uplink is new, with a
// random MAC, and the kernel may give it the old one's index again).
func (n *Network) supersededLocked() bool {
	if l, err := n.env.nl.LinkByName(n.cfg.TAP); err == nil && l.Attrs().Index != n.ifindex {
		return true
	}
	if n.br != nil {
		if l, err := n.env.nl.LinkByName(n.cfg.Uplink); err == nil &&
			(l.Attrs().Index != n.br.uplinkIdx || !bytes.Equal(l.Attrs().HardwareAddr, n.br.uplinkMAC)) {
			return true
		}
	}
	return false
}
