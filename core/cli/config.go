package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/anka-net/anka/core/config"
)

// ConfigOptions are the inputs of `anka config [KEY [VALUE]]`.
type ConfigOptions struct {
	f          *Factory
	out        *output
	Key, Value string
	Unset      bool
	nargs      int
}

// NewCmdConfig builds `anka config`: list, get, set and --unset.
func NewCmdConfig(f *Factory, out *output, runF func(*ConfigOptions) error) *cobra.Command {
	opts := &ConfigOptions{f: f, out: out}
	cmd := &cobra.Command{
		Use:   "config [KEY [VALUE]] | --unset KEY",
		Short: "Show or set configuration (flags > ANKA_* env > user file > system file > defaults)",
		Example: `  anka config                       # every key, its value and where it comes from
  anka config bridge_name           # the effective value alone
  sudo anka config bridge_name eth0 # write the user config file
  anka config --unset bridge_name`,
		Args: rangeArgs(0, 2, "[KEY [VALUE]] | --unset KEY"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.nargs = len(args)
			if len(args) > 0 {
				opts.Key = args[0]
			}
			if len(args) > 1 {
				opts.Value = args[1]
			}
			if opts.Unset && len(args) != 1 {
				return invalidf("--unset takes exactly one KEY")
			}
			if runF != nil {
				return runF(opts)
			}
			return configRun(opts)
		},
	}
	cmd.Flags().BoolVar(&opts.Unset, "unset", false, "remove KEY from the user config file")
	return cmd
}

type configEntry struct {
	Key    string `json:"key"`
	Value  string `json:"value"`
	Source string `json:"source"`
	File   string `json:"file,omitempty"`
}

func toEntry(e config.Entry) configEntry {
	return configEntry{Key: e.Key, Value: e.Value, Source: string(e.Source), File: e.File}
}

func configRun(o *ConfigOptions) error {
	co := o.f.configOptions()
	switch {
	case o.Unset:
		if err := config.Unset(co, o.Key); err != nil {
			return err
		}
		return o.configShowKey("unset")
	case o.nargs == 2:
		if err := config.Set(co, o.Key, o.Value); err != nil {
			return err
		}
		return o.configShowKey("set")
	}
	cfg, err := o.f.Config()
	if err != nil {
		return err
	}
	if o.nargs == 1 {
		e, err := cfg.Get(o.Key)
		if err != nil {
			return err
		}
		return o.out.ok(toEntry(e), func(w io.Writer) { fmt.Fprintln(w, e.Value) })
	}
	var entries []configEntry
	var rows [][]string
	for _, e := range cfg.Entries() {
		entries = append(entries, toEntry(e))
		src := string(e.Source)
		if e.File != "" {
			src += " (" + e.File + ")"
		}
		rows = append(rows, []string{e.Key, dash(e.Value), src})
	}
	return o.out.ok(entries, func(w io.Writer) { table(w, []string{"KEY", "VALUE", "SOURCE"}, rows) })
}

// configShowKey reloads after a write so the user sees the value now in
// effect, which a flag or env var may still override.
func (o *ConfigOptions) configShowKey(verb string) error {
	cfg, err := config.Load(o.f.configOptions())
	if err != nil {
		return err
	}
	e, err := cfg.Get(o.Key)
	if err != nil {
		return err
	}
	return o.out.ok(toEntry(e), func(w io.Writer) {
		fmt.Fprintf(w, "%s %s in %s; effective value %q from %s\n", verb, o.Key, cfg.UserFile, e.Value, e.Source)
	})
}
