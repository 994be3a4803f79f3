package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/anka-net/anka/core/errs"
)

// baseArgs is a valid command line for each command whose flags take
// values; the flag under test is appended to it. Walking the tree below
// fails for a command missing here, so a new command is not forgotten.
func baseArgs(kernel string) map[string][]string {
	return map[string][]string{
		"create":                        {"create", "new1", "--kernel", kernel},
		"list":                          {"list"},
		"show":                          {"show", "vm1"},
		"start":                         {"start", "vm1"},
		"stop":                          {"stop", "vm1"},
		"suspend":                       {"suspend", "vm1"},
		"delete":                        {"delete", "vm1"},
		"modify":                        {"modify"},
		"modify set":                    {"modify", "set"},
		"modify add":                    {"modify", "add"},
		"modify delete":                 {"modify", "delete"},
		"modify set network-card":       {"modify", "set", "network-card", "vm1"},
		"modify add network-card":       {"modify", "add", "network-card", "vm2"},
		"modify add port-forwarding":    {"modify", "add", "port-forwarding", "vm1", "web", "-g", "80"},
		"modify delete network-card":    {"modify", "delete", "network-card", "vm1"},
		"modify delete port-forwarding": {"modify", "delete", "port-forwarding", "vm1", "ssh"},
		"config":                        {"config", "mtu", "1400"},
		"plugin":                        {"plugin"},
		"plugin list":                   {"plugin", "list"},
		"plugin info":                   {"plugin", "info", "shared"},
		"plugin restart":                {"plugin", "restart", "shared"},
		"daemon":                        {"daemon"},
		"daemon status":                 {"daemon", "status"},
		"daemon start":                  {"daemon", "start"},
		"daemon stop":                   {"daemon", "stop"},
		"capture":                       {"capture", "vm1", "-w", "/tmp/never-written.pcap"},
		"version":                       {"version"},
	}
}

// flagBase replaces the base command line for a flag that only means
// something with another flag: --ip on a static card, -b on a bridge one.
func flagBase(key string, base []string) []string {
	switch key {
	case "modify set network-card --ip":
		return append(append([]string{}, base...), "-t", "static")
	case "modify set network-card --bridge":
		return append(append([]string{}, base...), "-t", "bridge")
	}
	return base
}

// anyString lists flag values that are legitimately accepted, each with
// the reason; every other malformed value must be refused.
var anyString = map[string]map[string]string{
	"create --append": {
		"":        "an empty kernel command line adds nothing",
		"../../x": "the kernel command line is free text for the guest",
		"a/b":     "the kernel command line is free text for the guest",
	},
	"capture --write": {
		"../../x": "a relative pcap path is resolved against the working directory, whose parent's parent exists",
	},
}

// anyGlobal are global (config) flags whose empty value means "unset":
// no plugin path means discovery, no sha256 means no pin.
func anyGlobal(name, value string) bool {
	return strings.HasPrefix(name, "plugins-") && value == ""
}

// aliases are the words a message may use for a flag instead of its name.
var aliases = map[string][]string{
	"guest-port": {"guest port"},
	"host-port":  {"host port"},
	"host-ip":    {"host IP"},
	"option":     {"-o "},
	"mac":        {"MAC", "-m "},
	"ram":        {"RAM"},
	"write":      {"-w "},
	"bridge":     {"interface", "-b"},
	"type":       {"type"},
}

// malformed are values no flag of its kind should take.
func malformed(kind string) []string {
	long := strings.Repeat("a", 4096)
	common := []string{"", long, "x\x00y", "../../x", "a/b"}
	switch kind {
	case "bool":
		return []string{"", "maybe", "2", "x\x00"}
	case "int":
		return append(common, "abc", "-1", "99999999999999999999", "1.5", "0x")
	case "duration":
		return append(common, "abc", "-1s", "99999999999h", "5")
	}
	return common
}

