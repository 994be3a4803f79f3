package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	badOnce sync.Once
	badBin  string
	badErr  error
)

// badPlugin builds testdata/badplugin (type "bad": hangs, lies or exits
// in the call its card options name) once per test binary.
func badPlugin(t *testing.T) string {
	t.Helper()
	badOnce.Do(func() {
		dir, err := os.MkdirTemp("", "anka-e2e-bad-")
		if err != nil {
			badErr = err
			return
		}
		// The plugin user must reach the binary.
		if err := os.Chmod(dir, 0o755); err != nil {
			badErr = err
			return
		}
		badBin = filepath.Join(dir, "anka-net-bad")
		out, err := exec.Command("go", "build", "-o", badBin, "./testdata/badplugin").CombinedOutput()
		if err != nil {
			badErr = err
			badBin = string(out)
		}
	})
	if badErr != nil {
		t.Fatalf("building the bad plugin: %v: %s", badErr, badBin)
	}
	return badBin
}

func (e *env) daemonPID() int {
	b, _ := os.ReadFile(filepath.Join(e.dir, "state", "daemon.pid"))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// A plugin that hangs, answers garbage or exits mid-call costs the
// command that called it a bounded wait and a sentence naming the plugin
// binary and the call; the daemon stays up and other VMs on other types
// start and stop meanwhile.
func TestBadPlugin(t *testing.T) {
	bad := badPlugin(t)
	e := newEnv(t)
	const timeout = 3 * time.Second
	e.extra = []string{"ANKA_PLUGINS_BAD_PATH=" + bad, "ANKA_PLUGIN_TIMEOUT=" + timeout.String()}
	t.Cleanup(func() { e.run("daemon", "stop", "--all") })
	e.ok("create", "good", "--runtime", "external")
	e.ok("modify", "good", "set", "network-card", "-t", "segment", "-o", "segment=lab")
	e.ok("create", "x", "--runtime", "external")
	e.ok("modify", "x", "set", "network-card", "-t", "bad", "-o", "attach=hang")
	daemon := e.daemonPID()
	if daemon == 0 {
		t.Fatal("no daemon after the first modify")
	}
	logFile := filepath.Join(e.dir, "state", "plugins", "anka-net-bad", "plugin.log")
	pending := func(call string) func() bool {
		return func() bool {
			b, _ := os.ReadFile(logFile)
			return bytes.Contains(b, []byte("hanging in "+call))
		}
	}
	// wants checks a failed command's exit code and words.
	wants := func(what string, r result, code int, words ...string) {
		t.Helper()
		if r.code != code {
			t.Errorf("%s: exit %d, want %d\n%s", what, r.code, code, r.stderr)
		}
		for _, w := range words {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("%s: the error does not say %q:\n%s", what, w, r.stderr)
			}
		}
	}
	daemonUp := func(what string) {
		t.Helper()
		if d := e.daemonPID(); d != daemon || !alive(d) {
			t.Fatalf("after %s the daemon is pid %d (alive %v), was %d", what, d, alive(d), daemon)
		}
	}

	// Attach hangs: the start gives up after the timeout while another
	// VM on another type starts, shows and stops.
	began := time.Now()
	hung := make(chan result, 1)
	go func() { hung <- e.run("start", "x") }()
	waitFor(t, "Attach to hang", 10*time.Second, pending("Attach"))
	e.ok("start", "good")
	if out := e.ok("show", "good"); !strings.Contains(out, "running") {
		t.Fatalf("show of the good VM while a call hangs:\n%s", out)
	}
	e.ok("stop", "good")
	var r result
	select {
	case r = <-hung:
	case <-time.After(timeout + 30*time.Second):
		t.Fatal("a hung Attach was not timed out")
	}
	took := time.Since(began)
	t.Logf("hung Attach: start failed after %v (plugin_timeout %v): %s", took.Round(10*time.Millisecond), timeout, strings.TrimSpace(r.stderr))
	wants("hung Attach", r, 7, bad, "Attach", "within 3s", "plugin_timeout", logFile)
	daemonUp("a hung Attach")
	if out := e.ok("show", "x"); !strings.Contains(out, "stopped") {
		t.Fatalf("the VM whose Attach hung is not stopped:\n%s", out)
	}

	// Attach answers garbage: refused, named.
	e.ok("modify", "x", "set", "network-card", "-t", "bad", "-o", "attach=garbage")
	r = e.run("start", "x")
	t.Logf("garbage Attach: %s", strings.TrimSpace(r.stderr))
	wants("garbage Attach", r, 7, bad, "answered Attach with", "carrier-pigeon")

	// The plugin exits mid-call: named; the daemon starts it again.
	e.ok("modify", "x", "set", "network-card", "-t", "bad", "-o", "attach=exit")
	r = e.run("start", "x")
	t.Logf("exit in Attach: %s", strings.TrimSpace(r.stderr))
	wants("exit in Attach", r, 7, bad, "exited during Attach")
	daemonUp("a plugin exiting mid-call")
	waitFor(t, "the daemon to start the bad plugin again", 15*time.Second, func() bool {
		for _, p := range e.daemonStatus().Plugins {
			if p.Binary == bad && p.Running && p.Restarts >= 1 {
				return true
			}
		}
		return false
	})

	// Status hangs or lies: show reports the network error and answers.
	e.ok("modify", "x", "set", "network-card", "-t", "bad", "-o", "attach=", "-o", "status=hang") // -o KEY= removes KEY
	e.ok("start", "x")
	began = time.Now()
	shown := make(chan result, 1)
	go func() { shown <- e.run("-j", "show", "x") }()
	waitFor(t, "Status to hang", 10*time.Second, pending("Status"))
	e.ok("start", "good")
	e.ok("stop", "good")
	r = <-shown
	t.Logf("hung Status: show answered after %v", time.Since(began).Round(10*time.Millisecond))
	var st struct {
		Body struct {
			Status      string
			NetworkCard struct {
				Error string `json:"network_error"`
			} `json:"network_card"`
		}
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || r.code != 0 {
		t.Fatalf("show with a hung Status: exit %d %v\n%s%s", r.code, err, r.stdout, r.stderr)
	}
	if st.Body.Status != "running" || !strings.Contains(st.Body.NetworkCard.Error, "did not answer Status") || !strings.Contains(st.Body.NetworkCard.Error, bad) {
		t.Fatalf("show with a hung Status: %+v", st.Body)
	}
	e.ok("stop", "x")
	e.ok("modify", "x", "set", "network-card", "-t", "bad", "-o", "status=garbage")
	e.ok("start", "x")
	out := e.ok("-j", "show", "x")
	st.Body.NetworkCard.Error = ""
	json.Unmarshal([]byte(out), &st)
	t.Logf("garbage Status: %s", st.Body.NetworkCard.Error)
	if !strings.Contains(st.Body.NetworkCard.Error, "answered Status with") || !strings.Contains(st.Body.NetworkCard.Error, "999.1.2.3") {
		t.Fatalf("show with a garbage Status: %s", out)
	}
	e.ok("stop", "x")

	// Validate hangs: the modify gives up, vm.yaml is as it was, and the
	// store lock it held is free again.
	before := e.vmFile("x")
	r = e.run("modify", "x", "set", "network-card", "-t", "bad", "-o", "validate=hang")
	wants("hung Validate", r, 7, bad, "Validate", "within 3s")
	if !bytes.Equal(before, e.vmFile("x")) {
		t.Fatal("a modify whose Validate hung changed vm.yaml")
	}
	e.ok("modify", "good", "add", "port-forwarding", "p", "-g", "80")
	daemonUp("every misbehaviour")
}

// A corrupt vm.yaml, config file, MAC pool or plugin lease store gives an
// error naming the file (its full path) and what to do; what does not
// depend on the broken file keeps working.
func TestCorruptFiles(t *testing.T) {
	e := newEnv(t)
	t.Cleanup(func() { e.run("daemon", "stop", "--all") })
	state := filepath.Join(e.dir, "state")
	e.ok("create", "good", "--runtime", "external")
	e.ok("modify", "good", "set", "network-card", "-t", "segment")
	e.ok("create", "broken", "--runtime", "external")
	goodWorks := func(what string) {
		t.Helper()
		if r := e.run("start", "good"); r.code != 0 {
			t.Fatalf("with %s, another VM does not start: %s", what, r.stderr)
		}
		if r := e.run("stop", "good"); r.code != 0 {
			t.Fatalf("with %s, another VM does not stop: %s", what, r.stderr)
		}
	}
	vmFile := filepath.Join(state, "vms", "broken", "vm.yaml")
	orig, _ := os.ReadFile(vmFile)
	for _, c := range []struct{ name, content string }{
		{"garbage", "\x00\xff\xfe garbage {{{ ]]]"},
		{"truncated", string(orig[:len(orig)/2])},
		{"wrong types", strings.Replace(string(orig), "cpu: 1", "cpu: [one, two]", 1)},
		{"empty", ""},
	} {
		os.WriteFile(vmFile, []byte(c.content), 0o644)
		r := e.run("show", "broken")
		t.Logf("vm.yaml %s: show: %s", c.name, strings.TrimSpace(r.stderr))
		if r.code == 0 || !strings.Contains(r.stderr, vmFile) || !strings.Contains(r.stderr, "fix or restore") {
			t.Errorf("vm.yaml %s: show exit %d: %s", c.name, r.code, r.stderr)
		}
		r = e.run("list")
		if r.code != 0 || !strings.Contains(r.stdout, "good") || !strings.Contains(r.stderr, vmFile) {
			t.Errorf("vm.yaml %s: list exit %d, should list good and warn about %s:\n%s%s", c.name, r.code, vmFile, r.stdout, r.stderr)
		}
		goodWorks("a " + c.name + " vm.yaml")
	}
	os.WriteFile(vmFile, orig, 0o644)
	e.ok("show", "broken")

	// Config files: every command needs the configuration (it may move
	// the state dir), so each refuses, naming the file and the fix.
	for _, f := range []string{filepath.Join(e.dir, "user.yaml"), filepath.Join(e.dir, "system.yaml")} {
		for _, content := range []string{"mtu: [1500\n", "\x00\x01binary", "mtu: many\n", "no_such_key: 1\n"} {
			os.WriteFile(f, []byte(content), 0o644)
			r := e.run("list")
			t.Logf("config %s %q: %s", filepath.Base(f), content, strings.TrimSpace(r.stderr))
			if r.code != 2 || !strings.Contains(r.stderr, f) {
				t.Errorf("config %s with %q: exit %d: %s", f, content, r.code, r.stderr)
			}
		}
		os.Remove(f)
		goodWorks("the config file repaired")
	}

	// The MAC pool.
	pool := filepath.Join(state, "macpool.yaml")
	poolOrig, err := os.ReadFile(pool)
	if err != nil {
		t.Fatalf("no MAC pool after a start: %v", err)
	}
	os.WriteFile(pool, []byte("version: 1\nowners: [not, a, map\n"), 0o644)
	r := e.run("start", "good")
	t.Logf("corrupt macpool.yaml: start: %s", strings.TrimSpace(r.stderr))
	if r.code == 0 || !strings.Contains(r.stderr, pool) {
		t.Errorf("start with a corrupt MAC pool: exit %d: %s", r.code, r.stderr)
	}
	os.WriteFile(pool, poolOrig, 0o644)
	goodWorks("the MAC pool restored")

	// A plugin's lease store: the shared plugin refuses to start and the
	// error, relayed by the daemon, names the file.
	e.ok("create", "leased", "--runtime", "external")
	e.ok("start", "leased") // card 0 is shared: launches the shared plugin
	e.ok("stop", "leased")
	e.ok("daemon", "stop", "--all")
	dbs, _ := filepath.Glob(filepath.Join(state, "plugins", "anka-net-shared", "*-leases.db"))
	if len(dbs) == 0 {
		t.Fatal("the shared plugin made no lease store")
	}
	db := dbs[0]
	dbOrig, _ := os.ReadFile(db)
	garbage := bytes.Repeat([]byte("not a bbolt page "), 1024)
	os.WriteFile(db, garbage, 0o600)
	r = e.run("start", "leased")
	t.Logf("corrupt lease store: start: %s", strings.TrimSpace(r.stderr))
	if r.code == 0 || !strings.Contains(r.stderr, db) {
		t.Errorf("start with a corrupt lease store: exit %d, want an error naming %s: %s", r.code, db, r.stderr)
	}
	if got, _ := os.ReadFile(db); !bytes.Equal(got, garbage) {
		t.Error("the corrupt lease store was changed: it is the user's to inspect or move aside")
	}
	goodWorks("a corrupt lease store of another type")
	os.WriteFile(db, dbOrig, 0o600)
	e.ok("start", "leased")
	e.ok("stop", "leased")
}
