package config

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/sdk"
)

// Options says where Load finds its layers. The zero value reads the
// process's environment and the default files, with no flags.
type Options struct {
	// Flags are the root command's persistent flags after RegisterFlags
	// and parsing; nil means no flags.
	Flags *pflag.FlagSet
	// LookupEnv reads one variable; nil means os.LookupEnv.
	LookupEnv func(string) (string, bool)
	// Environ lists the environment to discover ANKA_PLUGINS_* types; nil
	// means os.Environ.
	Environ func() []string
	// UserFile overrides the user config path; "" resolves it from
	// --config, ANKA_CONFIG, XDG_CONFIG_HOME and HOME, in that order.
	UserFile string
	// SystemFile overrides the system config path; "" means
	// ANKA_SYSTEM_CONFIG or DefaultSystemFile.
	SystemFile string
}

func (o Options) withDefaults() Options {
	if o.LookupEnv == nil {
		o.LookupEnv = os.LookupEnv
	}
	if o.Environ == nil {
		o.Environ = os.Environ
	}
	return o
}

// env reads a variable; empty counts as unset, as viper's default does, so
// `ANKA_BRIDGE_NAME= anka ...` does not feed an empty value in.
func (o Options) env(name string) (string, bool) {
	v, ok := o.LookupEnv(name)
	return v, ok && v != ""
}

// Subnet is one VM network: the DHCP range, its mask, and what follows.
type Subnet struct {
	Start, End, Mask netip.Addr
	Prefix           netip.Prefix // network address and length
	Gateway          netip.Addr   // first host, the host's side (.1)
}

// Plugin pins the binary of one network type.
type Plugin struct {
	Path   string // "" = discover it
	SHA256 string // lower-case hex; "" = not pinned
}

// Config is the resolved configuration. Business code reads these typed
// fields, never viper.
type Config struct {
	BridgeName  string
	StateDir    string
	PluginDir   string
	Shared      Subnet
	Host        Subnet
	LeaseTime   time.Duration
	PortFwdBase int
	MTU         int
	LogLevel    string
	// PluginUser is who plugins run as: a name, "uid:gid", or "root".
	PluginUser string
	// PluginTimeout bounds each call to a plugin (plugin_timeout).
	PluginTimeout time.Duration
	// VhostUser lets QEMU VMs reach the switch over vhost-user (vhost_user).
	VhostUser bool
	// Plugins holds the types with a path or a sha256 set.
	Plugins map[string]Plugin

	UserFile   string // "" when neither HOME nor a --config/ANKA_CONFIG path exists
	SystemFile string

	entries map[string]Entry
}

// Entry is one key's effective value and where it came from.
type Entry struct {
	Key    string
	Value  string // canonical form (paths cleaned, checksums lower case)
	Source Source
	File   string // for SourceUser and SourceSystem
}

// Origin says where the value came from in words a user can act on:
// "flag --mtu", "env ANKA_MTU", "user config /root/.config/anka/config.yaml",
// "built-in default".
func (e Entry) Origin() string {
	switch e.Source {
	case SourceFlag:
		return "flag --" + FlagName(e.Key)
	case SourceEnv:
		return "env " + EnvName(e.Key)
	case SourceUser, SourceSystem:
		return string(e.Source) + " config " + e.File
	}
	return "built-in default"
}

