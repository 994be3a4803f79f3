package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/host"
)

// envProbe makes the test binary a probe run as the plugin user: it
// tries each access it is given (JSON) and prints what happened.
const envProbe = "ANKA_E2E_PROBE"

type access struct {
	Op   string `json:"op"` // read, write (a new file in the folder), list, dial
	Path string `json:"path"`
}

// init, not TestMain: the probe must not re-run itself isolated or
// build binaries.
func init() {
	if s := os.Getenv(envProbe); s != "" {
		var as []access
		if err := json.Unmarshal([]byte(s), &as); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		out := map[string]string{}
		for _, a := range as {
			out[a.Op+" "+a.Path] = probe(a)
		}
		json.NewEncoder(os.Stdout).Encode(out)
		os.Exit(0)
	}
}

func probe(a access) string {
	var err error
	switch a.Op {
	case "read":
		var f *os.File
		if f, err = os.Open(a.Path); err == nil {
			_, err = f.Read(make([]byte, 1))
			if errors.Is(err, io.EOF) {
				err = nil
			}
			f.Close()
		}
	case "write":
		p := filepath.Join(a.Path, "probe-"+strconv.Itoa(os.Getpid()))
		if err = os.WriteFile(p, []byte("x"), 0o600); err == nil {
			err = os.Remove(p)
		}
	case "list":
		_, err = os.ReadDir(a.Path)
	case "dial":
		var c net.Conn
		if c, err = net.Dial("unix", a.Path); err == nil {
			c.Close()
		}
	default:
		err = fmt.Errorf("unknown op %q", a.Op)
	}
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, syscall.EACCES):
		return "EACCES"
	}
	return err.Error()
}

// asPluginUser runs the probe with the plugin's credentials (uid, gid,
// no supplementary groups) and returns its findings.
func asPluginUser(t *testing.T, as []access) map[string]string {
	t.Helper()
	// The test binary sits in go test's private folder: the plugin user
	// runs a copy beside the plugins.
	bin := filepath.Join(filepath.Dir(builtBin), "e2e-probe")
	if _, err := os.Stat(bin); err != nil {
		src, err := os.ReadFile("/proc/self/exe")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(bin, src, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := json.Marshal(as)
	cmd := exec.Command(bin)
	cmd.Env = []string{envProbe + "=" + string(b)}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: pluginUID, Gid: pluginUID, Groups: []uint32{}}}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("probe as uid %d: %v %s", pluginUID, err, out)
	}
	got := map[string]string{}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("probe said %q: %v", out, err)
	}
	return got
}

// procStatus is /proc/PID/status as fields.
func procStatus(t *testing.T, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	st := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			st[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return st
}

// checkPluginProcess: the plugin runs as the plugin user, no groups, and
// holds exactly caps (effective, permitted, ambient and bounding).
func checkPluginProcess(t *testing.T, stateDir, binary string, caps []string) {
	t.Helper()
	pid := reattachPID(filepath.Join(stateDir, "plugins", binary, "reattach.json"))
	if pid <= 0 || !alive(pid) {
		t.Fatalf("%s is not running (pid %d)", binary, pid)
	}
	st := procStatus(t, pid)
	ids := strings.TrimSpace(strings.Repeat(strconv.Itoa(pluginUID)+" ", 4))
	if st["Uid"] != ids || st["Gid"] != ids || st["Groups"] != "" {
		t.Errorf("%s (pid %d) runs as Uid %q Gid %q Groups %q; want %s and no groups", binary, pid, st["Uid"], st["Gid"], st["Groups"], ids)
	}
	want, err := host.CapMask(caps)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"CapEff", "CapPrm", "CapAmb", "CapBnd"} {
		got, err := strconv.ParseUint(st[f], 16, 64)
		if err != nil || got != want {
			t.Errorf("%s (pid %d) %s = %s, want %016x %v", binary, pid, f, st[f], want, caps)
		}
	}
}

func ownedBy(t *testing.T, path string, uid int) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Sys().(*syscall.Stat_t).Uid; int(got) != uid {
		t.Errorf("%s is owned by uid %d, want %d", path, got, uid)
	}
}

