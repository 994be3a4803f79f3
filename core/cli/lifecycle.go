package cli

import (
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/anka-net/anka/core/daemon"
	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/core/runtime"
	"github.com/anka-net/anka/core/vm"
	"github.com/anka-net/anka/sdk"
)

// LifecycleOptions are the inputs of start, stop, suspend and delete.
type LifecycleOptions struct {
	f       *Factory
	out     *output
	Name    string
	Force   bool
	All     bool
	Timeout time.Duration
	// NoWait makes start return before the VM has its address.
	NoWait bool
}

func lifecycleCmd(f *Factory, out *output, use, short string, runF func(*LifecycleOptions) error, run func(*cobra.Command, *LifecycleOptions) error) (*cobra.Command, *LifecycleOptions) {
	opts := &LifecycleOptions{f: f, out: out}
	cmd := &cobra.Command{
		Use:   use + " NAME",
		Short: short,
		Args:  exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			if runF != nil {
				return runF(opts)
			}
			return run(cmd, opts)
		},
	}
	return cmd, opts
}

// NewCmdStart builds `anka start NAME`; a suspended VM is resumed.
func NewCmdStart(f *Factory, out *output, runF func(*LifecycleOptions) error) *cobra.Command {
	cmd, opts := lifecycleCmd(f, out, "start", "Start a VM, or resume a suspended one, and wait until it has its network address", runF, func(cmd *cobra.Command, o *LifecycleOptions) error {
		if !o.NoWait && o.Timeout <= 0 {
			return invalidf("--timeout %s is not positive: give how long to wait for the address, such as 2m, or --no-wait", o.Timeout)
		}
		return transition(cmd, o, func(sv daemon.Service) (*vm.Status, error) {
			st, err := sv.Start(cmd.Context(), o.Name)
			if err != nil || o.NoWait {
				return st, err
			}
			return waitForAddress(cmd, o, sv, st)
		})
	})
	cmd.Flags().BoolVar(&opts.NoWait, "no-wait", false, "return once the VM runs, without waiting for its address")
	cmd.Flags().DurationVar(&opts.Timeout, "timeout", 2*time.Minute, "how long to wait for the VM's address")
	return cmd
}

