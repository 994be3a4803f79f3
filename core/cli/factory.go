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
	"github.com/anka-net/anka/core/daemon"
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

	// UseDaemon sends lifecycle and network calls to the daemon; false
	// runs them in this process (tests).
	UseDaemon bool

	flags   *pflag.FlagSet
	cfg     *config.Config
	closers []func()
	loc     *daemon.Local
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
		UseDaemon: true,
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
func (f *Factory) Finder(cfg *config.Config) plugins.Finder { return daemon.Finder(cfg, f.SelfDir) }

// local builds the in-process lifecycle once per command run. With the
// daemon in use it has no hooks: it serves only what needs no plugin
// (create, list, completion, file paths).
func (f *Factory) local() (*daemon.Local, error) {
	if f.loc != nil {
		return f.loc, nil
	}
	cfg, err := f.Config()
	if err != nil {
		return nil, err
	}
	w := daemon.Wiring{Runtime: f.Runtime(), Hooks: f.Hooks, SelfDir: f.SelfDir, Bindable: f.Bindable,
		Logger: slog.New(slog.NewTextHandler(f.IO.ErrOut, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	if f.UseDaemon {
		w.Hooks = func(*config.Config, plugins.Finder) vm.Hooks { return viaDaemon{} }
	}
	l, err := daemon.NewLocal(cfg, w)
	if err != nil {
		return nil, err
	}
	if l.Host != nil {
		f.closers = append(f.closers, l.Host.Close)
	}
	f.loc = l
	return l, nil
}

// Manager is the VM store and lifecycle in this process.
func (f *Factory) Manager() (*vm.Manager, error) {
	l, err := f.local()
	if err != nil {
		return nil, err
	}
	return l.Manager, nil
}

// Service runs lifecycle and network calls: through the daemon (started
// on demand) in production, in this process when a test wires it so.
func (f *Factory) Service() (daemon.Service, error) {
	if !f.UseDaemon {
		return f.local()
	}
	return f.Daemon()
}

// Daemon is the client of this state dir's daemon, carrying the resolved
// configuration with every call.
func (f *Factory) Daemon() (*daemon.Client, error) {
	cfg, err := f.Config()
	if err != nil {
		return nil, err
	}
	return &daemon.Client{Config: cfg.Snapshot(), StateDir: cfg.StateDir, Env: f.Environ()}, nil
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

// viaDaemon are the hooks of the CLI's own manager when a daemon runs the
// lifecycle: reaching one means a call took the wrong path.
type viaDaemon struct{ vm.NoHooks }

func (viaDaemon) BeforeStart(context.Context, *vm.VM, string) (*runtime.NIC, error) {
	return nil, fmt.Errorf("internal error: a VM start bypassed the daemon")
}

func (viaDaemon) ValidateCard(context.Context, *vm.VM, *vm.NetworkCard) error {
	return fmt.Errorf("internal error: a network card change bypassed the daemon")
}
