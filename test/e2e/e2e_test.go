// Package e2e drives the real anka binary as a new user would: a fresh
// state dir, config files of its own, and real QEMU guests.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

// env is one user's world: binary, state dir, config files.
type env struct {
	t     *testing.T
	bin   string
	dir   string
	extra []string
	// ns runs anka (and so the daemon and plugins it starts) inside this
	// network namespace.
	ns string
}

var builtBin string

func TestMain(m *testing.M) {
	// Re-run as another user by TestDaemonRefusesOtherUsers: dial a unix
	// socket and say how it went in the exit code.
	if path := os.Getenv("ANKA_E2E_DIAL"); path != "" {
		c, err := net.Dial("unix", path)
		switch {
		case err == nil:
			c.Close()
			os.Exit(0)
		case errors.Is(err, syscall.EACCES):
			os.Exit(13)
		default:
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	// Tests start network plugins (TAPs, nftables, sysctls): as root, the
	// whole run happens again in network and mount namespaces of its own,
	// so nothing reaches the host's interfaces, routes or firewall even
	// when a test forgets to make a namespace.
	if os.Geteuid() == 0 && os.Getenv("ANKA_E2E_ISOLATED") == "" {
		os.Exit(frameiotest.RerunIsolated("ANKA_E2E_ISOLATED"))
	}
	if os.Getenv("ANKA_E2E_ISOLATED") != "" {
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			panic(fmt.Sprintf("loopback up in the test namespace: %v: %s", err, out))
		}
		openTun()
	}
	dir, err := os.MkdirTemp("", "anka-e2e-bin-")
	if err != nil {
		panic(err)
	}
	// The plugin user runs the plugins from here, as from plugin_dir.
	if err := os.Chmod(dir, 0o755); err != nil {
		panic(err)
	}
	builtBin = filepath.Join(dir, "anka")
	// The plugins sit beside anka, where discovery looks first.
	for out, pkg := range map[string]string{
		builtBin: "github.com/anka-net/anka/cmd/anka",
		filepath.Join(dir, "anka-net-disconnected"): "github.com/anka-net/anka/plugins/disconnected",
		filepath.Join(dir, "anka-net-segment"):      "github.com/anka-net/anka/plugins/example",
		filepath.Join(dir, "anka-net-shared"):       "github.com/anka-net/anka/plugins/shared",
		filepath.Join(dir, "anka-net-host"):         "github.com/anka-net/anka/plugins/host",
		filepath.Join(dir, "anka-net-bridge"):       "github.com/anka-net/anka/plugins/bridge",
	} {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			panic("building " + pkg + ": " + err.Error())
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// pluginUID is the plugin user of every e2e test: plugins run
// unprivileged, as installed, with a uid that has no passwd entry.
const pluginUID = 4242002

var pluginUser = fmt.Sprintf("%d:%d", pluginUID, pluginUID)

// giveToPluginUser is what an external hypervisor does with the datagram
// socket it binds: the plugin, running as plugin_user, sends to it, so
// that user needs write permission on it (docs/reliability/privilege.md).
func giveToPluginUser(t *testing.T, path string) {
	t.Helper()
	if err := os.Chown(path, pluginUID, pluginUID); err != nil {
		t.Fatal(err)
	}
}

// endpoint is an external VM's NIC as `anka -j show` gives it.
type endpoint struct {
	Kind       string
	PluginPath string `json:"plugin_path"`
	VMPath     string `json:"vm_path"`
	MAC        string
}

// relayGuest plays an external hypervisor for a namespace guest: ns's
// eth0, a TAP with the VM's MAC, relayed to the VM's datagram endpoint.
// stop ends the relay and closes both ends; register it after ns's own
// cleanup so the relay stops before the namespace goes.
func relayGuest(t *testing.T, ns *frameiotest.Netns, ep endpoint) (stop func()) {
	t.Helper()
	var tap *frameio.TAPPort
	var port *frameio.DgramPort
	if err := ns.Run(func() (err error) {
		if tap, err = frameio.OpenTAP("eth0", frameio.TAPOptions{}); err != nil {
			return err
		}
		os.Remove(ep.VMPath) // left by an earlier hypervisor, if any
		port, err = frameio.ListenDgram(ep.VMPath, frameio.DgramOptions{Peer: ep.PluginPath, Logger: frameiotest.Quiet})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	giveToPluginUser(t, ep.VMPath)
	ns.IP(t, "link", "set", "eth0", "address", ep.MAC)
	ns.IP(t, "link", "set", "eth0", "up")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, pair := range [][2]frameio.Port{{tap, port}, {port, tap}} {
		wg.Add(1)
		go func() { defer wg.Done(); frameio.Relay(ctx, pair[0], pair[1], 64) }()
	}
	return func() { cancel(); tap.Close(); port.Close(); wg.Wait() }
}

// udhcpc runs one DHCP exchange on ns's eth0 and returns the fields of
// its `ip -4 -o addr show` line (the address with its prefix is [3]).
func udhcpc(t *testing.T, e *env, ns *frameiotest.Netns) []string {
	t.Helper()
	script := filepath.Join(e.dir, "udhcpc.sh")
	os.WriteFile(script, []byte("#!/bin/sh\ncase \"$1\" in bound|renew) ip addr replace \"$ip/${mask:-24}\" dev \"$interface\";; esac\n"), 0o755)
	ns.Exec(t, "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-t", "10", "-T", "2", "-s", script)
	return strings.Fields(ns.IP(t, "-4", "-o", "addr", "show", "dev", "eth0"))
}

// openTun gives the unprivileged plugins of these tests a /dev/net/tun
// they may open (0666, Debian's default) where the machine's is 0600, as
// in some containers: a node of our own on a tmpfs over /dev/net, in the
// test's private mount namespace; the machine's /dev is left alone.
func openTun() {
	st, err := os.Stat("/dev/net/tun")
	if err != nil || st.Mode().Perm() == 0o666 {
		return
	}
	for _, args := range [][]string{
		{"mount", "-t", "tmpfs", "-o", "mode=0755,size=64k", "anka-e2e-tun", "/dev/net"},
		{"mknod", "-m", "0666", "/dev/net/tun", "c", "10", "200"},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			panic(fmt.Sprintf("%v in the test's mount namespace: %v: %s", args, err, out))
		}
	}
}

func newEnv(t *testing.T) *env {
	dir := t.TempDir()
	// The plugin user passes through to its folders in the state dir,
	// as through /var/lib to /var/lib/anka.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	// Plugins and VMs outlive anka by design: stop the ones this test
	// started.
	t.Cleanup(func() { killPlugins(filepath.Join(dir, "state")) })
	return &env{t: t, bin: builtBin, dir: dir}
}

func killPlugins(stateDir string) {
	if b, err := os.ReadFile(filepath.Join(stateDir, "daemon.pid")); err == nil {
		if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	files, _ := filepath.Glob(filepath.Join(stateDir, "plugins", "*", "reattach.json"))
	for _, f := range files {
		var ri struct {
			Pid int `json:"pid"`
		}
		if b, err := os.ReadFile(f); err == nil && json.Unmarshal(b, &ri) == nil && ri.Pid > 0 {
			syscall.Kill(ri.Pid, syscall.SIGKILL)
		}
	}
	// And the VMs' QEMUs: a test's own `daemon stop --all` may not reach
	// them (its network namespace already gone at cleanup), and a QEMU
	// left behind runs on, eating the machine's CPU, long after the test.
	for _, p := range qemuFor(stateDir) {
		if pid, _ := strconv.Atoi(p); pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

type result struct {
	code           int
	stdout, stderr string
}

func (e *env) run(args ...string) result {
	e.t.Helper()
	cmd := exec.Command(e.bin, args...)
	if e.ns != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", e.ns, e.bin}, args...)...)
	}
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + e.dir,
		"ANKA_STATE_DIR=" + filepath.Join(e.dir, "state"),
		"ANKA_CONFIG=" + filepath.Join(e.dir, "user.yaml"),
		"ANKA_SYSTEM_CONFIG=" + filepath.Join(e.dir, "system.yaml"),
		"ANKA_PLUGIN_DIR=" + filepath.Join(e.dir, "plugins"),
		"ANKA_PLUGIN_USER=" + pluginUser,
	}, e.extra...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("running anka: %v", err)
	}
	return result{code, out.String(), errb.String()}
}

func (e *env) ok(args ...string) string {
	e.t.Helper()
	r := e.run(args...)
	if r.code != 0 {
		e.t.Fatalf("anka %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

func (e *env) vmFile(name string) []byte {
	b, _ := os.ReadFile(filepath.Join(e.dir, "state", "vms", name, "vm.yaml"))
	return b
}

type envelope struct {
	Status  string          `json:"status"`
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Body    json.RawMessage `json:"body"`
}

func (e *env) jsonOK(args ...string) json.RawMessage {
	e.t.Helper()
	out := e.ok(append([]string{"-j"}, args...)...)
	var env envelope
	if err := json.Unmarshal([]byte(out), &env); err != nil || env.Status != "OK" {
		e.t.Fatalf("anka -j %v: not an OK envelope: %v\n%s", args, err, out)
	}
	return env.Body
}

func TestNewUser(t *testing.T) {
	e := newEnv(t)
	kernel := filepath.Join(e.dir, "vmlinuz")
	os.WriteFile(kernel, []byte("not really a kernel"), 0o644)

	e.ok("create", "vm1", "--kernel", kernel, "--ram", "256M")
	var show struct {
		Name, UUID, Status string
		ConsoleLog         string `json:"console_log"`
		RAM                string
		NetworkCard        *struct{ Mode string } `json:"network_card"`
	}
	if err := json.Unmarshal(e.jsonOK("show", "vm1"), &show); err != nil {
		t.Fatal(err)
	}
	if show.Name != "vm1" || show.UUID == "" || show.Status != "stopped" || show.RAM != "256M" ||
		show.NetworkCard == nil || show.NetworkCard.Mode != "shared" || !strings.HasSuffix(show.ConsoleLog, "vms/vm1/console.log") {
		t.Fatalf("show: %+v", show)
	}
	if out := e.ok("list"); !strings.Contains(out, "vm1") || !strings.Contains(out, "stopped") {
		t.Fatalf("list: %s", out)
	}

	e.ok("modify", "vm1", "set", "network-card", "0", "-t", "static", "--ip", "192.168.64.50", "-m", "52:54:00:aa:bb:cc")
	e.ok("modify", "vm1", "add", "port-forwarding", "ssh", "-g", "22")
	net := e.ok("show", "vm1", "network")
	for _, want := range []string{"static", "192.168.64.50", "52:54:00:aa:bb:cc", "ssh", "10000", "22"} {
		if !strings.Contains(net, want) {
			t.Errorf("show network lacks %q:\n%s", want, net)
		}
	}
	if out := e.ok("show", "vm1"); !strings.Contains(out, "static 192.168.64.50") {
		t.Errorf("show lacks Anka's network line:\n%s", out)
	}

	// Configuration: default, user file, env, flag.
	if v := strings.TrimSpace(e.ok("config", "portfwd_base")); v != "10000" {
		t.Fatalf("default portfwd_base %q", v)
	}
	e.ok("config", "portfwd_base", "20000")
	if v := strings.TrimSpace(e.ok("config", "portfwd_base")); v != "20000" {
		t.Fatalf("user portfwd_base %q", v)
	}
	if all := e.ok("config"); !strings.Contains(all, "portfwd_base") || !strings.Contains(all, "user") {
		t.Fatalf("config listing:\n%s", all)
	}
	e.extra = []string{"ANKA_PORTFWD_BASE=30000"}
	if v := strings.TrimSpace(e.ok("config", "portfwd_base")); v != "30000" {
		t.Fatalf("env portfwd_base %q", v)
	}
	if v := strings.TrimSpace(e.ok("--portfwd-base", "40000", "config", "portfwd_base")); v != "40000" {
		t.Fatalf("flag portfwd_base %q", v)
	}
	e.extra = nil
	e.ok("modify", "vm1", "add", "port-forwarding", "web", "-g", "80")
	if net := e.ok("show", "vm1", "network"); !strings.Contains(net, "20000") {
		t.Errorf("auto port should start at the configured portfwd_base 20000:\n%s", net)
	}
	e.ok("config", "--unset", "portfwd_base")
	if v := strings.TrimSpace(e.ok("config", "portfwd_base")); v != "10000" {
		t.Fatalf("after unset %q", v)
	}
}

func TestBadInputLeavesEverythingAsItWas(t *testing.T) {
	e := newEnv(t)
	kernel := filepath.Join(e.dir, "vmlinuz")
	os.WriteFile(kernel, []byte("x"), 0o644)
	e.ok("create", "vm1", "--kernel", kernel)
	e.ok("modify", "vm1", "add", "port-forwarding", "ssh", "-g", "22")
	e.ok("config", "start_address", "192.168.64.10")
	userCfg, _ := os.ReadFile(filepath.Join(e.dir, "user.yaml"))
	before := e.vmFile("vm1")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown type", []string{"modify", "vm1", "set", "network-card", "-t", "wifi"}, `"wifi"`},
		{"malformed MAC", []string{"modify", "vm1", "set", "network-card", "-m", "zz:11"}, "zz:11"},
		{"index 1", []string{"modify", "vm1", "set", "network-card", "1", "-t", "host"}, `"1"`},
		{"unknown VM", []string{"show", "nope"}, `"nope"`},
		{"unknown VM modify", []string{"modify", "nope", "set", "network-card", "-t", "host"}, `"nope"`},
		{"duplicate rule", []string{"modify", "vm1", "add", "port-forwarding", "ssh", "-g", "2222"}, `"ssh"`},
		{"name with slash", []string{"create", "a/b", "--kernel", kernel}, `"a/b"`},
		{"static outside subnet", []string{"modify", "vm1", "set", "network-card", "-t", "static", "--ip", "10.1.2.3"}, "10.1.2.3"},
		{"missing kernel", []string{"create", "vm2", "--kernel", "/nonexistent/vmlinuz"}, "/nonexistent/vmlinuz"},
		{"guest port missing", []string{"modify", "vm1", "add", "port-forwarding", "web"}, "guest-port"},
		{"bad protocol", []string{"modify", "vm1", "add", "port-forwarding", "web", "-g", "80", "-P", "sctp"}, "sctp"},
		{"suspend stopped", []string{"suspend", "vm1"}, "stopped"},
		{"unknown flag", []string{"show", "vm1", "--bogus"}, "--bogus"},
		{"bad config IP", []string{"config", "end_address", "300.1.1.1"}, "300.1.1.1"},
		{"start after end", []string{"config", "end_address", "192.168.64.5"}, "end_address"},
		{"unknown config key", []string{"config", "no_such_key", "1"}, "no_such_key"},
		{"bad flag value", []string{"--mtu", "99999", "list"}, "99999"},
	} {
		r := e.run(tc.args...)
		if r.code == 0 {
			t.Errorf("%s: exit 0, want an error", tc.name)
		}
		if !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: stderr does not name %s:\n%s", tc.name, tc.want, r.stderr)
		}
		if after := e.vmFile("vm1"); !bytes.Equal(before, after) {
			t.Fatalf("%s: vm.yaml changed", tc.name)
		}
		if got, _ := os.ReadFile(filepath.Join(e.dir, "user.yaml")); !bytes.Equal(got, userCfg) {
			t.Fatalf("%s: user config changed", tc.name)
		}
	}
	if _, err := os.Stat(filepath.Join(e.dir, "state", "vms", "vm2")); err == nil {
		t.Fatal("a refused create left a VM folder")
	}
	// The JSON envelope carries the error too.
	r := e.run("-j", "show", "nope")
	var env envelope
	if err := json.Unmarshal([]byte(r.stdout), &env); err != nil || env.Status != "ERROR" || env.Code != r.code || !strings.Contains(env.Message, "nope") {
		t.Fatalf("JSON error envelope: %v %+v (exit %d)", err, env, r.code)
	}
}

// guestDir returns the test guest, skipping when it is not built (make
// test builds it and sets ANKA_E2E=1, which turns the skip into a failure).
func guestDir(t *testing.T) string {
	d := os.Getenv("ANKA_GUEST_DIR")
	if d != "" {
		if _, err := os.Stat(filepath.Join(d, "initrd.img")); err == nil {
			return d
		}
	}
	if os.Getenv("ANKA_E2E") != "" {
		t.Fatalf("ANKA_E2E is set but no test guest at ANKA_GUEST_DIR=%q: run make guest", d)
	}
	t.Skip("no test guest: set ANKA_GUEST_DIR (make test does)")
	return ""
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// qemuFor lists QEMU processes whose command line names the VM's folder.
func qemuFor(vmDir string) []string {
	var pids []string
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		cmdline, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, []byte("qemu")) || !bytes.Contains(cmdline, []byte(vmDir+"/")) {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join("/proc", ent.Name(), "stat"))
		if i := bytes.LastIndexByte(stat, ')'); i > 0 && len(stat) > i+2 && stat[i+2] == 'Z' {
			continue // a zombie is dead
		}
		pids = append(pids, ent.Name())
	}
	return pids
}

func TestRealGuestLifecycle(t *testing.T) {
	g := guestDir(t)
	e := newEnv(t)
	vmDir := filepath.Join(e.dir, "state", "vms", "g1")
	t.Cleanup(func() { e.run("delete", "--force", "g1") })
	e.ok("create", "g1", "--kernel", filepath.Join(g, "vmlinuz"), "--initrd", filepath.Join(g, "initrd.img"), "--ram", "256M")

	// Card 0 is shared and no plugin serves it (anka alone in its folder,
	// an empty plugin_dir): start says so.
	alone := filepath.Join(e.dir, "alone", "anka")
	os.MkdirAll(filepath.Dir(alone), 0o755)
	if b, err := os.ReadFile(e.bin); err != nil || os.WriteFile(alone, b, 0o755) != nil {
		t.Fatalf("copying anka: %v", err)
	}
	e.bin = alone
	r := e.run("start", "g1")
	e.bin = builtBin
	if r.code == 0 || !strings.Contains(r.stderr, `"shared"`) || !strings.Contains(r.stderr, "delete network-card") {
		t.Fatalf("start with an unserved card: exit %d, %s", r.code, r.stderr)
	}
	e.ok("modify", "g1", "delete", "network-card")

	start := time.Now()
	e.ok("start", "g1")
	console := filepath.Join(vmDir, "console.log")
	waitFor(t, "the guest to boot", 90*time.Second, func() bool {
		b, _ := os.ReadFile(console)
		return bytes.Contains(b, []byte("anka-guest: booted"))
	})
	t.Logf("guest booted in %v", time.Since(start).Round(100*time.Millisecond))
	status := func() string {
		var s struct{ Status string }
		json.Unmarshal(e.jsonOK("show", "g1"), &s)
		return s.Status
	}
	if s := status(); s != "running" {
		t.Fatalf("status %s", s)
	}
	e.ok("suspend", "g1")
	if s := status(); s != "suspended" {
		t.Fatalf("after suspend: %s", s)
	}
	e.ok("start", "g1") // resumes
	if s := status(); s != "running" {
		t.Fatalf("after resume: %s", s)
	}
	stopStart := time.Now()
	e.ok("stop", "g1", "--timeout", "60s")
	t.Logf("graceful stop took %v", time.Since(stopStart).Round(100*time.Millisecond))
	if s := status(); s != "stopped" {
		t.Fatalf("after stop: %s", s)
	}
	if pids := qemuFor(vmDir); len(pids) != 0 {
		t.Fatalf("QEMU left running after stop: %v", pids)
	}
	if b, _ := os.ReadFile(console); !bytes.Contains(b, []byte("powering off")) {
		t.Errorf("the guest did not power off cleanly:\n%s", b)
	}

	// A QEMU killed behind anka's back is reported stopped, and the VM
	// starts again.
	e.ok("start", "g1")
	var shown struct{ PID int }
	json.Unmarshal(e.jsonOK("show", "g1"), &shown)
	if shown.PID == 0 {
		t.Fatal("show gives no pid for a running VM")
	}
	if err := syscall.Kill(shown.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the killed VM to show as stopped", 10*time.Second, func() bool { return status() == "stopped" })
	e.ok("start", "g1")
	if s := status(); s != "running" {
		t.Fatalf("restart after kill: %s", s)
	}
	e.ok("stop", "--force", "g1")

	// Delete --force on a running VM leaves no process either.
	e.ok("start", "g1")
	if r := e.run("delete", "g1"); r.code == 0 || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("delete of a running VM: exit %d %s", r.code, r.stderr)
	}
	e.ok("delete", "--force", "g1")
	if pids := qemuFor(vmDir); len(pids) != 0 {
		t.Fatalf("QEMU left running after delete: %v", pids)
	}
}

// Eight anka processes modifying one VM at once lose no update.
func TestConcurrentModifyProcesses(t *testing.T) {
	e := newEnv(t)
	kernel := filepath.Join(e.dir, "vmlinuz")
	os.WriteFile(kernel, []byte("x"), 0o644)
	e.ok("create", "vm1", "--kernel", kernel)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if r := e.run("modify", "vm1", "add", "port-forwarding", fmt.Sprintf("r%d", i), "-g", fmt.Sprint(100+i)); r.code != 0 {
				t.Errorf("modify %d: exit %d %s", i, r.code, r.stderr)
			}
		}(i)
	}
	wg.Wait()
	var card struct {
		Rules []struct {
			Name     string
			HostPort int `json:"host_port"`
		} `json:"port_forwarding_rules"`
	}
	json.Unmarshal(e.jsonOK("show", "vm1", "network"), &card)
	ports := map[int]bool{}
	for _, r := range card.Rules {
		ports[r.HostPort] = true
	}
	if len(card.Rules) != 8 || len(ports) != 8 {
		t.Fatalf("after 8 concurrent modifies: %+v", card.Rules)
	}
}

func TestPluginListAndPin(t *testing.T) {
	e := newEnv(t)
	out := e.ok("plugin", "list")
	for _, want := range []string{"disconnected", "segment", "v1"} {
		if !strings.Contains(out, want) {
			t.Errorf("plugin list lacks %q:\n%s", want, out)
		}
	}
	var info struct {
		Type, Binary, SHA256 string
		Capabilities         []string
		LogFile              string `json:"log_file"`
	}
	if err := json.Unmarshal(e.jsonOK("plugin", "info", "segment"), &info); err != nil {
		t.Fatal(err)
	}
	if info.Type != "segment" || !strings.HasSuffix(info.Binary, "anka-net-segment") || len(info.SHA256) != 64 ||
		!strings.HasSuffix(info.LogFile, "plugins/anka-net-segment/plugin.log") {
		t.Fatalf("plugin info: %+v", info)
	}
	// The right pin is accepted, a wrong one refused with both sums named.
	e.ok("config", "plugins.segment.sha256", info.SHA256)
	e.ok("plugin", "info", "segment")
	wrong := strings.Repeat("0", 64)
	e.ok("config", "plugins.segment.sha256", wrong)
	r := e.run("plugin", "info", "segment")
	if r.code == 0 || !strings.Contains(r.stderr, info.SHA256) || !strings.Contains(r.stderr, wrong) || !strings.Contains(r.stderr, "plugins.segment.sha256") {
		t.Fatalf("wrong pin: exit %d %s", r.code, r.stderr)
	}
	// A mismatching binary is never started: the card is refused.
	kernel := filepath.Join(e.dir, "vmlinuz")
	os.WriteFile(kernel, []byte("x"), 0o644)
	e.ok("create", "vm1", "--kernel", kernel)
	if r := e.run("modify", "vm1", "set", "network-card", "-t", "segment"); r.code == 0 || !strings.Contains(r.stderr, wrong) {
		t.Fatalf("a card of a type whose binary fails its pin: exit %d %s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "state", "plugins", "anka-net-segment", "reattach.json")); err == nil {
		t.Fatal("a plugin failing its pin was started")
	}
	// A card may name the plugin's type once its binary is found.
	e.ok("config", "--unset", "plugins.segment.sha256")
	e.ok("modify", "vm1", "set", "network-card", "-t", "segment", "-o", "segment=lab")
	if r := e.run("modify", "vm1", "set", "network-card", "-t", "segmnt"); r.code == 0 || !strings.Contains(r.stderr, "segment") {
		t.Fatalf("a typo'd type should list the known ones: %s", r.stderr)
	}
}

func consoleHas(e *env, vmName, want string) func() bool {
	return func() bool {
		b, _ := os.ReadFile(filepath.Join(e.dir, "state", "vms", vmName, "console.log"))
		return bytes.Contains(b, []byte(want))
	}
}

// pingDone waits for the guest's whole verdict line: the serial console
// reaches the file a few bytes at a time.
func pingDone(e *env, vmName, peer string) func() bool {
	return func() bool {
		return consoleHas(e, vmName, "ping "+peer+" ok")() || consoleHas(e, vmName, "ping "+peer+" failed")()
	}
}

// A guest on a disconnected card boots with its NIC present and no carrier.
func TestDisconnectedGuest(t *testing.T) {
	g := guestDir(t)
	e := newEnv(t)
	t.Cleanup(func() { e.run("delete", "--force", "d1") })
	e.ok("create", "d1", "--kernel", filepath.Join(g, "vmlinuz"), "--initrd", filepath.Join(g, "initrd.img"), "--ram", "256M")
	e.ok("modify", "d1", "set", "network-card", "-t", "disconnected")
	e.ok("start", "d1")
	waitFor(t, "the guest to report its carrier", 90*time.Second, func() bool {
		return consoleHas(e, "d1", "anka-guest: carrier 0")() || consoleHas(e, "d1", "anka-guest: carrier 1")()
	})
	if !consoleHas(e, "d1", "anka-guest: carrier 0")() {
		b, _ := os.ReadFile(filepath.Join(e.dir, "state", "vms", "d1", "console.log"))
		t.Fatalf("a disconnected NIC shows a carrier:\n%s", b)
	}
	if out := e.ok("plugin", "list"); !strings.Contains(out, "running") {
		t.Errorf("the disconnected plugin should be running:\n%s", out)
	}
	e.ok("stop", "--force", "d1")
}

// Two guests on one segment reach each other with addresses from their
// kernel command lines; a third on another segment is not reachable.
func TestSegmentGuests(t *testing.T) {
	g := guestDir(t)
	e := newEnv(t)
	mk := func(name, ip, peer, segment string) {
		t.Cleanup(func() { e.run("delete", "--force", name) })
		e.ok("create", name, "--kernel", filepath.Join(g, "vmlinuz"), "--initrd", filepath.Join(g, "initrd.img"), "--ram", "256M",
			"--append", "anka.ip="+ip+"/24 anka.ipv6=0 anka.ping="+peer)
		e.ok("modify", name, "set", "network-card", "-t", "segment", "-o", "segment="+segment)
		e.ok("start", name)
	}
	mk("s1", "10.55.0.1", "10.55.0.2", "lab")
	mk("s2", "10.55.0.2", "10.55.0.1", "lab")
	mk("s3", "10.55.0.3", "10.55.0.1", "other")
	for _, vm := range []string{"s1", "s2"} {
		waitFor(t, vm+" to reach its peer", 120*time.Second, func() bool {
			return consoleHas(e, vm, "ping 10.55.0.")()
		})
		if !consoleHas(e, vm, "anka-guest: ping "+map[string]string{"s1": "10.55.0.2", "s2": "10.55.0.1"}[vm]+" ok")() {
			b, _ := os.ReadFile(filepath.Join(e.dir, "state", "vms", vm, "console.log"))
			t.Fatalf("%s could not reach its peer on the segment:\n%s", vm, b)
		}
	}
	if consoleHas(e, "s3", "ping 10.55.0.1 ok")() {
		t.Fatal("a guest on another segment reached the lab segment")
	}
	var show struct {
		NetworkCard struct {
			Mode    string
			Options map[string]string
		} `json:"network_card"`
	}
	json.Unmarshal(e.jsonOK("show", "s1"), &show)
	if show.NetworkCard.Mode != "segment" || show.NetworkCard.Options["segment"] != "lab" {
		t.Fatalf("show: %+v", show)
	}
	// show asks the plugin: the segment and the VM's counters.
	var card struct {
		Details  map[string]string
		Counters map[string]uint64
	}
	json.Unmarshal(e.jsonOK("show", "s1", "network"), &card)
	if card.Details["segment"] != "lab" || card.Counters["frames_from_vm"] == 0 {
		t.Fatalf("show network lacks the plugin's status: %+v", card)
	}
	// The plugins' sockets and data are private to root.
	sockDir := filepath.Join(e.dir, "state", "plugins", "sock")
	for _, d := range []string{sockDir, filepath.Join(e.dir, "state", "plugins", "anka-net-segment")} {
		if st, err := os.Stat(d); err != nil || st.Mode().Perm() != 0o700 {
			t.Fatalf("%s: %v, mode %v; want 0700", d, err, st.Mode())
		}
	}
	if setpriv, err := exec.LookPath("setpriv"); err == nil {
		out, err := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "ls", sockDir).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "ermission denied") {
			t.Fatalf("another user could list the plugin sockets: %v %s", err, out)
		}
	}
	for _, vm := range []string{"s1", "s2", "s3"} {
		e.ok("stop", "--force", vm)
	}
}

// A hypervisor anka does not launch (here: a namespace's network stack
// behind a TAP, relayed to the endpoint anka printed) joins a segment and
// exchanges traffic with a QEMU guest on it.
func TestExternalRuntimeOnSegment(t *testing.T) {
	g := guestDir(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	e := newEnv(t)
	t.Cleanup(func() { e.run("delete", "--force", "q1"); e.run("delete", "--force", "x1") })
	e.ok("create", "q1", "--kernel", filepath.Join(g, "vmlinuz"), "--initrd", filepath.Join(g, "initrd.img"), "--ram", "256M",
		"--append", "anka.ip=10.56.0.1/24 anka.ipv6=0 anka.ping=10.56.0.2")
	e.ok("modify", "q1", "set", "network-card", "-t", "segment", "-o", "segment=ext")
	e.ok("start", "q1")

	if r := e.run("create", "x0", "--runtime", "external", "--kernel", filepath.Join(g, "vmlinuz")); r.code == 0 {
		t.Fatal("an external VM with a kernel was accepted")
	}
	e.ok("create", "x1", "--runtime", "external")
	e.ok("modify", "x1", "set", "network-card", "-t", "segment", "-o", "segment=ext")
	if out := e.ok("start", "x1"); !strings.Contains(out, "bind ") || !strings.Contains(out, "give the NIC MAC") {
		t.Fatalf("start of an external VM should say what to connect:\n%s", out)
	}
	var shown struct {
		Status   string
		Endpoint endpoint
	}
	json.Unmarshal(e.jsonOK("show", "x1"), &shown)
	ep := shown.Endpoint
	if shown.Status != "running" || ep.Kind != "dgram" || ep.PluginPath == "" || ep.VMPath == "" || ep.MAC == "" {
		t.Fatalf("show of an external VM: %+v", shown)
	}

	ns := frameiotest.NewNetns(t)
	t.Cleanup(relayGuest(t, ns, ep))
	ns.IP(t, "addr", "add", "10.56.0.2/24", "dev", "eth0")

	waitFor(t, "the QEMU guest to ping the external VM", 120*time.Second, pingDone(e, "q1", "10.56.0.2"))
	if !consoleHas(e, "q1", "anka-guest: ping 10.56.0.2 ok")() {
		t.Fatal("the QEMU guest could not reach the external VM")
	}
	if out := ns.Exec(t, "busybox", "ping", "-c", "2", "-W", "2", "10.56.0.1"); !strings.Contains(out, "2 packets received") {
		t.Fatalf("the external VM cannot reach the QEMU guest:\n%s", out)
	}
	// kill -9 of the plugin: the next anka command starts it again and
	// attaches both VMs again; traffic flows as before.
	pidOf := func() int {
		var ri struct {
			Pid int `json:"pid"`
		}
		b, _ := os.ReadFile(filepath.Join(e.dir, "state", "plugins", "anka-net-segment", "reattach.json"))
		json.Unmarshal(b, &ri)
		return ri.Pid
	}
	old := pidOf()
	syscall.Kill(old, syscall.SIGKILL)
	waitFor(t, "the plugin to die", 10*time.Second, func() bool {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", old))
		return err != nil || bytes.Contains(b, []byte(") Z"))
	})
	// The daemon notices on its own and starts it again: no command runs.
	waitFor(t, "the daemon to start the plugin again", 10*time.Second, func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", pidOf()))
		return pidOf() != old && err == nil
	})
	if out := e.ok("plugin", "list"); !strings.Contains(out, "running (pid") {
		t.Fatalf("the plugin is not listed running:\n%s", out)
	}
	if out := ns.Exec(t, "busybox", "ping", "-c", "3", "-W", "2", "10.56.0.1"); !strings.Contains(out, "packets received") || strings.Contains(out, " 0 packets received") {
		t.Fatalf("no traffic after the plugin was restarted:\n%s", out)
	}
	if out := e.ok("daemon", "status"); !strings.Contains(out, "segment") || !strings.Contains(out, "subreaper    true") {
		t.Fatalf("daemon status:\n%s", out)
	}

	// kill -9 of the daemon: the plugin and both VMs keep running and
	// passing traffic; the next command brings up a daemon that
	// reattaches to the same plugin process.
	daemonPID := func() int {
		b, _ := os.ReadFile(filepath.Join(e.dir, "state", "daemon.pid"))
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return pid
	}
	oldDaemon, pluginPID := daemonPID(), pidOf()
	var q1 struct{ PID int }
	json.Unmarshal(e.jsonOK("show", "q1"), &q1)
	syscall.Kill(oldDaemon, syscall.SIGKILL)
	waitFor(t, "the daemon to die", 10*time.Second, func() bool { return !alive(oldDaemon) })
	if !alive(pluginPID) || !alive(q1.PID) {
		t.Fatalf("the plugin (%d alive %v) or QEMU (%d alive %v) died with the daemon", pluginPID, alive(pluginPID), q1.PID, alive(q1.PID))
	}
	if out := ns.Exec(t, "busybox", "ping", "-c", "3", "-W", "2", "10.56.0.1"); strings.Contains(out, " 0 packets received") {
		t.Fatalf("no traffic while no daemon runs:\n%s", out)
	}
	e.ok("list")
	if d := daemonPID(); d == oldDaemon || !alive(d) {
		t.Fatalf("no new daemon after the old one was killed (pid %d)", d)
	}
	if out := e.ok("daemon", "status"); !strings.Contains(out, fmt.Sprintf("running (pid %d)", pluginPID)) {
		t.Fatalf("the new daemon did not reattach to plugin pid %d:\n%s", pluginPID, out)
	}
	if out := ns.Exec(t, "busybox", "ping", "-c", "3", "-W", "2", "10.56.0.1"); strings.Contains(out, " 0 packets received") {
		t.Fatalf("no traffic after the daemon came back:\n%s", out)
	}
	// anka plugin restart does the same on purpose.
	old = pidOf()
	e.ok("plugin", "restart", "segment")
	if pidOf() == old {
		t.Fatal("plugin restart kept the old process")
	}
	if out := ns.Exec(t, "busybox", "ping", "-c", "3", "-W", "2", "10.56.0.1"); strings.Contains(out, " 0 packets received") {
		t.Fatalf("no traffic after anka plugin restart:\n%s", out)
	}
	e.ok("stop", "x1")
	json.Unmarshal(e.jsonOK("show", "x1"), &shown)
	if shown.Status != "stopped" {
		t.Fatalf("external VM after stop: %s", shown.Status)
	}
}

// alive reports a process that exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err == nil && !bytes.Contains(b, []byte(") Z"))
}