// Entries lists every key, sorted, with plugin keys for every known type:
// the built-in ones and any named in a file, the environment or a flag.
func (c *Config) Entries() []Entry {
	out := make([]Entry, 0, len(c.entries))
	for _, e := range c.entries {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// Get returns one key. A well-formed plugin key of a type nobody named
// yet is valid and empty.
func (c *Config) Get(key string) (Entry, error) {
	if e, ok := c.entries[key]; ok {
		return e, nil
	}
	if _, _, ok := parsePluginKey(key); ok {
		return Entry{Key: key, Source: SourceDefault}, nil
	}
	return Entry{}, errs.Invalidf("%s", unknownKeyError(key, ""))
}

// layer is one source's raw values by key.
type layer struct {
	source Source
	file   string
	values map[string]string
}

// Load resolves every key: flag, then ANKA_* env, then the user file, then
// the system file, then the built-in default. Every bad value, unknown key
// and broken file is reported together in one errs.Invalid error.
func Load(o Options) (*Config, error) {
	o = o.withDefaults()
	userFile, systemFile, err := resolveFiles(o)
	if err != nil {
		return nil, err
	}
	var problems []string
	flags := flagLayer(o.Flags)
	user, p, err := readFile(userFile, SourceUser)
	if err != nil {
		return nil, err
	}
	problems = append(problems, p...)
	system, p, err := readFile(systemFile, SourceSystem)
	if err != nil {
		return nil, err
	}
	problems = append(problems, p...)
	env, p := envLayer(o, typesOf(flags, user, system))
	problems = append(problems, p...)
	return build(userFile, systemFile, problems, flags, env, user, system)
}

// resolveFiles finds the user and system config paths.
func resolveFiles(o Options) (user, system string, err error) {
	system = o.SystemFile
	if system == "" {
		system = DefaultSystemFile
		if v, ok := o.env(EnvSystemConfig); ok {
			system = v
		}
	}
	user = o.UserFile
	if user == "" && o.Flags != nil {
		if f := o.Flags.Lookup(ConfigFlag); f != nil && f.Changed {
			user = f.Value.String()
			if user == "" {
				return "", "", errs.Invalidf("--config is empty: give the path of the user config file, or leave --config out")
			}
		}
	}
	if user == "" {
		user, _ = o.env(EnvConfig)
	}
	if user == "" {
		// XDG says a relative XDG_CONFIG_HOME is invalid and to be ignored.
		if x, ok := o.env("XDG_CONFIG_HOME"); ok && filepath.IsAbs(x) {
			user = filepath.Join(x, "anka", "config.yaml")
		} else if h, ok := o.env("HOME"); ok {
			user = filepath.Join(h, ".config", "anka", "config.yaml")
		}
	}
	for _, p := range []*string{&user, &system} {
		if strings.IndexFunc(*p, isControl) >= 0 {
			return "", "", errs.Invalidf("config file path %q has a control character: give a plain path (--config, %s or %s)", *p, EnvConfig, EnvSystemConfig)
		}
		if *p != "" {
			if *p, err = filepath.Abs(*p); err != nil {
				return "", "", errs.Invalidf("cannot resolve config path: %v", err)
			}
		}
	}
	return user, system, nil
}

// flagLayer takes the changed flags that name keys; the CLI's own flags
// (--machine-readable, ...) and --config are skipped.
func flagLayer(fs *pflag.FlagSet) layer {
	l := layer{source: SourceFlag, values: map[string]string{}}
	if fs == nil {
		return l
	}
	static := map[string]string{}
	for _, k := range Keys() {
		static[FlagName(k)] = k
	}
	// VisitAll and Flag.Changed, not Visit: cobra parses a subcommand's
	// merged flag set, which shares the *Flag values with the root's
	// persistent flags but records "set" only in its own FlagSet.
	fs.VisitAll(func(f *pflag.Flag) {
		k, ok := static[f.Name]
		if !ok {
			if k, ok = pluginFlagKey(f.Name); ok && !f.Changed {
				// A registered plugin flag still makes its type known.
				l.values[k] = unsetMarker
				return
			}
		}
		if ok && f.Changed {
			l.values[k] = f.Value.String()
		}
	})
	return l
}

// unsetMarker stands for a registered plugin flag that was not given: it
// names a type without supplying a value. No real value contains a NUL.
const unsetMarker = "\x00unset"

// typesOf collects the plugin types the layers name.
func typesOf(ls ...layer) map[string]bool {
	types := map[string]bool{}
	for _, t := range builtinPluginTypes {
		types[t] = true
	}
	for _, l := range ls {
		for k := range l.values {
			if t, _, ok := parsePluginKey(k); ok {
				types[t] = true
			}
		}
	}
	return types
}

// envLayer reads ANKA_<KEY> for the static keys and the plugin keys of
// every known type, plus any ANKA_PLUGINS_* variable in the environment.
// Other unknown ANKA_* variables are left alone: other parts of anka and
// its tests may use the prefix.
func envLayer(o Options, types map[string]bool) (layer, []string) {
	l := layer{source: SourceEnv, values: map[string]string{}}
	var problems []string
	for _, kv := range o.Environ() {
		name, val, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, EnvPrefix+"PLUGINS_") || val == "" {
			continue
		}
		k, ok := pluginEnvKey(name)
		if !ok {
			problems = append(problems, fmt.Sprintf("environment variable %s is not a plugin key: use ANKA_PLUGINS_<TYPE>_PATH or ANKA_PLUGINS_<TYPE>_SHA256, the type in upper case with dashes as underscores (ANKA_PLUGINS_MY_NET_PATH), or unset it", name))
			continue
		}
		t, _, _ := parsePluginKey(k)
		types[t] = true
	}
	keys := Keys()
	for t := range types {
		keys = append(keys, PluginKey(t, fieldPath), PluginKey(t, fieldSHA256))
	}
	for _, k := range keys {
		if v, ok := o.env(EnvName(k)); ok {
			l.values[k] = v
		}
	}
	sort.Strings(problems)
	return l, problems
}

// build picks each key's winning layer, checks every value and the
// relations between them, and fills the typed fields. problems carries
// what the readers found already.
func build(userFile, systemFile string, problems []string, layers ...layer) (*Config, error) {
	c := &Config{UserFile: userFile, SystemFile: systemFile, entries: map[string]Entry{}, Plugins: map[string]Plugin{}}
	types := typesOf(layers...)
	keys := Keys()
	for t := range types {
		keys = append(keys, PluginKey(t, fieldPath), PluginKey(t, fieldSHA256))
	}
	sort.Strings(keys)
	bad := map[string]bool{}
	for _, k := range keys {
		e := Entry{Key: k, Value: defaultValue(k), Source: SourceDefault}
		for _, l := range layers {
			if v, ok := l.values[k]; ok && v != unsetMarker {
				e = Entry{Key: k, Value: v, Source: l.source, File: l.file}
				break
			}
		}
		norm, err := normalize(k, e.Value)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s %q from %s %v", k, e.Value, e.Origin(), err))
			bad[k] = true
		} else {
			e.Value = norm
		}
		c.entries[k] = e
	}

	v := func(k string) string { return c.entries[k].Value }
	c.BridgeName, c.StateDir, c.PluginDir, c.LogLevel = v("bridge_name"), v("state_dir"), v("plugin_dir"), v("log_level")
	c.PortFwdBase, _ = strconv.Atoi(v("portfwd_base"))
	c.PluginUser = v("plugin_user")
	c.MTU, _ = strconv.Atoi(v("mtu"))
	c.LeaseTime, _ = parseLease(v("lease_time"))
	c.PluginTimeout, _ = time.ParseDuration(v("plugin_timeout"))
	c.VhostUser = v("vhost_user") == "on"
	for t := range types {
		p := Plugin{Path: v(PluginKey(t, fieldPath)), SHA256: v(PluginKey(t, fieldSHA256))}
		if p != (Plugin{}) {
			c.Plugins[t] = p
		}
	}
	var okShared, okHost bool
	c.Shared, okShared = c.subnet("", bad, &problems)
	c.Host, okHost = c.subnet("host_", bad, &problems)
	if okShared && okHost && c.Shared.Prefix.Overlaps(c.Host.Prefix) {
		s, h := c.entries["start_address"], c.entries["host_start_address"]
		problems = append(problems, fmt.Sprintf("the shared network %s (start_address %s from %s) overlaps the host network %s (host_start_address %s from %s): move one of them to another range, such as 192.168.64.0/24 and 192.168.128.0/24",
			c.Shared.Prefix, s.Value, s.Origin(), c.Host.Prefix, h.Value, h.Origin()))
	}
	if len(problems) > 0 {
		return nil, errs.Invalidf("%s", strings.Join(problems, "\n"))
	}
	return c, nil
}

