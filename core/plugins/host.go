package plugins

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/core/fsutil"
	"github.com/anka-net/anka/core/runtime"
	"github.com/anka-net/anka/core/vm"
	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/host"
)

// Host connects the VM lifecycle to network plugins. A plugin process is
// launched once and outlives the anka process that launched it (its data
// plane must keep running); its reattach information is saved under the
// state dir, so the next daemon talks to the same process instead of
// starting another.
type Host struct {
	vm.NoHooks
	Finder   Finder
	StateDir string
	// Pins are plugins.<type>.sha256 by type.
	Pins map[string]string
	// Settings reach every plugin as sdk.Env.Settings (resolved config).
	Settings map[string]string
	LogLevel string
	MTU      int
	Logger   *slog.Logger
	// User is plugin_user: who plugins run as when anka runs as root (a
	// name, "uid:gid", or "root"); "" is DefaultPluginUser.
	User string
	// CallTimeout bounds each call to a plugin (plugin_timeout); zero
	// means DefaultCallTimeout. Status waits at most StatusTimeout.
	CallTimeout time.Duration
	// NoVhostUser keeps QEMU VMs off vhost-user (vhost_user off): a VM
	// with an internal MAC then reaches the switch over datagrams.
	NoVhostUser bool
	// VMs lists the VMs and DynamicMAC gives a VM's pool MAC, so a plugin
	// that had to be started again gets every VM attached again.
	VMs        func() ([]*vm.VM, error)
	DynamicMAC func(uuid string) string

	// Conns are the open plugin connections. Hosts that share one (the
	// daemon builds a Host per request, each with that request's
	// configuration) share the plugin processes; nil means a private set.
	Conns *Conns
}

// Conns holds connections to running plugins, by binary path.
type Conns struct {
	mu      sync.Mutex
	plugins map[string]*host.Plugin
}

func (h *Host) conns() *Conns {
	if h.Conns == nil {
		h.Conns = &Conns{}
	}
	return h.Conns
}

// Loaded lists the plugins connected now, by binary path.
func (c *Conns) Loaded() map[string]*host.Plugin {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]*host.Plugin, len(c.plugins))
	for k, p := range c.plugins {
		out[k] = p
	}
	return out
}

// socketDir is where every plugin's gRPC socket lives: private (0700), and
// short, since a unix socket path holds at most 107 bytes.
func (h *Host) socketDir() string { return filepath.Join(h.StateDir, "plugins", "sock") }

// Client returns a connection to the plugin serving typ, reattaching to
// its running process or launching it.
func (h *Host) Client(ctx context.Context, typ string) (sdk.NetworkPlugin, error) {
	fd, err := h.Finder.Find(typ)
	if err != nil {
		return nil, err
	}
	return h.connect(ctx, fd)
}

func (h *Host) connect(ctx context.Context, fd Found) (sdk.NetworkPlugin, error) {
	typ := fd.Type
	c := h.conns()
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.plugins[fd.Path]; p != nil && !p.Exited() {
		return p.Client(), nil
	}
	dataDir := DataDir(h.StateDir, fd.Path)
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, vm.PathError(h.StateDir, err)
	}
	// One launcher at a time per binary, across anka processes. The lock
	// is beside the data dir, not in it: the plugin user owns that.
	l, err := fsutil.LockFile(launchLock(h.StateDir, fd.Path))
	if err != nil {
		return nil, vm.PathError(h.StateDir, err)
	}
	defer l.Unlock()
	cfg := host.Config{
		Path: fd.Path, SHA256: h.Pins[typ], PinName: "plugins." + typ + ".sha256",
		SocketDir: h.socketDir(), DataDir: dataDir, LogLevel: h.LogLevel,
		Settings: h.Settings, Logger: h.Logger,
	}
	var p *host.Plugin
	// A reattach file whose process is gone means the plugin died: the
	// new one must get the running VMs attached again.
	_, statErr := os.Stat(ReattachFile(h.StateDir, fd.Path))
	crashed := statErr == nil
	ri, ok := Running(h.StateDir, fd.Path)
	if crashed && !ok {
		h.removeSocket(ri)
	}
	if ok {
		p, err = host.Reattach(ctx, ri, cfg)
		var gone *host.NotRunningError
		if err != nil && !errors.As(err, &gone) {
			return nil, pluginError(typ, err)
		}
	}
	if p != nil {
		crashed = false
	}
	if p == nil {
		if cfg.Credential, err = h.credential(ctx, fd); err != nil {
			return nil, err
		}
		if p, err = host.Launch(ctx, cfg); err != nil {
			return nil, pluginError(typ, err)
		}
		ri, err := p.ReattachInfo()
		if err == nil {
			var data []byte
			data, err = json.MarshalIndent(ri, "", "  ")
			if err == nil {
				err = fsutil.WriteFileAtomic(ReattachFile(h.StateDir, fd.Path), data, 0o600)
			}
		}
		if err != nil {
			p.Kill()
			return nil, fmt.Errorf("saving how to reach plugin %s: %w", fd.Path, err)
		}
		if crashed {
			h.reattachVMs(ctx, p)
		}
	}
	if c.plugins == nil {
		c.plugins = map[string]*host.Plugin{}
	}
	c.plugins[fd.Path] = p
	return p.Client(), nil
}

