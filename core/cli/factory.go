// Package cli holds anka's cobra commands. Each command is an Options
// struct, a NewCmdX constructor and an xRun function; everything a command
// needs comes from the Factory, so tests run commands with fake IO and a
// fake runtime. No business logic lives here.
package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"

	"github.com/spf13/pflag"

	"github.com/anka-net/anka/core/config"
	"github.com/anka-net/anka/core/macpool"
	"github.com/anka-net/anka/core/plugins"
	"github.com/anka-net/anka/core/runtime"
	"github.com/anka-net/anka/core/vm"
)

// IOStreams are the command's standard streams.
type IOStreams struct {
	In          io.Reader
	Out, ErrOut io.Writer
}

// Factory builds what commands depend on, lazily, from the parsed flags.
type Factory struct {
	IO        IOStreams
	LookupEnv func(string) (string, bool)
	Environ   func() []string
	// Runtime runs VM processes; QEMU unless a test injects another.
	Runtime func() runtime.Runtime
	// Hooks connect the lifecycle to the network; nil means the plugin
	// finder's hooks.
	Hooks func(cfg *config.Config, f plugins.Finder) vm.Hooks
	// SelfDir is where anka's binary lives (plugins may sit beside it).
	SelfDir string
	// Bindable reports whether a host port can be bound now.
	Bindable func(proto, ip string, port int) bool

	flags   *pflag.FlagSet
	cfg     *config.Config
	closers []func()
	host    *plugins.Host // nil when a test injects its own hooks
}

// Close lets go of what commands opened (plugin connections stay up).
func (f *Factory) Close() {
	for _, c := range f.closers {
		c()
	}
	f.closers = nil
}

// NewFactory is the production wiring.
func NewFactory() *Factory {
	return &Factory{
		IO:        IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr},
		LookupEnv: os.LookupEnv,
		Environ:   os.Environ,
		Runtime:   func() runtime.Runtime { return runtime.NewQEMU(runtime.QEMUOptions{}) },
		SelfDir:   plugins.SelfDir(),
		Bindable:  canBind,
	}
}

func (f *Factory) configOptions() config.Options {
	return config.Options{Flags: f.flags, LookupEnv: f.LookupEnv, Environ: f.Environ}
}

// Config resolves configuration once per command run.
func (f *Factory) Config() (*config.Config, error) {
	if f.cfg != nil {
		return f.cfg, nil
	}
	cfg, err := config.Load(f.configOptions())
	if err != nil {
		return nil, err
	}
	f.cfg = cfg
	return cfg, nil
}

// Finder locates plugin binaries with the resolved configuration.
func (f *Factory) Finder(cfg *config.Config) plugins.Finder {
	paths := map[string]string{}
	for t, p := range cfg.Plugins {
		if p.Path != "" {
			paths[t] = p.Path
		}
	}
	return plugins.Finder{Configured: paths, SelfDir: f.SelfDir, PluginDir: cfg.PluginDir}
}

// Manager opens the VM store and the MAC pool under the state dir.
func (f *Factory) Manager() (*vm.Manager, error) {
	cfg, err := f.Config()
	if err != nil {
		return nil, err
	}
	store, err := vm.OpenStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	pool, err := macpool.Open(macpool.Options{Path: store.StateDir() + "/macpool.yaml", StateDir: cfg.StateDir})
	if err != nil {
		return nil, vm.PathError(cfg.StateDir, err)
	}
	finder := f.Finder(cfg)
	var hooks vm.Hooks
	if f.Hooks != nil {
		hooks = f.Hooks(cfg, finder)
	} else {
		pins := map[string]string{}
		for t, p := range cfg.Plugins {
			pins[t] = p.SHA256
		}
		h := &plugins.Host{Finder: finder, StateDir: cfg.StateDir, Pins: pins, Settings: cfg.Settings(),
			LogLevel: cfg.LogLevel, MTU: cfg.MTU, Logger: slog.New(slog.NewTextHandler(f.IO.ErrOut, &slog.HandlerOptions{Level: slog.LevelWarn})),
			VMs: func() ([]*vm.VM, error) { vms, _, err := store.List(); return vms, err },
			DynamicMAC: func(uuid string) string {
				if mac, ok, _ := pool.Lookup(uuid); ok {
					return mac.String()
				}
				return ""
			},
		}
		f.closers = append(f.closers, h.Close)
		f.host = h
		hooks = h
		if err := h.Recover(context.Background()); err != nil {
			fmt.Fprintf(f.IO.ErrOut, "anka: warning: a network plugin that stopped could not be started again: %v\n", err)
		}
	}
	return &vm.Manager{
		Store: store, Runtime: f.Runtime(), Hooks: hooks, MACs: pool,
		KnownType: finder.Known,
		SharedNet: cfg.Shared.Prefix, Gateway: cfg.Shared.Gateway,
		PortBase: cfg.PortFwdBase, Bindable: f.Bindable,
	}, nil
}

// canBind tries to bind the port for a moment, the only way to know that
// no other program holds it.
func canBind(proto, ip string, port int) bool {
	addr := net.JoinHostPort(ip, strconv.Itoa(port))
	if proto == "udp" {
		c, err := net.ListenPacket("udp", addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	return true
}
