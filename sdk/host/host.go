// Package host starts, reattaches to and calls anka network plugins: the
// daemon's side of sdk.Serve. A plugin runs in its own process group and
// outlives the host; the host keeps ReattachInfo in its state dir and a
// restarted host reattaches to the running plugin.
//
// No AutoMTLS: go-plugin cannot reattach with it. The boundary is the
// private socket directory (0700) instead.
package host

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-plugin"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/internal/logging"
	"github.com/anka-net/anka/sdk/internal/wire"
)

// Config says how to start a plugin binary.
type Config struct {
	// Path is the plugin binary.
	Path string
	// SHA256, when set, pins the binary (hex). A binary that does not match
	// is refused before it runs; on reattach the running executable is
	// checked.
	SHA256 string
	// PinName names where the pin comes from in messages, e.g.
	// "plugins.shared.sha256".
	PinName string
	// SocketDir holds the plugin's gRPC socket. Required; created 0700
	// (and set to 0700 if it exists): it is what keeps other users out.
	// Keep it short: a unix socket path has at most 107 bytes.
	SocketDir string
	// DataDir is the plugin's private directory (created 0700), passed to
	// it as sdk.Env.DataDir.
	DataDir string
	// LogFile is where the plugin logs (appending); default
	// DataDir/plugin.log, or, without a DataDir, the plugin's stderr,
	// which is relayed to Logger but dies with the host.
	LogFile string
	// LogLevel for the plugin: trace, debug, info, warn, error.
	LogLevel string
	// Settings reach the plugin as sdk.Env.Settings.
	Settings map[string]string
	// Env is added to the plugin's environment (KEY=value), after the
	// host's own and before anka's ANKA_PLUGIN_* variables.
	Env []string
	// Logger gets go-plugin's messages about the plugin; nil: slog's
	// default.
	Logger *slog.Logger
	// StartTimeout bounds the handshake; default one minute, or less when
	// the context of Launch has an earlier deadline.
	StartTimeout time.Duration
	// Credential, when set, runs the plugin as that user (the host must
	// be root): SocketDir and DataDir are given to it, and it keeps only
	// Credential.Caps. Nil runs it as the host's own user.
	Credential *Credential
}

// ReattachInfo is what a host saves (as JSON) to find a running plugin
// again after a restart.
type ReattachInfo struct {
	Protocol        string `json:"protocol"` // "grpc"
	ProtocolVersion int    `json:"protocol_version"`
	Network         string `json:"network"` // "unix"
	Addr            string `json:"addr"`
	Pid             int    `json:"pid"`
	// Path is the executable that was started, as configured; Exe is
	// what the kernel reported running (symlinks resolved), which a
	// reattach compares with /proc/PID/exe to notice a reused pid.
	Path string `json:"path"`
	Exe  string `json:"exe,omitempty"`
}

// Plugin is one running plugin process.
type Plugin struct {
	client  *plugin.Client
	rpc     plugin.ClientProtocol
	np      sdk.NetworkPlugin
	info    *sdk.InfoResponse
	path    string
	exe     string
	pid     int
	version int
}

// Client returns the plugin's calls. The value also implements
// sdk.Suspender and sdk.PortForwarder; a type without them answers with
// sdk.CodeUnsupported (its Info capabilities tell beforehand).
func (p *Plugin) Client() sdk.NetworkPlugin { return p.np }

// Info is the plugin's answer to Info when it was launched or reattached.
func (p *Plugin) Info() *sdk.InfoResponse { return p.info }

// Path is the plugin's executable.
func (p *Plugin) Path() string { return p.path }

// Pid is the plugin's process id.
func (p *Plugin) Pid() int { return p.pid }

// Exited reports whether the plugin process has ended (for a reattached
// plugin this is noticed within about a second).
func (p *Plugin) Exited() bool { return p.client.Exited() }

// Kill stops the plugin: gracefully (go-plugin's shutdown call), then
// with SIGKILL after two seconds. It waits for the process to end.
func (p *Plugin) Kill() { p.client.Kill() }

// Disconnect closes the connection and leaves the plugin running, for a
// host that stops and reattaches later. The Plugin is unusable after.
func (p *Plugin) Disconnect() error {
	if g, ok := p.rpc.(*plugin.GRPCClient); ok {
		return g.Conn.Close()
	}
	return nil
}

// ReattachInfo returns what Reattach needs to find this plugin again.
func (p *Plugin) ReattachInfo() (ReattachInfo, error) {
	rc := p.client.ReattachConfig()
	if rc == nil || rc.Addr == nil {
		return ReattachInfo{}, fmt.Errorf("plugin %s has not started", p.path)
	}
	// go-plugin leaves ProtocolVersion out of the ReattachConfig a
	// launching client returns; the negotiated one is ours to keep.
	return ReattachInfo{
		Protocol:        string(rc.Protocol),
		ProtocolVersion: p.version,
		Network:         rc.Addr.Network(),
		Addr:            rc.Addr.String(),
		Pid:             p.pid,
		Path:            p.path,
		Exe:             p.exe,
	}, nil
}