// specific are the malformed values of a flag's own domain (MAC, IP,
// port, CIDR, size...), on top of those of its kind.
var specific = map[string][]string{
	"mac":                {"zz:zz:zz:zz:zz:zz", "01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "52:54:00:12:34", "52-54-00-12-34-56-78"},
	"ip":                 {"256.1.1.1", "192.168.64.0/24", "::1", "192.168.64.1", "192.168.64.255", "10.0.0.5"},
	"host-ip":            {"256.0.0.1", "0.0.0.0/0", "localhost", "1.2.3"},
	"guest-port":         {"0", "65536", "70000"},
	"host-port":          {"65536", "70000"},
	"protocol":           {"sctp", "icmp", "tcp udp"},
	"type":               {"wifi", "Shared", "shared;rm", "-t"},
	"bridge":             {"eth0:1", "eth 0", "sixteen-chars-ab", ".."},
	"ram":                {"0", "31M", "2T", "1.5G", "G"},
	"option":             {"=v", "a b=c", "k\x00=v", "segment=x\x00y", "segment=line\nbreak"},
	"cpu":                {"0", "65"},
	"runtime":            {"kvm", "QEMU"},
	"start-address":      {"192.168.64.0/24", "256.1.1.1", "192.168.64.1", "224.0.0.1"},
	"end-address":        {"192.168.65.10", "192.168.64.255", "::1"},
	"subnet-mask":        {"255.0.255.0", "255.255.255.255", "/24", "24"},
	"host-start-address": {"192.168.64.10"}, // overlaps the shared network
	"host-subnet-mask":   {"0.0.0.0"},
	"mtu":                {"100", "65521"},
	"portfwd-base":       {"0", "65536"},
	"lease-time":         {"1ms", "59s", "1.5s", "forever"},
	"log-level":          {"loud", "trace"},
	"plugin-timeout":     {"0s", "1h", "100ms"},
	"state-dir":          {"var/lib/anka", "relative"},
	"plugin-dir":         {"plugins"},
	"bridge-name":        {"eth0 eth1", "a-very-long-interface", "eth0:1"},
	"timeout":            {"0s"}, // start waits for an address: 0 is no wait, use --no-wait
}

type fileSnap map[string][]byte

func snapshot(t *testing.T, dirs ...string) fileSnap {
	s := fileSnap{}
	for _, d := range dirs {
		filepath.Walk(d, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() && !strings.HasSuffix(p, ".lock") {
				b, _ := os.ReadFile(p)
				s[p] = b
			}
			return nil
		})
	}
	return s
}

