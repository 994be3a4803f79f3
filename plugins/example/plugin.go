package main

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"sync"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/mactrans"
	"github.com/anka-net/anka/sdk/netkit/vswitch"
)

const typeName = "segment"

// version is the binary's version (-ldflags "-X main.version=...").
var version = "dev"

// defaultSegment is where a card without a segment option goes.
const defaultSegment = "default"

var segmentName = regexp.MustCompile(`^[a-z0-9-]{1,32}$`)

// Plugin serves the segment type: VMs whose cards name the same segment
// share a private Ethernet segment, with no DHCP and no way out. Each
// segment is a learning switch, made by the first VM attached to it and
// closed with the last one detached.
type Plugin struct {
	mu       sync.Mutex
	segments map[string]*segment // by name
	vms      map[string]*vmPort  // by VM ID; kept across Detach, dropped by Release
}

type segment struct {
	sw    *vswitch.Switch
	mtu   int
	ports int
}

// vmPort is one VM's card.
type vmPort struct {
	card    sdk.Card
	segment string
	ep      sdk.Endpoint
	port    *vswitch.Port // nil while detached
}

// New returns a plugin with no segments.
func New() *Plugin {
	return &Plugin{segments: map[string]*segment{}, vms: map[string]*vmPort{}}
}

func (p *Plugin) Info(context.Context, *sdk.InfoRequest) (*sdk.InfoResponse, error) {
	return &sdk.InfoResponse{
		Name:             sdk.BinaryName(typeName),
		Version:          version,
		ProtocolVersions: []int{sdk.ProtocolVersion},
		Types: []sdk.TypeInfo{{
			Name:         typeName,
			Description:  "a private Ethernet segment shared by the VMs naming it; no DHCP, no outside",
			Capabilities: []string{sdk.CapTraffic, sdk.CapMACTranslate},
			Endpoints:    []sdk.EndpointKind{sdk.EndpointDgram},
		}},
	}, nil
}

func (p *Plugin) Validate(_ context.Context, req *sdk.ValidateRequest) (*sdk.ValidateResponse, error) {
	_, err := checkCard(req.Card)
	return &sdk.ValidateResponse{}, err
}

func (p *Plugin) Attach(_ context.Context, req *sdk.AttachRequest) (*sdk.AttachResponse, error) {
	name, err := checkCard(req.Card)
	if err != nil {
		return nil, err
	}
	mtu, err := req.CheckDgram(typeName)
	if err != nil {
		return nil, err
	}
	dynamic, _ := net.ParseMAC(req.Card.DynamicMAC) // checkCard checked both MACs
	internal, _ := net.ParseMAC(req.Card.InternalMAC)

	p.mu.Lock()
	defer p.mu.Unlock()
	if v := p.vms[req.VM.ID]; v != nil && v.port != nil {
		return &sdk.AttachResponse{Endpoint: v.ep}, nil // attached already
	}
	for _, v := range p.vms {
		if v.port != nil && v.segment == name && sameMAC(v.card.DynamicMAC, req.Card.DynamicMAC) {
			return nil, sdk.Errorf(sdk.CodeConflict, "dynamic MAC %s is already used on segment %s by VM %s", req.Card.DynamicMAC, name, v.port.Name())
		}
	}
	if seg := p.segments[name]; seg != nil && seg.mtu != mtu {
		return nil, sdk.Errorf(sdk.CodeConflict, "segment %s runs with MTU %d; VM %s asks for %d", name, seg.mtu, req.VM.Name, mtu)
	}

	ep := sdk.Endpoint{
		Kind:       sdk.EndpointDgram,
		PluginPath: filepath.Join(req.RunDir, "segment.sock"),
		VMPath:     filepath.Join(req.RunDir, "segment-vm.sock"),
		MAC:        dynamic.String(),
		LinkUp:     true,
		MTU:        mtu,
	}
	cfg := vswitch.PortConfig{Name: req.VM.Name, Identity: req.VM.ID, MAC: dynamic, AntiSpoof: true}
	if internal != nil && !bytes.Equal(internal, dynamic) {
		// The guest keeps its internal MAC; the segment sees only the
		// dynamic one. One translator per direction: each runs on its
		// own goroutine.
		ep.MAC = internal.String()
		out, err1 := mactrans.New(internal, dynamic)
		in, err2 := mactrans.New(internal, dynamic)
		if err := errors.Join(err1, err2); err != nil {
			return nil, sdk.Errorf(sdk.CodeInvalid, "MAC translation for VM %s: %v", req.VM.Name, err)
		}
		cfg.FromLink = func(f []byte) bool { out.ToNetwork(f); return true }
		cfg.ToLink = in.ToGuest
	}
	// Peer: the port connects to the VM's socket, so QEMU's frames are
	// never capped by net.unix.max_dgram_qlen (see frameio's doc).
	link, err := frameio.ListenDgram(ep.PluginPath, frameio.DgramOptions{MTU: mtu, Peer: ep.VMPath})
	if err != nil {
		return nil, sdk.Errorf(sdk.CodeUnavailable, "cannot create the socket of VM %s: %v", req.VM.Name, err)
	}

	seg := p.segments[name]
	if seg == nil { // the first VM on the segment
		seg = &segment{sw: vswitch.New(vswitch.Config{MTU: mtu}), mtu: mtu}
		p.segments[name] = seg
	}
	port, err := seg.sw.Attach(link, cfg)
	if err != nil {
		link.Close()
		p.closeIfEmpty(name)
		return nil, sdk.Errorf(sdk.CodeInternal, "attaching VM %s to segment %s: %v", req.VM.Name, name, err)
	}
	seg.ports++
	p.vms[req.VM.ID] = &vmPort{card: req.Card, segment: name, ep: ep, port: port}
	return &sdk.AttachResponse{Endpoint: ep}, nil
}

