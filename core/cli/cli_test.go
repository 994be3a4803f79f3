package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/core/runtime"
	"github.com/anka-net/anka/core/runtime/runtimetest"
)

// harness runs commands in-process with fake IO, a fake runtime and an
// environment of its own.
type harness struct {
	t   *testing.T
	dir string
	env map[string]string
	rt  *runtimetest.Fake
}

func newHarness(t *testing.T) *harness {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "machine-id"), []byte("00112233445566778899aabbccddeeff\n"), 0o644)
	return &harness{t: t, dir: dir, rt: runtimetest.New(), env: map[string]string{
		"ANKA_STATE_DIR":     filepath.Join(dir, "state"),
		"ANKA_CONFIG":        filepath.Join(dir, "user.yaml"),
		"ANKA_SYSTEM_CONFIG": filepath.Join(dir, "system.yaml"),
		"ANKA_PLUGIN_DIR":    filepath.Join(dir, "plugins"),
	}}
}

func (h *harness) run(args ...string) (stdout, stderr string, code int) {
	var out, errb bytes.Buffer
	f := &Factory{
		IO:        IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errb},
		LookupEnv: func(k string) (string, bool) { v, ok := h.env[k]; return v, ok },
		Environ: func() []string {
			var e []string
			for k, v := range h.env {
				e = append(e, k+"="+v)
			}
			return e
		},
		Runtime:  func() runtime.Runtime { return h.rt },
		SelfDir:  filepath.Join(h.dir, "bin"),
		Bindable: func(string, string, int) bool { return true },
	}
	code = Run(context.Background(), f, args)
	return out.String(), errb.String(), code
}

func (h *harness) ok(args ...string) string {
	h.t.Helper()
	out, errOut, code := h.run(args...)
	if code != 0 {
		h.t.Fatalf("anka %v: exit %d: %s", args, code, errOut)
	}
	return out
}

func (h *harness) kernel() string {
	p := filepath.Join(h.dir, "vmlinuz")
	os.WriteFile(p, []byte("k"), 0o644)
	return p
}

