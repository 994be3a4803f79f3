package main

import (
	"bytes"
	"context"
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
	"time"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/netkit/capture"
	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/mactrans"
	"github.com/anka-net/anka/sdk/netkit/vswitch"
)

const typeName = "bridge"

// version is the binary's version (-ldflags "-X main.version=...").
var version = "dev"

// Socket names in a VM's run folder.
const (
	pluginSock = "bridge.sock"
	vmSock     = "bridge-vm.sock"
)

// hostAccess is what Status says about the host and its bridged VMs.
const hostAccess = "none through %s: frames a packet socket sends never enter this host's own network stack, " +
	"so the host and the VM do not reach each other over it (as with macvlan); reach the VM from another machine on the LAN"

// Plugin serves the bridge type: each VM is a node of its own on the LAN
// of a host interface, with its dynamic MAC and the address the LAN's
// DHCP server gives it.
type Plugin struct {
	env  sdk.Env
	log  *slog.Logger
	host hostView
	now  func() time.Time
	st   *store // nil: nothing is kept across restarts
	off  offloader

	mu      sync.Mutex // guards vms, uplinks, closed; taken before amu
	vms     map[string]*vmState
	uplinks map[string]*uplink
	closed  bool
	qlen    sync.Once

	amu    sync.Mutex // guards the address fields of attachments, and claims
	claims map[netip.Addr]*attachment

	saveCh chan struct{}
	done   chan struct{}
	wg     sync.WaitGroup
}

// vmState is a VM the plugin knows.
type vmState struct {
	rec  record
	att  *attachment // nil while detached
	last vswitch.Stats
}

// New builds the plugin: it gives back offloads a crashed run left
// switched off, and loads what it knew of the VMs.
func New(env sdk.Env) (*Plugin, error) {
	// thread-self: /proc/net is the namespace of the process's first
	// thread, which a library may have moved (setns on a locked thread).
	route := "/proc/thread-self/net/route"
	if _, err := os.Stat(route); err != nil {
		route = "/proc/net/route"
	}
	return newPlugin(env, hostView{sysfs: "/sys", route: route}, kernelOffloads{})
}

func newPlugin(env sdk.Env, host hostView, off offloader) (*Plugin, error) {
	log := env.Logger
	if log == nil {
		log = slog.Default()
	}
	p := &Plugin{
		env: env, log: log, host: host, now: time.Now, off: off,
		vms: map[string]*vmState{}, uplinks: map[string]*uplink{}, claims: map[netip.Addr]*attachment{},
		saveCh: make(chan struct{}, 1), done: make(chan struct{}),
	}
	if env.Describe {
		return p, nil
	}
	if env.DataDir != "" {
		st, recs, err := openStore(env.DataDir)
		if err != nil {
			return nil, err
		}
		p.st = st
		for _, r := range recs {
			p.vms[r.ID] = &vmState{rec: r}
		}
		for _, ifname := range st.offloads() {
			// A run that died while bridged: no VM is attached now. An
			// interface gone since comes back with its driver's defaults.
			if err := off.SetLRO(ifname, true); err != nil {
				log.Warn("cannot switch LRO back on after an earlier run", "interface", ifname, "error", err)
			} else {
				log.Info("LRO switched back on after an earlier run", "interface", ifname)
			}
			st.noteLRO(ifname, false)
		}
	}
	p.wg.Add(1)
	go p.saver()
	return p, nil
}

func (p *Plugin) Info(context.Context, *sdk.InfoRequest) (*sdk.InfoResponse, error) {
	return &sdk.InfoResponse{
		Name:             sdk.BinaryName(typeName),
		Version:          version,
		ProtocolVersions: []int{sdk.ProtocolVersion},
		Types: []sdk.TypeInfo{{
			Name: typeName,
			Description: "the VM is a node of its own on the LAN of an Ethernet interface of the host (-b, bridge_name, " +
				"else the default route's); the LAN's DHCP server gives it its address; the host itself cannot reach it",
			Capabilities: []string{sdk.CapTraffic, sdk.CapMACTranslate, sdk.CapAddress, sdk.CapCapture, sdk.CapSuspend},
			Endpoints:    []sdk.EndpointKind{sdk.EndpointDgram, sdk.EndpointStream},
		}},
		// AF_PACKET on the uplink needs CAP_NET_RAW; its ethtool
		// offload settings CAP_NET_ADMIN. QEMU's datagram sockets need
		// a longer queue.
		Privileges: []string{sdk.PrivNetAdmin, sdk.PrivNetRaw},
		Sysctls:    []string{sdk.SysctlMaxDgramQlen},
	}, nil
}