// Launch starts the plugin binary and returns once it answered Info. The
// deadline of ctx bounds the start (go-plugin's handshake cannot be
// cancelled otherwise) and ctx the first Info call.
func Launch(ctx context.Context, cfg Config) (*Plugin, error) {
	path, err := checkBinary(cfg.Path)
	if err != nil {
		return nil, err
	}
	var secure *plugin.SecureConfig
	if cfg.SHA256 != "" {
		want, err := parsePin(cfg)
		if err != nil {
			return nil, err
		}
		if err := checkSum(path, path, want, cfg.PinName, false); err != nil {
			return nil, err
		}
		// go-plugin hashes again right before it starts the binary.
		secure = &plugin.SecureConfig{Checksum: want, Hash: sha256.New()}
	}
	// The plugin runs in another directory: every path it gets is absolute.
	for _, p := range []*string{&cfg.SocketDir, &cfg.DataDir, &cfg.LogFile} {
		if *p != "" {
			if *p, err = filepath.Abs(*p); err != nil {
				return nil, err
			}
		}
	}
	if err := privateDir(cfg.SocketDir, "SocketDir"); err != nil {
		return nil, err
	}
	if len(cfg.SocketDir)+len("/plugin")+12 > 107 {
		return nil, fmt.Errorf("socket directory %s is too long for a unix socket path (at most about %d bytes): choose a shorter state dir", cfg.SocketDir, 107-len("/plugin")-12)
	}
	logFile := cfg.LogFile
	if cfg.DataDir != "" {
		if err := privateDir(cfg.DataDir, "DataDir"); err != nil {
			return nil, err
		}
		if logFile == "" {
			logFile = filepath.Join(cfg.DataDir, "plugin.log")
		}
	}
	if cfg.Credential != nil {
		if err := cfg.Credential.prepare(path, cfg.SocketDir, cfg.DataDir, logFile); err != nil {
			return nil, err
		}
	}
	env, err := pluginEnv(cfg, logFile)
	if err != nil {
		return nil, err
	}
	name := filepath.Base(path)
	cmd := exec.Command(path)
	cmd.Env = env
	cmd.Dir = "/"
	if cfg.DataDir != "" {
		cmd.Dir = cfg.DataDir
	}
	// Its own process group: a signal to the host's group (Ctrl-C, a
	// service manager stopping the daemon) leaves the data plane running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cfg.Credential.apply(cmd.SysProcAttr)

	timeout := cfg.StartTimeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	if d, ok := ctx.Deadline(); ok && time.Until(d) < timeout {
		timeout = max(time.Until(d), time.Millisecond)
	}
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  wire.Handshake,
		VersionedPlugins: wire.PluginSets(nil, name, nil),
		Cmd:              cmd,
		SecureConfig:     secure,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           logging.HCLog(logger(cfg), "plugin"),
		StartTimeout:     timeout,
		SkipHostEnv:      true, // pluginEnv has the host's environment, filtered
	})
	rpc, err := cfg.Credential.start(client)
	if err != nil {
		client.Kill()
		return nil, startError(path, logFile, cfg, err)
	}
	p := &Plugin{client: client, rpc: rpc, path: path, pid: cmd.Process.Pid, version: client.NegotiatedVersion()}
	p.exe, _ = procExe(p.pid)
	if err := p.connect(ctx); err != nil {
		client.Kill()
		return nil, err
	}
	return p, nil
}

