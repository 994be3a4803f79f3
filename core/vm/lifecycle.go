package vm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/core/runtime"
	"github.com/anka-net/anka/sdk"
)

// MACPool hands out the dynamic MACs VMs carry on the network.
type MACPool interface {
	Acquire(owner string) (net.HardwareAddr, error)
	Lookup(owner string) (net.HardwareAddr, bool, error)
	Release(owner string) error
}

// Manager runs the lifecycle: it owns the order of store writes, runtime
// calls and hooks so every transition is legal and leaves no half state.
type Manager struct {
	Store   *Store
	Runtime runtime.Runtime
	// External runs VMs of runtime kind "external".
	External runtime.Runtime
	Hooks    Hooks
	MACs     MACPool
	// KnownType accepts a network type name or says why not.
	KnownType func(string) error
	// SharedNet is the shared network, for checking static addresses.
	SharedNet netip.Prefix
	Gateway   netip.Addr
	// PortBase is where automatic host ports start (portfwd_base).
	PortBase int
	// Bindable reports whether a host port can be bound now; nil means
	// every port is taken to be free.
	Bindable func(proto, ip string, port int) bool
}

// MaxAppend is the longest --append: x86's COMMAND_LINE_SIZE (2048,
// with the final NUL) less the "console=ttyS0 " anka puts first.
const MaxAppend = 2047 - len("console=ttyS0 ")

// Runtime kinds a VM may have.
const (
	RuntimeQEMU     = "qemu"
	RuntimeExternal = "external"
)

// runtimeOf picks the runtime that runs v.
func (m *Manager) runtimeOf(v *VM) runtime.Runtime {
	if v.Runtime.Kind == RuntimeExternal {
		if m.External != nil {
			return m.External
		}
		return runtime.External{}
	}
	return m.Runtime
}

// Status is a VM with its live state.
type Status struct {
	*VM
	PID        int
	DynamicMAC string
	// Network is what the VM's plugin reports, when asked; NetworkError
	// says why it could not be.
	Network      *sdk.StatusResponse
	NetworkError string
	// NetworkCaps are the capabilities the card's type announces (sdk.Cap*),
	// when its plugin runs.
	NetworkCaps []string `json:",omitempty"`
}

// effectiveState maps the runtime's view onto the recorded one: a process
// that died means stopped, whatever vm.yaml says.
func (m *Manager) effectiveState(ctx context.Context, v *VM) (State, int, error) {
	info, err := m.runtimeOf(v).Info(ctx, m.Store.Dir(v.Name))
	if err != nil {
		return v.State, 0, err
	}
	switch info.State {
	case runtime.Running:
		return Running, info.PID, nil
	case runtime.Paused:
		return Suspended, info.PID, nil
	default:
		return Stopped, 0, nil
	}
}

// Get returns a VM with its live state, without changing anything.
func (m *Manager) Get(ctx context.Context, name string) (*Status, error) {
	v, err := m.Store.Get(name)
	if err != nil {
		return nil, err
	}
	return m.status(ctx, v)
}

func (m *Manager) status(ctx context.Context, v *VM) (*Status, error) {
	st, pid, err := m.effectiveState(ctx, v)
	if err != nil {
		return nil, err
	}
	v.State = st
	s := &Status{VM: v, PID: pid}
	if v.NetworkCard != nil && m.MACs != nil {
		if mac, ok, err := m.MACs.Lookup(v.UUID); err == nil && ok {
			s.DynamicMAC = mac.String()
		}
	}
	return s, nil
}

// List returns every VM with its live state, and the errors of VMs whose
// definition could not be read.
func (m *Manager) List(ctx context.Context) ([]*Status, []error, error) {
	vms, bad, err := m.Store.List()
	if err != nil {
		return nil, nil, err
	}
	out := make([]*Status, 0, len(vms))
	for _, v := range vms {
		s, err := m.status(ctx, v)
		if err != nil {
			bad = append(bad, fmt.Errorf("%s: %w", v.Name, err))
			continue
		}
		out = append(out, s)
	}
	return out, bad, nil
}

// ValidateEndpoints checks an external VM's endpoint kinds: known, each
// once.
func ValidateEndpoints(kinds []string) error {
	seen := map[string]bool{}
	for _, k := range kinds {
		switch {
		case !slices.Contains(EndpointKinds, k):
			return errs.Invalidf("--endpoint %q is not an endpoint kind: use %s, preferred first", k, strings.Join(EndpointKinds, ", "))
		case seen[k]:
			return errs.Invalidf("--endpoint names %s twice: name each kind once, preferred first", k)
		}
		seen[k] = true
	}
	return nil
}