// checkCard refuses what a bridge card cannot have.
func checkCard(c sdk.Card) error {
	if c.Type != typeName {
		return sdk.Errorf(sdk.CodeNotFound, "this plugin serves type %s, not %q", typeName, c.Type)
	}
	if c.IP != "" {
		return sdk.Errorf(sdk.CodeInvalid, "a bridge card takes no --ip (%s): the LAN's DHCP server gives the address, or set it inside the guest", c.IP)
	}
	for _, k := range slices.Sorted(maps.Keys(c.Options)) {
		return sdk.Errorf(sdk.CodeInvalid, "type %s has no option %q; choose the interface with -b", typeName, k)
	}
	return c.CheckMACs()
}

func (p *Plugin) Validate(_ context.Context, req *sdk.ValidateRequest) (*sdk.ValidateResponse, error) {
	if err := checkCard(req.Card); err != nil {
		return nil, err
	}
	if _, err := p.host.choose(req.Card, req.Settings, p.env.Settings); err != nil {
		return nil, err
	}
	return &sdk.ValidateResponse{}, nil
}

func (p *Plugin) Attach(_ context.Context, req *sdk.AttachRequest) (*sdk.AttachResponse, error) {
	if err := checkCard(req.Card); err != nil {
		return nil, err
	}
	if req.Card.DynamicMAC == "" {
		return nil, sdk.Errorf(sdk.CodeInvalid, "the card of VM %s has no dynamic MAC: the core assigns one before Attach", vmName(req.VM))
	}
	if req.RunDir == "" {
		return nil, sdk.Errorf(sdk.CodeInvalid, "no run folder for the sockets of VM %s", vmName(req.VM))
	}
	if req.MTU != 0 && (req.MTU < sdk.MinMTU || req.MTU > sdk.MaxMTU) {
		return nil, sdk.Errorf(sdk.CodeInvalid, "MTU %d is out of range: use %d to %d", req.MTU, sdk.MinMTU, sdk.MaxMTU)
	}
	kind, err := chooseKind(req.Endpoints)
	if err != nil {
		return nil, err
	}
	ch, err := p.host.choose(req.Card, req.Settings, p.env.Settings)
	if err != nil {
		return nil, err
	}
	dyn, _ := net.ParseMAC(req.Card.DynamicMAC) // checkCard checked both
	guestMAC := dyn
	if req.Card.InternalMAC != "" {
		guestMAC, _ = net.ParseMAC(req.Card.InternalMAC)
	}
	ep := sdk.Endpoint{Kind: kind, PluginPath: filepath.Join(req.RunDir, pluginSock), MAC: guestMAC.String(), LinkUp: true}
	if kind == sdk.EndpointDgram {
		ep.VMPath = filepath.Join(req.RunDir, vmSock)
	}
	if len(ep.PluginPath) > 107 || len(ep.VMPath) > 107 {
		return nil, sdk.Errorf(sdk.CodeInvalid, "the run folder %s of VM %s is too long for a unix socket path (at most 107 bytes)", req.RunDir, vmName(req.VM))
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, sdk.Errorf(sdk.CodeUnavailable, "the bridge plugin is shutting down: try again once anka restarted it")
	}
	v := p.vms[req.VM.ID]
	if v != nil && v.att != nil {
		return &sdk.AttachResponse{Endpoint: v.att.ep}, nil
	}
	for _, o := range p.vms {
		if o.att != nil && o.att.dyn == [6]byte(dyn) {
			return nil, sdk.Errorf(sdk.CodeConflict, "dynamic MAC %s is already used by VM %s", dyn, o.att.name)
		}
	}
	p.qlen.Do(func() {
		// Our datagram socket is connected to QEMU's, but QEMU's is not
		// to ours: what it queues for us is capped by this sysctl (see
		// frameio's doc). Only ever raised.
		if q, err := frameio.MaxDgramQlen(); err == nil && q < frameio.RecommendedMaxDgramQlen {
			if err := frameio.SetMaxDgramQlen(frameio.RecommendedMaxDgramQlen); err != nil {
				p.log.Warn("cannot raise net.unix.max_dgram_qlen; frames from QEMU guests may drop in bursts", "error", err)
			}
		}
	})
	up := p.uplinks[ch.iface]
	if up == nil {
		up, err = openUplink(ch.iface, p.log, p.off, p.noteLRO)
		if err != nil {
			return nil, sdk.Errorf(sdk.CodeUnavailable, "cannot bridge interface %s (%s): %v", ch.iface, ch.why, err)
		}
		up.snoop = p.snoop
		p.uplinks[ch.iface] = up
	}
	closeIfUnused := func() {
		if up.n == 0 {
			up.close()
			delete(p.uplinks, up.name)
		}
	}
	ep.MTU = up.mtu
	if req.MTU != 0 && req.MTU < up.mtu {
		ep.MTU = req.MTU
	}

	a := &attachment{p: p, id: req.VM.ID, name: vmName(req.VM), up: up, ep: ep, dyn: [6]byte(dyn), since: p.now()}
	if v != nil {
		a.prev = v.rec
	}
	log := p.log.With("vm", a.name)
	var link frameio.Port
	switch kind {
	case sdk.EndpointDgram:
		link, err = frameio.ListenDgram(ep.PluginPath, frameio.DgramOptions{MTU: ep.MTU, Peer: ep.VMPath, Logger: log})
	default:
		link, err = frameio.ListenStream(ep.PluginPath, frameio.StreamOptions{MTU: ep.MTU, Logger: log})
	}
	if err != nil {
		closeIfUnused()
		return nil, sdk.Errorf(sdk.CodeUnavailable, "cannot create the socket of VM %s: %v", a.name, err)
	}
	pc := vswitch.PortConfig{Name: a.name, Identity: a.id, MAC: dyn, AntiSpoof: true, FromLink: a.fromGuest, Capture: &a.capture}
	if !bytes.Equal(guestMAC, dyn) {
		// The guest keeps its internal MAC; the LAN sees the dynamic one,
		// DHCP chaddr included. One translator per direction: each runs
		// on its own goroutine.
		out, err1 := mactrans.New(guestMAC, dyn)
		in, err2 := mactrans.New(guestMAC, dyn)
		if err := errors.Join(err1, err2); err != nil {
			link.Close()
			closeIfUnused()
			return nil, sdk.Errorf(sdk.CodeInvalid, "MAC translation for VM %s: %v", a.name, err)
		}
		a.out, pc.ToLink = out, in.ToGuest
	}
	a.port, err = up.sw.Attach(link, pc)
	if err != nil {
		link.Close()
		closeIfUnused()
		return nil, sdk.Errorf(sdk.CodeInternal, "attaching VM %s to the switch of %s: %v", a.name, ch.iface, err)
	}
	a.port.SetIP(unpinned)
	a.live.Store(a.port)
	up.add(a.dyn, a)
	up.n++

	if v == nil {
		v = &vmState{}
		p.vms[req.VM.ID] = v
	}
	v.rec.ID, v.rec.Name = req.VM.ID, req.VM.Name
	v.rec.DynamicMAC, v.rec.InternalMAC = dyn.String(), guestMAC.String()
	v.rec.Interface, v.rec.Why = ch.iface, ch.why
	v.att = a
	p.saveSoon()
	log.Info("VM bridged", "interface", ch.iface, "why", ch.why, "kind", kind, "socket", ep.PluginPath, "mac", dyn.String(), "guest_mac", guestMAC.String())
	return &sdk.AttachResponse{Endpoint: ep}, nil
}