// Item 5 of issue 8: plugins run as the plugin user with only what their
// type needs, the core's files are closed to them, a port forward
// listens only where it was asked to.
func TestPluginsRunUnprivileged(t *testing.T) {
	l := newLab(t)
	e := l.e
	state := filepath.Join(e.dir, "state")
	e.ok("config", "lease_time", "3600") // the user config file, written by anka
	l.guest("p1", "")
	e.ok("modify", "p1", "set", "network-card", "-t", "shared")
	e.ok("modify", "p1", "add", "port-forwarding", "web", "-g", "80", "-p", "18090", "-l", "127.0.0.1")
	// Below 1024: only CAP_NET_BIND_SERVICE lets the plugin listen there.
	e.ok("modify", "p1", "add", "port-forwarding", "low", "-g", "80", "-p", "81", "-l", "127.0.0.1")
	ip := l.start("p1")

	checkPluginProcess(t, state, "anka-net-shared", []string{sdk.PrivNetAdmin, sdk.PrivNetRaw, sdk.PrivNetBindService})
	l.guest("p2", "")
	e.ok("modify", "p2", "set", "network-card", "-t", "disconnected")
	checkPluginProcess(t, state, "anka-net-disconnected", nil)

	// It works unprivileged: the host reaches the guest, and both
	// forwards (one on a low port) reach it.
	for _, url := range []string{"http://" + ip + "/", "http://127.0.0.1:18090/", "http://127.0.0.1:81/"} {
		if page, err := l.fetch(url); err != nil || !strings.Contains(page, "anka-guest p1") {
			t.Fatalf("%s: %v %s", url, err, page)
		}
	}

	// The forward listens on 127.0.0.1 only: one listening socket on
	// the port, bound to 127.0.0.1 (/proc/net/tcp, in the daemon's
	// namespace), and the gateway's address of the same host refuses.
	tcp := l.host.Exec(t, "cat", "/proc/net/tcp")
	var listeners []string
	for _, line := range strings.Split(tcp, "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 3 && f[3] == "0A" && strings.HasSuffix(f[1], fmt.Sprintf(":%04X", 18090)) {
			listeners = append(listeners, f[1])
		}
	}
	if len(listeners) != 1 || listeners[0] != "0100007F:46AA" {
		t.Errorf("listening sockets on port 18090: %v, want only 127.0.0.1 (0100007F:46AA)", listeners)
	}
	if err := l.host.Run(func() error {
		c, err := net.DialTimeout("tcp", "192.168.64.1:18090", 2*time.Second)
		if err == nil {
			c.Close()
			return errors.New("connected")
		}
		return nil
	}); err != nil {
		t.Errorf("the forward asked for 127.0.0.1 answers on the gateway 192.168.64.1: %v", err)
	}

	// What the plugin user may and may not touch.
	dataDir := filepath.Join(state, "plugins", "anka-net-shared")
	got := asPluginUser(t, []access{
		{"read", filepath.Join(state, "vms", "p1", "vm.yaml")},
		{"read", filepath.Join(state, "vms", "p1", "console.log")},
		{"write", filepath.Join(state, "vms", "p1")},
		{"read", filepath.Join(e.dir, "user.yaml")},
		{"read", filepath.Join(state, "macpool.yaml")},
		{"dial", filepath.Join(state, "anka.sock")},
		{"list", state},
		{"write", state},
		{"read", filepath.Join(dataDir, "reattach.json")},
		{"write", filepath.Join(state, "plugins")},
		{"write", dataDir},
		{"write", filepath.Join(state, "net", "p1")},
	})
	want := map[string]string{
		"read " + filepath.Join(state, "vms", "p1", "vm.yaml"):     "EACCES",
		"read " + filepath.Join(state, "vms", "p1", "console.log"): "EACCES",
		"write " + filepath.Join(state, "vms", "p1"):               "EACCES",
		"read " + filepath.Join(e.dir, "user.yaml"):                "EACCES",
		"read " + filepath.Join(state, "macpool.yaml"):             "EACCES",
		"dial " + filepath.Join(state, "anka.sock"):                "EACCES",
		"list " + state:  "EACCES",
		"write " + state: "EACCES",
		"read " + filepath.Join(dataDir, "reattach.json"): "EACCES",
		"write " + filepath.Join(state, "plugins"):        "EACCES",
		"write " + dataDir:                           "ok",
		"write " + filepath.Join(state, "net", "p1"): "ok",
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("as the plugin user: %s: %s, want %s", k, got[k], w)
		}
	}
	ownedBy(t, dataDir, pluginUID)
	ownedBy(t, filepath.Join(state, "plugins", "sock"), pluginUID)
	ownedBy(t, filepath.Join(state, "net", "p1"), pluginUID)
	ownedBy(t, filepath.Join(state, "plugins", "anka-net-shared.lock"), 0)
	ownedBy(t, filepath.Join(dataDir, "reattach.json"), 0)
}