// Create validates and stores a new, stopped VM with card 0 of type shared.
func (m *Manager) Create(ctx context.Context, v *VM) error {
	if err := ValidateName("VM", v.Name); err != nil {
		return err
	}
	r := &v.Runtime
	switch {
	case r.Kind != "" && r.Kind != RuntimeQEMU && r.Kind != RuntimeExternal:
		return errs.Invalidf("--runtime %q is not known: use qemu or external", r.Kind)
	case r.Kind == RuntimeExternal && (r.Kernel != "" || r.Disk != "" || r.Initrd != "" || r.Append != ""):
		return errs.Invalidf("an external VM is booted by its own hypervisor: drop --kernel, --initrd, --append and --disk")
	case len(r.Endpoints) > 0 && r.Kind != RuntimeExternal:
		return errs.Invalidf("--endpoint is for --runtime external: anka knows which endpoints QEMU takes; drop --endpoint")
	case r.Kind == RuntimeExternal:
		if err := ValidateEndpoints(r.Endpoints); err != nil {
			return err
		}
	case r.Kernel == "" && r.Disk == "":
		return errs.Invalidf("a VM needs --kernel PATH (with --initrd, --append) or --disk PATH")
	case r.Kernel != "" && r.Disk != "":
		return errs.Invalidf("give either --kernel or --disk, not both")
	case r.Kernel == "" && (r.Initrd != "" || r.Append != ""):
		return errs.Invalidf("--initrd and --append need --kernel")
	case strings.IndexFunc(r.Append, func(c rune) bool { return c < 0x20 || c == 0x7f }) >= 0:
		return errs.Invalidf("--append %q has a control character (a NUL, a newline): the kernel command line is one line of text", r.Append)
	case len(r.Append) > MaxAppend:
		return errs.Invalidf("--append is %d bytes: the kernel command line holds at most %d besides the console=ttyS0 anka adds; shorten it", len(r.Append), MaxAppend)
	case r.CPU < 1 || r.CPU > 64:
		return errs.Invalidf("--cpu %d is out of range: use 1 to 64", r.CPU)
	}
	v.State = Stopped
	v.Created = time.Now().UTC().Truncate(time.Second)
	return m.Store.Create(v)
}