func chooseKind(offered []sdk.EndpointKind) (sdk.EndpointKind, error) {
	if len(offered) == 0 {
		return sdk.EndpointDgram, nil
	}
	for _, k := range offered {
		if k == sdk.EndpointDgram || k == sdk.EndpointStream {
			return k, nil
		}
	}
	return "", sdk.Errorf(sdk.CodeUnsupported, "type %s hands out dgram and stream sockets; the runtime offered %v", typeName, offered)
}

func (p *Plugin) Detach(_ context.Context, req *sdk.DetachRequest) (*sdk.DetachResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if v := p.vms[req.VM.ID]; v != nil {
		p.detachLocked(v)
	}
	return &sdk.DetachResponse{}, nil
}

// detachLocked removes v's port, keeping what it learnt of its address,
// and closes its uplink with the last VM; p.mu is held.
func (p *Plugin) detachLocked(v *vmState) {
	a := v.att
	if a == nil {
		return
	}
	a.up.remove(a.dyn)
	a.port.Detach()
	a.capture.Stop()
	v.last = a.port.Stats()
	p.amu.Lock()
	if a.addr.IsValid() {
		v.rec.IP, v.rec.Source, v.rec.Expiry = a.addr.String(), a.source, a.expiry
		if a.server.IsValid() {
			v.rec.Server = a.server.String()
		}
	}
	if a.addr.IsValid() && p.claims[a.addr] == a {
		delete(p.claims, a.addr)
	}
	p.amu.Unlock()
	v.att = nil
	if a.up.n--; a.up.n == 0 {
		a.up.close()
		delete(p.uplinks, a.up.name)
	}
	p.saveSoon()
	p.log.Info("VM detached", "vm", a.name, "interface", a.up.name)
}