// waitForAddress polls the network until the VM has its address, when
// its type gives one (sdk.CapAddress): a spinner on a terminal, one line
// otherwise. A hypervisor anka does not launch connects later, so an
// external VM is not waited for.
func waitForAddress(cmd *cobra.Command, o *LifecycleOptions, sv daemon.Service, st *vm.Status) (*vm.Status, error) {
	if st.NetworkCard == nil || st.State != vm.Running || st.Runtime.Kind == vm.RuntimeExternal {
		return st, nil
	}
	ctx := cmd.Context()
	w := o.f.IO.ErrOut
	tty := isTerminal(w)
	start := time.Now()
	deadline := start.Add(o.Timeout)
	frames := []rune("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
	said := false
	defer func() {
		if tty && said {
			fmt.Fprint(w, "\r\033[K")
		}
	}()
	for i := 0; ; i++ {
		cur, err := sv.Show(ctx, st.Name)
		if err != nil {
			return nil, err
		}
		if cur.State != vm.Running {
			return nil, errs.Statef("VM %s is %s while waiting for its address: its console log (`anka show %s` names it) says why", st.Name, cur.State, st.Name)
		}
		if cur.Network != nil && cur.Network.IP != "" {
			return cur, nil
		}
		if cur.Network == nil && cur.NetworkError == "" {
			return cur, nil // no plugin reports on this card: nothing to wait for
		}
		if cur.Network != nil && !slices.Contains(cur.NetworkCaps, sdk.CapAddress) {
			return cur, nil // this type gives no address to wait for
		}
		if time.Now().After(deadline) {
			return nil, errs.Unavailablef("VM %s runs but has no network address after %s: look at its console (`anka show %s` names console_log), or wait longer with --timeout; --no-wait skips waiting", st.Name, o.Timeout, st.Name)
		}
		if tty {
			fmt.Fprintf(w, "\r%c waiting for %s to get its address (%ds)", frames[i%len(frames)], st.Name, int(time.Since(start).Seconds()))
			said = true
		} else if !said {
			fmt.Fprintf(w, "waiting for %s to get its address (up to %s)...\n", st.Name, o.Timeout)
			said = true
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// NewCmdSuspend builds `anka suspend NAME`.
func NewCmdSuspend(f *Factory, out *output, runF func(*LifecycleOptions) error) *cobra.Command {
	cmd, _ := lifecycleCmd(f, out, "suspend", "Suspend a running VM (its network address is kept)", runF, func(cmd *cobra.Command, o *LifecycleOptions) error {
		return transition(cmd, o, func(sv daemon.Service) (*vm.Status, error) { return sv.Suspend(cmd.Context(), o.Name) })
	})
	return cmd
}

// NewCmdStop builds `anka stop NAME|--all [--force] [--timeout D]`.
func NewCmdStop(f *Factory, out *output, runF func(*LifecycleOptions) error) *cobra.Command {
	cmd, opts := lifecycleCmd(f, out, "stop", "Shut a VM down (ACPI power button, then kill after --timeout)", runF, func(cmd *cobra.Command, o *LifecycleOptions) error {
		if o.Timeout < 0 {
			return invalidf("--timeout %s is negative: give how long the guest may take to power off, such as 30s, or --force to kill it at once", o.Timeout)
		}
		if o.All {
			return stopAll(cmd, o)
		}
		return transition(cmd, o, func(sv daemon.Service) (*vm.Status, error) { return sv.Stop(cmd.Context(), o.Name, o.Force, o.Timeout) })
	})
	cmd.Use = "stop NAME|--all"
	cmd.Args = func(c *cobra.Command, args []string) error {
		if opts.All != (len(args) == 0) || len(args) > 1 {
			return invalidf("usage: anka stop NAME, or anka stop --all")
		}
		return nil
	}
	inner := cmd.RunE
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if opts.All {
			args = []string{""}
		}
		return inner(c, args)
	}
	cmd.Flags().BoolVarP(&opts.Force, "force", "f", false, "kill the VM at once instead of asking the guest to power off")
	cmd.Flags().DurationVar(&opts.Timeout, "timeout", 30*time.Second, "how long the guest may take to power off before it is killed")
	cmd.Flags().BoolVar(&opts.All, "all", false, "stop every running or suspended VM (used by the systemd unit at shutdown)")
	return cmd
}

// stopAll stops every VM that runs, in turn, and reports each failure.
func stopAll(cmd *cobra.Command, o *LifecycleOptions) error {
	sv, err := o.f.Service()
	if err != nil {
		return err
	}
	stopped, err := sv.StopAll(cmd.Context(), o.Force, o.Timeout)
	if err != nil {
		return err
	}
	return o.out.ok(map[string][]string{"stopped": stopped}, func(w io.Writer) {
		fmt.Fprintf(w, "stopped %d VM(s) %v\n", len(stopped), stopped)
	})
}

// NewCmdDelete builds `anka delete NAME [--force]`.
func NewCmdDelete(f *Factory, out *output, runF func(*LifecycleOptions) error) *cobra.Command {
	cmd, opts := lifecycleCmd(f, out, "delete", "Delete a stopped VM (--force stops a running one first)", runF, func(cmd *cobra.Command, o *LifecycleOptions) error {
		sv, err := o.f.Service()
		if err != nil {
			return err
		}
		if err := sv.Delete(cmd.Context(), o.Name, o.Force); err != nil {
			return err
		}
		return o.out.ok(map[string]string{"name": o.Name}, func(w io.Writer) { fmt.Fprintf(w, "deleted %s\n", o.Name) })
	})
	cmd.Flags().BoolVarP(&opts.Force, "force", "f", false, "stop a running or suspended VM before deleting it")
	return cmd
}

func transition(cmd *cobra.Command, o *LifecycleOptions, do func(daemon.Service) (*vm.Status, error)) error {
	m, err := o.f.Manager()
	if err != nil {
		return err
	}
	sv, err := o.f.Service()
	if err != nil {
		return err
	}
	st, err := do(sv)
	if err != nil {
		return err
	}
	body := showBody(m, st)
	return o.out.ok(body, func(w io.Writer) {
		fmt.Fprintf(w, "%s is %s\n", st.Name, st.State)
		if c := body.NetworkCard; c != nil && c.IP != "" && st.State == vm.Running {
			fmt.Fprintf(w, "ip %s\n", c.IP)
		}
		if ep := body.Endpoint; ep != nil && st.State == vm.Running {
			printEndpoint(w, ep)
		}
	})
}

// printEndpoint tells whoever runs an external VM what to connect to.
func printEndpoint(w io.Writer, ep *runtime.ExternalEndpoint) {
	switch ep.Kind {
	case "dgram":
		fmt.Fprintf(w, "connect the VM's NIC: unix datagram socket, one Ethernet frame per datagram;\n  bind %s and send to %s\n", ep.VMPath, ep.PluginPath)
	case "stream":
		fmt.Fprintf(w, "connect the VM's NIC: unix stream socket %s, each frame behind a 4-byte big-endian length\n", ep.PluginPath)
	case "tap":
		fmt.Fprintf(w, "connect the VM's NIC to TAP device %s\n", ep.TAP)
	case "vhost-user":
		fmt.Fprintf(w, "connect the VM's NIC: vhost-user net, front-end (client) of socket %s;\n  share the guest's memory (QEMU: memory-backend-memfd with share=on)\n", ep.PluginPath)
	}
	fmt.Fprintf(w, "  give the NIC MAC %s\n", ep.MAC)
	if !ep.LinkUp {
		fmt.Fprintln(w, "  with its link down (cable unplugged)")
	}
}