func (p *Plugin) Detach(_ context.Context, req *sdk.DetachRequest) (*sdk.DetachResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if v := p.vms[req.VM.ID]; v != nil {
		p.detach(v)
	}
	return &sdk.DetachResponse{}, nil
}

func (p *Plugin) Release(_ context.Context, req *sdk.ReleaseRequest) (*sdk.ReleaseResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if v := p.vms[req.VM.ID]; v != nil {
		p.detach(v)
		delete(p.vms, req.VM.ID)
	}
	return &sdk.ReleaseResponse{}, nil
}

func (p *Plugin) Status(_ context.Context, req *sdk.StatusRequest) (*sdk.StatusResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := p.vms[req.VM.ID]
	if v == nil {
		return nil, sdk.Errorf(sdk.CodeNotFound, "the segment plugin does not know VM %s: it was never attached, or was released", req.VM.Name)
	}
	st := &sdk.StatusResponse{
		Attached:    v.port != nil,
		InternalMAC: v.card.InternalMAC,
		DynamicMAC:  v.card.DynamicMAC,
		Path:        "user-space switch",
		Details:     map[string]string{"segment": v.segment},
	}
	if v.port != nil {
		s := v.port.Stats()
		var dropped uint64
		for _, n := range s.Drops {
			dropped += n
		}
		st.Counters = map[string]uint64{
			"frames_from_vm": s.RxFrames, "bytes_from_vm": s.RxBytes,
			"frames_to_vm": s.TxFrames, "bytes_to_vm": s.TxBytes,
			"frames_dropped": dropped + s.TxErrors,
		}
	}
	return st, nil
}

// Close detaches every VM when anka stops the plugin.
func (p *Plugin) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, v := range p.vms {
		p.detach(v)
	}
	return nil
}

// detach removes v's port, and its segment with the last one.
func (p *Plugin) detach(v *vmPort) {
	if v.port == nil {
		return
	}
	v.port.Detach()
	v.port = nil
	p.segments[v.segment].ports--
	p.closeIfEmpty(v.segment)
}

func (p *Plugin) closeIfEmpty(name string) {
	if seg := p.segments[name]; seg != nil && seg.ports == 0 {
		seg.sw.Close()
		delete(p.segments, name)
	}
}

// checkCard returns the card's segment, or why the card is wrong.
func checkCard(c sdk.Card) (string, error) {
	switch {
	case c.Type != typeName:
		return "", sdk.Errorf(sdk.CodeNotFound, "this plugin serves type %s, not %q", typeName, c.Type)
	case c.Bridge != "":
		return "", sdk.Errorf(sdk.CodeInvalid, "a segment card has no bridge interface (%s): a segment never reaches the outside", c.Bridge)
	case c.IP != "":
		return "", sdk.Errorf(sdk.CodeInvalid, "a segment card has no IP address (%s): there is no DHCP on a segment; configure the address inside the guest", c.IP)
	}
	for _, k := range slices.Sorted(maps.Keys(c.Options)) {
		if k != "segment" {
			return "", sdk.Errorf(sdk.CodeInvalid, "type %s has no option %q; its only option is segment", typeName, k)
		}
	}
	name, ok := c.Options["segment"]
	if !ok {
		name = defaultSegment
	}
	if !segmentName.MatchString(name) {
		return "", sdk.Errorf(sdk.CodeInvalid, "segment name %q: use 1 to 32 lower-case letters, digits and dashes, e.g. build-net", name)
	}
	return name, c.CheckMACs()
}

func sameMAC(a, b string) bool {
	ma, _ := net.ParseMAC(a)
	mb, _ := net.ParseMAC(b)
	return ma != nil && string(ma) == string(mb)
}
