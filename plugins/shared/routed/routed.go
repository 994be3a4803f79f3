// Package routed is a routed network type on the host: the glue between
// the plugin protocol (sdk) and the data plane (sdk/netkit/lan for the
// switch, DHCP and VM ports; hostnet for the bridge holding the gateway,
// the VMs' TAPs on it and the nftables rules; dnsfwd; portfwd).
// plugins/shared (types shared and static, NAT) and plugins/host (type
// host, isolated) are two Networks of it.
//
// Two paths, one network: a VM whose runtime takes a TAP (QEMU) and that
// has no internal MAC gets a TAP on the kernel bridge (the fast path);
// the others (socket hypervisors, -m) get a socket on the user-space
// switch, whose uplink is a port of the same bridge. Status.Path says
// which.
//
// The network is set up when the plugin starts, so what a crashed earlier
// run left (TAP, nftables table) is cleaned at once, and torn down by Close
// when anka stops the plugin. A network that cannot be set up (its subnet
// is in use on the host, say) does not stop the plugin: every call that
// needs it answers sdk.CodeUnavailable with the reason, and tries again, so
// the network comes up once the cause is gone.
package routed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/netkit/dnsfwd"
	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/hostnet"
	"github.com/anka-net/anka/sdk/netkit/lan"
	"github.com/anka-net/anka/sdk/netkit/portfwd"
)

// Network describes a routed network and the types served on it.
type Network struct {
	// Binary is the plugin's binary name (anka-net-shared).
	Binary  string
	Version string
	// Name names the host side: bridge anka-<Name>0, the switch's TAP
	// anka-<Name>sw on it, VM TAPs ak<first letter><8 hex>, nftables
	// tables inet anka-<Name> and bridge anka-br-<Name>, and the files in
	// the data folder. At most 8 characters, so the interface names fit.
	Name string
	Mode hostnet.Mode
	// KeyPrefix starts the address keys in the settings ("host_").
	KeyPrefix                             string
	DefaultStart, DefaultEnd, DefaultMask string
	// Types served on the network.
	Types []Type
	// DNS runs a forwarder on the gateway and announces it by DHCP.
	DNS bool
	// NoRouter announces no default route (a network with no way out).
	NoRouter bool
	// PortForward serves sdk.PortForwarder.
	PortForward bool
	// What is a short phrase for messages and Info ("NAT", "host-only").
	What string
}

// Type is one network type served on the network.
type Type struct {
	Name        string
	Description string // the subnet is appended
	// Static: cards carry a fixed IP (--ip), which is required.
	Static bool
}

// Plugin serves a Network.
type Plugin struct {
	net  Network
	env  sdk.Env
	log  *slog.Logger
	addr Addressing
	// addrErr is why the settings give no usable network.
	addrErr error
	dataDir string
	tmpData bool

	mu       sync.Mutex // guards st, setupErr, closed
	st       *stack
	setupErr error
	closed   bool

	fmu   sync.Mutex // guards rules
	rules map[string][]sdk.PortForward
}

// stack is what a set-up network runs.
type stack struct {
	host *hostnet.Network
	lan  *lan.LAN
	dns  *dnsfwd.Forwarder
	fwd  *portfwd.Forwarder
}

// New builds the plugin and, unless it only describes itself, sets up
// the network. A network that cannot be set up is logged and reported by
// the calls that need it; New fails only for a Network that is wrong.
func New(env sdk.Env, n Network) (*Plugin, error) {
	if len(n.Name) == 0 || len(n.Name) > 8 || len(n.Types) == 0 {
		return nil, fmt.Errorf("routed: network %q: a name of 1 to 8 characters and a type at least", n.Name)
	}
	log := env.Logger
	if log == nil {
		log = slog.Default()
	}
	p := &Plugin{net: n, env: env, log: log.With("network", n.Name), rules: map[string][]sdk.PortForward{}}
	p.addr, p.addrErr = ParseAddressing(env.Settings, &p.net)
	if env.Describe {
		return p, nil
	}
	p.dataDir = env.DataDir
	if p.dataDir == "" {
		dir, err := os.MkdirTemp("", sdk.BinaryName(n.Name)+"-")
		if err != nil {
			return nil, err
		}
		p.dataDir, p.tmpData = dir, true
		p.log.Warn("no data folder from anka: leases are kept in a temporary folder and lost when the plugin stops", "dir", dir)
	}
	p.rules = p.loadRules()
	p.mu.Lock()
	_, err := p.ensureLocked()
	p.mu.Unlock()
	if err != nil {
		p.log.Error("the network is not set up; calls will say why and try again", "error", err)
	}
	return p, nil
}

