package vm

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"strings"

	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/core/macpool"
)

// CardChange is what `modify set|add network-card` asks for; nil fields are
// left as they are. "auto" for Bridge or MAC means "choose for me".
type CardChange struct {
	Type, Bridge, MAC, IP *string
	// Options are merged into the card's; an empty value removes a key.
	Options map[string]string
}

// SetCard changes card 0, or adds it when add is true. Cards change only on
// a stopped VM: the NIC is part of the VM process.
func (m *Manager) SetCard(ctx context.Context, name string, ch CardChange, add bool) (*Status, error) {
	// Spanning: static addresses are unique across VMs.
	return withVMResult(ctx, m, name, true, func(v *VM) (*Status, error) {
		if v.State != Stopped {
			return nil, errs.Statef("VM %s is %s: changing its network card needs a stopped VM; run `anka stop %s` first", name, v.State, name)
		}
		others, err := m.otherVMs(name)
		if err != nil {
			return nil, err
		}
		v, err = m.Store.UpdateLocked(name, func(v *VM) error {
			card := v.NetworkCard
			switch {
			case add && card != nil:
				return errs.Conflictf("VM %s already has network card 0 (Anka supports one card): change it with `anka modify %s set network-card`", name, name)
			case add:
				card = &NetworkCard{Type: "shared"}
			case card == nil:
				return errs.NotFoundf("VM %s has no network card: add one with `anka modify %s add network-card`", name, name)
			default:
				c := *card
				c.Options = maps.Clone(c.Options)
				card = &c
			}
			if err := m.applyCard(card, ch, others); err != nil {
				return err
			}
			if err := m.Hooks.ValidateCard(ctx, v, card); err != nil {
				return err
			}
			v.NetworkCard = card
			return nil
		})
		if err != nil {
			return nil, err
		}
		return m.status(ctx, v)
	})
}

func (m *Manager) applyCard(card *NetworkCard, ch CardChange, others []*VM) error {
	if ch.Type != nil {
		t := strings.TrimSpace(*ch.Type)
		if m.KnownType != nil {
			if err := m.KnownType(t); err != nil {
				return err
			}
		}
		if t != card.Type {
			card.Type = t
			if t != "bridge" {
				card.Bridge = ""
			}
			if t != "static" {
				card.IP = ""
			}
			if t == "bridge" || t == "disconnected" {
				card.PortForwards = nil
			}
			card.Options = nil // options belong to a type
		}
	}
	for k, val := range ch.Options {
		if k == "" || strings.ContainsAny(k, "= ") || strings.IndexFunc(k, isControl) >= 0 {
			return errs.Invalidf("card option %q is not a valid name: use -o KEY=VALUE", k)
		}
		if strings.IndexFunc(val, isControl) >= 0 {
			return errs.Invalidf("card option %s=%q has a control character (a NUL, a newline): option values are one line of text", k, val)
		}
		if val == "" {
			delete(card.Options, k)
			continue
		}
		if card.Options == nil {
			card.Options = map[string]string{}
		}
		card.Options[k] = val
	}
	if ch.Bridge != nil {
		b := *ch.Bridge
		if b == "auto" {
			b = ""
		}
		if b != "" && card.Type != "bridge" {
			return errs.Invalidf("-b/--bridge applies to bridge cards, this one is %s: add -t bridge", card.Type)
		}
		if err := validateIfName(b); err != nil {
			return err
		}
		card.Bridge = b
	}
	if ch.MAC != nil {
		s := *ch.MAC
		if s == "auto" || s == "" {
			card.MAC = ""
		} else {
			mac, err := macpool.ParseStaticMAC(s)
			if err != nil {
				return err
			}
			card.MAC = mac.String()
		}
	}
	if ch.IP != nil {
		if card.Type != "static" {
			return errs.Invalidf("--ip needs a static card, this one is %s: add -t static", card.Type)
		}
		ip, err := m.checkStaticIP(*ch.IP, others)
		if err != nil {
			return err
		}
		card.IP = ip
	}
	if card.Type == "static" && card.IP == "" {
		return errs.Invalidf("a static card needs an address: add --ip ADDR (on the shared network %s)", m.SharedNet)
	}
	return nil
}

