package main

import (
	"context"
	"maps"
	"path/filepath"
	"slices"
	"sync"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/netkit/frameio"
)

const typeName = "disconnected"

// version is the binary's version (-ldflags "-X main.version=...").
var version = "dev"

// Socket names inside the VM's run folder.
const (
	pluginSocket = "disconnected.sock"
	vmSocket     = "disconnected-vm.sock"
)

// Plugin serves the disconnected type. The VM gets a NIC whose link is
// down (the runtime turns it off with QMP set_link) and a socket that
// swallows whatever the guest sends anyway, so QEMU never blocks on a
// full queue. No frame ever reaches a guest.
type Plugin struct {
	mu  sync.Mutex
	vms map[string]*nic // by VM ID; kept across Detach, dropped by Release
}

// nic is one VM's card.
type nic struct {
	card    sdk.Card
	ep      sdk.Endpoint
	port    *frameio.DgramPort // nil while detached
	done    chan struct{}      // closed when the discard loop ends
	dropped uint64             // frames swallowed by earlier ports
}

// New returns a plugin with no VMs.
func New() *Plugin {
	return &Plugin{vms: map[string]*nic{}}
}

func (p *Plugin) Info(context.Context, *sdk.InfoRequest) (*sdk.InfoResponse, error) {
	return &sdk.InfoResponse{
		Name:             sdk.BinaryName(typeName),
		Version:          version,
		ProtocolVersions: []int{sdk.ProtocolVersion},
		Types: []sdk.TypeInfo{{
			Name:        typeName,
			Description: "NIC present, cable unplugged: the guest sees no carrier and no frame passes",
			Endpoints:   []sdk.EndpointKind{sdk.EndpointDgram},
		}},
	}, nil
}

func (p *Plugin) Validate(_ context.Context, req *sdk.ValidateRequest) (*sdk.ValidateResponse, error) {
	return &sdk.ValidateResponse{}, checkCard(req.Card)
}

func (p *Plugin) Attach(_ context.Context, req *sdk.AttachRequest) (*sdk.AttachResponse, error) {
	if err := checkCard(req.Card); err != nil {
		return nil, err
	}
	mtu, err := req.CheckDgram(typeName)
	if err != nil {
		return nil, err
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.vms[req.VM.ID]
	if n != nil && n.port != nil {
		return &sdk.AttachResponse{Endpoint: n.ep}, nil
	}
	if n == nil {
		n = &nic{}
	}
	mac := req.Card.GuestMAC()
	ep := sdk.Endpoint{
		Kind:       sdk.EndpointDgram,
		PluginPath: filepath.Join(req.RunDir, pluginSocket),
		VMPath:     filepath.Join(req.RunDir, vmSocket),
		MAC:        mac,
		LinkUp:     false,
		MTU:        mtu,
	}
	// Connected to the VM's socket, so the kernel never caps how many
	// frames QEMU may queue to us (see frameio's package doc). Logs go to
	// slog's default, which sdk.Serve points at the plugin's log.
	port, err := frameio.ListenDgram(ep.PluginPath, frameio.DgramOptions{MTU: mtu, Peer: ep.VMPath})
	if err != nil {
		return nil, sdk.Errorf(sdk.CodeUnavailable, "cannot create the socket of VM %s: %v", req.VM.Name, err)
	}
	n.card, n.ep, n.port, n.done = req.Card, ep, port, make(chan struct{})
	go discard(port, n.done)
	p.vms[req.VM.ID] = n
	return &sdk.AttachResponse{Endpoint: ep}, nil
}

// discard reads and forgets every frame until the port closes; the port
// counts them.
func discard(port *frameio.DgramPort, done chan<- struct{}) {
	defer close(done)
	batch := frameio.NewBatch(16, port.MTU())
	for {
		if _, err := port.ReadBatch(batch); err != nil {
			return
		}
	}
}

func (p *Plugin) Detach(_ context.Context, req *sdk.DetachRequest) (*sdk.DetachResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := p.vms[req.VM.ID]; n != nil {
		n.close()
	}
	return &sdk.DetachResponse{}, nil
}

func (p *Plugin) Release(_ context.Context, req *sdk.ReleaseRequest) (*sdk.ReleaseResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := p.vms[req.VM.ID]; n != nil {
		n.close()
		delete(p.vms, req.VM.ID)
	}
	return &sdk.ReleaseResponse{}, nil
}

func (p *Plugin) Status(_ context.Context, req *sdk.StatusRequest) (*sdk.StatusResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.vms[req.VM.ID]
	if n == nil {
		return nil, sdk.Errorf(sdk.CodeNotFound, "the disconnected plugin does not know VM %s: it was never attached, or was released", vmName(req.VM))
	}
	return &sdk.StatusResponse{
		Attached:    n.port != nil,
		InternalMAC: n.card.InternalMAC,
		DynamicMAC:  n.card.DynamicMAC,
		Path:        "none: the cable is unplugged",
		Counters:    map[string]uint64{"frames_dropped": n.droppedNow()},
		Details:     map[string]string{"link": "down"},
	}, nil
}

// Close closes every VM's socket when anka stops the plugin.
func (p *Plugin) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, n := range p.vms {
		n.close()
	}
	return nil
}

// close ends the VM's port, keeping its count.
func (n *nic) close() {
	if n.port == nil {
		return
	}
	n.dropped = n.droppedNow()
	n.port.Close()
	<-n.done
	n.port = nil
}

func (n *nic) droppedNow() uint64 {
	if n.port == nil {
		return n.dropped
	}
	st := n.port.Stats()
	return n.dropped + st.RxFrames + st.RxDropped
}

// checkCard refuses what a cable that is unplugged cannot have.
func checkCard(c sdk.Card) error {
	switch {
	case c.Type != typeName:
		return sdk.Errorf(sdk.CodeNotFound, "this plugin serves type %s, not %q", typeName, c.Type)
	case c.Bridge != "":
		return sdk.Errorf(sdk.CodeInvalid, "a disconnected card has no bridge interface (%s): drop -b, or choose the bridge type", c.Bridge)
	case c.IP != "":
		return sdk.Errorf(sdk.CodeInvalid, "a disconnected card has no IP address (%s): drop --ip, or choose the static type", c.IP)
	}
	for _, k := range slices.Sorted(maps.Keys(c.Options)) {
		return sdk.Errorf(sdk.CodeInvalid, "type %s has no option %q", typeName, k)
	}
	return c.CheckMACs()
}

func vmName(vm sdk.VMRef) string {
	if vm.Name != "" {
		return vm.Name
	}
	return vm.ID
}
