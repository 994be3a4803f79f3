package plugins

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/anka-net/anka/core/errs"
)

func writeExe(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFindPrecedence(t *testing.T) {
	self, pdir, other := t.TempDir(), t.TempDir(), t.TempDir()
	inPdir := writeExe(t, pdir, "anka-net-shared")
	f := Finder{SelfDir: self, PluginDir: pdir}
	if fd, err := f.Find("shared"); err != nil || fd.Path != inPdir || fd.Source != "plugin_dir" {
		t.Fatalf("plugin_dir: %+v %v", fd, err)
	}
	beside := writeExe(t, self, "anka-net-shared")
	if fd, _ := f.Find("shared"); fd.Path != beside {
		t.Fatalf("beside anka should win over plugin_dir: %+v", fd)
	}
	cfg := writeExe(t, other, "my-shared")
	f.Configured = map[string]string{"shared": cfg}
	if fd, _ := f.Find("shared"); fd.Path != cfg || fd.Source != "config" {
		t.Fatalf("config should win: %+v", fd)
	}
}

func TestFindErrors(t *testing.T) {
	f := Finder{PluginDir: t.TempDir()}
	_, err := f.Find("shared")
	if !errs.Is(err, errs.Unavailable) || !errors.Is(err, ErrNoPlugin) || !strings.Contains(err.Error(), "anka-net-shared") {
		t.Fatalf("missing plugin: %v", err)
	}
	f.Configured = map[string]string{"shared": "/nonexistent/x"}
	if _, err := f.Find("shared"); err == nil || errors.Is(err, ErrNoPlugin) || !strings.Contains(err.Error(), "plugins.shared.path") {
		t.Fatalf("bad configured path: %v", err)
	}
	noexec := filepath.Join(f.PluginDir, "anka-net-host")
	os.WriteFile(noexec, []byte("x"), 0o644)
	if _, err := f.Find("host"); err == nil {
		t.Fatal("non-executable file accepted")
	}
}

func TestKnownAndAll(t *testing.T) {
	pdir := t.TempDir()
	writeExe(t, pdir, "anka-net-vlan")
	writeExe(t, pdir, "anka-net-Bad_Name")
	writeExe(t, pdir, "unrelated")
	f := Finder{PluginDir: pdir}
	for _, typ := range []string{"shared", "host", "bridge", "disconnected", "static", "vlan"} {
		if err := f.Known(typ); err != nil {
			t.Errorf("Known(%s): %v", typ, err)
		}
	}
	err := f.Known("wifi")
	if !errs.Is(err, errs.Invalid) || !strings.Contains(err.Error(), "vlan") || !strings.Contains(err.Error(), `"wifi"`) {
		t.Fatalf("unknown type error should name it and list known ones: %v", err)
	}
	all := f.All()
	if len(all) != 1 || all[0].Type != "vlan" {
		t.Fatalf("All: %+v", all)
	}
}

// static is served by the shared binary unless it has its own.
func TestStaticServedByShared(t *testing.T) {
	self, cfgDir := t.TempDir(), t.TempDir()
	shared := filepath.Join(self, "anka-net-shared")
	os.WriteFile(shared, []byte("#!/bin/sh\n"), 0o755)
	f := Finder{SelfDir: self}
	fd, err := f.Find("static")
	if err != nil || fd.Path != shared || fd.Type != "static" {
		t.Fatalf("static: %+v %v", fd, err)
	}
	// plugins.shared.path moves both.
	moved := filepath.Join(cfgDir, "my-shared")
	os.WriteFile(moved, []byte("#!/bin/sh\n"), 0o755)
	f.Configured = map[string]string{"shared": moved}
	if fd, err := f.Find("static"); err != nil || fd.Path != moved || fd.Source != "config" {
		t.Fatalf("static with plugins.shared.path: %+v %v", fd, err)
	}
	// Its own binary wins.
	own := filepath.Join(self, "anka-net-static")
	os.WriteFile(own, []byte("#!/bin/sh\n"), 0o755)
	f.Configured = nil
	if fd, err := f.Find("static"); err != nil || fd.Path != own {
		t.Fatalf("static with its own binary: %+v %v", fd, err)
	}
	// Neither: the error names both places looked.
	if _, err := (Finder{SelfDir: t.TempDir()}).Find("static"); !errors.Is(err, ErrNoPlugin) || !strings.Contains(err.Error(), "anka-net-shared") {
		t.Fatalf("no binary: %v", err)
	}
}