// Addressing returns the network's layout as the settings give it.
func (p *Plugin) Addressing() (Addressing, error) { return p.addr, p.addrErr }

// ensure returns the running network, setting it up if needed.
func (p *Plugin) ensure() (*stack, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ensureLocked()
}

func (p *Plugin) ensureLocked() (*stack, error) {
	if p.closed {
		return nil, sdk.Errorf(sdk.CodeUnavailable, "the %s network is shutting down: try again once anka restarted its plugin", p.net.Name)
	}
	if p.st != nil {
		return p.st, nil
	}
	if p.addrErr != nil {
		return nil, sdk.Errorf(sdk.CodeUnavailable, "the %s network cannot run: %v; fix it with `anka config`", p.net.Name, p.addrErr)
	}
	st, err := p.setup()
	if err != nil {
		p.setupErr = err
		return nil, err
	}
	if p.setupErr != nil {
		p.log.Info("the network is up after all", "earlier_error", p.setupErr)
	}
	p.st, p.setupErr = st, nil
	p.releaseDeferred(st)
	return st, nil
}

func (p *Plugin) deferredPath() string {
	return filepath.Join(p.dataDir, p.net.Name+"-pending-releases.json")
}

// deferRelease notes a VM released while the network was down; p.mu is
// held.
func (p *Plugin) deferRelease(id string) error {
	var ids []string
	if b, err := os.ReadFile(p.deferredPath()); err == nil {
		json.Unmarshal(b, &ids)
	}
	if slices.Contains(ids, id) {
		return nil
	}
	b, _ := json.Marshal(append(ids, id))
	return writeAtomic(p.deferredPath(), b)
}

// releaseDeferred forgets the VMs released while the network was down.
func (p *Plugin) releaseDeferred(st *stack) {
	b, err := os.ReadFile(p.deferredPath())
	if err != nil {
		return
	}
	var ids []string
	json.Unmarshal(b, &ids)
	for _, id := range ids {
		p.dropForwards(st, id)
		if err := st.lan.Release(id); err != nil {
			p.log.Warn("forgetting a VM released while the network was down", "vm", id, "error", err)
			return
		}
	}
	os.Remove(p.deferredPath())
}

func (p *Plugin) setup() (*stack, error) {
	a := p.addr
	// QEMU's datagram socket is never connected to ours, so what we
	// queue for it is capped by this sysctl (see frameio's doc). Only
	// ever raised.
	if q, err := frameio.MaxDgramQlen(); err == nil && q < frameio.RecommendedMaxDgramQlen {
		if err := frameio.SetMaxDgramQlen(frameio.RecommendedMaxDgramQlen); err != nil {
			p.log.Warn("cannot raise net.unix.max_dgram_qlen; frames to QEMU guests may drop in bursts", "error", err)
		}
	}
	host, err := hostnet.Setup(hostnet.Config{Name: p.net.Name, Prefix: a.Prefix, Gateway: a.Gateway, MTU: a.MTU, Mode: p.net.Mode, Bridge: true, Logger: p.log})
	if err != nil {
		if errors.Is(err, hostnet.ErrPrefixInUse) {
			return nil, sdk.Errorf(sdk.CodeUnavailable, "the %s network cannot start: %v; move it to a free range with `anka config %sstart_address`, `%send_address` and `%ssubnet_mask`",
				p.net.Name, err, p.net.KeyPrefix, p.net.KeyPrefix, p.net.KeyPrefix)
		}
		return nil, sdk.Errorf(sdk.CodeUnavailable, "the %s network cannot start: %v", p.net.Name, err)
	}
	st := &stack{host: host}
	fail := func(err error) (*stack, error) {
		st.close(p.log)
		return nil, err
	}
	gwMAC, err := host.GatewayMAC()
	if err != nil {
		return fail(sdk.Errorf(sdk.CodeUnavailable, "the %s network cannot start: its bridge %s vanished: %v", p.net.Name, host.Device(), err))
	}
	var dns []netip.Addr
	if p.net.DNS {
		st.dns, err = dnsfwd.Start(dnsfwd.Config{Listen: netip.AddrPortFrom(a.Gateway, 53), Logger: p.log})
		if err != nil {
			// Guests still get addresses and routes; they need a
			// resolver of their own.
			p.log.Warn("no DNS forwarder on the gateway; DHCP announces no DNS server", "error", err)
		} else {
			dns = []netip.Addr{a.Gateway}
		}
	}
	st.lan, err = lan.New(lan.Config{
		Name: p.net.Name, Prefix: a.Prefix, Gateway: a.Gateway, GatewayMAC: gwMAC,
		RangeStart: a.Start, RangeEnd: a.End, LeaseTime: a.LeaseTime, MTU: a.MTU,
		DNS: dns, NoRouter: p.net.NoRouter, DataDir: p.dataDir, HostLink: host.Link(), Bridge: host, Logger: p.log,
	})
	if err != nil {
		return fail(sdk.Errorf(sdk.CodeUnavailable, "the %s network cannot start: %v", p.net.Name, err))
	}
	if p.net.PortForward {
		st.fwd = portfwd.New(p.log)
	}
	p.log.Info("network up", "subnet", a.Prefix, "gateway", a.Gateway, "range", a.Start.String()+"-"+a.End.String(),
		"mtu", a.MTU, "lease", a.LeaseTime, "mode", p.net.Mode, "dns", dns)
	return st, nil
}