// reconcile brings vm.yaml in line with a VM process that died on its own,
// and runs the stop hook once for it. The caller holds the VM lock.
func (m *Manager) reconcile(ctx context.Context, name string) (*VM, error) {
	var died *VM
	v, err := m.Store.UpdateLocked(name, func(v *VM) error {
		st, _, err := m.effectiveState(ctx, v)
		if err != nil {
			return err
		}
		if st == Stopped && v.State != Stopped {
			v.State = Stopped
			died = v
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if died != nil {
		if err := m.Hooks.AfterStop(ctx, died); err != nil {
			return nil, fmt.Errorf("VM %s stopped on its own; releasing its network failed: %w", name, err)
		}
	}
	return v, nil
}

// withVM runs fn on VM name under its lock, its state reconciled with the
// runtime first. spanning also takes the store lock (before the VM's),
// for changes checked against other VMs.
func (m *Manager) withVM(ctx context.Context, name string, spanning bool, fn func(v *VM) error) error {
	if spanning {
		all, err := m.Store.LockAll()
		if err != nil {
			return err
		}
		defer all.Unlock()
	}
	l, err := m.Store.LockVM(name)
	if err != nil {
		return err
	}
	defer l.Unlock()
	v, err := m.reconcile(ctx, name)
	if err != nil {
		return err
	}
	return fn(v)
}

// withVMResult is withVM for calls that return a result.
func withVMResult[T any](ctx context.Context, m *Manager, name string, spanning bool, fn func(v *VM) (T, error)) (T, error) {
	var res T
	err := m.withVM(ctx, name, spanning, func(v *VM) (err error) {
		res, err = fn(v)
		return err
	})
	return res, err
}

// Start boots a stopped VM or resumes a suspended one.
func (m *Manager) Start(ctx context.Context, name string) (*Status, error) {
	return withVMResult(ctx, m, name, false, func(v *VM) (*Status, error) { return m.startLocked(ctx, v) })
}

func (m *Manager) startLocked(ctx context.Context, v *VM) (*Status, error) {
	name := v.Name
	switch v.State {
	case Running:
		return nil, errs.Statef("VM %s is already running", name)
	case Suspended:
		return m.resumeLocked(ctx, v)
	}
	dyn := ""
	if v.NetworkCard != nil {
		if m.KnownType != nil {
			if err := m.KnownType(v.NetworkCard.Type); err != nil {
				return nil, err
			}
		}
		mac, err := m.MACs.Acquire(v.UUID)
		if err != nil {
			return nil, err
		}
		dyn = mac.String()
	}
	nic, err := m.Hooks.BeforeStart(ctx, v, dyn)
	if err != nil {
		return nil, err
	}
	if nic != nil && nic.MAC == nil {
		guestMAC := dyn
		if v.NetworkCard.MAC != "" {
			guestMAC = v.NetworkCard.MAC
		}
		nic.MAC, _ = net.ParseMAC(guestMAC)
	}
	spec := &runtime.Spec{
		Name: v.Name, UUID: v.UUID, Dir: m.Store.Dir(name),
		Kernel: v.Runtime.Kernel, Initrd: v.Runtime.Initrd, Append: v.Runtime.Append, Disk: v.Runtime.Disk,
		CPUs: v.Runtime.CPU, MemoryMiB: v.Runtime.RAMMiB, NIC: nic,
	}
	if err := m.runtimeOf(v).Start(ctx, spec); err != nil {
		err = StorageError(m.Store.StateDir(), err)
		if herr := m.Hooks.AfterStop(ctx, v); herr != nil {
			err = errors.Join(err, herr)
		}
		return nil, err
	}
	v, err = m.Store.UpdateLocked(name, func(v *VM) error { v.State = Running; return nil })
	if err != nil {
		return nil, err
	}
	if err := m.Hooks.AfterStart(ctx, v); err != nil {
		return nil, fmt.Errorf("VM %s started, but: %w", name, err)
	}
	return m.status(ctx, v)
}

func (m *Manager) resumeLocked(ctx context.Context, v *VM) (*Status, error) {
	if err := m.runtimeOf(v).Resume(ctx, m.Store.Dir(v.Name)); err != nil {
		return nil, err
	}
	v, err := m.Store.UpdateLocked(v.Name, func(v *VM) error { v.State = Running; return nil })
	if err != nil {
		return nil, err
	}
	if err := m.Hooks.AfterResume(ctx, v); err != nil {
		return nil, fmt.Errorf("VM %s resumed, but: %w", v.Name, err)
	}
	return m.status(ctx, v)
}

// Suspend pauses a running VM; its network port and address are kept.
func (m *Manager) Suspend(ctx context.Context, name string) (*Status, error) {
	return withVMResult(ctx, m, name, false, func(v *VM) (*Status, error) { return m.suspendLocked(ctx, v) })
}

func (m *Manager) suspendLocked(ctx context.Context, v *VM) (*Status, error) {
	name := v.Name
	if v.State != Running {
		return nil, errs.Statef("VM %s is %s: only a running VM can be suspended", name, v.State)
	}
	if err := m.Hooks.BeforeSuspend(ctx, v); err != nil {
		return nil, err
	}
	if err := m.runtimeOf(v).Suspend(ctx, m.Store.Dir(name)); err != nil {
		return nil, err
	}
	v, err := m.Store.UpdateLocked(name, func(v *VM) error { v.State = Suspended; return nil })
	if err != nil {
		return nil, err
	}
	return m.status(ctx, v)
}

// Stop shuts a running or suspended VM down: gracefully (ACPI power
// button, then kill after timeout) or at once with force.
func (m *Manager) Stop(ctx context.Context, name string, force bool, timeout time.Duration) (*Status, error) {
	err := m.withVM(ctx, name, false, func(v *VM) error {
		if v.State == Stopped {
			return errs.Statef("VM %s is already stopped", name)
		}
		return m.stopLocked(ctx, v, force, timeout)
	})
	if err != nil {
		return nil, err
	}
	return m.Get(ctx, name)
}

func (m *Manager) stopLocked(ctx context.Context, v *VM, force bool, timeout time.Duration) error {
	// A paused guest cannot see the power button: stop it hard.
	if v.State == Suspended {
		force = true
	}
	if err := m.runtimeOf(v).Stop(ctx, m.Store.Dir(v.Name), force, timeout); err != nil {
		return err
	}
	v, err := m.Store.UpdateLocked(v.Name, func(v *VM) error { v.State = Stopped; return nil })
	if err != nil {
		return err
	}
	return m.Hooks.AfterStop(ctx, v)
}

// Delete removes a VM; a running or suspended one needs force, which
// stops it first. Its dynamic MAC goes back to the pool.
func (m *Manager) Delete(ctx context.Context, name string, force bool) error {
	return m.withVM(ctx, name, true, func(v *VM) error { return m.deleteLocked(ctx, v, force) })
}

func (m *Manager) deleteLocked(ctx context.Context, v *VM, force bool) error {
	name := v.Name
	if v.State != Stopped {
		if !force {
			return errs.Statef("VM %s is %s: stop it first, or delete it with --force", name, v.State)
		}
		if err := m.stopLocked(ctx, v, true, 0); err != nil {
			return err
		}
	}
	if err := m.Hooks.BeforeDelete(ctx, v); err != nil {
		return err
	}
	if err := m.MACs.Release(v.UUID); err != nil {
		return err
	}
	return m.Store.Remove(name)
}

// ReconcileAll finds VMs whose process died on its own (kill -9, a guest
// crash) and runs their stop hook now, so their network ports and port
// forwards are released without waiting for a command about them. Their
// addresses stay reserved.
func (m *Manager) ReconcileAll(ctx context.Context) error {
	vms, _, err := m.Store.List()
	if err != nil {
		return err
	}
	var errList []error
	for _, v := range vms {
		if v.State == Stopped {
			continue
		}
		if st, _, err := m.effectiveState(ctx, v); err != nil || st != Stopped {
			continue
		}
		if err := m.withVM(ctx, v.Name, false, func(*VM) error { return nil }); err != nil {
			errList = append(errList, err)
		}
	}
	return errors.Join(errList...)
}