func (s fileSnap) diff(o fileSnap) string {
	var out []string
	for p, b := range s {
		if ob, ok := o[p]; !ok || !bytes.Equal(b, ob) {
			out = append(out, "changed or removed "+p)
		}
	}
	for p := range o {
		if _, ok := s[p]; !ok {
			out = append(out, "new "+p)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

// walk visits every command under c.
func walk(c *cobra.Command, fn func(*cobra.Command)) {
	fn(c)
	for _, sub := range c.Commands() {
		walk(sub, fn)
	}
}

// Every flag of every command, found by walking the command tree, is fed
// malformed values: each is refused with exit code 2 and a message that
// names the flag, never a panic, and no file under the state dir or the
// config files changes.
func TestEveryFlagRefusesMalformedValues(t *testing.T) {
	h := newHarness(t)
	kernel := h.kernel()
	h.ok("create", "vm1", "--kernel", kernel)
	h.ok("create", "vm2", "--kernel", kernel)
	h.ok("modify", "vm2", "delete", "network-card")
	h.ok("modify", "vm1", "add", "port-forwarding", "ssh", "-g", "22")
	h.ok("config", "portfwd_base", "20000")
	os.WriteFile(h.env["ANKA_SYSTEM_CONFIG"], []byte("mtu: 1400\n"), 0o644)
	stateDir := h.env["ANKA_STATE_DIR"]
	watched := []string{filepath.Join(stateDir, "vms"), filepath.Join(stateDir, "macpool.yaml"), h.env["ANKA_CONFIG"], h.env["ANKA_SYSTEM_CONFIG"]}
	before := snapshot(t, watched...)

	root, _ := NewCmdRoot(&Factory{}, nil)
	bases := baseArgs(kernel)
	type tc struct {
		name  string
		args  []string
		flag  *pflag.Flag
		value string
	}
	var cases []tc
	flagsSeen := 0
	walk(root, func(c *cobra.Command) {
		path := strings.TrimPrefix(c.CommandPath(), "anka")
		path = strings.TrimSpace(path)
		if path == "" {
			// Global flags (config keys, -j, --config) on a command that
			// loads the configuration.
			root.PersistentFlags().VisitAll(func(fl *pflag.Flag) {
				flagsSeen++
				for _, v := range append(malformed(fl.Value.Type()), specific[fl.Name]...) {
					if anyGlobal(fl.Name, v) || (fl.Name == "config" && (v == "../../x" || v == "a/b")) {
						continue // a relative --config path is a file like any other
					}
					cases = append(cases, tc{"--" + fl.Name, append([]string{"--" + fl.Name + "=" + v}, "list"), fl, v})
				}
			})
			return
		}
		base, ok := bases[path]
		if !ok {
			t.Errorf("command %q has no base command line in baseArgs: add one", path)
			return
		}
		c.LocalNonPersistentFlags().VisitAll(func(fl *pflag.Flag) {
			flagsSeen++
			key := path + " --" + fl.Name
			vals := malformed(fl.Value.Type())
			if fl.Name != "timeout" || path == "start" {
				vals = append(vals, specific[fl.Name]...)
			}
			for _, v := range vals {
				if _, ok := anyString[key][v]; ok {
					continue
				}
				args := append(append([]string{}, flagBase(key, base)...), "--"+fl.Name+"="+v)
				cases = append(cases, tc{key, args, fl, v})
			}
		})
	})
	if flagsSeen < 30 {
		t.Fatalf("walked only %d flags: is the tree walk broken?", flagsSeen)
	}
	for _, c := range cases {
		label := c.name + "=" + printable(c.value)
		_, stderr, code := h.run(c.args...)
		if code == 0 {
			t.Errorf("%s: accepted (exit 0)", label)
			continue
		}
		if code != int(errs.Invalid) {
			t.Errorf("%s: exit %d, want %d (invalid input): %s", label, code, errs.Invalid, printable(stderr))
		}
		if !namesFlag(stderr, c.flag) {
			t.Errorf("%s: the error does not name the flag: %s", label, printable(stderr))
		}
		if strings.ContainsRune(stderr, 0) {
			t.Errorf("%s: the error prints a raw NUL byte: %s", label, printable(stderr))
		}
		if strings.Contains(stderr, "goroutine ") || strings.Contains(stderr, "panic") {
			t.Errorf("%s: panicked: %s", label, stderr)
		}
		if d := before.diff(snapshot(t, watched...)); d != "" {
			t.Fatalf("%s: files changed: %s", label, d)
		}
	}
	t.Logf("%d flags, %d malformed values refused", flagsSeen, len(cases))
}

func namesFlag(msg string, fl *pflag.Flag) bool {
	cands := append([]string{"--" + fl.Name, fl.Name, strings.ReplaceAll(fl.Name, "-", "_"), strings.ReplaceAll(fl.Name, "-", " ")}, aliases[fl.Name]...)
	if fl.Shorthand != "" {
		cands = append(cands, "-"+fl.Shorthand+" ")
	}
	for _, c := range cands {
		if strings.Contains(msg, c) {
			return true
		}
	}
	return false
}

// printable shortens and quotes a value for a test message.
func printable(s string) string {
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	return strings.ReplaceAll(s, "\x00", `\x00`)
}

// Positional names (VMs, rules, types, keys) that could escape the state
// dir or are plainly malformed are refused by every command taking one.
func TestEveryNameRefusesMalformedValues(t *testing.T) {
	h := newHarness(t)
	kernel := h.kernel()
	h.ok("create", "vm1", "--kernel", kernel)
	h.ok("modify", "vm1", "add", "port-forwarding", "ssh", "-g", "22")
	stateDir := h.env["ANKA_STATE_DIR"]
	before := snapshot(t, stateDir)
	bad := []string{"", strings.Repeat("v", 4096), "a\x00b", "../../x", "a/b", "..", ".hidden", "/etc/passwd", "vm 1", "-"}
	lines := map[string]func(n string) []string{
		"create":          func(n string) []string { return []string{"create", n, "--kernel", kernel} },
		"show":            func(n string) []string { return []string{"show", n} },
		"start":           func(n string) []string { return []string{"start", n} },
		"stop":            func(n string) []string { return []string{"stop", n} },
		"suspend":         func(n string) []string { return []string{"suspend", n} },
		"delete":          func(n string) []string { return []string{"delete", n} },
		"capture":         func(n string) []string { return []string{"capture", n, "-w", filepath.Join(h.dir, "x.pcap")} },
		"set card":        func(n string) []string { return []string{"modify", n, "set", "network-card", "-t", "host"} },
		"add card":        func(n string) []string { return []string{"modify", n, "add", "network-card"} },
		"delete card":     func(n string) []string { return []string{"modify", n, "delete", "network-card"} },
		"add rule VM":     func(n string) []string { return []string{"modify", n, "add", "port-forwarding", "web", "-g", "80"} },
		"add rule":        func(n string) []string { return []string{"modify", "vm1", "add", "port-forwarding", n, "-g", "80"} },
		"delete rule":     func(n string) []string { return []string{"modify", "vm1", "delete", "port-forwarding", n} },
		"delete rule VM":  func(n string) []string { return []string{"modify", n, "delete", "port-forwarding", "--all"} },
		"plugin info":     func(n string) []string { return []string{"plugin", "info", n} },
		"plugin restart":  func(n string) []string { return []string{"plugin", "restart", n} },
		"config get":      func(n string) []string { return []string{"config", n} },
		"config set":      func(n string) []string { return []string{"config", n, "1"} },
		"config unset":    func(n string) []string { return []string{"config", "--unset", n} },
		"config set mtu":  func(n string) []string { return []string{"config", "mtu", n} },
		"config set pdir": func(n string) []string { return []string{"config", "plugin_dir", n} },
	}
	for what, line := range lines {
		for _, n := range bad {
			if what == "config set pdir" && n == "/etc/passwd" {
				continue // an absolute path is what plugin_dir takes; it need not exist yet
			}
			label := what + " " + printable(n)
			_, stderr, code := h.run(line(n)...)
			switch {
			case code == 0:
				t.Errorf("%s: accepted", label)
			case code != int(errs.Invalid) && code != int(errs.NotFound):
				t.Errorf("%s: exit %d, want invalid or not found: %s", label, code, printable(stderr))
			case strings.TrimSpace(stderr) == "" || strings.ContainsRune(stderr, 0):
				t.Errorf("%s: no message, or one with a raw NUL: %s", label, printable(stderr))
			}
			if d := before.diff(snapshot(t, stateDir)); d != "" {
				t.Fatalf("%s: files changed: %s", label, d)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(h.dir, "x")); err == nil {
		t.Fatal("a name escaped the state dir")
	}
}