// Names never lead out of the state dir: VM names and network types that
// are paths are refused, and nothing appears outside.
func TestNamesStayInStateDir(t *testing.T) {
	e := newEnv(t)
	kernel := filepath.Join(e.dir, "vmlinuz")
	os.WriteFile(kernel, []byte("not really a kernel"), 0o644)
	before, _ := os.ReadDir(filepath.Dir(e.dir))
	for _, name := range []string{"../x", "a/b", "..", ".", "x/../../y", "/abs", "a\\b", ""} {
		if r := e.run("create", name, "--kernel", kernel); r.code == 0 {
			t.Errorf("create %q was accepted", name)
		}
	}
	e.ok("create", "ok1", "--kernel", kernel)
	for _, typ := range []string{"../x", "a/b", "..", "../../bin/sh", "x/.."} {
		if r := e.run("modify", "ok1", "set", "network-card", "-t", typ); r.code == 0 || !strings.Contains(r.stderr, typ) {
			t.Errorf("network type %q: exit %d %s", typ, r.code, r.stderr)
		}
		if r := e.run("config", "plugins."+typ+".path", "/bin/true"); r.code == 0 {
			t.Errorf("config plugins.%s.path was accepted", typ)
		}
	}
	after, _ := os.ReadDir(filepath.Dir(e.dir))
	if len(after) != len(before) {
		t.Errorf("entries beside the test's folder: %d before, %d after", len(before), len(after))
	}
	ents, _ := os.ReadDir(filepath.Join(e.dir, "state", "vms"))
	if len(ents) != 1 || ents[0].Name() != "ok1" {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("VM folders %v, want only ok1", names)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "x")); err == nil {
		t.Error("a folder x appeared beside the state dir")
	}
}

// A plugin user that does not exist is an error that says how to create
// it or how to choose root, never a silent run as root.
func TestMissingPluginUser(t *testing.T) {
	e := newEnv(t)
	kernel := filepath.Join(e.dir, "vmlinuz")
	os.WriteFile(kernel, []byte("not really a kernel"), 0o644)
	e.ok("create", "m1", "--kernel", kernel)
	e.extra = []string{"ANKA_PLUGIN_USER=anka-e2e-no-such-user"}
	r := e.run("modify", "m1", "set", "network-card", "-t", "disconnected")
	if r.code != 7 || !strings.Contains(r.stderr, "useradd --system --no-create-home --shell /usr/sbin/nologin anka-e2e-no-such-user") ||
		!strings.Contains(r.stderr, "anka config plugin_user root") {
		t.Fatalf("exit %d, stderr %s; want 7 and how to create the user or choose root", r.code, r.stderr)
	}
	if pid := reattachPID(filepath.Join(e.dir, "state", "plugins", "anka-net-disconnected", "reattach.json")); pid != 0 {
		t.Fatalf("a plugin started anyway (pid %d)", pid)
	}
	e.extra = []string{"ANKA_PLUGIN_USER=root"}
	e.ok("modify", "m1", "set", "network-card", "-t", "disconnected")
	pid := reattachPID(filepath.Join(e.dir, "state", "plugins", "anka-net-disconnected", "reattach.json"))
	if st := procStatus(t, pid); !strings.HasPrefix(st["Uid"], "0 ") {
		t.Fatalf("plugin_user root: the plugin runs as %q", st["Uid"])
	}
}
