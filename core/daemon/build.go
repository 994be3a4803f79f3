package daemon

import (
	"log/slog"

	"github.com/anka-net/anka/core/config"
	"github.com/anka-net/anka/core/macpool"
	"github.com/anka-net/anka/core/plugins"
	"github.com/anka-net/anka/core/runtime"
	"github.com/anka-net/anka/core/vm"
)

// Wiring is what a Local needs besides the configuration.
type Wiring struct {
	Runtime runtime.Runtime
	// Hooks replace the plugin host (tests); nil means plugins.
	Hooks func(cfg *config.Config, f plugins.Finder) vm.Hooks
	// Conns are plugin connections shared between calls; nil = private.
	Conns *plugins.Conns
	// SelfDir is where anka's binary lives (plugins may sit beside it).
	SelfDir string
	// Bindable reports whether a host port can be bound now.
	Bindable func(proto, ip string, port int) bool
	Logger   *slog.Logger
}

// Finder locates plugin binaries with the resolved configuration.
func Finder(cfg *config.Config, selfDir string) plugins.Finder {
	paths := map[string]string{}
	for t, p := range cfg.Plugins {
		if p.Path != "" {
			paths[t] = p.Path
		}
	}
	return plugins.Finder{Configured: paths, SelfDir: selfDir, PluginDir: cfg.PluginDir}
}

// NewLocal opens the VM store and the MAC pool under the state dir and
// connects the lifecycle to the network plugins.
func NewLocal(cfg *config.Config, w Wiring) (*Local, error) {
	store, err := vm.OpenStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	pool, err := macpool.Open(macpool.Options{Path: store.StateDir() + "/macpool.yaml", StateDir: cfg.StateDir})
	if err != nil {
		return nil, vm.PathError(cfg.StateDir, err)
	}
	finder := Finder(cfg, w.SelfDir)
	l := &Local{}
	var hooks vm.Hooks
	if w.Hooks != nil {
		hooks = w.Hooks(cfg, finder)
	} else {
		pins := map[string]string{}
		for t, p := range cfg.Plugins {
			pins[t] = p.SHA256
		}
		logger := w.Logger
		if logger == nil {
			logger = slog.Default()
		}
		l.Host = &plugins.Host{Finder: finder, StateDir: cfg.StateDir, Pins: pins, Settings: cfg.Settings(),
			LogLevel: cfg.LogLevel, MTU: cfg.MTU, Logger: logger, Conns: w.Conns, User: cfg.PluginUser,
			CallTimeout: cfg.PluginTimeout, NoVhostUser: !cfg.VhostUser,
			VMs: func() ([]*vm.VM, error) { vms, _, err := store.List(); return vms, err },
			DynamicMAC: func(uuid string) string {
				if mac, ok, _ := pool.Lookup(uuid); ok {
					return mac.String()
				}
				return ""
			},
		}
		hooks = l.Host
	}
	l.Manager = &vm.Manager{
		Store: store, Runtime: w.Runtime, Hooks: hooks, MACs: pool,
		KnownType: finder.Known,
		SharedNet: cfg.Shared.Prefix, Gateway: cfg.Shared.Gateway,
		PortBase: cfg.PortFwdBase, Bindable: w.Bindable,
	}
	return l, nil
}