// reattachVMs attaches again every running VM whose card a restarted
// plugin serves: the plugin binds the same socket paths and keeps its
// leases in its data folder, so guests keep their addresses and QEMU's
// frames find the new process.
func (h *Host) reattachVMs(ctx context.Context, p *host.Plugin) {
	if h.VMs == nil {
		return
	}
	served := map[string]bool{}
	for _, t := range p.Info().Types {
		served[t.Name] = true
	}
	vms, err := h.VMs()
	if err != nil {
		h.log().Warn("listing VMs to attach again", "err", err)
		return
	}
	for _, v := range vms {
		if v.NetworkCard == nil || !served[v.NetworkCard.Type] || v.State == vm.Stopped {
			continue
		}
		dyn := ""
		if h.DynamicMAC != nil {
			dyn = h.DynamicMAC(v.UUID)
		}
		fd := Found{Type: v.NetworkCard.Type, Path: p.Path()}
		req, err := h.attachRequest(v, dyn)
		if err == nil {
			err = h.timed(ctx, fd, "Attach", func(ctx context.Context) error {
				_, err := p.Client().Attach(ctx, req)
				return err
			})
		}
		if err != nil {
			h.log().Warn("attaching a VM to the restarted plugin", "vm", v.Name, "err", err)
			continue
		}
		if err := h.timed(ctx, fd, "port forwards", func(ctx context.Context) error { return h.syncForwards(ctx, p.Client(), v) }); err != nil {
			h.log().Warn("port forwards of a VM on the restarted plugin", "vm", v.Name, "err", err)
		}
	}
}

func (h *Host) log() *slog.Logger {
	if h.Logger != nil {
		return h.Logger
	}
	return slog.Default()
}

// Restart stops the plugin serving typ (if it runs) and starts it again
// with every running VM attached again: how a new binary is picked up.
func (h *Host) Restart(ctx context.Context, typ string) error {
	fd, err := h.Finder.Find(typ)
	if err != nil {
		return err
	}
	c := h.conns()
	c.mu.Lock()
	if p := c.plugins[fd.Path]; p != nil {
		p.Disconnect()
		delete(c.plugins, fd.Path)
	}
	c.mu.Unlock()
	if ri, ok := Running(h.StateDir, fd.Path); ok {
		if err := stopProcess(ri.Pid); err != nil {
			return fmt.Errorf("stopping plugin %s (pid %d): %w", fd.Path, ri.Pid, err)
		}
	}
	_, err = h.connect(ctx, fd) // the reattach file names a dead process: relaunch and reattach
	return err
}

// Close lets go of the plugins and leaves them running.
func (h *Host) Close() { h.conns().Close() }

// Close lets go of every connection and leaves the plugins running.
func (c *Conns) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, p := range c.plugins {
		p.Disconnect()
		delete(c.plugins, k)
	}
}

// pluginError gives a plugin's error a core kind from its stable code.
func pluginError(typ string, err error) error {
	var ce *host.ChecksumError
	if errors.As(err, &ce) {
		return &errs.Error{Kind: errs.Unavailable, Err: err, Msg: err.Error()}
	}
	kind := map[sdk.Code]errs.Kind{
		sdk.CodeInvalid: errs.Invalid, sdk.CodeNotFound: errs.NotFound, sdk.CodeConflict: errs.Conflict,
		sdk.CodeUnavailable: errs.Unavailable, sdk.CodeUnsupported: errs.Unavailable,
	}[sdk.CodeOf(err)]
	if kind == 0 {
		kind = errs.Internal
	}
	return &errs.Error{Kind: kind, Err: err, Msg: fmt.Sprintf("network type %s: %v", typ, err)}
}

func ref(v *vm.VM) sdk.VMRef { return sdk.VMRef{ID: v.UUID, Name: v.Name} }

func card(c *vm.NetworkCard, dynamicMAC string) sdk.Card {
	return sdk.Card{Type: c.Type, Bridge: c.Bridge, IP: c.IP, InternalMAC: c.MAC, DynamicMAC: dynamicMAC, Options: c.Options}
}

