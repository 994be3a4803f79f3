// Package plugins finds the binaries that serve network types. The plugin
// host (launch, handshake, restart) builds on this.
package plugins

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/sdk"
)

// BuiltinTypes are the network types this project ships. A card may name
// them before their plugin is installed; any other type needs a binary.
var BuiltinTypes = []string{"bridge", "disconnected", "host", "shared", "static"}

// ServedBy names built-in types that another type's binary serves: the
// static type is an address on the shared network, so anka-net-shared
// serves it (and plugins.shared.path moves both), unless a binary or a
// path of its own is there.
var ServedBy = map[string]string{"static": "shared"}

// ErrNoPlugin is in the chain of Find's error when no binary serves a type
// (as opposed to a configured binary that is broken).
var ErrNoPlugin = errors.New("no plugin serves this network type")

// Found is one binary serving one type, and why it was chosen.
type Found struct {
	Type   string
	Path   string
	Source string // "config", "beside anka", "plugin_dir"
}

// Finder searches, highest first: the configured path of a type, the folder
// of the anka binary, then plugin_dir.
type Finder struct {
	Configured map[string]string // type -> path from plugins.<type>.path
	SelfDir    string            // folder of the running anka binary
	PluginDir  string
}

// Find returns the binary serving typ, or an Unavailable error that says
// where it looked.
func (f Finder) Find(typ string) (Found, error) {
	if err := sdk.ValidateTypeName(typ); err != nil {
		return Found{}, errs.Invalidf("%v", err)
	}
	if p := f.Configured[typ]; p != "" {
		if err := executable(p); err != nil {
			return Found{}, errs.Unavailablef("plugins.%s.path is %s, but %v: fix the path with `anka config plugins.%s.path PATH`", typ, p, err, typ)
		}
		return Found{Type: typ, Path: p, Source: "config"}, nil
	}
	var looked []string
	for _, c := range f.candidates() {
		p := filepath.Join(c.dir, sdk.BinaryName(typ))
		looked = append(looked, p)
		if executable(p) == nil {
			return Found{Type: typ, Path: p, Source: c.source}, nil
		}
	}
	if host := ServedBy[typ]; host != "" {
		fd, err := f.Find(host)
		if err == nil {
			fd.Type = typ
			return fd, nil
		}
		if !errors.Is(err, ErrNoPlugin) {
			return Found{}, err
		}
		for _, c := range f.candidates() {
			looked = append(looked, filepath.Join(c.dir, sdk.BinaryName(host)))
		}
	}
	return Found{}, &errs.Error{Kind: errs.Unavailable, Err: ErrNoPlugin,
		Msg: fmt.Sprintf("no plugin serves network type %q: looked for %s; install it (make install) or set plugins.%s.path", typ, strings.Join(looked, " and "), typ)}
}

type candidate struct{ dir, source string }

func (f Finder) candidates() []candidate {
	var cs []candidate
	if f.SelfDir != "" {
		cs = append(cs, candidate{f.SelfDir, "beside anka"})
	}
	if f.PluginDir != "" && f.PluginDir != f.SelfDir {
		cs = append(cs, candidate{f.PluginDir, "plugin_dir"})
	}
	return cs
}

// All lists every type that has a binary, one entry per type (the winner).
func (f Finder) All() []Found {
	types := map[string]bool{}
	for t := range f.Configured {
		types[t] = true
	}
	for _, c := range f.candidates() {
		ents, _ := os.ReadDir(c.dir)
		for _, e := range ents {
			t, ok := strings.CutPrefix(e.Name(), sdk.BinaryPrefix)
			if ok && sdk.ValidateTypeName(t) == nil {
				types[t] = true
			}
		}
	}
	var out []Found
	for t := range types {
		if fd, err := f.Find(t); err == nil {
			out = append(out, fd)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Type < out[j].Type })
	return out
}

// Known accepts a built-in type or one with an installed binary, so a typo
// in `-t` is caught when the card is set rather than at start.
func (f Finder) Known(typ string) error {
	if err := sdk.ValidateTypeName(typ); err != nil {
		return errs.Invalidf("%v", err)
	}
	for _, b := range BuiltinTypes {
		if b == typ {
			return nil
		}
	}
	if _, err := f.Find(typ); err == nil {
		return nil
	}
	known := append([]string{}, BuiltinTypes...)
	for _, fd := range f.All() {
		if !contains(known, fd.Type) {
			known = append(known, fd.Type)
		}
	}
	sort.Strings(known)
	return errs.Invalidf("unknown network type %q: use one of %s, or install a plugin binary %s", typ, strings.Join(known, ", "), sdk.BinaryName(typ))
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func executable(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if st.IsDir() || st.Mode().Perm()&0o111 == 0 {
		return errs.Invalidf("%s is not an executable file", p)
	}
	return nil
}

// SelfDir is the folder of the running binary, with symlinks resolved.
func SelfDir() string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	if r, err := filepath.EvalSymlinks(exe); err == nil {
		exe = r
	}
	return filepath.Dir(exe)
}