func (st *stack) close(log *slog.Logger) {
	if st.fwd != nil {
		if err := st.fwd.Close(); err != nil {
			log.Warn("closing the port forwards", "error", err)
		}
	}
	if st.lan != nil {
		if err := st.lan.Close(); err != nil {
			log.Warn("closing the switch", "error", err)
		}
	}
	if st.dns != nil {
		if err := st.dns.Close(); err != nil {
			log.Warn("closing the DNS forwarder", "error", err)
		}
	}
	if err := st.host.Close(); err != nil {
		log.Warn("removing the host side", "error", err)
	}
}

// Close tears the network down when anka stops the plugin: the forwards,
// the VMs' ports, the DHCP server (leases stay in the data folder), the
// TAP and the nftables table. IPv4 forwarding stays on.
func (p *Plugin) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	if p.st != nil {
		p.st.close(p.log)
		p.st = nil
	}
	if p.tmpData {
		os.RemoveAll(p.dataDir)
	}
	return nil
}

func (p *Plugin) Info(context.Context, *sdk.InfoRequest) (*sdk.InfoResponse, error) {
	where := ""
	if p.addrErr == nil {
		where = fmt.Sprintf(" (%s, gateway %s, DHCP %s-%s)", p.addr.Prefix, p.addr.Gateway, p.addr.Start, p.addr.End)
	}
	var types []sdk.TypeInfo
	for _, t := range p.net.Types {
		caps := []string{sdk.CapTraffic, sdk.CapMACTranslate, sdk.CapSuspend, sdk.CapAddress, sdk.CapCapture}
		if p.net.PortForward {
			caps = append(caps, sdk.CapPortForward)
		}
		if t.Static {
			caps = append(caps, sdk.CapStaticIP)
		}
		types = append(types, sdk.TypeInfo{
			Name: t.Name, Description: t.Description + where, Capabilities: caps,
			Endpoints: []sdk.EndpointKind{sdk.EndpointTAP, sdk.EndpointVhostUser, sdk.EndpointDgram, sdk.EndpointStream},
		})
	}
	return &sdk.InfoResponse{Name: p.net.Binary, Version: p.net.Version, ProtocolVersions: []int{sdk.ProtocolVersion}, Types: types,
		Privileges: p.net.privileges(), Sysctls: p.net.sysctls()}, nil
}

// privileges: the bridge, TAPs, addresses and nftables need
// CAP_NET_ADMIN; capturing a fast-path VM reads its TAP with AF_PACKET
// (CAP_NET_RAW); the DNS forwarder listens on port 53 and a port forward
// may ask for a host port below 1024 (CAP_NET_BIND_SERVICE).
func (n Network) privileges() []string {
	privs := []string{sdk.PrivNetAdmin, sdk.PrivNetRaw}
	if n.DNS || n.PortForward {
		privs = append(privs, sdk.PrivNetBindService)
	}
	return privs
}

// sysctls: NAT needs IPv4 forwarding; QEMU's datagram sockets need a
// longer queue (see setup).
func (n Network) sysctls() []string {
	s := []string{sdk.SysctlMaxDgramQlen}
	if n.Mode == hostnet.NAT {
		s = append(s, sdk.SysctlIPForward)
	}
	return s
}