// ValidateCard asks the plugin whether it takes the card.
func (h *Host) ValidateCard(ctx context.Context, v *vm.VM, c *vm.NetworkCard) error {
	err := h.invoke(ctx, c.Type, "Validate", func(ctx context.Context, pl sdk.NetworkPlugin) error {
		_, err := pl.Validate(ctx, &sdk.ValidateRequest{VM: ref(v), Card: card(c, ""), Settings: h.Settings})
		return err
	})
	if errors.Is(err, ErrNoPlugin) && contains(BuiltinTypes, c.Type) {
		return nil // a built-in type may be chosen before its plugin is installed
	}
	return err
}

// BeforeStart attaches the card and hands the endpoint to the runtime.
func (h *Host) BeforeStart(ctx context.Context, v *vm.VM, dynamicMAC string) (*runtime.NIC, error) {
	c := v.NetworkCard
	if c == nil {
		return nil, nil
	}
	fd, err := h.Finder.Find(c.Type)
	if err == nil {
		cctx, cancel := context.WithTimeout(ctx, ConnectTimeout)
		_, err = h.connect(cctx, fd)
		cancel()
	}
	if err != nil {
		if errs.Is(err, errs.Unavailable) {
			return nil, &errs.Error{Kind: errs.Unavailable, Err: err, Msg: err.Error() + "; or boot without a NIC: `anka modify " + v.Name + " delete network-card`"}
		}
		return nil, err
	}
	req, err := h.attachRequest(v, dynamicMAC)
	if err != nil {
		return nil, vm.PathError(h.StateDir, err)
	}
	var resp *sdk.AttachResponse
	if err := h.invoke(ctx, c.Type, "Attach", func(ctx context.Context, pl sdk.NetworkPlugin) error {
		r, err := pl.Attach(ctx, req)
		if err != nil {
			return err
		}
		if bad := checkEndpoint(req, r); bad != "" {
			return h.malformed(fd, "Attach", bad)
		}
		resp = r
		return nil
	}); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			// The plugin may finish the Attach later: undo it then, within
			// a deadline of its own, so no port is left behind.
			go h.timed(context.WithoutCancel(ctx), fd, "Detach", func(ctx context.Context) error {
				pl, err := h.connect(ctx, fd)
				if err == nil {
					_, err = pl.Detach(ctx, &sdk.DetachRequest{VM: ref(v), Type: c.Type})
				}
				return err
			})
		}
		return nil, err
	}
	ep := resp.Endpoint
	nic := &runtime.NIC{Kind: string(ep.Kind), Path: ep.PluginPath, LocalPath: ep.VMPath, TAP: ep.TAP, LinkUp: ep.LinkUp, MTU: ep.MTU}
	return nic, nil
}

func (h *Host) attachRequest(v *vm.VM, dynamicMAC string) (*sdk.AttachRequest, error) {
	kinds := endpointKinds(v, !h.NoVhostUser)
	dir, err := h.runDir(v.Name)
	if err != nil {
		return nil, err
	}
	return &sdk.AttachRequest{
		VM: ref(v), Card: card(v.NetworkCard, dynamicMAC), MTU: h.MTU, Endpoints: kinds,
		RunDir: dir, Settings: h.Settings,
	}, nil
}

// endpointKinds are what the VM's runtime can connect, preferred first.
// QEMU takes a TAP (the kernel fast path, when the plugin has one),
// vhost-user (the guest's queues read in place) and datagram sockets; a
// hypervisor anka does not launch takes what its VM was created with
// (--endpoint), dgram and stream unless told. vhostUser false
// (vhost_user off) keeps QEMU VMs off vhost-user.
func endpointKinds(v *vm.VM, vhostUser bool) []sdk.EndpointKind {
	if v.Runtime.Kind != vm.RuntimeExternal {
		if !vhostUser {
			return []sdk.EndpointKind{sdk.EndpointTAP, sdk.EndpointDgram}
		}
		return []sdk.EndpointKind{sdk.EndpointTAP, sdk.EndpointVhostUser, sdk.EndpointDgram}
	}
	names := v.Runtime.Endpoints
	if len(names) == 0 {
		names = vm.DefaultExternalEndpoints
	}
	kinds := make([]sdk.EndpointKind, len(names))
	for i, n := range names {
		kinds[i] = sdk.EndpointKind(n)
	}
	return kinds
}

