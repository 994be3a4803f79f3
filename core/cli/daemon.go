package cli

import (
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/anka-net/anka/core/daemon"
)

// NewCmdDaemon builds `anka daemon [status|stop [--all]]`.
func NewCmdDaemon(f *Factory, out *output) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "daemon [start|status|stop [--all]]",
		Short: "Run the daemon that owns the network plugins (started on demand by other commands)",
		Long: `anka daemon runs the supervisor in the foreground (the systemd unit runs
this). Commands that need it start it in the background when it is not
running. It listens on <state_dir>/anka.sock (mode 0600), owns the network
plugins, restarts a crashed plugin with backoff and attaches its VMs again.
Plugins and VMs outlive it: a new daemon reattaches to them.`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.Config()
			if err != nil {
				return err
			}
			var level slog.Level
			level.UnmarshalText([]byte(cfg.LogLevel))
			srv := &daemon.Server{
				Config:  cfg,
				Wiring:  daemon.Wiring{Runtime: f.Runtime(), SelfDir: f.SelfDir, Bindable: f.Bindable},
				Logger:  slog.New(slog.NewTextHandler(f.IO.ErrOut, &slog.HandlerOptions{Level: level})),
				Version: Version,
			}
			return srv.Run(cmd.Context())
		},
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "status",
		Short: "Show whether the daemon runs, its plugins and their restarts",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.Daemon()
			if err != nil {
				return err
			}
			c.NoStart = true
			st, err := c.Status(cmd.Context())
			if err != nil {
				return err
			}
			return out.ok(st, func(w io.Writer) { printDaemonStatus(w, st) })
		},
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "start",
		Short: "Start the daemon in the background unless it runs (other commands do this on demand)",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.Daemon()
			if err != nil {
				return err
			}
			if err := c.Ensure(cmd.Context()); err != nil {
				return err
			}
			st, err := c.Status(cmd.Context())
			if err != nil {
				return err
			}
			return out.ok(st, func(w io.Writer) { fmt.Fprintf(w, "daemon running (pid %d), listening on %s\n", st.PID, st.Socket) })
		},
	})
	var all bool
	stop := &cobra.Command{
		Use:   "stop [--all]",
		Short: "Stop the daemon and the plugins no running VM needs (--all: stop every VM and plugin too)",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.Daemon()
			if err != nil {
				return err
			}
			// Without a daemon, plugins may still run (the daemon was
			// killed): one is started to reattach and stop them.
			if !c.Running() && !anythingRunning(c.StateDir) {
				return out.ok(&daemon.ShutdownReport{StoppedVMs: []string{}, StoppedPlugins: []string{}, KeptPlugins: []string{}}, func(w io.Writer) {
					fmt.Fprintf(w, "no daemon runs for %s\n", c.StateDir)
				})
			}
			rep, err := c.Shutdown(cmd.Context(), all)
			if err != nil {
				return err
			}
			return out.ok(rep, func(w io.Writer) {
				if len(rep.StoppedVMs) > 0 {
					fmt.Fprintf(w, "stopped VMs: %s\n", strings.Join(rep.StoppedVMs, ", "))
				}
				if len(rep.StoppedPlugins) > 0 {
					fmt.Fprintf(w, "stopped plugins: %s\n", strings.Join(rep.StoppedPlugins, ", "))
				}
				if len(rep.KeptPlugins) > 0 {
					fmt.Fprintf(w, "left running for running VMs: %s (`anka daemon stop --all` stops them and the VMs)\n", strings.Join(rep.KeptPlugins, ", "))
				}
				fmt.Fprintln(w, "daemon stopped")
			})
		},
	}
	stop.Flags().BoolVar(&all, "all", false, "stop every VM first, then every plugin")
	cmd.AddCommand(stop)
	return cmd
}

// anythingRunning reports a plugin process or VM that outlived a daemon.
func anythingRunning(stateDir string) bool {
	return daemon.LiveProcesses(stateDir) > 0
}

func printDaemonStatus(w io.Writer, st *daemon.Status) {
	table(w, nil, [][]string{
		{"pid", strconv.Itoa(st.PID)}, {"version", st.Version}, {"state_dir", st.StateDir},
		{"socket", st.Socket}, {"started", st.Started.Format(time.RFC3339)}, {"uptime", st.Uptime},
		{"subreaper", strconv.FormatBool(st.Subreaper)}, {"vms_running", strconv.Itoa(st.VMsRunning)},
		{"resources", daemon.FormatResources(&st.Resources)},
	})
	if len(st.Plugins) == 0 {
		fmt.Fprintln(w, "no plugin launched")
		return
	}
	rows := make([][]string, 0, len(st.Plugins))
	for _, p := range st.Plugins {
		state := "stopped"
		if p.Running {
			state = "running (pid " + strconv.Itoa(p.PID) + ")"
		}
		if p.LastErr != "" {
			state += "; last error: " + p.LastErr
		}
		rows = append(rows, []string{strings.Join(p.Types, ","), p.Binary, strconv.Itoa(p.Restarts), state, daemon.FormatResources(p.Resources)})
	}
	fmt.Fprintln(w)
	table(w, []string{"TYPES", "BINARY", "RESTARTS", "STATE", "RESOURCES"}, rows)
}

// reviveDaemon brings a daemon back when plugins run without one (it was
// killed), so crashed plugins are watched again; commands that only read
// call it, the others reach the daemon anyway.
func (f *Factory) reviveDaemon(cmd *cobra.Command) {
	if !f.UseDaemon {
		return
	}
	c, err := f.Daemon()
	if err != nil || c.Running() || !anythingRunning(c.StateDir) {
		return
	}
	if err := c.Ensure(cmd.Context()); err != nil {
		fmt.Fprintf(f.IO.ErrOut, "anka: warning: plugins run without a daemon watching them, and starting one failed: %v\n", err)
	}
}
