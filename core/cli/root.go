package cli

import (
	"context"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/anka-net/anka/core/config"
	"github.com/anka-net/anka/core/errs"
)

// Main runs anka with args (without the program name) and returns the
// process exit code. cmd/anka's main is just os.Exit(cli.Main(...)).
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return Run(ctx, NewFactory(), args)
}

// Run executes one command line with an injected factory.
func Run(ctx context.Context, f *Factory, args []string) int {
	root, out := NewCmdRoot(f, args)
	root.SetArgs(rewriteModify(args))
	root.SetIn(f.IO.In)
	root.SetOut(f.IO.Out)
	root.SetErr(f.IO.ErrOut)
	err := root.ExecuteContext(ctx)
	f.Close()
	if err == nil {
		return 0
	}
	if !out.reachedRun && !errs.Is(err, errs.Invalid) {
		// cobra's own argument and flag errors: bad usage.
		err = &errs.Error{Kind: errs.Invalid, Msg: err.Error() + " (see `anka --help`)", Err: err}
	}
	return out.fail(err)
}

// ExitCode maps an error to the process exit code: the errs.Kind number,
// 1 for anything unclassified. This is the one place codes are decided.
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	return int(errs.KindOf(err))
}

// NewCmdRoot builds the command tree; args are scanned for third-party
// plugin flags before cobra parses them.
func NewCmdRoot(f *Factory, args []string) (*cobra.Command, *output) {
	out := &output{f: f}
	root := &cobra.Command{
		Use:   "anka",
		Short: "VM networking for Linux hosts, with Anka's command line",
		Long: `anka runs VMs under QEMU and connects them to pluggable networks
(shared, host, bridge, disconnected, static and third-party types).

Every configuration key is also a global flag, including the plugin keys
--plugins-<type>-path and --plugins-<type>-sha256; see ` + "`anka config`" + `.`,
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			out.reachedRun = true
			return nil
		},
	}
	pf := root.PersistentFlags()
	pf.BoolVarP(&out.json, "machine-readable", "j", false, `print JSON in Anka's envelope {"status":"OK","body":...}`)
	config.RegisterFlags(pf, args)
	// One flag pair per plugin type would drown the help; they still work
	// and `anka config` lists the keys.
	pf.VisitAll(func(fl *pflag.Flag) {
		if strings.HasPrefix(fl.Name, "plugins-") {
			fl.Hidden = true
		}
	})
	f.flags = pf
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &errs.Error{Kind: errs.Invalid, Msg: err.Error() + " (see `anka COMMAND --help`)", Err: err}
	})
	root.AddCommand(
		NewCmdCreate(f, out, nil),
		NewCmdList(f, out, nil),
		NewCmdShow(f, out, nil),
		NewCmdStart(f, out, nil),
		NewCmdStop(f, out, nil),
		NewCmdSuspend(f, out, nil),
		NewCmdDelete(f, out, nil),
		NewCmdModify(f, out),
		NewCmdConfig(f, out, nil),
		NewCmdPlugin(f, out),
		NewCmdDaemon(f, out),
		NewCmdCapture(f, out, nil),
		NewCmdVersion(f, out),
	)
	for _, c := range root.Commands() {
		switch c.Name() {
		case "show", "start", "stop", "suspend", "delete", "capture":
			c.ValidArgsFunction = completeVMs(f)
		}
	}
	return root, out
}

// exactArgs is cobra.ExactArgs with an error that names what is missing.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != len(names) {
			return errs.Invalidf("%s needs %d argument(s): %v, got %d (see `%s --help`)", cmd.CommandPath(), len(names), names, len(args), cmd.CommandPath())
		}
		return nil
	}
}

// rangeArgs accepts between min and max arguments.
func rangeArgs(min, max int, usage string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < min || len(args) > max {
			return errs.Invalidf("usage: %s %s (see `%s --help`)", cmd.CommandPath(), usage, cmd.CommandPath())
		}
		return nil
	}
}

// rewriteModify turns Anka's `modify VM set network-card ...` into the
// cobra tree's `modify set network-card VM ...`: cobra cannot take a
// positional argument before a subcommand.
func rewriteModify(args []string) []string {
	for i := 0; i+3 < len(args); i++ {
		if args[i] != "modify" {
			continue
		}
		action, object := args[i+2], args[i+3]
		if (action == "set" || action == "add" || action == "delete") && (object == "network-card" || object == "port-forwarding") {
			out := append([]string{}, args[:i+1]...)
			out = append(out, action, object, args[i+1])
			return append(out, args[i+4:]...)
		}
		break
	}
	return args
}