// AfterStop detaches the port; the address stays reserved.
func (h *Host) AfterStop(ctx context.Context, v *vm.VM) error {
	if v.NetworkCard == nil {
		return nil
	}
	return h.call(ctx, v.NetworkCard.Type, "Detach", func(ctx context.Context, pl sdk.NetworkPlugin) error {
		_, err := pl.Detach(ctx, &sdk.DetachRequest{VM: ref(v), Type: v.NetworkCard.Type})
		return err
	})
}

// BeforeDelete makes the network forget the VM and removes its socket
// folder.
func (h *Host) BeforeDelete(ctx context.Context, v *vm.VM) error {
	if v.NetworkCard != nil {
		if err := h.release(ctx, v, v.NetworkCard.Type); err != nil {
			return err
		}
	}
	if folderName(v.Name) != nil {
		return nil // no such folder can exist
	}
	return os.RemoveAll(RunDir(h.StateDir, v.Name))
}

// CardRemoved makes the network forget the VM's old card.
func (h *Host) CardRemoved(ctx context.Context, v *vm.VM, old *vm.NetworkCard) error {
	return h.release(ctx, v, old.Type)
}

func (h *Host) release(ctx context.Context, v *vm.VM, typ string) error {
	return h.call(ctx, typ, "Release", func(ctx context.Context, pl sdk.NetworkPlugin) error {
		_, err := pl.Release(ctx, &sdk.ReleaseRequest{VM: ref(v), Type: typ})
		return err
	})
}

// call runs fn on the plugin of typ under the deadline of the call named
// name. A type without a plugin has nothing attached to undo, so it is not
// an error here.
func (h *Host) call(ctx context.Context, typ, name string, fn func(context.Context, sdk.NetworkPlugin) error) error {
	err := h.invoke(ctx, typ, name, fn)
	if errors.Is(err, ErrNoPlugin) {
		return nil
	}
	return err
}

// Status asks the plugin about the VM's network. It does not start a
// plugin just to ask: nil without an error means none is running.
func (h *Host) Status(ctx context.Context, v *vm.VM) (*sdk.StatusResponse, error) {
	if v.NetworkCard == nil {
		return nil, nil
	}
	fd, err := h.Finder.Find(v.NetworkCard.Type)
	if err != nil {
		return nil, nil
	}
	if _, ok := Running(h.StateDir, fd.Path); !ok {
		return nil, nil
	}
	var st *sdk.StatusResponse
	err = h.invoke(ctx, v.NetworkCard.Type, "Status", func(ctx context.Context, pl sdk.NetworkPlugin) error {
		r, err := pl.Status(ctx, &sdk.StatusRequest{VM: ref(v), Type: v.NetworkCard.Type})
		if err != nil {
			return err
		}
		if bad := checkStatus(r); bad != "" {
			return h.malformed(fd, "Status", bad)
		}
		st = r
		return nil
	})
	if err != nil {
		return nil, err
	}
	return st, nil
}

// Connect reattaches to the plugin binary fd names, or launches it (and
// attaches every running VM again when an earlier process of it died).
func (h *Host) Connect(ctx context.Context, fd Found) (sdk.NetworkPlugin, error) {
	return h.connect(ctx, fd)
}

// StopPlugin stops the plugin binary at path for good. Its reattach file
// goes too, so nobody takes the stop for a crash and starts it again.
func (h *Host) StopPlugin(path string) error {
	c := h.conns()
	c.mu.Lock()
	p := c.plugins[path]
	delete(c.plugins, path)
	c.mu.Unlock()
	if p != nil {
		p.Kill()
	}
	ri, ok := Running(h.StateDir, path)
	if ok {
		if err := stopProcess(ri.Pid); err != nil {
			return fmt.Errorf("stopping plugin %s (pid %d): %w", path, ri.Pid, err)
		}
	}
	h.removeSocket(ri)
	if err := os.Remove(ReattachFile(h.StateDir, path)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Capabilities are what the running plugin of typ announces for it; nil
// when it does not run.
func (h *Host) Capabilities(typ string) []string {
	fd, err := h.Finder.Find(typ)
	if err != nil {
		return nil
	}
	p := h.conns().Loaded()[fd.Path]
	if p == nil || p.Info() == nil {
		return nil
	}
	for _, t := range p.Info().Types {
		if t.Name == typ {
			return t.Capabilities
		}
	}
	return nil
}

// removeSocket deletes the gRPC socket a dead plugin process left in the
// private socket folder (a killed process cannot remove its own).
func (h *Host) removeSocket(ri host.ReattachInfo) {
	if ri.Network != "unix" || filepath.Dir(ri.Addr) != h.socketDir() {
		return
	}
	if ri.Pid > 0 && runtime.ProcessAlive(ri.Pid) {
		return
	}
	os.Remove(ri.Addr)
}