func TestRewriteModify(t *testing.T) {
	for _, tc := range []struct{ in, want []string }{
		{[]string{"modify", "vm1", "set", "network-card", "0", "-t", "host"}, []string{"modify", "set", "network-card", "vm1", "0", "-t", "host"}},
		{[]string{"-j", "modify", "vm1", "add", "port-forwarding", "ssh", "-g", "22"}, []string{"-j", "modify", "add", "port-forwarding", "vm1", "ssh", "-g", "22"}},
		{[]string{"modify", "vm1", "delete", "network-card"}, []string{"modify", "delete", "network-card", "vm1"}},
		{[]string{"modify", "vm1", "frobnicate", "network-card"}, []string{"modify", "vm1", "frobnicate", "network-card"}},
		{[]string{"show", "modify"}, []string{"show", "modify"}},
	} {
		if got := rewriteModify(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("rewriteModify(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestLifecycleThroughCLI(t *testing.T) {
	h := newHarness(t)
	h.ok("create", "vm1", "--kernel", h.kernel())
	_, errOut, code := h.run("start", "vm1")
	if code != int(errs.Unavailable) || !strings.Contains(errOut, `"shared"`) {
		t.Fatalf("start with an unserved card: %d %s", code, errOut)
	}
	h.ok("modify", "vm1", "delete", "network-card")
	if out := h.ok("start", "vm1"); !strings.Contains(out, "vm1 is running") {
		t.Fatalf("start: %s", out)
	}
	if len(h.rt.Starts) != 1 || h.rt.Starts[0].NIC != nil || h.rt.Starts[0].Kernel != h.kernel() {
		t.Fatalf("runtime spec %+v", h.rt.Starts)
	}
	h.ok("suspend", "vm1")
	if out := h.ok("show", "vm1"); !strings.Contains(out, "suspended") {
		t.Fatalf("show after suspend: %s", out)
	}
	h.ok("start", "vm1")
	if _, _, code := h.run("delete", "vm1"); code != int(errs.State) {
		t.Fatalf("delete running without --force: exit %d", code)
	}
	h.ok("create", "vm2", "--kernel", h.kernel())
	h.ok("modify", "vm2", "delete", "network-card")
	h.ok("start", "vm2")
	if out := h.ok("-j", "stop", "--all"); !strings.Contains(out, `"vm1"`) || !strings.Contains(out, `"vm2"`) {
		t.Fatalf("stop --all: %s", out)
	}
	if h.rt.Live() != 0 {
		t.Fatal("VMs left running after stop --all")
	}
	h.ok("delete", "vm1")
	if _, _, code := h.run("show", "vm1"); code != int(errs.NotFound) {
		t.Fatalf("show deleted VM: exit %d", code)
	}
}

func TestJSONEnvelopes(t *testing.T) {
	h := newHarness(t)
	h.ok("create", "vm1", "--kernel", h.kernel())
	out := h.ok("-j", "show", "vm1")
	var env struct {
		Status  string
		Message string
		Body    struct {
			Name, UUID, Status string
			ConsoleLog         string `json:"console_log"`
			NetworkCard        struct {
				Mode         string
				PortForwards []any `json:"port_forwarding_rules"`
			} `json:"network_card"`
		}
	}
	if err := json.Unmarshal([]byte(out), &env); err != nil {
		t.Fatal(err, out)
	}
	if env.Status != "OK" || env.Body.Name != "vm1" || env.Body.UUID == "" || env.Body.Status != "stopped" ||
		env.Body.ConsoleLog == "" || env.Body.NetworkCard.Mode != "shared" || env.Body.NetworkCard.PortForwards == nil {
		t.Fatalf("show envelope: %s", out)
	}
	out, _, code := h.run("-j", "modify", "vm1", "set", "network-card", "1")
	var e struct {
		Status  string
		Code    int
		Message string
	}
	json.Unmarshal([]byte(out), &e)
	if e.Status != "ERROR" || e.Code != code || code != int(errs.Invalid) || !strings.Contains(e.Message, "index") {
		t.Fatalf("error envelope %q exit %d", out, code)
	}
	// Usage errors from cobra itself are invalid input too.
	for _, args := range [][]string{{"show"}, {"frob"}, {"list", "--nope"}, {"stop"}, {"stop", "--all", "vm1"}} {
		if _, _, code := h.run(args...); code != int(errs.Invalid) {
			t.Errorf("anka %v: exit %d, want %d", args, code, errs.Invalid)
		}
	}
}

func TestConfigCommand(t *testing.T) {
	h := newHarness(t)
	if v := strings.TrimSpace(h.ok("config", "mtu")); v != "1500" {
		t.Fatalf("default mtu %q", v)
	}
	h.ok("config", "mtu", "9000")
	h.ok("config", "bridge_name", "eth0")
	if v := strings.TrimSpace(h.ok("config", "mtu")); v != "9000" {
		t.Fatalf("user mtu %q", v)
	}
	h.env["ANKA_MTU"] = "4000"
	if v := strings.TrimSpace(h.ok("config", "mtu")); v != "4000" {
		t.Fatalf("env mtu %q", v)
	}
	if v := strings.TrimSpace(h.ok("--mtu", "3000", "config", "mtu")); v != "3000" {
		t.Fatalf("flag mtu %q", v)
	}
	var list struct {
		Body []struct{ Key, Value, Source string }
	}
	json.Unmarshal([]byte(h.ok("-j", "config")), &list)
	sources := map[string]string{}
	for _, e := range list.Body {
		sources[e.Key] = e.Source + "=" + e.Value
	}
	for k, want := range map[string]string{"mtu": "env=4000", "bridge_name": "user=eth0", "portfwd_base": "default=10000"} {
		if sources[k] != want {
			t.Errorf("%s: %q, want %q", k, sources[k], want)
		}
	}
	h.ok("config", "--unset", "bridge_name")
	if v := strings.TrimSpace(h.ok("config", "bridge_name")); v != "auto" {
		t.Fatalf("bridge_name after unset %q", v)
	}
	before, _ := os.ReadFile(h.env["ANKA_CONFIG"])
	for _, args := range [][]string{{"config", "mtu", "70000"}, {"config", "start_address", "nonsense"}, {"config", "nokey", "1"}, {"config", "--unset"}} {
		if _, _, code := h.run(args...); code == 0 {
			t.Errorf("anka %v accepted", args)
		}
	}
	if after, _ := os.ReadFile(h.env["ANKA_CONFIG"]); !bytes.Equal(before, after) {
		t.Fatal("refused config changes altered the user file")
	}
}

func TestCompletionListsVMs(t *testing.T) {
	h := newHarness(t)
	h.ok("create", "alpha", "--kernel", h.kernel())
	h.ok("create", "beta", "--kernel", h.kernel())
	out := h.ok("__complete", "start", "")
	if !strings.Contains(out, "alpha\nbeta\n") {
		t.Fatalf("completion: %q", out)
	}
	if out := h.ok("completion", "bash"); !strings.Contains(out, "bash completion") {
		t.Fatalf("bash completion script: %.80q", out)
	}
}

func TestCaptureRefusesBadInput(t *testing.T) {
	h := newHarness(t)
	h.ok("create", "vm1", "--kernel", h.kernel())
	for _, tc := range []struct {
		args []string
		code errs.Kind
		want string
	}{
		{[]string{"capture", "vm1"}, errs.Invalid, "needs -w FILE"},
		{[]string{"capture", "vm1", "-w", filepath.Join(h.dir, "x.pcap"), "--duration", "-1s"}, errs.Invalid, "negative"},
		{[]string{"capture", "vm1", "-w", filepath.Join(h.dir, "no", "x.pcap")}, errs.Invalid, "does not exist"},
		{[]string{"capture", "vm1", "-w", h.dir}, errs.Invalid, "is a folder"},
		{[]string{"capture", "vm1", "-w", filepath.Join(h.dir, "x.pcap")}, errs.State, "is stopped"},
		{[]string{"capture", "nope", "-w", filepath.Join(h.dir, "x.pcap")}, errs.NotFound, "nope"},
	} {
		_, errOut, code := h.run(tc.args...)
		if code != int(tc.code) || !strings.Contains(errOut, tc.want) {
			t.Errorf("anka %v: exit %d %q, want %d with %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(h.dir, "x.pcap")); err == nil {
		t.Error("a refused capture left a file")
	}
}

// start with --no-wait, and a card no plugin reports on, returns at once.
func TestStartNoWait(t *testing.T) {
	h := newHarness(t)
	h.ok("create", "vm1", "--kernel", h.kernel())
	h.ok("modify", "vm1", "delete", "network-card")
	if out := h.ok("start", "--no-wait", "vm1"); !strings.Contains(out, "vm1 is running") || strings.Contains(out, "ip ") {
		t.Fatalf("start --no-wait: %s", out)
	}
	if _, errOut, code := h.run("start", "--timeout", "-1s", "vm1"); code != int(errs.Invalid) || !strings.Contains(errOut, "--timeout -1s") {
		t.Fatalf("start with a bad timeout: exit %d %s", code, errOut)
	}
}

// --endpoint names what an external VM's hypervisor connects to; bad or
// misplaced lists are refused and nothing is written.
func TestCreateEndpoints(t *testing.T) {
	h := newHarness(t)
	out := h.ok("-j", "create", "x1", "--runtime", "external", "--endpoint", "vhost-user,dgram")
	if !strings.Contains(strings.Join(strings.Fields(out), ""), `"endpoints":["vhost-user","dgram"]`) {
		t.Fatalf("create: %s", out)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"create", "x2", "--runtime", "external", "--endpoint", "pigeon"}, `"pigeon" is not an endpoint kind`},
		{[]string{"create", "x2", "--runtime", "external", "--endpoint", "dgram,dgram"}, "twice"},
		{[]string{"create", "x2", "--runtime", "external", "--endpoint", ""}, "--endpoint is empty"},
		{[]string{"create", "x2", "--kernel", h.kernel(), "--endpoint", "dgram"}, "--endpoint is for --runtime external"},
	} {
		_, errOut, code := h.run(c.args...)
		if code != int(errs.Invalid) || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d %q; want %q", c.args, code, errOut, c.want)
		}
	}
	if _, _, code := h.run("show", "x2"); code != int(errs.NotFound) {
		t.Fatalf("a refused create left VM x2 behind: exit %d", code)
	}
}

// What an external VM's hypervisor is told to connect to, for each kind.
func TestPrintEndpoint(t *testing.T) {
	for _, c := range []struct {
		ep   runtime.ExternalEndpoint
		want []string
	}{
		{runtime.ExternalEndpoint{Kind: "dgram", PluginPath: "/s/p.sock", VMPath: "/s/v.sock", MAC: "02:00:00:00:00:01", LinkUp: true}, []string{"bind /s/v.sock and send to /s/p.sock", "MAC 02:00:00:00:00:01"}},
		{runtime.ExternalEndpoint{Kind: "stream", PluginPath: "/s/p.sock", LinkUp: true}, []string{"unix stream socket /s/p.sock"}},
		{runtime.ExternalEndpoint{Kind: "vhost-user", PluginPath: "/s/vu.sock", LinkUp: true}, []string{"vhost-user net, front-end (client) of socket /s/vu.sock", "share=on"}},
		{runtime.ExternalEndpoint{Kind: "tap", TAP: "aks1", MAC: "02:00:00:00:00:02"}, []string{"TAP device aks1", "link down"}},
	} {
		var b strings.Builder
		printEndpoint(&b, &c.ep)
		for _, w := range c.want {
			if !strings.Contains(b.String(), w) {
				t.Errorf("%s endpoint: %q lacks %q", c.ep.Kind, b.String(), w)
			}
		}
	}
}
