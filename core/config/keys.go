package config

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/anka-net/anka/sdk"
)

// Source says which layer a value came from.
type Source string

// The layers, highest precedence first.
const (
	SourceFlag    Source = "flag"
	SourceEnv     Source = "env"
	SourceUser    Source = "user"
	SourceSystem  Source = "system"
	SourceDefault Source = "default"
)

const (
	// EnvPrefix starts every configuration environment variable.
	EnvPrefix = "ANKA_"
	// EnvConfig names the user config file (the --config flag wins over it).
	EnvConfig = "ANKA_CONFIG"
	// EnvSystemConfig replaces DefaultSystemFile, for tests and packagers.
	EnvSystemConfig = "ANKA_SYSTEM_CONFIG"
	// ConfigFlag is the global flag naming the user config file.
	ConfigFlag = "config"
	// DefaultSystemFile is the host-wide config file.
	DefaultSystemFile = "/etc/anka/config.yaml"

	pluginsPrefix = "plugins."
	fieldPath     = "path"
	fieldSHA256   = "sha256"
)

// builtinPluginTypes always have plugin keys and flags, so `anka config`
// shows where each shipped type could be pinned.
var builtinPluginTypes = []string{"bridge", "disconnected", "example", "host", "shared", "static"}

// BuiltinPluginTypes lists the types whose plugin keys always exist.
func BuiltinPluginTypes() []string { return append([]string(nil), builtinPluginTypes...) }

type keyDef struct {
	def   string
	usage string
	// norm checks a raw value and returns it in canonical form, or a reason
	// that completes the sentence `<key> "<value>" from <origin> ...`.
	norm func(string) (string, error)
}

var staticKeys = map[string]keyDef{
	"bridge_name":        {"auto", "interface VMs in bridge mode join, or auto", normBridge},
	"state_dir":          {"/var/lib/anka", "folder for VM definitions, leases and sockets", normAbsPath},
	"plugin_dir":         {"/usr/local/lib/anka/plugins", "folder searched for anka-net-<type> plugin binaries", normAbsPath},
	"start_address":      {"192.168.64.2", "first DHCP address of the shared network", normUnicast},
	"end_address":        {"192.168.64.254", "last DHCP address of the shared network", normUnicast},
	"subnet_mask":        {"255.255.255.0", "netmask of the shared network", normMask},
	"host_start_address": {"192.168.128.2", "first DHCP address of the host network", normUnicast},
	"host_end_address":   {"192.168.128.254", "last DHCP address of the host network", normUnicast},
	"host_subnet_mask":   {"255.255.255.0", "netmask of the host network", normMask},
	"lease_time":         {"86400s", "DHCP lease time: a duration (24h) or seconds (86400), at least 60s", normLease},
	"portfwd_base":       {"10000", "first host port handed out by automatic port forwarding", normIntRange(1, 65535)},
	"mtu":                {"1500", "MTU of the VM networks", normIntRange(576, 65520)},
	"log_level":          {"info", "debug, info, warn or error", normLogLevel},
	"plugin_user":        {"anka-net", "user the network plugins run as (with only the capabilities they need): a user name, uid:gid, or root", normPluginUser},
	"vhost_user":         {"on", "on: QEMU VMs that need the user-space switch (-m) reach it over vhost-user, their memory shared with the plugin; off: over datagram sockets", normOnOff},
	"plugin_timeout":     {"30s", "how long one call to a network plugin may take before anka gives up on it (show waits at most 10s)", normPluginTimeout},
}

// Keys returns the static keys, sorted. Plugin keys
// (plugins.<type>.path, plugins.<type>.sha256) come on top of these.
func Keys() []string {
	ks := make([]string, 0, len(staticKeys))
	for k := range staticKeys {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// PluginKey returns the key of one plugin field ("path" or "sha256").
func PluginKey(typ, field string) string { return pluginsPrefix + typ + "." + field }

// FlagName is the global flag of key: start_address -> start-address,
// plugins.my-net.path -> plugins-my-net-path.
func FlagName(key string) string { return strings.NewReplacer("_", "-", ".", "-").Replace(key) }

// EnvName is the environment variable of key: start_address ->
// ANKA_START_ADDRESS, plugins.my-net.path -> ANKA_PLUGINS_MY_NET_PATH.
func EnvName(key string) string {
	return EnvPrefix + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(key))
}

// parsePluginKey splits plugins.<type>.<field>.
func parsePluginKey(key string) (typ, field string, ok bool) {
	rest, ok := strings.CutPrefix(key, pluginsPrefix)
	if !ok {
		return "", "", false
	}
	i := strings.LastIndexByte(rest, '.')
	if i < 0 {
		return "", "", false
	}
	typ, field = rest[:i], rest[i+1:]
	if field != fieldPath && field != fieldSHA256 || sdk.ValidateTypeName(typ) != nil {
		return "", "", false
	}
	return typ, field, true
}

// pluginFlagKey maps a flag name plugins-<type>-path back to its key. Type
// names never contain '_' or '.', and the field is the last dash part.
func pluginFlagKey(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, "plugins-")
	if !ok {
		return "", false
	}
	for _, field := range []string{fieldPath, fieldSHA256} {
		if typ, ok := strings.CutSuffix(rest, "-"+field); ok && sdk.ValidateTypeName(typ) == nil {
			return PluginKey(typ, field), true
		}
	}
	return "", false
}