// isControl reports bytes no name or option value may hold.
func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

func validateIfName(s string) error {
	if s == "" {
		return nil
	}
	control := strings.IndexFunc(s, isControl) >= 0
	if len(s) > 15 || control || strings.ContainsAny(s, "/ :") || s == "." || s == ".." {
		return errs.Invalidf("-b %q is not a network interface name (at most 15 characters, no '/', ':', space or control character): use a name such as eth0, or auto", s)
	}
	return nil
}

func (m *Manager) checkStaticIP(s string, others []*VM) (string, error) {
	ip, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil || !ip.Is4() {
		return "", errs.Invalidf("--ip %q is not an IPv4 address: use e.g. 192.168.64.50", s)
	}
	if m.SharedNet.IsValid() {
		p := m.SharedNet.Masked()
		switch {
		case !p.Contains(ip):
			return "", errs.Invalidf("--ip %s is outside the shared network %s: choose an address inside it", ip, p)
		case ip == m.Gateway:
			return "", errs.Invalidf("--ip %s is the gateway of the shared network: choose another address", ip)
		case ip == p.Addr() || ip == broadcast(p):
			return "", errs.Invalidf("--ip %s is the network or broadcast address of %s: choose a host address", ip, p)
		}
	}
	for _, o := range others {
		if o.NetworkCard != nil && o.NetworkCard.Type == "static" && o.NetworkCard.IP == ip.String() {
			return "", errs.Conflictf("--ip %s is already held by VM %s: choose another address", ip, o.Name)
		}
	}
	return ip.String(), nil
}

func broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func (m *Manager) otherVMs(self string) ([]*VM, error) {
	vms, _, err := m.Store.List()
	if err != nil {
		return nil, err
	}
	out := vms[:0]
	for _, v := range vms {
		if v.Name != self {
			out = append(out, v)
		}
	}
	return out, nil
}

// DeleteCard removes card 0, like pulling the NIC; the dynamic MAC returns
// to the pool and the network forgets the VM.
func (m *Manager) DeleteCard(ctx context.Context, name string) (*Status, error) {
	return withVMResult(ctx, m, name, false, func(v *VM) (*Status, error) {
		if v.State != Stopped {
			return nil, errs.Statef("VM %s is %s: removing its network card needs a stopped VM; run `anka stop %s` first", name, v.State, name)
		}
		var old *NetworkCard
		v, err := m.Store.UpdateLocked(name, func(v *VM) error {
			if v.NetworkCard == nil {
				return errs.NotFoundf("VM %s has no network card to delete", name)
			}
			old, v.NetworkCard = v.NetworkCard, nil
			return nil
		})
		if err != nil {
			return nil, err
		}
		if err := m.Hooks.CardRemoved(ctx, v, old); err != nil {
			return nil, err
		}
		if err := m.MACs.Release(v.UUID); err != nil {
			return nil, err
		}
		return m.status(ctx, v)
	})
}

// AddPortForward adds a rule; with HostPort 0 it picks the first port from
// PortBase that no rule uses and that can be bound. A running VM gets the
// rule at once through the PortForwardsChanged hook.
func (m *Manager) AddPortForward(ctx context.Context, name string, r PortForward) (*PortForward, error) {
	if r.Protocol == "" {
		r.Protocol = "tcp"
	}
	if r.HostIP == "" {
		r.HostIP = "0.0.0.0"
	}
	r.Protocol = strings.ToLower(r.Protocol)
	if err := ValidatePortForward(&r); err != nil {
		return nil, err
	}
	// Spanning: host ports are unique across VMs.
	return withVMResult(ctx, m, name, true, func(v *VM) (*PortForward, error) { return m.addPortForwardLocked(ctx, v, r) })
}

