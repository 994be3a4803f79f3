package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/anka-net/anka/core/vm"
)

// NewCmdModify builds Anka's `anka modify NAME set|add|delete ...` tree.
// Run rewrites the command line so NAME follows the object; cobra cannot
// take a positional argument before subcommands.
func NewCmdModify(f *Factory, out *output) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "modify NAME (set|add|delete) (network-card|port-forwarding) ...",
		Short: "Change a VM's network card or port forwarding",
		Example: `  sudo anka modify vm1 set network-card 0 -t static --ip 192.168.64.50
  sudo anka modify vm1 set network-card -t bridge -b eth0
  sudo anka modify vm1 delete network-card
  sudo anka modify vm1 add port-forwarding ssh -g 22 -p 2222
  sudo anka modify vm1 delete port-forwarding --all`,
		Args: rangeArgs(0, 0, "NAME (set|add|delete) (network-card|port-forwarding) ..."),
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	set := &cobra.Command{Use: "set", Short: "Change a VM's network card"}
	add := &cobra.Command{Use: "add", Short: "Add a network card or a port-forwarding rule"}
	del := &cobra.Command{Use: "delete", Short: "Delete a network card or port-forwarding rules"}
	set.AddCommand(NewCmdCard(f, out, "set", nil))
	add.AddCommand(NewCmdCard(f, out, "add", nil), NewCmdAddPortForward(f, out, nil))
	del.AddCommand(NewCmdDeleteCard(f, out, nil), NewCmdDeletePortForward(f, out, nil))
	for _, c := range []*cobra.Command{set, add, del} {
		c.Args = rangeArgs(0, 0, "NAME "+c.Use+" (network-card|port-forwarding) ...")
		c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
		cmd.AddCommand(c)
	}
	return cmd
}

// CardOptions are the inputs of `modify NAME set|add network-card [0]`.
type CardOptions struct {
	f                     *Factory
	out                   *output
	Add                   bool
	Name                  string
	Type, Bridge, MAC, IP string
	Options               []string
	typeSet, bridgeSet    bool
	macSet, ipSet         bool
}

// NewCmdCard builds `set network-card` or `add network-card`.
func NewCmdCard(f *Factory, out *output, action string, runF func(*CardOptions) error) *cobra.Command {
	opts := &CardOptions{f: f, out: out, Add: action == "add"}
	cmd := &cobra.Command{
		Use:   "network-card NAME [INDEX] [-t TYPE] [-b IFACE|auto] [-m MAC|auto] [--ip ADDR] [-o KEY=VALUE]...",
		Short: action + " network card 0 (the only one, as in Anka)",
		Args:  rangeArgs(1, 2, "NAME [INDEX]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			if err := cardIndex(args[1:]); err != nil {
				return err
			}
			fl := cmd.Flags()
			opts.typeSet, opts.bridgeSet = fl.Changed("type"), fl.Changed("bridge")
			opts.macSet, opts.ipSet = fl.Changed("mac"), fl.Changed("ip")
			if err := notEmpty(fl, map[string]string{"type": "a network type such as shared", "bridge": "an interface name such as eth0, or auto", "mac": "a MAC such as 52:54:00:12:34:56, or auto", "ip": "an address such as 192.168.64.50"}); err != nil {
				return err
			}
			if runF != nil {
				return runF(opts)
			}
			return cardRun(cmd, opts)
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&opts.Type, "type", "t", "shared", "network type: shared, host, bridge, disconnected, static or a plugin's type")
	fl.StringVarP(&opts.Bridge, "bridge", "b", "", "host interface for bridge mode, or auto")
	fl.StringVarP(&opts.MAC, "mac", "m", "", "static internal MAC the guest sees (the network sees the dynamic one), or auto")
	fl.StringVar(&opts.IP, "ip", "", "fixed address on the shared network, for -t static")
	fl.StringArrayVarP(&opts.Options, "option", "o", nil, "a type's own option KEY=VALUE (repeatable; KEY= removes it), e.g. -o segment=lab")
	return cmd
}

func cardRun(cmd *cobra.Command, o *CardOptions) error {
	sv, err := o.f.Service()
	if err != nil {
		return err
	}
	var ch vm.CardChange
	if o.typeSet {
		ch.Type = &o.Type
	}
	if o.bridgeSet {
		ch.Bridge = &o.Bridge
	}
	if o.macSet {
		ch.MAC = &o.MAC
	}
	if o.ipSet {
		ch.IP = &o.IP
	}
	for _, kv := range o.Options {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return invalidf("-o %q is not KEY=VALUE: e.g. -o segment=lab (KEY= removes an option)", kv)
		}
		if ch.Options == nil {
			ch.Options = map[string]string{}
		}
		ch.Options[k] = v
	}
	st, err := sv.SetCard(cmd.Context(), o.Name, ch, o.Add)
	if err != nil {
		return err
	}
	body := cardBody(st)
	return o.out.ok(body, func(w io.Writer) { printCard(w, body) })
}

// notEmpty refuses a flag given with an empty value (`-b "$UNSET"`), which
// would otherwise silently mean its default; want says what to give.
func notEmpty(fl *pflag.FlagSet, want map[string]string) error {
	for _, name := range []string{"type", "bridge", "mac", "ip", "host-ip", "protocol"} {
		f := fl.Lookup(name)
		if f == nil || want[name] == "" || !f.Changed || f.Value.String() != "" {
			continue
		}
		short := ""
		if f.Shorthand != "" {
			short = "-" + f.Shorthand + "/"
		}
		return invalidf("%s--%s is empty: give %s, or leave it out", short, name, want[name])
	}
	return nil
}