func (p *Plugin) Release(_ context.Context, req *sdk.ReleaseRequest) (*sdk.ReleaseResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if v := p.vms[req.VM.ID]; v != nil {
		p.detachLocked(v)
		delete(p.vms, req.VM.ID)
		p.saveSoon()
	}
	return &sdk.ReleaseResponse{}, nil
}

func (p *Plugin) Status(_ context.Context, req *sdk.StatusRequest) (*sdk.StatusResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := p.vms[req.VM.ID]
	if v == nil {
		return nil, sdk.Errorf(sdk.CodeNotFound, "the bridge plugin does not know VM %s: it was never started with a bridge card, or was released", vmName(req.VM))
	}
	r := v.rec
	st := &sdk.StatusResponse{
		DynamicMAC: r.DynamicMAC, InternalMAC: r.InternalMAC,
		Path:    fmt.Sprintf("AF_PACKET on %s (promiscuous), user-space switch", r.Interface),
		Details: map[string]string{"interface": choice{iface: r.Interface, why: r.Why}.String()},
	}
	stats := v.last
	if a := v.att; a != nil {
		st.Attached = true
		stats = a.port.Stats()
		st.Details["host_access"] = fmt.Sprintf(hostAccess, r.Interface)
		st.Details["socket"] = fmt.Sprintf("%s %s", a.ep.Kind, a.ep.PluginPath)
		st.Details["attached_since"] = a.since.UTC().Format(time.RFC3339)
		p.amu.Lock()
		switch {
		case a.addr.IsValid() && a.source == byDHCP:
			st.Details["address"] = fmt.Sprintf("%s from the LAN's DHCP server %s", a.addr, a.server)
			st.LeaseExpiry = a.expiry
		case a.addr.IsValid():
			st.Details["address"] = fmt.Sprintf("%s, set by hand in the guest (pinned while the VM runs)", a.addr)
		default:
			st.Details["waiting_for"] = "the guest to get an address from the LAN's DHCP server, or to send from one set by hand"
		}
		if a.addr.IsValid() && a.confirmed.Load() {
			st.IP = a.addr.String()
		}
		p.amu.Unlock()
		if r := a.refused.Load(); r != nil {
			st.Details["refused_address"] = fmt.Sprintf("%s: %s (%d frames refused)", r.addr, r.why, a.nRefused.Load())
		}
		st.Details["offloads"] = "merged (GRO/TSO) packets are cut to the MTU"
		if a.up.lroOff {
			st.Details["offloads"] = fmt.Sprintf("LRO off on %s while bridged; merged (GRO/TSO) packets are cut to the MTU", a.up.name)
		}
		w := &a.up.wire.stats
		st.Counters = map[string]uint64{
			"interface_merged_packets": w.merged.Load(), "interface_segments": w.segments.Load(),
			"interface_checksums_completed": w.checksums.Load(), "interface_dropped": w.dropped.Load(),
		}
		if path, ok, _ := a.capture.Active(); ok {
			st.Details["capture"] = path
		}
	} else if r.IP != "" {
		st.Details["last_address"] = fmt.Sprintf("%s (%s)", r.IP, r.Source)
	}
	if st.Counters == nil {
		st.Counters = map[string]uint64{}
	}
	var dropped uint64
	for reason, n := range stats.Drops {
		dropped += n
		st.Details["dropped: "+reason] = fmt.Sprint(n)
	}
	st.Counters["frames_from_vm"], st.Counters["bytes_from_vm"] = stats.RxFrames, stats.RxBytes
	st.Counters["frames_to_vm"], st.Counters["bytes_to_vm"] = stats.TxFrames, stats.TxBytes
	st.Counters["frames_dropped"] = dropped + stats.TxErrors
	return st, nil
}

