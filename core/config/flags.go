package config

import (
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/pflag"
)

// RegisterFlags adds --config and one string flag per key to fs (the root
// command's persistent flags): the static keys, the plugin keys of the
// built-in types, and the plugin keys of any type named in args as
// --plugins-<type>-path or --plugins-<type>-sha256 (with or without
// =value), so those parse before cobra knows the type exists. Flags carry
// no default: Load validates them, so a bad value is reported with the same
// sentence whatever layer it came from. Names already in fs are skipped.
func RegisterFlags(fs *pflag.FlagSet, args []string) {
	add := func(name, usage string) {
		if fs.Lookup(name) == nil {
			fs.String(name, "", usage)
		}
	}
	add(ConfigFlag, fmt.Sprintf("user config file (env %s; default $XDG_CONFIG_HOME/anka/config.yaml or ~/.config/anka/config.yaml)", EnvConfig))
	for _, k := range Keys() {
		d := staticKeys[k]
		add(FlagName(k), fmt.Sprintf("%s (env %s; default %s)", d.usage, EnvName(k), d.def))
	}
	types := map[string]bool{}
	for _, t := range builtinPluginTypes {
		types[t] = true
	}
	for _, t := range ArgPluginTypes(args) {
		types[t] = true
	}
	sorted := make([]string, 0, len(types))
	for t := range types {
		sorted = append(sorted, t)
	}
	sort.Strings(sorted)
	for _, t := range sorted {
		add(FlagName(PluginKey(t, fieldPath)), fmt.Sprintf("absolute path of the plugin binary serving type %s (env %s)", t, EnvName(PluginKey(t, fieldPath))))
		add(FlagName(PluginKey(t, fieldSHA256)), fmt.Sprintf("SHA-256 the %s plugin binary must have (env %s)", t, EnvName(PluginKey(t, fieldSHA256))))
	}
}

// ArgPluginTypes returns the types named by plugin flags in args, up to a
// "--" terminator. A malformed name is left for cobra to report as an
// unknown flag.
func ArgPluginTypes(args []string) []string {
	var types []string
	for _, a := range args {
		if a == "--" {
			break
		}
		name, ok := strings.CutPrefix(a, "--")
		if !ok {
			continue
		}
		name, _, _ = strings.Cut(name, "=")
		if k, ok := pluginFlagKey(name); ok {
			t, _, _ := parsePluginKey(k)
			types = append(types, t)
		}
	}
	return types
}