// pluginEnvKey maps ANKA_PLUGINS_MY_NET_PATH back to plugins.my-net.path.
func pluginEnvKey(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, EnvPrefix+"PLUGINS_")
	if !ok {
		return "", false
	}
	for _, field := range []string{fieldPath, fieldSHA256} {
		if t, ok := strings.CutSuffix(rest, "_"+strings.ToUpper(field)); ok {
			typ := strings.ReplaceAll(strings.ToLower(t), "_", "-")
			if sdk.ValidateTypeName(typ) == nil {
				return PluginKey(typ, field), true
			}
		}
	}
	return "", false
}

// knownKey reports whether key is a static key or a well-formed plugin key.
func knownKey(key string) bool {
	if _, ok := staticKeys[key]; ok {
		return true
	}
	_, _, ok := parsePluginKey(key)
	return ok
}

// normalize checks value for key and returns its canonical form.
func normalize(key, value string) (string, error) {
	if i := strings.IndexFunc(value, isControl); i >= 0 {
		return "", fmt.Errorf("has a control character (%q at byte %d): no key takes one; retype the value", value[i], i)
	}
	if d, ok := staticKeys[key]; ok {
		return d.norm(value)
	}
	if _, field, ok := parsePluginKey(key); ok {
		if field == fieldPath {
			return normPluginPath(value)
		}
		return normSHA256(value)
	}
	return "", fmt.Errorf("is not a known key")
}

// defaultValue is "" for plugin keys: no path means discovery, no sha256
// means no pin.
func defaultValue(key string) string { return staticKeys[key].def }

// unknownKeyError is the sentence for a key nobody knows, with a hint.
func unknownKeyError(key, where string) string {
	msg := fmt.Sprintf("unknown config key %q%s", key, where)
	if s := suggest(key); s != "" {
		msg += fmt.Sprintf(" (did you mean %s?)", s)
	} else if strings.HasPrefix(key, "plugins") {
		msg += " (plugin keys are plugins.<type>.path and plugins.<type>.sha256, the type in lower case letters, digits and dashes)"
	}
	return msg + ": fix or remove it; run `anka config` to list the keys"
}

