package routed

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/netkit/portfwd"
)

// Port forwards apply to an attached VM: anka adds a VM's rules when it
// starts it (and at once on a running VM), and Detach and Release drop
// them. The rules in force are also written to the data folder, so a
// plugin that crashed puts them back when anka attaches the running VM
// to its new process.

func (p *Plugin) rulesPath() string { return filepath.Join(p.dataDir, p.net.Name+"-forwards.json") }

func (p *Plugin) loadRules() map[string][]sdk.PortForward {
	rules := map[string][]sdk.PortForward{}
	b, err := os.ReadFile(p.rulesPath())
	if err != nil {
		return rules
	}
	if err := json.Unmarshal(b, &rules); err != nil {
		p.log.Warn("ignoring the saved port forwards", "file", p.rulesPath(), "error", err)
		return map[string][]sdk.PortForward{}
	}
	return rules
}

// saveRulesLocked writes the rules in force; p.fmu is held.
func (p *Plugin) saveRulesLocked() {
	b, err := json.MarshalIndent(p.rules, "", "  ")
	if err == nil {
		err = writeAtomic(p.rulesPath(), b)
	}
	if err != nil {
		p.log.Warn("cannot save the port forwards; a crashed plugin would not restore them", "error", err)
	}
}

func writeAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// fwdName is the rule's name in the forwarder: unique per VM.
func fwdName(vmID, rule string) string { return vmID + "/" + rule }

func (p *Plugin) forwardsOf(id string) []sdk.PortForward {
	p.fmu.Lock()
	defer p.fmu.Unlock()
	return slices.Clone(p.rules[id])
}

// target follows the VM's address: its lease or fixed address while it
// is attached.
func (p *Plugin) target(st *stack, id string) portfwd.Target {
	return func() (netip.Addr, bool) { return st.lan.Addr(id) }
}

// restoreForwards puts back the rules a crashed process had in force for
// a VM attached again; a rule that cannot be bound any more is dropped.
func (p *Plugin) restoreForwards(st *stack, vm sdk.VMRef) {
	if st.fwd == nil {
		return
	}
	p.fmu.Lock()
	defer p.fmu.Unlock()
	var kept []sdk.PortForward
	live := map[string]bool{}
	for _, r := range st.fwd.Rules() {
		live[r.Name] = true
	}
	for _, r := range p.rules[vm.ID] {
		if !live[fwdName(vm.ID, r.Name)] {
			if err := st.fwd.Add(toRule(vm.ID, r), p.target(st, vm.ID)); err != nil {
				p.log.Warn("dropping a port forward of the crashed plugin", "vm", vmName(vm), "rule", r.Name, "error", err)
				continue
			}
			p.log.Info("port forward restored", "vm", vmName(vm), "rule", r.Name)
		}
		kept = append(kept, r)
	}
	if len(kept) != len(p.rules[vm.ID]) {
		p.setRulesLocked(vm.ID, kept)
	}
}

func (p *Plugin) setRulesLocked(id string, rs []sdk.PortForward) {
	if len(rs) == 0 {
		delete(p.rules, id)
	} else {
		p.rules[id] = rs
	}
	p.saveRulesLocked()
}

// dropForwards removes a VM's rules (Detach, Release).
func (p *Plugin) dropForwards(st *stack, id string) {
	if st.fwd == nil {
		return
	}
	p.fmu.Lock()
	defer p.fmu.Unlock()
	rs, ok := p.rules[id]
	if !ok {
		return
	}
	for _, r := range rs {
		st.fwd.Remove(fwdName(id, r.Name))
	}
	p.setRulesLocked(id, nil)
}

func toRule(id string, r sdk.PortForward) portfwd.Rule {
	ip, _ := netip.ParseAddr(r.HostIP)
	return portfwd.Rule{Name: fwdName(id, r.Name), Proto: r.Protocol, HostIP: ip, HostPort: r.HostPort, GuestPort: r.GuestPort}
}

// checkRule normalises a rule: protocol tcp by default, host IP 0.0.0.0.
func checkRule(r sdk.PortForward) (sdk.PortForward, error) {
	r.Protocol = strings.ToLower(r.Protocol)
	if r.Protocol == "" {
		r.Protocol = "tcp"
	}
	if r.HostIP == "" {
		r.HostIP = "0.0.0.0"
	}
	ip, err := netip.ParseAddr(r.HostIP)
	switch {
	case r.Name == "" || strings.Contains(r.Name, "/"):
		return r, sdk.Errorf(sdk.CodeInvalid, "a port forward needs a name without '/' (got %q)", r.Name)
	case r.Protocol != "tcp" && r.Protocol != "udp":
		return r, sdk.Errorf(sdk.CodeInvalid, "port forward %s: protocol %q: use tcp or udp", r.Name, r.Protocol)
	case err != nil:
		return r, sdk.Errorf(sdk.CodeInvalid, "port forward %s: host IP %q is not an IP address", r.Name, r.HostIP)
	case r.HostPort < 1 || r.HostPort > 65535:
		return r, sdk.Errorf(sdk.CodeInvalid, "port forward %s: host port %d: use 1 to 65535", r.Name, r.HostPort)
	case r.GuestPort < 1 || r.GuestPort > 65535:
		return r, sdk.Errorf(sdk.CodeInvalid, "port forward %s: guest port %d: use 1 to 65535", r.Name, r.GuestPort)
	}
	r.HostIP = ip.String()
	return r, nil
}