// Reattach connects to a plugin a previous host launched. With cfg.SHA256
// set, the running executable (/proc/PID/exe) must match the pin. Of cfg
// only SHA256, PinName and Logger are used.
func Reattach(ctx context.Context, info ReattachInfo, cfg Config) (*Plugin, error) {
	if info.Protocol != string(plugin.ProtocolGRPC) {
		return nil, fmt.Errorf("saved plugin state for %s names protocol %q, not grpc: stop the plugin and start it again", info.Path, info.Protocol)
	}
	if !slices.Contains(wire.ProtocolVersions(), info.ProtocolVersion) {
		return nil, fmt.Errorf("plugin %s (pid %d) speaks plugin protocol %d; this anka speaks %v: stop the plugin and start it again", info.Path, info.Pid, info.ProtocolVersion, wire.ProtocolVersions())
	}
	if info.Pid <= 0 || info.Path == "" {
		return nil, fmt.Errorf("saved plugin state has no pid or path: start the plugin again")
	}
	running, err := procExe(info.Pid)
	if err != nil {
		return nil, &NotRunningError{Info: info, Reason: fmt.Sprintf("process %d is gone", info.Pid)}
	}
	if !sameExe(running, info) {
		return nil, &NotRunningError{Info: info, Reason: fmt.Sprintf("process %d is now %s", info.Pid, running)}
	}
	exe := fmt.Sprintf("/proc/%d/exe", info.Pid)
	if cfg.SHA256 != "" {
		want, err := parsePin(cfg)
		if err != nil {
			return nil, err
		}
		if err := checkSum(exe, info.Path, want, cfg.PinName, true); err != nil {
			return nil, err
		}
	}
	var addr net.Addr
	switch info.Network {
	case "unix":
		addr, err = net.ResolveUnixAddr("unix", info.Addr)
	case "tcp":
		addr, err = net.ResolveTCPAddr("tcp", info.Addr)
	default:
		err = fmt.Errorf("unknown network %q", info.Network)
	}
	if err != nil {
		return nil, fmt.Errorf("saved plugin state for %s: %v", info.Path, err)
	}
	name := filepath.Base(info.Path)
	client := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig: wire.Handshake,
		// A reattaching client does not negotiate: it needs the plugin
		// set of the saved version in Plugins.
		Plugins: wire.PluginSets(nil, name, nil)[info.ProtocolVersion],
		Reattach: &plugin.ReattachConfig{
			Protocol:        plugin.ProtocolGRPC,
			ProtocolVersion: info.ProtocolVersion,
			Addr:            addr,
			Pid:             info.Pid,
		},
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           logging.HCLog(logger(cfg), "plugin"),
	})
	rpc, err := client.Client()
	if err != nil {
		return nil, &NotRunningError{Info: info, Reason: err.Error()}
	}
	p := &Plugin{client: client, rpc: rpc, path: info.Path, exe: info.Exe, pid: info.Pid, version: info.ProtocolVersion}
	if err := p.connect(ctx); err != nil {
		_ = p.Disconnect()
		return nil, err
	}
	return p, nil
}

// procExe is the executable process pid runs; a binary replaced on disk
// since it started still counts as that path.
func procExe(pid int) (string, error) {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(exe, " (deleted)"), nil
}

// sameExe tells whether running is the plugin info describes.
func sameExe(running string, info ReattachInfo) bool {
	if info.Exe != "" {
		return running == info.Exe
	}
	if running == filepath.Clean(info.Path) {
		return true
	}
	resolved, err := filepath.EvalSymlinks(info.Path)
	return err == nil && running == resolved
}

// connect dispenses the client and asks for Info, which also proves the
// other end is an anka plugin that answers.
func (p *Plugin) connect(ctx context.Context) error {
	raw, err := p.rpc.Dispense(wire.PluginName)
	if err != nil {
		return fmt.Errorf("plugin %s: %v", p.path, err)
	}
	np, ok := raw.(sdk.NetworkPlugin)
	if !ok {
		return fmt.Errorf("plugin %s: unexpected client %T", p.path, raw)
	}
	info, err := np.Info(ctx, &sdk.InfoRequest{})
	if err != nil {
		return fmt.Errorf("plugin %s does not answer Info: %w", p.path, err)
	}
	p.np, p.info = np, info
	return nil
}

// NotRunningError says the saved plugin is no longer there to reattach
// to; the host starts it again.
type NotRunningError struct {
	Info   ReattachInfo
	Reason string
}

func (e *NotRunningError) Error() string {
	return fmt.Sprintf("plugin %s (pid %d) is not running any more (%s): start it again", e.Info.Path, e.Info.Pid, e.Reason)
}

// ChecksumError is a binary whose sha256 differs from its pin.
type ChecksumError struct {
	Path    string
	Got     string
	Want    string
	PinName string
	// Running is true when a running plugin was checked (reattach).
	Running bool
}

func (e *ChecksumError) Error() string {
	pin := e.PinName
	if pin == "" {
		pin = "the configured sha256"
	}
	if e.Running {
		return fmt.Sprintf("running plugin %s has sha256 %s, but %s pins %s: it was started from another binary; stop it so anka starts the pinned one, or update the pin", e.Path, e.Got, pin, e.Want)
	}
	return fmt.Sprintf("plugin %s has sha256 %s, but %s pins %s: install the pinned binary or update the pin", e.Path, e.Got, pin, e.Want)
}