func (p *Plugin) typeOf(name string) (Type, bool) {
	for _, t := range p.net.Types {
		if t.Name == name {
			return t, true
		}
	}
	return Type{}, false
}

// checkCard refuses what the card's type cannot have and returns its
// fixed address (static types).
func (p *Plugin) checkCard(c sdk.Card) (netip.Addr, error) {
	t, ok := p.typeOf(c.Type)
	if !ok {
		var names []string
		for _, t := range p.net.Types {
			names = append(names, t.Name)
		}
		return netip.Addr{}, sdk.Errorf(sdk.CodeNotFound, "this plugin serves types %v, not %q", names, c.Type)
	}
	if c.Bridge != "" {
		return netip.Addr{}, sdk.Errorf(sdk.CodeInvalid, "a %s card has no bridge interface (%s): drop -b, or choose the bridge type", t.Name, c.Bridge)
	}
	for _, k := range slices.Sorted(maps.Keys(c.Options)) {
		return netip.Addr{}, sdk.Errorf(sdk.CodeInvalid, "type %s has no option %q", t.Name, k)
	}
	if err := c.CheckMACs(); err != nil {
		return netip.Addr{}, err
	}
	if !t.Static {
		if c.IP != "" {
			return netip.Addr{}, sdk.Errorf(sdk.CodeInvalid, "a %s card gets its address by DHCP and takes no --ip (%s): drop it, or choose the static type", t.Name, c.IP)
		}
		return netip.Addr{}, nil
	}
	if c.IP == "" {
		return netip.Addr{}, sdk.Errorf(sdk.CodeInvalid, "a %s card needs its address: give --ip, e.g. %s", t.Name, p.example())
	}
	ip, err := netip.ParseAddr(c.IP)
	if err != nil {
		return netip.Addr{}, sdk.Errorf(sdk.CodeInvalid, "--ip %q is not an IPv4 address like %s", c.IP, p.example())
	}
	if p.addrErr == nil {
		if err := lan.CheckAddress(p.addr.Prefix, p.addr.Gateway, ip); err != nil {
			return netip.Addr{}, sdk.Errorf(sdk.CodeInvalid, "--ip %s for the %s network: %v", ip, p.net.Name, err)
		}
	}
	return ip, nil
}

// example is an address for messages: the middle of the subnet.
func (p *Plugin) example() string {
	if p.addrErr != nil {
		return "192.168.64.50"
	}
	a := p.addr.Prefix.Addr()
	for range 49 {
		if n := a.Next(); p.addr.Prefix.Contains(n) {
			a = n
		}
	}
	return a.String()
}

func (p *Plugin) Validate(_ context.Context, req *sdk.ValidateRequest) (*sdk.ValidateResponse, error) {
	ip, err := p.checkCard(req.Card)
	if err != nil {
		return nil, err
	}
	st, err := p.ensure()
	if err != nil {
		return nil, err
	}
	if ip.IsValid() {
		if err := st.lan.CheckStatic(req.VM.ID, ip); err != nil {
			return nil, toSDK(err)
		}
	}
	return &sdk.ValidateResponse{}, nil
}

func (p *Plugin) Attach(_ context.Context, req *sdk.AttachRequest) (*sdk.AttachResponse, error) {
	ip, err := p.checkCard(req.Card)
	if err != nil {
		return nil, err
	}
	if req.Card.DynamicMAC == "" {
		return nil, sdk.Errorf(sdk.CodeInvalid, "the card of VM %s has no dynamic MAC: the core assigns one before Attach", req.VM.Name)
	}
	if req.RunDir == "" && !slices.Contains(req.Endpoints, sdk.EndpointTAP) {
		return nil, sdk.Errorf(sdk.CodeInvalid, "no run folder for the sockets of VM %s", req.VM.Name)
	}
	if req.MTU != 0 && (req.MTU < sdk.MinMTU || req.MTU > sdk.MaxMTU) {
		return nil, sdk.Errorf(sdk.CodeInvalid, "MTU %d is out of range: use %d to %d", req.MTU, sdk.MinMTU, sdk.MaxMTU)
	}
	st, err := p.ensure()
	if err != nil {
		return nil, err
	}
	dyn, _ := net.ParseMAC(req.Card.DynamicMAC) // checkCard checked both
	var internal net.HardwareAddr
	if req.Card.InternalMAC != "" {
		internal, _ = net.ParseMAC(req.Card.InternalMAC)
	}
	var kinds []frameio.Kind
	for _, k := range req.Endpoints {
		kinds = append(kinds, frameio.Kind(k))
	}
	if len(kinds) == 0 {
		kinds = []frameio.Kind{frameio.KindDgram}
	}
	ep, err := st.lan.Attach(lan.AttachRequest{
		VM:    lan.VM{ID: req.VM.ID, Name: req.VM.Name, DynamicMAC: dyn, InternalMAC: internal, StaticIP: ip},
		Kinds: kinds, RunDir: req.RunDir, MTU: req.MTU,
	})
	if err != nil {
		return nil, toSDK(err)
	}
	p.restoreForwards(st, req.VM)
	return &sdk.AttachResponse{Endpoint: sdk.Endpoint{
		Kind: sdk.EndpointKind(ep.Kind), PluginPath: ep.PluginPath, VMPath: ep.VMPath, TAP: ep.TAP,
		MAC: ep.MAC.String(), LinkUp: true, MTU: ep.MTU,
	}}, nil
}