// subnet checks one network's start, end and mask together; prefix is ""
// for the shared network and "host_" for the host network.
func (c *Config) subnet(prefix string, bad map[string]bool, problems *[]string) (Subnet, bool) {
	ks, ke, km := prefix+"start_address", prefix+"end_address", prefix+"subnet_mask"
	if bad[ks] || bad[ke] || bad[km] {
		return Subnet{}, false
	}
	s, e, m := c.entries[ks], c.entries[ke], c.entries[km]
	sn := Subnet{Start: netip.MustParseAddr(s.Value), End: netip.MustParseAddr(e.Value), Mask: netip.MustParseAddr(m.Value)}
	n, _ := maskBits(sn.Mask)
	sn.Prefix = netip.PrefixFrom(sn.Start, n).Masked()
	endPrefix := netip.PrefixFrom(sn.End, n).Masked()
	sn.Gateway = sn.Prefix.Addr().Next()
	bcast := broadcast(sn.Prefix)
	fail := func(format string, a ...any) (Subnet, bool) {
		*problems = append(*problems, fmt.Sprintf(format, a...))
		return Subnet{}, false
	}
	switch {
	case sn.Start.Compare(sn.End) > 0:
		return fail("%s %s from %s is after %s %s from %s: %s is the first address of the DHCP range and must not come after %s",
			ks, s.Value, s.Origin(), ke, e.Value, e.Origin(), ks, ke)
	case sn.Prefix != endPrefix:
		return fail("%s %s from %s and %s %s from %s are not in the same subnet under %s %s from %s (%s is in %s, %s in %s): put both in one subnet or widen the mask",
			ks, s.Value, s.Origin(), ke, e.Value, e.Origin(), km, m.Value, m.Origin(), s.Value, sn.Prefix, e.Value, endPrefix)
	case sn.Start.Compare(sn.Gateway) <= 0:
		return fail("%s %s from %s is the network address or the gateway %s of %s: start the range at %s or later",
			ks, s.Value, s.Origin(), sn.Gateway, sn.Prefix, sn.Gateway.Next())
	case sn.End == bcast:
		return fail("%s %s from %s is the broadcast address of %s: end the range at %s or earlier",
			ke, e.Value, e.Origin(), sn.Prefix, bcast.Prev())
	}
	return sn, true
}

func broadcast(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	u := binary.BigEndian.Uint32(a[:]) | (1<<(32-p.Bits()) - 1)
	binary.BigEndian.PutUint32(a[:], u)
	return netip.AddrFrom4(a)
}

// Settings are the effective values of every key but the plugin entries:
// what the core hands each plugin (subnets, lease time, MTU, ...), so a
// plugin never reads the core's files.
//
// Each key also comes with sdk.OriginKey(key) saying where its value came
// from ("env ANKA_BRIDGE_NAME", "built-in default"), so a plugin can tell a
// user why it chose what it chose.
func (c *Config) Settings() map[string]string {
	m := map[string]string{}
	for _, e := range c.Entries() {
		if !strings.HasPrefix(e.Key, "plugins.") {
			m[e.Key] = e.Value
			m[sdk.OriginKey(e.Key)] = e.Origin()
		}
	}
	return m
}