func (m *Manager) addPortForwardLocked(ctx context.Context, v *VM, r PortForward) (*PortForward, error) {
	name := v.Name
	card, err := v.Card()
	if err != nil {
		return nil, err
	}
	if card.Type == "bridge" || card.Type == "disconnected" {
		return nil, errs.Invalidf("VM %s has a %s card: port forwarding needs a shared, host or static card", name, card.Type)
	}
	for _, o := range card.PortForwards {
		if o.Name == r.Name {
			return nil, errs.Conflictf("VM %s already has a port-forwarding rule named %q: choose another name or delete it first", name, r.Name)
		}
	}
	others, err := m.otherVMs(name)
	if err != nil {
		return nil, err
	}
	used := func(port int) string {
		for _, o := range append(others, v) {
			if o.NetworkCard == nil {
				continue
			}
			for _, x := range o.NetworkCard.PortForwards {
				if x.HostPort == port && x.Protocol == r.Protocol && ipOverlap(x.HostIP, r.HostIP) {
					return fmt.Sprintf("rule %q of VM %s", x.Name, o.Name)
				}
			}
		}
		return ""
	}
	bindable := func(port int) bool { return m.Bindable == nil || m.Bindable(r.Protocol, r.HostIP, port) }
	if r.HostPort == 0 {
		for p := m.PortBase; p <= 65535; p++ {
			if used(p) == "" && bindable(p) {
				r.HostPort = p
				break
			}
		}
		if r.HostPort == 0 {
			return nil, errs.Conflictf("no free host port from portfwd_base %d up: lower portfwd_base or delete rules", m.PortBase)
		}
	} else if who := used(r.HostPort); who != "" {
		return nil, errs.Conflictf("host port %s/%d on %s is already used by %s: choose another port, or leave -p out to pick one", r.Protocol, r.HostPort, r.HostIP, who)
	} else if !bindable(r.HostPort) {
		return nil, errs.Conflictf("host port %s/%d on %s is in use by another program: choose another port, or leave -p out to pick one", r.Protocol, r.HostPort, r.HostIP)
	}
	v, err = m.Store.UpdateLocked(name, func(v *VM) error {
		v.NetworkCard.PortForwards = append(v.NetworkCard.PortForwards, r)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if v.State != Stopped {
		if err := m.Hooks.PortForwardsChanged(ctx, v); err != nil {
			_, rerr := m.Store.UpdateLocked(name, func(v *VM) error {
				v.NetworkCard.PortForwards = removeRule(v.NetworkCard.PortForwards, r.Name)
				return nil
			})
			if rerr != nil {
				return nil, fmt.Errorf("%w; undoing the rule failed too: %v", err, rerr)
			}
			return nil, err
		}
	}
	return &r, nil
}

func ipOverlap(a, b string) bool {
	ua, _ := netip.ParseAddr(a)
	ub, _ := netip.ParseAddr(b)
	return a == b || !ua.IsValid() || !ub.IsValid() || ua.IsUnspecified() || ub.IsUnspecified()
}

func removeRule(rs []PortForward, name string) []PortForward {
	out := rs[:0:0]
	for _, r := range rs {
		if r.Name != name {
			out = append(out, r)
		}
	}
	return out
}

// DeletePortForward removes one rule by name, or every rule with all.
func (m *Manager) DeletePortForward(ctx context.Context, name, rule string, all bool) error {
	return m.withVM(ctx, name, false, func(v *VM) error {
		v, err := m.Store.UpdateLocked(name, func(v *VM) error {
			card, err := v.Card()
			if err != nil {
				return err
			}
			if all {
				card.PortForwards = nil
				return nil
			}
			rest := removeRule(card.PortForwards, rule)
			if len(rest) == len(card.PortForwards) {
				return errs.NotFoundf("VM %s has no port-forwarding rule named %q: see `anka show %s network`", name, rule, name)
			}
			card.PortForwards = rest
			return nil
		})
		if err != nil {
			return err
		}
		if v.State != Stopped {
			return m.Hooks.PortForwardsChanged(ctx, v)
		}
		return nil
	})
}