// running is the network if it is up, without trying to set it up: what
// Detach and Release need (nothing is attached to a network that is down).
func (p *Plugin) running() *stack {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st
}

func (p *Plugin) Detach(_ context.Context, req *sdk.DetachRequest) (*sdk.DetachResponse, error) {
	if st := p.running(); st != nil {
		p.dropForwards(st, req.VM.ID)
		st.lan.Detach(req.VM.ID)
	}
	return &sdk.DetachResponse{}, nil
}

func (p *Plugin) Release(_ context.Context, req *sdk.ReleaseRequest) (*sdk.ReleaseResponse, error) {
	p.mu.Lock()
	st, err := p.ensureLocked()
	if err != nil {
		// A VM is deleted even while its network cannot run: its lease
		// and fixed address are forgotten once the network is up.
		defer p.mu.Unlock()
		if err := p.deferRelease(req.VM.ID); err != nil {
			return nil, sdk.Errorf(sdk.CodeUnavailable, "cannot forget VM %s: %v", vmName(req.VM), err)
		}
		p.log.Warn("the network is down; the VM's lease is forgotten once it is up", "vm", vmName(req.VM), "reason", err)
		return &sdk.ReleaseResponse{}, nil
	}
	p.mu.Unlock()
	p.dropForwards(st, req.VM.ID)
	if err := st.lan.Release(req.VM.ID); err != nil {
		return nil, toSDK(err)
	}
	return &sdk.ReleaseResponse{}, nil
}

func (p *Plugin) Status(_ context.Context, req *sdk.StatusRequest) (*sdk.StatusResponse, error) {
	st, err := p.ensure()
	if err != nil {
		return nil, err
	}
	s, ok := st.lan.Status(req.VM.ID)
	if !ok {
		return nil, sdk.Errorf(sdk.CodeNotFound, "the %s network does not know VM %s: it was never started on it, or was released", p.net.Name, vmName(req.VM))
	}
	resp := &sdk.StatusResponse{
		Attached:   s.Attached,
		DynamicMAC: s.DynamicMAC.String(),
		Path:       fmt.Sprintf("user-space switch, routed by the host (%s)", p.net.What),
		Details: map[string]string{
			"network": fmt.Sprintf("%s %s", p.net.Name, p.addr.Prefix),
			"gateway": p.addr.Gateway.String(),
		},
	}
	if s.InternalMAC != nil {
		resp.InternalMAC = s.InternalMAC.String()
	}
	if s.IP.IsValid() {
		resp.IP = s.IP.String()
	}
	if s.StaticIP.IsValid() {
		resp.Details["static_ip"] = s.StaticIP.String()
	}
	if s.LeaseState != "" {
		resp.Details["lease"] = fmt.Sprintf("%s %s", s.Lease.IP, s.LeaseState)
		if s.Lease.IP.IsValid() && s.LeaseState == "bound" {
			resp.LeaseExpiry = s.Lease.Expiry
		}
	}
	if s.Attached && s.Endpoint.Kind == frameio.KindTAP {
		resp.Path = fmt.Sprintf("kernel bridge (TAP %s on %s), routed by the host (%s)", s.Endpoint.TAP, st.host.Device(), p.net.What)
		resp.Details["tap"] = s.Endpoint.TAP
	} else if s.Attached {
		resp.Details["socket"] = fmt.Sprintf("%s %s", s.Endpoint.Kind, s.Endpoint.PluginPath)
		if s.Endpoint.Kind == frameio.KindVhostUser {
			resp.Path = fmt.Sprintf("user-space switch over vhost-user (the guest's queues read in its shared memory), routed by the host (%s)", p.net.What)
		}
	}
	if s.Attached {
		resp.Details["attached_since"] = s.Since.UTC().Format(time.RFC3339)
		if s.Pinned.IsValid() && !s.IP.IsValid() {
			resp.Details["waiting_for"] = fmt.Sprintf("the guest to take %s", s.Pinned)
		}
	}
	if s.Capture != "" {
		resp.Details["capture"] = s.Capture
	}
	var dropped uint64
	for reason, n := range s.Port.Drops {
		dropped += n
		resp.Details["dropped: "+reason] = fmt.Sprint(n)
	}
	resp.Counters = map[string]uint64{
		"frames_from_vm": s.Port.RxFrames, "bytes_from_vm": s.Port.RxBytes,
		"frames_to_vm": s.Port.TxFrames, "bytes_to_vm": s.Port.TxBytes,
		"frames_dropped": dropped + s.Port.TxErrors,
	}
	if n := len(p.forwardsOf(req.VM.ID)); n > 0 {
		resp.Details["port_forwards"] = fmt.Sprint(n)
	}
	return resp, nil
}

