// Package daemon is the long-lived supervisor the CLI talks to over
// <state_dir>/anka.sock. It owns the network plugins (they must outlive a
// CLI call), runs the VM lifecycle with the configuration each CLI call
// resolved, restarts crashed plugins with backoff, and reaps what it
// starts. Plugins and VMs outlive the daemon in turn: a new daemon
// reattaches to them.
package daemon

import (
	"context"
	"errors"
	"time"

	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/core/plugins"
	"github.com/anka-net/anka/core/vm"
	"github.com/anka-net/anka/sdk"
)

// Service is what the CLI asks of whoever runs the lifecycle: the daemon
// (Client) or, in tests and inside the daemon itself, a Local one.
type Service interface {
	Start(ctx context.Context, name string) (*vm.Status, error)
	Suspend(ctx context.Context, name string) (*vm.Status, error)
	Stop(ctx context.Context, name string, force bool, timeout time.Duration) (*vm.Status, error)
	// StopAll stops every running or suspended VM and names those stopped.
	StopAll(ctx context.Context, force bool, timeout time.Duration) ([]string, error)
	Delete(ctx context.Context, name string, force bool) error
	SetCard(ctx context.Context, name string, ch vm.CardChange, add bool) (*vm.Status, error)
	DeleteCard(ctx context.Context, name string) (*vm.Status, error)
	AddPortForward(ctx context.Context, name string, r vm.PortForward) (*vm.PortForward, error)
	DeletePortForward(ctx context.Context, name, rule string, all bool) error
	// Show is the VM with what its network plugin reports.
	Show(ctx context.Context, name string) (*vm.Status, error)
	// RestartPlugin starts the plugin serving typ again and returns its pid.
	RestartPlugin(ctx context.Context, typ string) (int, error)
	// Capture starts (stop false) or stops recording a running VM's
	// frames as pcap at path.
	Capture(ctx context.Context, name, path string, stop bool) (*sdk.CaptureResponse, error)
}

// Local runs the lifecycle in this process.
type Local struct {
	Manager *vm.Manager
	// Host is the plugin host behind Manager.Hooks; nil when the hooks
	// are something else (tests), and then Show reports no network.
	Host *plugins.Host
}

var _ Service = (*Local)(nil)

func (l *Local) Start(ctx context.Context, name string) (*vm.Status, error) {
	return l.Manager.Start(ctx, name)
}

func (l *Local) Suspend(ctx context.Context, name string) (*vm.Status, error) {
	return l.Manager.Suspend(ctx, name)
}

func (l *Local) Stop(ctx context.Context, name string, force bool, timeout time.Duration) (*vm.Status, error) {
	return l.Manager.Stop(ctx, name, force, timeout)
}

func (l *Local) StopAll(ctx context.Context, force bool, timeout time.Duration) ([]string, error) {
	vms, _, err := l.Manager.List(ctx)
	if err != nil {
		return nil, err
	}
	stopped := []string{}
	var failed []error
	for _, s := range vms {
		if s.State == vm.Stopped {
			continue
		}
		if _, err := l.Manager.Stop(ctx, s.Name, force, timeout); err != nil {
			failed = append(failed, err)
			continue
		}
		stopped = append(stopped, s.Name)
	}
	return stopped, errors.Join(failed...)
}

func (l *Local) Delete(ctx context.Context, name string, force bool) error {
	return l.Manager.Delete(ctx, name, force)
}

func (l *Local) SetCard(ctx context.Context, name string, ch vm.CardChange, add bool) (*vm.Status, error) {
	return l.Manager.SetCard(ctx, name, ch, add)
}

func (l *Local) DeleteCard(ctx context.Context, name string) (*vm.Status, error) {
	return l.Manager.DeleteCard(ctx, name)
}

func (l *Local) AddPortForward(ctx context.Context, name string, r vm.PortForward) (*vm.PortForward, error) {
	return l.Manager.AddPortForward(ctx, name, r)
}

func (l *Local) DeletePortForward(ctx context.Context, name, rule string, all bool) error {
	return l.Manager.DeletePortForward(ctx, name, rule, all)
}

// Show fills in what the plugin reports (address, path, counters); a
// plugin that is not running or fails leaves the card as stored, with
// the reason.
func (l *Local) Show(ctx context.Context, name string) (*vm.Status, error) {
	st, err := l.Manager.Get(ctx, name)
	if err != nil || l.Host == nil || st.NetworkCard == nil {
		return st, err
	}
	ns, err := l.Host.Status(ctx, st.VM)
	if err != nil {
		st.NetworkError = err.Error()
	} else {
		st.Network = ns
		st.NetworkCaps = l.Host.Capabilities(st.NetworkCard.Type)
	}
	return st, nil
}

func (l *Local) RestartPlugin(ctx context.Context, typ string) (int, error) {
	if l.Host == nil {
		return 0, errors.New("no plugin host in this process")
	}
	if err := l.Host.Restart(ctx, typ); err != nil {
		return 0, err
	}
	fd, err := l.Host.Finder.Find(typ)
	if err != nil {
		return 0, err
	}
	ri, _ := plugins.Running(l.Host.StateDir, fd.Path)
	return ri.Pid, nil
}

func (l *Local) Capture(ctx context.Context, name, path string, stop bool) (*sdk.CaptureResponse, error) {
	if l.Host == nil {
		return nil, errors.New("no plugin host in this process")
	}
	st, err := l.Manager.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	if st.State == vm.Stopped {
		return nil, errs.Statef("VM %s is stopped: start it, then capture its traffic", name)
	}
	return l.Host.Capture(ctx, st.VM, path, stop)
}
