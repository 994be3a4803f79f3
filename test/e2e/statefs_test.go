package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A full, then read-only, state filesystem (a 2 MiB tmpfs mounted in the
// test's own mount namespace): create, modify, config set and start fail
// with an error naming the path and the cause, and vm.yaml, the config
// file, the MAC pool and the plugin's lease store keep their old bytes.
func TestFullAndReadOnlyStateFS(t *testing.T) {
	if os.Getenv("ANKA_E2E_ISOLATED") == "" {
		t.Skip("needs the mount namespace the e2e binary makes as root")
	}
	e := newEnv(t)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "anka-statefs", e.dir).CombinedOutput(); err != nil {
		t.Fatalf("mounting a tmpfs on %s: %v: %s", e.dir, err, out)
	}
	state := filepath.Join(e.dir, "state")
	t.Cleanup(func() {
		exec.Command("mount", "-o", "remount,rw", e.dir).Run()
		e.run("daemon", "stop", "--all")
		killPlugins(state)
		exec.Command("umount", "-l", e.dir).Run()
	})
	e.ok("create", "vm1", "--runtime", "external") // card 0: shared
	e.ok("modify", "vm1", "add", "port-forwarding", "ssh", "-g", "22", "-p", "2222")
	e.ok("config", "portfwd_base", "20000")
	e.ok("start", "vm1") // the shared plugin makes its lease store
	e.ok("stop", "vm1")
	dbs, _ := filepath.Glob(filepath.Join(state, "plugins", "anka-net-shared", "*-leases.db"))
	if len(dbs) == 0 {
		t.Fatal("the shared plugin made no lease store")
	}
	files := []string{filepath.Join(state, "vms", "vm1", "vm.yaml"), filepath.Join(e.dir, "user.yaml"), filepath.Join(state, "macpool.yaml"), dbs[0]}
	old := map[string][]byte{}
	snap := func() {
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil || len(b) == 0 {
				t.Fatalf("%s: %v (%d bytes)", f, err, len(b))
			}
			old[f] = b
		}
	}
	snap()
	whole := func(when string) {
		t.Helper()
		for _, f := range files {
			if b, _ := os.ReadFile(f); !bytes.Equal(b, old[f]) {
				t.Fatalf("%s: %s changed (%d bytes, was %d)", when, f, len(b), len(old[f]))
			}
		}
		// And they still parse: anka reads vm.yaml, the config, the pool
		// (list needs no daemon, so it works on a read-only state dir).
		var list struct {
			Body []struct{ Name, Status string }
		}
		r := e.run("-j", "list")
		json.Unmarshal([]byte(r.stdout), &list)
		if r.code != 0 || len(list.Body) != 1 || list.Body[0].Name != "vm1" || list.Body[0].Status != "stopped" {
			t.Fatalf("%s: list: exit %d %+v %s", when, r.code, list.Body, r.stderr)
		}
	}
	attempts := []struct {
		name string
		args []string
	}{
		{"create", []string{"create", "vm2", "--runtime", "external"}},
		{"modify", []string{"modify", "vm1", "add", "port-forwarding", "web", "-g", "80", "-p", "8080"}},
		{"config set", []string{"config", "portfwd_base", "30000"}},
		{"start", []string{"start", "vm1"}},
	}
	try := func(fs, cause string, paths ...string) {
		t.Helper()
		for _, a := range attempts {
			r := e.run(a.args...)
			t.Logf("%s filesystem: %s: exit %d: %s", fs, a.name, r.code, strings.TrimSpace(r.stderr))
			if r.code == 0 {
				t.Errorf("%s filesystem: %s succeeded", fs, a.name)
				continue
			}
			if !strings.Contains(r.stderr, cause) {
				t.Errorf("%s filesystem: %s does not give the cause %q: %s", fs, a.name, cause, r.stderr)
			}
			named := false
			for _, p := range paths {
				named = named || strings.Contains(r.stderr, p)
			}
			if !named {
				t.Errorf("%s filesystem: %s names none of %v: %s", fs, a.name, paths, r.stderr)
			}
			whole(fs + " filesystem, after " + a.name)
		}
		if _, err := os.Stat(filepath.Join(state, "vms", "vm2")); err == nil {
			t.Errorf("%s filesystem: a failed create left vm2", fs)
		}
	}

	// Full: one file takes every free block.
	fill, err := os.Create(filepath.Join(e.dir, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := fill.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	for {
		if _, err := fill.Write(chunk[:512]); err != nil {
			break
		}
	}
	fill.Close()
	try("full", "no space left", state, filepath.Join(e.dir, "user.yaml"))

	// Read-only: no file may be open for writing, so the daemon and the
	// plugins (logs, the lease store) stop first.
	os.Remove(filepath.Join(e.dir, "fill"))
	e.ok("daemon", "stop", "--all")
	snap()
	// The daemon answers the stop before its process (which holds
	// daemon.log as stdout) has exited: poll.
	waitFor(t, "the state filesystem to remount read-only (open: see openUnder)", 10*time.Second, func() bool {
		if exec.Command("mount", "-o", "remount,ro", e.dir).Run() == nil {
			return true
		}
		t.Logf("still open under the state filesystem: %v", openUnder(e.dir))
		return false
	})
	try("read-only", "read-only", state, filepath.Join(e.dir, "user.yaml"))

	// Writable again: everything works as before.
	if out, err := exec.Command("mount", "-o", "remount,rw", e.dir).CombinedOutput(); err != nil {
		t.Fatalf("remounting read-write: %v: %s", err, out)
	}
	e.ok("modify", "vm1", "add", "port-forwarding", "web", "-g", "80", "-p", "8080")
	e.ok("start", "vm1")
	e.ok("stop", "vm1")
}

// openUnder lists the processes with a file under dir open (why a
// remount read-only is refused).
func openUnder(dir string) []string {
	var out []string
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		if target, err := os.Readlink(fd); err == nil && strings.HasPrefix(target, dir) {
			comm, _ := os.ReadFile(filepath.Join(filepath.Dir(filepath.Dir(fd)), "comm"))
			out = append(out, strings.TrimSpace(string(comm))+" "+fd+" -> "+target)
		}
	}
	return out
}