// Suspend and Resume keep the port and the address: a resumed guest has
// the same IP, and Status reports it again at once.
func (p *Plugin) Suspend(_ context.Context, req *sdk.SuspendRequest) (*sdk.SuspendResponse, error) {
	if err := p.known(req.VM); err != nil {
		return nil, err
	}
	return &sdk.SuspendResponse{}, nil
}

func (p *Plugin) Resume(_ context.Context, req *sdk.ResumeRequest) (*sdk.ResumeResponse, error) {
	if err := p.known(req.VM); err != nil {
		return nil, err
	}
	return &sdk.ResumeResponse{}, nil
}

func (p *Plugin) known(vm sdk.VMRef) error {
	st, err := p.ensure()
	if err != nil {
		return err
	}
	if !st.lan.Known(vm.ID) {
		return sdk.Errorf(sdk.CodeNotFound, "the %s network does not know VM %s", p.net.Name, vmName(vm))
	}
	return nil
}

// LAN is the running network's LAN, nil when it is down (tests, tools).
func (p *Plugin) LAN() *lan.LAN {
	if st := p.running(); st != nil {
		return st.lan
	}
	return nil
}

func vmName(vm sdk.VMRef) string {
	if vm.Name != "" {
		return vm.Name
	}
	return vm.ID
}

// toSDK gives a lan error its protocol code.
func toSDK(err error) error {
	code := map[lan.Kind]sdk.Code{
		lan.Invalid: sdk.CodeInvalid, lan.Conflict: sdk.CodeConflict, lan.Unavailable: sdk.CodeUnavailable,
		lan.Unsupported: sdk.CodeUnsupported, lan.Internal: sdk.CodeInternal,
	}[lan.KindOf(err)]
	return sdk.Errorf(code, "%v", err)
}

// bindCode classifies a port forward's bind error.
func bindCode(err error) sdk.Code {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return sdk.CodeConflict
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return sdk.CodeInvalid
	case errors.Is(err, portfwd.ErrClosed):
		return sdk.CodeUnavailable
	}
	return sdk.CodeUnavailable
}

// StartCapture records the frames of the VM's port to a new pcap file at
// req.Path (absolute, never overwritten; Snaplen 0 keeps whole frames)
// until StopCapture or the VM's Detach (sdk.Capturer, `anka capture`).
func (p *Plugin) StartCapture(_ context.Context, req *sdk.CaptureRequest) (*sdk.CaptureResponse, error) {
	st, err := p.ensure()
	if err != nil {
		return nil, err
	}
	if err := st.lan.StartCapture(req.VM.ID, req.Path, req.Snaplen); err != nil {
		return nil, toSDK(err)
	}
	return &sdk.CaptureResponse{}, nil
}

// StopCapture ends the VM's capture and says how many frames it wrote.
func (p *Plugin) StopCapture(_ context.Context, req *sdk.CaptureRequest) (*sdk.CaptureResponse, error) {
	st, err := p.ensure()
	if err != nil {
		return nil, err
	}
	n, err := st.lan.StopCapture(req.VM.ID)
	if err != nil {
		return nil, toSDK(err)
	}
	return &sdk.CaptureResponse{Frames: n}, nil
}

var _ sdk.Capturer = (*Plugin)(nil)