// Describe runs `path --describe` (no handshake) and returns what the
// binary serves. A set SHA256 is checked first; of cfg only Path, SHA256,
// PinName and Env are used.
func Describe(ctx context.Context, cfg Config) (*sdk.InfoResponse, error) {
	path, err := checkBinary(cfg.Path)
	if err != nil {
		return nil, err
	}
	if cfg.SHA256 != "" {
		want, err := parsePin(cfg)
		if err != nil {
			return nil, err
		}
		if err := checkSum(path, path, want, cfg.PinName, false); err != nil {
			return nil, err
		}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, path, wire.DescribeFlag)
	cmd.Env = append(hostEnv(), cfg.Env...)
	cmd.Dir = "/"
	if c := cfg.Credential; c != nil {
		// Describing needs no privilege: the plugin user, no capabilities.
		if err := c.reach(path, 0o1, "run"); err != nil {
			return nil, err
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: c.UID, Gid: c.GID, Groups: []uint32{}}}
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = err.Error()
		}
		return nil, fmt.Errorf("%s %s failed: %s", path, wire.DescribeFlag, msg)
	}
	var info sdk.InfoResponse
	if err := json.Unmarshal(out, &info); err != nil {
		return nil, fmt.Errorf("%s %s printed no plugin description (%v): is it an anka plugin?", path, wire.DescribeFlag, err)
	}
	return &info, nil
}

func logger(cfg Config) *slog.Logger {
	if cfg.Logger != nil {
		return cfg.Logger
	}
	return slog.Default()
}

func checkBinary(path string) (string, error) {
	if path == "" {
		return "", errors.New("no plugin path given")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	st, err := os.Stat(abs)
	switch {
	case err != nil:
		return "", fmt.Errorf("plugin %s: %w", abs, err)
	case st.IsDir():
		return "", fmt.Errorf("plugin %s is a directory, not a binary", abs)
	case st.Mode().Perm()&0o111 == 0:
		return "", fmt.Errorf("plugin %s is not executable: chmod +x it", abs)
	}
	return abs, nil
}

func parsePin(cfg Config) ([]byte, error) {
	want, err := hex.DecodeString(strings.TrimSpace(cfg.SHA256))
	if err != nil || len(want) != sha256.Size {
		pin := cfg.PinName
		if pin == "" {
			pin = "the configured sha256"
		}
		return nil, fmt.Errorf("%s is %q, which is not a sha256 (64 hex digits, as printed by sha256sum)", pin, cfg.SHA256)
	}
	return want, nil
}

// checkSum hashes file (the binary, or /proc/PID/exe) and compares.
func checkSum(file, path string, want []byte, pinName string, running bool) error {
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("checking the sha256 of plugin %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("checking the sha256 of plugin %s: %w", path, err)
	}
	got := h.Sum(nil)
	if !slices.Equal(got, want) {
		return &ChecksumError{Path: path, Got: hex.EncodeToString(got), Want: hex.EncodeToString(want), PinName: pinName, Running: running}
	}
	return nil
}

func privateDir(dir, field string) error {
	if dir == "" {
		return fmt.Errorf("host.Config.%s is empty: give the plugin a private directory under the state dir", field)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.Chmod(dir, 0o700)
}

// hostEnv is the host's environment without anka's and go-plugin's plugin
// variables, so a stale one cannot override what this launch sets.
func hostEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, wire.CookieKey) || strings.HasPrefix(k, "PLUGIN_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

func pluginEnv(cfg Config, logFile string) ([]string, error) {
	env := append(hostEnv(), cfg.Env...)
	if cfg.LogLevel != "" {
		if _, err := logging.ParseLevel(cfg.LogLevel); err != nil {
			return nil, err
		}
		env = append(env, wire.EnvLogLevel+"="+cfg.LogLevel)
	}
	if logFile != "" {
		env = append(env, wire.EnvLog+"="+logFile)
	}
	if cfg.DataDir != "" {
		env = append(env, wire.EnvDataDir+"="+cfg.DataDir)
	}
	if len(cfg.Settings) > 0 {
		b, err := json.Marshal(maps.Clone(cfg.Settings))
		if err != nil {
			return nil, err
		}
		env = append(env, wire.EnvSettings+"="+string(b))
	}
	// go-plugin only passes the socket dir to plugins it starts through a
	// RunnerFunc; with a plain Cmd the plugin reads it from here.
	env = append(env, plugin.EnvUnixSocketDir+"="+cfg.SocketDir)
	return env, nil
}

// startError explains a failed start in terms of what to look at.
func startError(path, logFile string, cfg Config, err error) error {
	if errors.Is(err, plugin.ErrChecksumsDoNotMatch) {
		// The binary changed between our check and go-plugin's.
		want, _ := parsePin(cfg)
		got := "another value"
		if f, ferr := os.ReadFile(path); ferr == nil {
			s := sha256.Sum256(f)
			got = hex.EncodeToString(s[:])
		}
		return &ChecksumError{Path: path, Got: got, Want: hex.EncodeToString(want), PinName: cfg.PinName}
	}
	where := "the plugin's stderr, relayed to the host log,"
	if logFile != "" {
		where = logFile
	}
	return fmt.Errorf("starting plugin %s: %v (%s may say why)", path, err, where)
}