// DeleteCardOptions are the inputs of `modify NAME delete network-card [0]`.
type DeleteCardOptions struct {
	f    *Factory
	out  *output
	Name string
}

// NewCmdDeleteCard builds `delete network-card`, like pulling the NIC.
func NewCmdDeleteCard(f *Factory, out *output, runF func(*DeleteCardOptions) error) *cobra.Command {
	opts := &DeleteCardOptions{f: f, out: out}
	return &cobra.Command{
		Use:   "network-card NAME [INDEX]",
		Short: "Remove network card 0 (the VM boots without a NIC)",
		Args:  rangeArgs(1, 2, "NAME [INDEX]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			if err := cardIndex(args[1:]); err != nil {
				return err
			}
			if runF != nil {
				return runF(opts)
			}
			sv, err := opts.f.Service()
			if err != nil {
				return err
			}
			if _, err := sv.DeleteCard(cmd.Context(), opts.Name); err != nil {
				return err
			}
			return opts.out.ok(map[string]any{"name": opts.Name, "network_card": nil}, func(w io.Writer) {
				fmt.Fprintf(w, "%s has no network card now\n", opts.Name)
			})
		},
	}
}

// PortForwardOptions are the inputs of `modify NAME add port-forwarding`.
type PortForwardOptions struct {
	f    *Factory
	out  *output
	Name string
	Rule vm.PortForward
}

// NewCmdAddPortForward builds `add port-forwarding RULE -g PORT ...`.
func NewCmdAddPortForward(f *Factory, out *output, runF func(*PortForwardOptions) error) *cobra.Command {
	opts := &PortForwardOptions{f: f, out: out}
	cmd := &cobra.Command{
		Use:   "port-forwarding NAME RULE -g GUEST_PORT [-p HOST_PORT] [-l HOST_IP] [-P tcp|udp]",
		Short: "Forward a host port to the guest (a free port from portfwd_base when -p is left out)",
		Args:  exactArgs("NAME", "RULE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name, opts.Rule.Name = args[0], args[1]
			if !cmd.Flags().Changed("guest-port") {
				return invalidf("add port-forwarding needs -g/--guest-port: the port the guest listens on")
			}
			if err := notEmpty(cmd.Flags(), map[string]string{"host-ip": "an address such as 127.0.0.1, or 0.0.0.0 for all", "protocol": "tcp or udp"}); err != nil {
				return err
			}
			if runF != nil {
				return runF(opts)
			}
			sv, err := opts.f.Service()
			if err != nil {
				return err
			}
			r, err := sv.AddPortForward(cmd.Context(), opts.Name, opts.Rule)
			if err != nil {
				return err
			}
			return opts.out.ok(r, func(w io.Writer) {
				fmt.Fprintf(w, "%s: %s %s:%d -> guest port %d\n", r.Name, r.Protocol, r.HostIP, r.HostPort, r.GuestPort)
			})
		},
	}
	fl := cmd.Flags()
	fl.IntVarP(&opts.Rule.GuestPort, "guest-port", "g", 0, "port in the guest")
	fl.IntVarP(&opts.Rule.HostPort, "host-port", "p", 0, "port on the host (default: first free from portfwd_base)")
	fl.StringVarP(&opts.Rule.HostIP, "host-ip", "l", "0.0.0.0", "host address to listen on")
	fl.StringVarP(&opts.Rule.Protocol, "protocol", "P", "tcp", "tcp or udp")
	return cmd
}

// DeletePortForwardOptions are the inputs of `delete port-forwarding`.
type DeletePortForwardOptions struct {
	f    *Factory
	out  *output
	Name string
	Rule string
	All  bool
}

// NewCmdDeletePortForward builds `delete port-forwarding RULE|--all`.
func NewCmdDeletePortForward(f *Factory, out *output, runF func(*DeletePortForwardOptions) error) *cobra.Command {
	opts := &DeletePortForwardOptions{f: f, out: out}
	cmd := &cobra.Command{
		Use:   "port-forwarding NAME (RULE|--all)",
		Short: "Delete a port-forwarding rule, or all of them",
		Args:  rangeArgs(1, 2, "NAME (RULE|--all)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Name = args[0]
			switch {
			case len(args) == 2 && opts.All:
				return invalidf("give a rule name or --all, not both")
			case len(args) == 2:
				opts.Rule = args[1]
			case !opts.All:
				return invalidf("delete port-forwarding needs a rule name or --all")
			}
			if runF != nil {
				return runF(opts)
			}
			sv, err := opts.f.Service()
			if err != nil {
				return err
			}
			if err := sv.DeletePortForward(cmd.Context(), opts.Name, opts.Rule, opts.All); err != nil {
				return err
			}
			return opts.out.ok(map[string]any{"name": opts.Name, "rule": opts.Rule, "all": opts.All}, func(w io.Writer) {
				if opts.All {
					fmt.Fprintf(w, "deleted every port-forwarding rule of %s\n", opts.Name)
				} else {
					fmt.Fprintf(w, "deleted port-forwarding rule %s of %s\n", opts.Rule, opts.Name)
				}
			})
		},
	}
	cmd.Flags().BoolVar(&opts.All, "all", false, "delete every rule of the VM")
	return cmd
}