// The daemon's socket and the plugins' socket folder let in root and the
// daemon's user only, even when every folder above them is open.
func TestDaemonRefusesOtherUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a process as another user")
	}
	e := newEnv(t)
	for d := e.dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	e.ok("create", "x1", "--runtime", "external")
	e.ok("modify", "x1", "set", "network-card", "-t", "segment")
	e.ok("start", "x1") // starts the daemon and the segment plugin
	t.Cleanup(func() { e.run("daemon", "stop", "--all") })
	sock := filepath.Join(e.dir, "state", "anka.sock")
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("daemon socket: %v mode %v, want 0600", err, fi.Mode().Perm())
	}
	sockDir := filepath.Join(e.dir, "state", "plugins", "sock")
	if fi, err := os.Stat(sockDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("plugin socket folder: %v mode %v, want 0700", err, fi.Mode().Perm())
	}
	pluginSocks, _ := filepath.Glob(filepath.Join(sockDir, "*"))
	if len(pluginSocks) == 0 {
		t.Fatal("no plugin socket found")
	}
	// Both binaries must be reachable by the other user.
	self, anka := filepath.Join(e.dir, "e2e.test"), filepath.Join(e.dir, "anka")
	exe, _ := os.Executable()
	for from, to := range map[string]string{exe: self, e.bin: anka} {
		b, err := os.ReadFile(from)
		if err != nil || os.WriteFile(to, b, 0o755) != nil {
			t.Fatalf("copying %s: %v", from, err)
		}
	}
	for _, target := range []string{sock, pluginSocks[0]} {
		// As root the dial works: the refusal below is about the user.
		for _, uid := range []uint32{0, 65534} {
			cmd := exec.Command(self)
			cmd.Env = []string{"ANKA_E2E_DIAL=" + target}
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: 65534}}
			out, err := cmd.CombinedOutput()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if want := map[uint32]int{0: 0, 65534: 13}[uid]; code != want {
				t.Fatalf("dial %s as uid %d: exit %d (%s), want %d", target, uid, code, out, want)
			}
		}
	}
	// The CLI run by another user says what is wrong.
	cmd := exec.Command(anka, "daemon", "status")
	cmd.Env = []string{"ANKA_STATE_DIR=" + filepath.Join(e.dir, "state"), "HOME=/nonexistent", "ANKA_SYSTEM_CONFIG=/nonexistent"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, _ := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 6 || !strings.Contains(string(out), "permission denied") {
		t.Fatalf("daemon status as another user: exit %d: %s", cmd.ProcessState.ExitCode(), out)
	}
}
