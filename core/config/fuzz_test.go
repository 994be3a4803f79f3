package config

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// fuzzDir is a folder for the files of every run of one target: on tmpfs
// when there is one, as config set syncs what it writes.
func fuzzDir(f *testing.F) string {
	if d, err := os.MkdirTemp("/dev/shm", "anka-fuzz-"); err == nil {
		f.Cleanup(func() { os.RemoveAll(d) })
		return d
	}
	return f.TempDir()
}

// fuzzOptions reads the two files only: no flags, an empty environment.
func fuzzOptions(user, system string) Options {
	return Options{
		LookupEnv:  func(string) (string, bool) { return "", false },
		Environ:    func() []string { return nil },
		UserFile:   user,
		SystemFile: system,
	}
}

// FuzzLoad runs the whole loader over an arbitrary user and system file,
// as every anka command does at start. A refusal names the file it comes
// from; an accepted configuration is complete and crosses the CLI->daemon
// boundary (Snapshot, FromSnapshot) unchanged.
func FuzzLoad(f *testing.F) {
	f.Add([]byte("mtu: 9000\nlease_time: 1h\n"), []byte("state_dir: /var/lib/anka\n"))
	f.Add([]byte("start_address: 10.0.0.2\nend_address: 10.0.0.200\nsubnet_mask: 255.255.255.0\n"), []byte(""))
	f.Add([]byte("plugins:\n  shared:\n    path: /opt/anka-net-shared\n    sha256: "+strings.Repeat("AB", 32)+"\n"), []byte("plugins:\n  custom:\n"))
	f.Add([]byte("host_start_address: 192.168.64.5\n"), []byte("log_level: debug\n"))
	f.Add([]byte("mtu: [1]\n"), []byte("Bridge_Name: eth0\n"))
	f.Add([]byte("a: &x {b: 1}\nc: *x\n"), []byte("\t- x"))
	dir := fuzzDir(f)
	f.Fuzz(func(t *testing.T, user, system []byte) {
		uf, sf := filepath.Join(dir, "user.yaml"), filepath.Join(dir, "system.yaml")
		if err := os.WriteFile(uf, user, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(sf, system, 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := Load(fuzzOptions(uf, sf))
		if err != nil {
			if !strings.Contains(err.Error(), uf) && !strings.Contains(err.Error(), sf) {
				t.Fatalf("error names neither file: %v", err)
			}
			return
		}
		if c.MTU == 0 || c.LeaseTime <= 0 || c.PortFwdBase == 0 || !c.Shared.Prefix.IsValid() || !c.Host.Prefix.IsValid() {
			t.Fatalf("accepted an incomplete configuration: %+v", c)
		}
		for _, e := range c.Entries() {
			if (e.Source == SourceUser && e.File != uf) || (e.Source == SourceSystem && e.File != sf) {
				t.Fatalf("%s: origin %s is not the file it came from", e.Key, e.Origin())
			}
		}
		c2, err := FromSnapshot(c.Snapshot())
		if err != nil {
			t.Fatalf("the daemon refuses what the CLI accepted: %v", err)
		}
		if !reflect.DeepEqual(c.Snapshot(), c2.Snapshot()) {
			t.Fatalf("snapshot changed on the way:\n%+v\n%+v", c.Snapshot(), c2.Snapshot())
		}
	})
}

// FuzzSet runs `anka config set` on an arbitrary existing user file. It
// either refuses, leaving the file byte for byte as it was, or writes a
// file that loads with the new value and every other key the user had.
func FuzzSet(f *testing.F) {
	f.Add([]byte("# my settings\nmtu: 9000 # jumbo\nbridge_name: eth0\n"), uint8(0), "1400")
	f.Add([]byte(""), uint8(3), "10.0.0.2")
	f.Add([]byte("plugins:\n"), uint8(20), "/opt/anka-net-shared")
	f.Add([]byte("plugins: 1\nlog_level: warn\n"), uint8(21), strings.Repeat("a", 64))
	f.Add([]byte("- a\n- b\n"), uint8(1), "auto")
	f.Add([]byte("lease_time: 3600\n"), uint8(9), "30s")
	keys := append(Keys(), PluginKey("shared", fieldPath), PluginKey("shared", fieldSHA256), PluginKey("x-1", fieldPath))
	dir := fuzzDir(f)
	f.Fuzz(func(t *testing.T, old []byte, k uint8, value string) {
		key := keys[int(k)%len(keys)]
		uf, sf := filepath.Join(dir, "user.yaml"), filepath.Join(dir, "none.yaml")
		if err := os.WriteFile(uf, old, 0o644); err != nil {
			t.Fatal(err)
		}
		before, beforeErr := Load(fuzzOptions(uf, sf))
		err := Set(fuzzOptions(uf, sf), key, value)
		now, rerr := os.ReadFile(uf)
		if rerr != nil {
			t.Fatal(rerr)
		}
		if err != nil {
			if !bytes.Equal(now, old) {
				t.Fatalf("refused (%v) but changed the file:\n%q\n%q", err, old, now)
			}
			return
		}
		after, err := Load(fuzzOptions(uf, sf))
		if err != nil {
			t.Fatalf("set %s=%q wrote a file that does not load: %v\n%s", key, value, err, now)
		}
		want, _ := normalize(key, value)
		if e, _ := after.Get(key); e.Value != want || e.Source != SourceUser {
			t.Fatalf("set %s=%q, read back %+v", key, value, e)
		}
		if beforeErr != nil {
			return
		}
		for _, e := range before.Entries() {
			if e.Source != SourceUser || e.Key == key {
				continue
			}
			if got, _ := after.Get(e.Key); got.Value != e.Value || got.Source != SourceUser {
				t.Fatalf("set %s lost %s=%q (now %+v)", key, e.Key, e.Value, got)
			}
		}
	})
}