func suggest(key string) string {
	k := strings.NewReplacer("-", "_", " ", "_").Replace(strings.ToLower(strings.TrimSpace(key)))
	if _, ok := staticKeys[k]; ok {
		return k
	}
	if typ, field, ok := parsePluginKey(strings.ReplaceAll(k, "_", "-")); ok {
		return PluginKey(typ, field)
	}
	best, bestD := "", 3
	for _, s := range Keys() {
		if d := editDistance(k, s); d < bestD {
			best, bestD = s, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			cur[j] = min(c, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// isControl reports the bytes no configuration value (and no name) may
// hold: NUL, newlines, escapes.
func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

func normBridge(v string) (string, error) {
	if v == "auto" {
		return v, nil
	}
	// The kernel's dev_valid_name rules.
	switch {
	case v == "":
		return "", fmt.Errorf("is empty: give an interface name such as eth0, or auto")
	case len(v) > 15:
		return "", fmt.Errorf("is longer than 15 characters, the limit for Linux interface names")
	case v == "." || v == ".." || strings.ContainsAny(v, "/: \t\n\r\v\f"):
		return "", fmt.Errorf("is not a valid interface name: give one such as eth0 (see `ip link`), or auto")
	}
	return v, nil
}

func normAbsPath(v string) (string, error) {
	if !filepath.IsAbs(v) {
		return "", fmt.Errorf("is not an absolute path: give one starting with /")
	}
	return filepath.Clean(v), nil
}

func normPluginPath(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	if !filepath.IsAbs(v) {
		return "", fmt.Errorf("is not an absolute path: give the plugin binary's full path, such as /usr/local/lib/anka/plugins/anka-net-shared")
	}
	return filepath.Clean(v), nil
}

func normSHA256(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	if len(v) != 64 {
		return "", fmt.Errorf("is not a SHA-256 checksum: it has %d characters, a checksum has 64 hex digits (run sha256sum on the plugin binary)", len(v))
	}
	for _, c := range v {
		if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
			return "", fmt.Errorf("is not a SHA-256 checksum: %q is not a hex digit (run sha256sum on the plugin binary)", c)
		}
	}
	return strings.ToLower(v), nil
}

func parseIPv4(v string) (netip.Addr, error) {
	a, err := netip.ParseAddr(v)
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("is not an IPv4 address: write it like 192.168.64.2")
	}
	return a, nil
}

func normUnicast(v string) (string, error) {
	a, err := parseIPv4(v)
	if err != nil {
		return "", err
	}
	if !a.IsGlobalUnicast() {
		return "", fmt.Errorf("is not a unicast address a VM can lease: use a private range such as 192.168.64.2")
	}
	return a.String(), nil
}

// maskBits returns the prefix length of a contiguous IPv4 netmask.
func maskBits(m netip.Addr) (int, bool) {
	u := binary.BigEndian.Uint32(m.AsSlice())
	ones := bits.LeadingZeros32(^u)
	return ones, ones == 32 || u<<ones == 0
}

func normMask(v string) (string, error) {
	a, err := netip.ParseAddr(v)
	if err != nil || !a.Is4() {
		return "", fmt.Errorf("is not a netmask: write it like 255.255.255.0")
	}
	n, ok := maskBits(a)
	if !ok {
		return "", fmt.Errorf("is not a contiguous netmask (its one bits must come first): write it like 255.255.255.0")
	}
	if n < 8 || n > 30 {
		return "", fmt.Errorf("is a /%d netmask; a VM network needs /8 to /30, such as 255.255.255.0", n)
	}
	return a.String(), nil
}

// maxLease is the longest finite DHCP lease (0xffffffff means infinite).
const maxLease = (1<<32 - 2) * time.Second

func parseLease(v string) (time.Duration, error) {
	var d time.Duration
	if n, err := strconv.ParseUint(v, 10, 64); err == nil {
		if n > uint64(maxLease/time.Second) {
			return 0, fmt.Errorf("is longer than DHCP allows (%d seconds)", uint64(maxLease/time.Second))
		}
		d = time.Duration(n) * time.Second
	} else if d, err = time.ParseDuration(v); err != nil {
		return 0, fmt.Errorf("is not a duration: write it like 24h, 90m or 86400 (seconds)")
	}
	switch {
	case d < time.Minute:
		return 0, fmt.Errorf("is shorter than 60s, the shortest lease anka hands out: give 60s or more")
	case d > maxLease:
		return 0, fmt.Errorf("is longer than DHCP allows (%d seconds)", uint64(maxLease/time.Second))
	case d%time.Second != 0:
		return 0, fmt.Errorf("is not whole seconds, as DHCP counts leases: round it, e.g. 90s")
	}
	return d, nil
}

func normLease(v string) (string, error) {
	if _, err := parseLease(v); err != nil {
		return "", err
	}
	return v, nil
}

func normIntRange(lo, hi int) func(string) (string, error) {
	return func(v string) (string, error) {
		n, err := strconv.Atoi(v)
		if err != nil {
			return "", fmt.Errorf("is not a whole number: give one from %d to %d", lo, hi)
		}
		if n < lo || n > hi {
			return "", fmt.Errorf("is out of range: give a number from %d to %d", lo, hi)
		}
		return strconv.Itoa(n), nil
	}
}

// normPluginUser takes a user name as useradd does, a numeric uid:gid
// (which needs no passwd entry), or root. Whether the user exists is
// checked when a plugin starts, so it can be set before it is created.
func normPluginUser(v string) (string, error) {
	if uid, gid, ok := strings.Cut(v, ":"); ok {
		for _, n := range []string{uid, gid} {
			if x, err := strconv.ParseUint(n, 10, 32); err != nil || x == 1<<32-1 {
				return "", fmt.Errorf("is not uid:gid: give two numbers, like 990:990, or a user name")
			}
		}
		return v, nil
	}
	if len(v) == 0 || len(v) > 32 {
		return "", fmt.Errorf("is not a user name: give a name of 1 to 32 characters, uid:gid, or root")
	}
	for i, r := range v {
		if !(r == '_' || r >= 'a' && r <= 'z' || i > 0 && (r == '-' || r >= '0' && r <= '9')) {
			return "", fmt.Errorf("is not a user name: use lower-case letters, digits, - and _ (starting with a letter or _), uid:gid, or root")
		}
	}
	return v, nil
}

func normOnOff(v string) (string, error) {
	switch strings.ToLower(v) {
	case "on", "true", "yes", "1":
		return "on", nil
	case "off", "false", "no", "0":
		return "off", nil
	}
	return "", fmt.Errorf("is not on or off: use on or off")
}

func normLogLevel(v string) (string, error) {
	l := strings.ToLower(v)
	switch l {
	case "debug", "info", "warn", "error":
		return l, nil
	}
	return "", fmt.Errorf("is not a log level: use debug, info, warn or error")
}

// Bounds of plugin_timeout: under a second a busy host fails healthy
// calls; over ten minutes a hung plugin looks like a hung anka.
const (
	minPluginTimeout = time.Second
	maxPluginTimeout = 10 * time.Minute
)

func normPluginTimeout(v string) (string, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		return "", fmt.Errorf("is not a duration: write it like 30s or 2m")
	}
	if d < minPluginTimeout || d > maxPluginTimeout {
		return "", fmt.Errorf("is out of range: give %s to %s", minPluginTimeout, maxPluginTimeout)
	}
	return d.String(), nil
}
