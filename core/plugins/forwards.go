package plugins

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/core/vm"
	"github.com/anka-net/anka/sdk"
)

// forwardsOf is the VM's rules as the plugin protocol carries them.
func forwardsOf(v *vm.VM) []sdk.PortForward {
	if v.NetworkCard == nil {
		return nil
	}
	out := make([]sdk.PortForward, 0, len(v.NetworkCard.PortForwards))
	for _, r := range v.NetworkCard.PortForwards {
		out = append(out, sdk.PortForward{Name: r.Name, Protocol: r.Protocol, HostIP: r.HostIP, HostPort: r.HostPort, GuestPort: r.GuestPort})
	}
	return out
}

// syncForwards makes the plugin's rules for v equal to vm.yaml's: rules
// gone or changed are removed, missing ones added. A type that does not
// forward ports is fine while the VM has no rule.
func (h *Host) syncForwards(ctx context.Context, pl sdk.NetworkPlugin, v *vm.VM) error {
	want := forwardsOf(v)
	typ := v.NetworkCard.Type
	unsupported := func() error {
		if len(want) > 0 {
			return fmt.Errorf("network type %s does not forward ports: delete the rules (`anka modify %s delete port-forwarding --all`) or pick a type that does (shared)", typ, v.Name)
		}
		return nil
	}
	pf, ok := pl.(sdk.PortForwarder)
	if !ok {
		return unsupported()
	}
	cur, err := pf.ListPortForwards(ctx, &sdk.ListPortForwardsRequest{VM: ref(v), Type: typ})
	if sdk.CodeOf(err) == sdk.CodeUnsupported {
		return unsupported()
	}
	if err != nil {
		return pluginError(typ, err)
	}
	wanted := map[string]sdk.PortForward{}
	for _, r := range want {
		wanted[r.Name] = r
	}
	have := map[string]bool{}
	var errList []error
	for _, r := range cur.Rules {
		if w, ok := wanted[r.Name]; ok && w == r {
			have[r.Name] = true
			continue
		}
		if _, err := pf.RemovePortForward(ctx, &sdk.PortForwardRequest{VM: ref(v), Type: typ, Rule: r}); err != nil && sdk.CodeOf(err) != sdk.CodeNotFound {
			errList = append(errList, pluginError(typ, err))
		}
	}
	for _, r := range want {
		if have[r.Name] {
			continue
		}
		if _, err := pf.AddPortForward(ctx, &sdk.PortForwardRequest{VM: ref(v), Type: typ, Rule: r}); err != nil {
			errList = append(errList, pluginError(typ, fmt.Errorf("port-forwarding rule %s (%s %s:%d): %w", r.Name, r.Protocol, r.HostIP, r.HostPort, err)))
		}
	}
	return errors.Join(errList...)
}

// AfterStart applies the VM's port forwards (a rule whose port another
// program took meanwhile is reported; the VM runs on).
func (h *Host) AfterStart(ctx context.Context, v *vm.VM) error {
	if v.NetworkCard == nil {
		return nil
	}
	h.giveSockets(v.Name) // QEMU's socket, bound by now
	return h.call(ctx, v.NetworkCard.Type, "port forwards", func(ctx context.Context, pl sdk.NetworkPlugin) error { return h.syncForwards(ctx, pl, v) })
}

// PortForwardsChanged applies a running VM's rules at once.
func (h *Host) PortForwardsChanged(ctx context.Context, v *vm.VM) error {
	return h.AfterStart(ctx, v)
}

// BeforeSuspend tells a type that acts on suspend; the port and the
// address stay.
func (h *Host) BeforeSuspend(ctx context.Context, v *vm.VM) error {
	if v.NetworkCard == nil {
		return nil
	}
	return h.call(ctx, v.NetworkCard.Type, "Suspend", func(ctx context.Context, pl sdk.NetworkPlugin) error {
		sp, ok := pl.(sdk.Suspender)
		if !ok {
			return nil
		}
		_, err := sp.Suspend(ctx, &sdk.SuspendRequest{VM: ref(v), Type: v.NetworkCard.Type})
		if sdk.CodeOf(err) == sdk.CodeUnsupported {
			return nil
		}
		return err
	})
}

// AfterResume tells the type and applies the forwards again (the plugin
// may have restarted while the VM slept).
func (h *Host) AfterResume(ctx context.Context, v *vm.VM) error {
	if v.NetworkCard == nil {
		return nil
	}
	return h.call(ctx, v.NetworkCard.Type, "Resume", func(ctx context.Context, pl sdk.NetworkPlugin) error {
		if sp, ok := pl.(sdk.Suspender); ok {
			if _, err := sp.Resume(ctx, &sdk.ResumeRequest{VM: ref(v), Type: v.NetworkCard.Type}); err != nil && sdk.CodeOf(err) != sdk.CodeUnsupported {
				return err
			}
		}
		return h.syncForwards(ctx, pl, v)
	})
}

var _ vm.Hooks = (*Host)(nil)

// Capture starts (stop false) or stops recording v's frames to path.
func (h *Host) Capture(ctx context.Context, v *vm.VM, path string, stop bool) (*sdk.CaptureResponse, error) {
	if v.NetworkCard == nil {
		return nil, errs.Statef("VM %s has no network card: there is no traffic to capture", v.Name)
	}
	typ := v.NetworkCard.Type
	// A plugin running as its own user cannot write where the caller
	// asked (nor should it): it records into the VM's socket folder, and
	// anka moves the file over when it stops.
	plugPath := path
	cred, err := h.pluginUser()
	if err != nil {
		return nil, err
	}
	if cred != nil {
		dir, err := h.runDir(v.Name)
		if err != nil {
			return nil, vm.PathError(h.StateDir, err)
		}
		plugPath = filepath.Join(dir, "capture.pcap")
	}
	req := &sdk.CaptureRequest{VM: ref(v), Type: typ, Path: plugPath}
	var resp *sdk.CaptureResponse
	call := map[bool]string{false: "StartCapture", true: "StopCapture"}[stop]
	err = h.invoke(ctx, typ, call, func(ctx context.Context, pl sdk.NetworkPlugin) error {
		c, ok := pl.(sdk.Capturer)
		if !ok {
			return errs.Unavailablef("network type %s cannot capture traffic", typ)
		}
		var err error
		if stop {
			resp, err = c.StopCapture(ctx, req)
		} else {
			resp, err = c.StartCapture(ctx, req)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if stop && plugPath != path {
		if err := copyOut(plugPath, path); err != nil {
			return nil, errs.Permissionf("moving the capture of VM %s to %s: %v", v.Name, path, err)
		}
	}
	return resp, nil
}
