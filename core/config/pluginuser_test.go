package config

import (
	"strings"
	"testing"

	"github.com/anka-net/anka/core/errs"
)

// plugin_user binds like every key: default, file, env, flag.
func TestPluginUser(t *testing.T) {
	f := newFixture(t)
	if c := mustLoad(t, f.opts()); c.PluginUser != "anka-net" {
		t.Fatalf("default plugin_user %q, want anka-net", c.PluginUser)
	}
	writeFile(t, f.system, "plugin_user: netplug\n")
	if c := mustLoad(t, f.opts()); c.PluginUser != "netplug" {
		t.Fatalf("system file: %q", c.PluginUser)
	}
	f.env["ANKA_PLUGIN_USER"] = "990:991"
	if c := mustLoad(t, f.opts()); c.PluginUser != "990:991" {
		t.Fatalf("env: %q", c.PluginUser)
	}
	c := mustLoad(t, f.opts("--plugin-user=root"))
	if c.PluginUser != "root" || mustGet(t, c, "plugin_user").Source != SourceFlag {
		t.Fatalf("flag: %q from %v", c.PluginUser, mustGet(t, c, "plugin_user").Source)
	}
}

func TestPluginUserRefused(t *testing.T) {
	for _, v := range []string{"Anka", "9net", "a/b", "../x", "1:", ":1", "1:2:3", "-1:5", "4294967295:1", "a b", strings.Repeat("a", 33)} {
		t.Run(v, func(t *testing.T) {
			f := newFixture(t)
			f.env["ANKA_PLUGIN_USER"] = v
			_, err := Load(f.opts())
			if err == nil || !errs.Is(err, errs.Invalid) || !strings.Contains(err.Error(), "plugin_user") || !strings.Contains(err.Error(), "uid:gid") {
				t.Fatalf("plugin_user %q: %v", v, err)
			}
		})
	}
}