// Suspend and Resume keep the port and the address: a resumed guest has
// the same IP, and Status reports it again at once.
func (p *Plugin) Suspend(_ context.Context, req *sdk.SuspendRequest) (*sdk.SuspendResponse, error) {
	return &sdk.SuspendResponse{}, p.known(req.VM)
}

func (p *Plugin) Resume(_ context.Context, req *sdk.ResumeRequest) (*sdk.ResumeResponse, error) {
	return &sdk.ResumeResponse{}, p.known(req.VM)
}

func (p *Plugin) known(vm sdk.VMRef) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.vms[vm.ID] == nil {
		return sdk.Errorf(sdk.CodeNotFound, "the bridge plugin does not know VM %s", vmName(vm))
	}
	return nil
}

// StartCapture records every frame to and from the VM's port to a new
// pcap file at req.Path until StopCapture or Detach (`anka capture`).
func (p *Plugin) StartCapture(_ context.Context, req *sdk.CaptureRequest) (*sdk.CaptureResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := p.vms[req.VM.ID]
	if v == nil || v.att == nil {
		return nil, sdk.Errorf(sdk.CodeConflict, "VM %s is not running on a bridge card: start it before capturing", vmName(req.VM))
	}
	if err := v.att.capture.Start(req.Path, req.Snaplen); err != nil {
		code := sdk.CodeUnavailable
		if errors.Is(err, capture.ErrActive) {
			code = sdk.CodeConflict
		}
		return nil, sdk.Errorf(code, "capturing VM %s to %s: %v", vmName(req.VM), req.Path, err)
	}
	return &sdk.CaptureResponse{}, nil
}

// StopCapture ends the VM's capture and says what it wrote.
func (p *Plugin) StopCapture(_ context.Context, req *sdk.CaptureRequest) (*sdk.CaptureResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := p.vms[req.VM.ID]
	if v == nil || v.att == nil {
		return nil, sdk.Errorf(sdk.CodeConflict, "VM %s is not running on a bridge card", vmName(req.VM))
	}
	err := v.att.capture.Stop()
	frames, bytes := v.att.capture.Stats()
	switch {
	case errors.Is(err, capture.ErrNotActive):
		return nil, sdk.Errorf(sdk.CodeConflict, "no capture is running for VM %s", vmName(req.VM))
	case err != nil:
		return &sdk.CaptureResponse{Frames: frames, Bytes: bytes}, sdk.Errorf(sdk.CodeUnavailable, "the capture of VM %s stopped early: %v", vmName(req.VM), err)
	}
	return &sdk.CaptureResponse{Frames: frames, Bytes: bytes}, nil
}

// Close detaches every VM when anka stops the plugin: each interface
// leaves promiscuous mode and gets its offloads back.
func (p *Plugin) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	for _, v := range p.vms {
		p.detachLocked(v)
	}
	p.mu.Unlock()
	close(p.done)
	p.wg.Wait()
	return nil
}

func (p *Plugin) noteLRO(ifname string, off bool) error {
	if p.st == nil {
		return nil
	}
	return p.st.noteLRO(ifname, off)
}

func vmName(vm sdk.VMRef) string {
	if vm.Name != "" {
		return vm.Name
	}
	return vm.ID
}

var (
	_ sdk.Capturer  = (*Plugin)(nil)
	_ sdk.Suspender = (*Plugin)(nil)
)