// overlaps: both rules would listen on one socket.
func overlaps(a, b sdk.PortForward) bool {
	return a.Protocol == b.Protocol && a.HostPort == b.HostPort &&
		(a.HostIP == b.HostIP || a.HostIP == "0.0.0.0" || b.HostIP == "0.0.0.0")
}

// forwarding is the network with port forwards, or why there is none.
func (p *Plugin) forwarding() (*stack, error) {
	if !p.net.PortForward {
		return nil, sdk.Errorf(sdk.CodeUnsupported, "the %s network has no port forwarding: its guests never reach beyond the host, nor the outside them", p.net.Name)
	}
	return p.ensure()
}

// AddPortForward starts forwarding a host port to the VM, which must be
// attached. Adding a rule that is in force already succeeds; a rule of the
// same name with other ports replaces it.
func (p *Plugin) AddPortForward(_ context.Context, req *sdk.PortForwardRequest) (*sdk.PortForwardResponse, error) {
	st, err := p.forwarding()
	if err != nil {
		return nil, err
	}
	r, err := checkRule(req.Rule)
	if err != nil {
		return nil, err
	}
	id := req.VM.ID
	if !st.lan.Attached(id) {
		return nil, sdk.Errorf(sdk.CodeConflict, "VM %s is not running on the %s network: its port forwards apply while it runs, and anka adds them when it starts", vmName(req.VM), p.net.Name)
	}
	p.fmu.Lock()
	defer p.fmu.Unlock()
	var old *sdk.PortForward
	for _, o := range p.rules[id] {
		if o.Name == r.Name {
			if o == r {
				return &sdk.PortForwardResponse{}, nil
			}
			old = &o
		}
	}
	for oid, rs := range p.rules {
		for _, o := range rs {
			if (oid != id || o.Name != r.Name) && overlaps(o, r) {
				who := "VM " + vmName(req.VM)
				if oid != id {
					who = "another VM"
				}
				return nil, sdk.Errorf(sdk.CodeConflict, "port forward %s: %s %s:%d is already forwarded by rule %s of %s: pick another host port", r.Name, r.Protocol, o.HostIP, o.HostPort, o.Name, who)
			}
		}
	}
	if old != nil {
		st.fwd.Remove(fwdName(id, old.Name))
	}
	if err := st.fwd.Add(toRule(id, r), p.target(st, id)); err != nil {
		msg := strings.TrimPrefix(err.Error(), fmt.Sprintf("portfwd: rule %q: ", fwdName(id, r.Name)))
		if old != nil { // put the rule in force back
			if err := st.fwd.Add(toRule(id, *old), p.target(st, id)); err != nil {
				p.log.Warn("lost a port forward while replacing it", "vm", vmName(req.VM), "rule", old.Name, "error", err)
				p.setRulesLocked(id, slices.DeleteFunc(slices.Clone(p.rules[id]), func(x sdk.PortForward) bool { return x.Name == old.Name }))
			}
		}
		return nil, sdk.Errorf(bindCode(err), "port forward %s of VM %s: %s", r.Name, vmName(req.VM), msg)
	}
	rs := slices.DeleteFunc(slices.Clone(p.rules[id]), func(x sdk.PortForward) bool { return x.Name == r.Name })
	p.setRulesLocked(id, append(rs, r))
	p.log.Info("port forward added", "vm", vmName(req.VM), "rule", r.Name, "proto", r.Protocol, "host", fmt.Sprintf("%s:%d", r.HostIP, r.HostPort), "guest_port", r.GuestPort)
	return &sdk.PortForwardResponse{}, nil
}

// RemovePortForward stops one rule of the VM, by name; a rule not in
// force is already removed.
func (p *Plugin) RemovePortForward(_ context.Context, req *sdk.PortForwardRequest) (*sdk.PortForwardResponse, error) {
	st, err := p.forwarding()
	if err != nil {
		return nil, err
	}
	id := req.VM.ID
	p.fmu.Lock()
	defer p.fmu.Unlock()
	rs := p.rules[id]
	i := slices.IndexFunc(rs, func(x sdk.PortForward) bool { return x.Name == req.Rule.Name })
	if i < 0 {
		return &sdk.PortForwardResponse{}, nil
	}
	st.fwd.Remove(fwdName(id, req.Rule.Name))
	p.setRulesLocked(id, slices.Delete(slices.Clone(rs), i, i+1))
	p.log.Info("port forward removed", "vm", vmName(req.VM), "rule", req.Rule.Name)
	return &sdk.PortForwardResponse{}, nil
}

// ListPortForwards lists the VM's rules in force, sorted by name.
func (p *Plugin) ListPortForwards(_ context.Context, req *sdk.ListPortForwardsRequest) (*sdk.ListPortForwardsResponse, error) {
	if _, err := p.forwarding(); err != nil {
		return nil, err
	}
	rs := p.forwardsOf(req.VM.ID)
	slices.SortFunc(rs, func(a, b sdk.PortForward) int { return strings.Compare(a.Name, b.Name) })
	return &sdk.ListPortForwardsResponse{Rules: rs}, nil
}
