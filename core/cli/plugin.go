package cli

import (
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/core/plugins"
	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/host"
)

// NewCmdPlugin builds `anka plugin list|info`.
func NewCmdPlugin(f *Factory, out *output) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "plugin (list|info TYPE|restart TYPE)",
		Short: "Show which binary serves which network type",
		Args:  rangeArgs(0, 0, "(list|info TYPE|restart TYPE)"),
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List network types with their binary, version, protocol, sha256 and state",
		Args:  exactArgs(),
		RunE:  func(cmd *cobra.Command, _ []string) error { return pluginListRun(cmd, f, out) },
	}, &cobra.Command{
		Use:   "restart TYPE",
		Short: "Start a type's plugin again (picking up a new binary); running VMs are attached again and keep their addresses",
		Args:  exactArgs("TYPE"),
		RunE: func(cmd *cobra.Command, args []string) error {
			sv, err := f.Service()
			if err != nil {
				return err
			}
			pid, err := sv.RestartPlugin(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			cfg, _ := f.Config()
			fd, _ := f.Finder(cfg).Find(args[0])
			return out.ok(map[string]any{"type": args[0], "binary": fd.Path, "pid": pid}, func(w io.Writer) {
				fmt.Fprintf(w, "%s restarted: %s (pid %d)\n", args[0], fd.Path, pid)
			})
		},
	}, &cobra.Command{
		Use:   "info TYPE",
		Short: "Show one type's binary, description, data folder and log file",
		Args:  exactArgs("TYPE"),
		RunE:  func(cmd *cobra.Command, args []string) error { return pluginInfoRun(cmd, f, out, args[0]) },
	})
	return cmd
}

// pluginJSON is one type as `anka plugin list|info` reports it.
type pluginJSON struct {
	Type         string   `json:"type"`
	Binary       string   `json:"binary,omitempty"`
	Source       string   `json:"source,omitempty"`
	Version      string   `json:"version,omitempty"`
	Protocols    []int    `json:"protocol_versions,omitempty"`
	SHA256       string   `json:"sha256,omitempty"`
	Pinned       string   `json:"pinned_sha256,omitempty"`
	Running      bool     `json:"running"`
	PID          int      `json:"pid,omitempty"`
	Description  string   `json:"description,omitempty"`
	Capabilities []string `json:"capabilities,omitempty"`
	Endpoints    []string `json:"endpoints,omitempty"`
	DataDir      string   `json:"data_dir,omitempty"`
	LogFile      string   `json:"log_file,omitempty"`
	Error        string   `json:"error,omitempty"`
}

// describe fills what the binary says about itself (`--describe`, no
// handshake) and where its state lives.
func describe(cmd *cobra.Command, stateDir string, fd plugins.Found, pin string) pluginJSON {
	p := pluginJSON{Type: fd.Type, Binary: fd.Path, Source: fd.Source, Pinned: pin,
		DataDir: plugins.DataDir(stateDir, fd.Path), LogFile: plugins.LogFile(stateDir, fd.Path)}
	if sum, err := plugins.FileSHA256(fd.Path); err == nil {
		p.SHA256 = sum
	}
	if ri, ok := plugins.Running(stateDir, fd.Path); ok {
		p.Running, p.PID = true, ri.Pid
	}
	info, err := host.Describe(cmd.Context(), host.Config{Path: fd.Path, SHA256: pin, PinName: "plugins." + fd.Type + ".sha256"})
	if err != nil {
		p.Error = err.Error()
		return p
	}
	p.Version, p.Protocols = info.Version, info.ProtocolVersions
	for _, t := range info.Types {
		if t.Name != fd.Type {
			continue
		}
		p.Description, p.Capabilities = t.Description, t.Capabilities
		for _, e := range t.Endpoints {
			p.Endpoints = append(p.Endpoints, string(e))
		}
	}
	if p.Description == "" && p.Error == "" {
		p.Error = fmt.Sprintf("%s does not serve type %q (it serves %s)", fd.Path, fd.Type, typeNames(info))
	}
	return p
}

func typeNames(info *sdk.InfoResponse) string {
	var names []string
	for _, t := range info.Types {
		names = append(names, t.Name)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func pluginListRun(cmd *cobra.Command, f *Factory, out *output) error {
	f.reviveDaemon(cmd)
	cfg, err := f.Config()
	if err != nil {
		return err
	}
	var list []pluginJSON
	for _, fd := range f.Finder(cfg).All() {
		list = append(list, describe(cmd, cfg.StateDir, fd, cfg.Plugins[fd.Type].SHA256))
	}
	return out.ok(list, func(w io.Writer) {
		if len(list) == 0 {
			fmt.Fprintf(w, "no plugin binaries found (looked beside anka and in %s)\n", cfg.PluginDir)
			return
		}
		rows := make([][]string, 0, len(list))
		for _, p := range list {
			state := "stopped"
			if p.Running {
				state = "running (pid " + strconv.Itoa(p.PID) + ")"
			}
			if p.Error != "" {
				state = "error: " + p.Error
			}
			rows = append(rows, []string{p.Type, p.Binary, dash(p.Version), protocols(p.Protocols), short(p.SHA256), state})
		}
		table(w, []string{"TYPE", "BINARY", "VERSION", "PROTOCOL", "SHA256", "STATE"}, rows)
	})
}

func pluginInfoRun(cmd *cobra.Command, f *Factory, out *output, typ string) error {
	cfg, err := f.Config()
	if err != nil {
		return err
	}
	fd, err := f.Finder(cfg).Find(typ)
	if err != nil {
		return err
	}
	p := describe(cmd, cfg.StateDir, fd, cfg.Plugins[typ].SHA256)
	if p.Error != "" && p.Version == "" {
		return errs.Unavailablef("plugin for type %q: %s", typ, p.Error)
	}
	return out.ok(p, func(w io.Writer) {
		table(w, nil, [][]string{
			{"type", p.Type}, {"description", dash(p.Description)},
			{"binary", p.Binary + " (" + p.Source + ")"}, {"version", dash(p.Version)},
			{"protocol", protocols(p.Protocols)}, {"sha256", dash(p.SHA256)}, {"pinned", dash(p.Pinned)},
			{"capabilities", dash(strings.Join(p.Capabilities, ", "))}, {"endpoints", dash(strings.Join(p.Endpoints, ", "))},
			{"running", strconv.FormatBool(p.Running)}, {"data_dir", p.DataDir}, {"log_file", p.LogFile},
		})
		if p.Error != "" {
			fmt.Fprintf(w, "warning: %s\n", p.Error)
		}
	})
}

func protocols(vs []int) string {
	if len(vs) == 0 {
		return "-"
	}
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = "v" + strconv.Itoa(v)
	}
	return strings.Join(s, ",")
}

func short(sum string) string {
	if len(sum) > 12 {
		return sum[:12]
	}
	return dash(sum)
}
