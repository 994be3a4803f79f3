package host_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/host"
	"github.com/anka-net/anka/sdk/plugintest"
)

func self(t *testing.T) string {
	t.Helper()
	p, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func selfSum(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(self(t))
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// shortDir is a temp dir short enough for unix socket paths.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "anka-host-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

func config(t *testing.T) host.Config {
	base := shortDir(t)
	return host.Config{
		Path:      self(t),
		SocketDir: filepath.Join(base, "sockets"),
		DataDir:   filepath.Join(base, "data"),
		LogLevel:  "debug",
		Settings:  map[string]string{"color": "blue"},
		Env:       []string{"ANKA_HOST_TEST_ROLE=plugin"},
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

func launch(t *testing.T, cfg host.Config) *host.Plugin {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := host.Launch(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return p
}

// eventually polls cond until it holds or 10 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestLaunch(t *testing.T) {
	cfg := config(t)
	p := launch(t, cfg)
	ctx := context.Background()

	info := p.Info()
	if info.Name != "anka-net-test" || len(info.Types) != 2 || info.Types[1].Name != "beta" ||
		len(info.ProtocolVersions) != 1 || info.ProtocolVersions[0] != sdk.ProtocolVersion {
		t.Errorf("Info: %+v", info)
	}

	st, err := p.Client().Status(ctx, &sdk.StatusRequest{VM: sdk.VMRef{ID: "1", Name: "vm1"}, Type: "alpha"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"data_dir": cfg.DataDir, "log_level": "debug", "setting": "blue",
		"pid": strconv.Itoa(p.Pid()), "sdk_dir": cfg.DataDir}
	for k, v := range want {
		if st.Details[k] != v {
			t.Errorf("the plugin got %s %q, want %q", k, st.Details[k], v)
		}
	}

	t.Run("private directories", func(t *testing.T) {
		for _, d := range []string{cfg.SocketDir, cfg.DataDir} {
			fi, err := os.Stat(d)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o700 {
				t.Errorf("%s has mode %v, want 0700", d, fi.Mode().Perm())
			}
		}
		ri, err := p.ReattachInfo()
		if err != nil {
			t.Fatal(err)
		}
		if ri.Network != "unix" || filepath.Dir(ri.Addr) != cfg.SocketDir {
			t.Errorf("the plugin listens on %s %s, not in %s", ri.Network, ri.Addr, cfg.SocketDir)
		}
		if ri.Pid != p.Pid() || ri.Path != cfg.Path || ri.Protocol != "grpc" || ri.ProtocolVersion != 1 {
			t.Errorf("ReattachInfo %+v", ri)
		}
	})

	t.Run("log file", func(t *testing.T) {
		logFile := filepath.Join(cfg.DataDir, "plugin.log")
		eventually(t, "the plugin logs Status to "+logFile, func() bool {
			b, _ := os.ReadFile(logFile)
			return strings.Contains(string(b), "Status called") && strings.Contains(string(b), "plugin starting")
		})
		fi, err := os.Stat(logFile)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("log file mode %v, want 0600", fi.Mode().Perm())
		}
	})

	t.Run("error codes cross the process", func(t *testing.T) {
		_, err := p.Client().Validate(ctx, &sdk.ValidateRequest{Card: sdk.Card{Type: "beta", IP: "192.168.64.5"}})
		var e *sdk.Error
		if !errors.As(err, &e) || e.Code != sdk.CodeConflict || e.Message != "IP 192.168.64.5 is taken by vm2: choose another address" {
			t.Errorf("got %#v", err)
		}
	})

	t.Run("unsupported optional interfaces", func(t *testing.T) {
		_, err := p.Client().(sdk.Suspender).Suspend(ctx, &sdk.SuspendRequest{Type: "alpha"})
		if sdk.CodeOf(err) != sdk.CodeUnsupported {
			t.Errorf("Suspend: %v (code %q)", err, sdk.CodeOf(err))
		}
		_, err = p.Client().(sdk.PortForwarder).ListPortForwards(ctx, &sdk.ListPortForwardsRequest{Type: "beta"})
		if sdk.CodeOf(err) != sdk.CodeUnsupported {
			t.Errorf("ListPortForwards: %v (code %q)", err, sdk.CodeOf(err))
		}
	})

	t.Run("kill", func(t *testing.T) {
		p.Kill()
		if !p.Exited() {
			t.Error("Exited is false after Kill")
		}
		if _, err := p.Client().Info(ctx, nil); sdk.CodeOf(err) != sdk.CodeUnavailable {
			t.Errorf("Info after Kill: %v (code %q)", err, sdk.CodeOf(err))
		}
	})
}

func TestSHA256Pin(t *testing.T) {
	t.Run("mismatch is refused before the plugin runs", func(t *testing.T) {
		cfg := config(t)
		cfg.SHA256 = strings.Repeat("12", 32)
		cfg.PinName = "plugins.shared.sha256"
		_, err := host.Launch(context.Background(), cfg)
		var ce *host.ChecksumError
		if !errors.As(err, &ce) {
			t.Fatalf("got %v, want a *host.ChecksumError", err)
		}
		want := "plugin " + cfg.Path + " has sha256 " + selfSum(t) + ", but plugins.shared.sha256 pins " + cfg.SHA256 +
			": install the pinned binary or update the pin"
		if err.Error() != want {
			t.Errorf("message\n%s\nwant\n%s", err, want)
		}
		if _, err := os.Stat(filepath.Join(cfg.DataDir, "plugin.log")); err == nil {
			t.Error("the plugin ran: its log exists")
		}
	})
	t.Run("not a sha256", func(t *testing.T) {
		cfg := config(t)
		cfg.SHA256 = "abcd"
		cfg.PinName = "plugins.shared.sha256"
		_, err := host.Launch(context.Background(), cfg)
		if err == nil || !strings.Contains(err.Error(), "plugins.shared.sha256") || !strings.Contains(err.Error(), "64 hex digits") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("match", func(t *testing.T) {
		cfg := config(t)
		cfg.SHA256 = strings.ToUpper(selfSum(t))
		launch(t, cfg)
	})
}

// TestSurvivesHostDeath: a host launches the plugin and is killed without
// Kill; a new host reattaches from the saved info and calls the plugin,
// which by then has written to the broken stderr pipe (SIGPIPE).
func TestSurvivesHostDeath(t *testing.T) {
	dir := shortDir(t)
	sockets := filepath.Join(dir, "sockets")
	saved := filepath.Join(dir, "reattach.json")
	cmd := exec.Command(self(t))
	cmd.Env = append(os.Environ(), "ANKA_HOST_TEST_ROLE=host", "ANKA_HOST_TEST_SOCKET_DIR="+sockets,
		"ANKA_HOST_TEST_REATTACH_FILE="+saved)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	eventually(t, "the dying host saves the reattach info", func() bool {
		select {
		case <-exited:
			t.Fatalf("the host exited early: %s", stderr.String())
		default:
		}
		_, err := os.Stat(saved)
		return err == nil
	})
	var info host.ReattachInfo
	b, err := os.ReadFile(saved)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &info); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(info.Pid, syscall.SIGKILL) }) // should the test fail midway

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-exited

	cfg := host.Config{SHA256: selfSum(t), PinName: "plugins.test.sha256", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := host.Reattach(ctx, info, cfg)
	if err != nil {
		t.Fatalf("reattach after the host died: %v", err)
	}
	if p.Pid() != info.Pid {
		t.Errorf("pid %d, saved %d", p.Pid(), info.Pid)
	}
	// Each call logs a line to the plugin's stderr, whose reader is dead.
	for i := range 3 {
		if _, err := p.Client().Status(ctx, &sdk.StatusRequest{VM: sdk.VMRef{ID: "1"}, Type: "alpha"}); err != nil {
			t.Fatalf("call %d after reattach: %v", i, err)
		}
		if _, err := p.Client().Info(ctx, &sdk.InfoRequest{}); err != nil {
			t.Fatalf("Info %d after reattach: %v", i, err)
		}
	}
	ri, err := p.ReattachInfo()
	if err != nil || ri != info {
		t.Errorf("ReattachInfo after reattach: %+v, %v; want %+v", ri, err, info)
	}

	p.Kill()
	if !p.Exited() {
		t.Error("Exited is false after Kill")
	}
	if _, err := host.Reattach(ctx, info, cfg); !errors.As(err, new(*host.NotRunningError)) {
		t.Errorf("reattach to a killed plugin: %v, want a *host.NotRunningError", err)
	}
}

func TestReattachChecksThePin(t *testing.T) {
	p := launch(t, config(t))
	info, err := p.ReattachInfo()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	_, err = host.Reattach(ctx, info, host.Config{SHA256: strings.Repeat("ab", 32), PinName: "plugins.test.sha256"})
	var ce *host.ChecksumError
	if !errors.As(err, &ce) || !ce.Running || ce.Got != selfSum(t) || !strings.Contains(err.Error(), "plugins.test.sha256") {
		t.Fatalf("got %v, want a *host.ChecksumError about the running plugin", err)
	}
	q, err := host.Reattach(ctx, info, host.Config{SHA256: selfSum(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.Client().Info(ctx, nil); err != nil {
		t.Error(err)
	}
	if err := q.Disconnect(); err != nil {
		t.Error(err)
	}
	// Disconnecting left the plugin running.
	if _, err := p.Client().Info(ctx, nil); err != nil {
		t.Errorf("the plugin stopped answering after another host disconnected: %v", err)
	}

	bad := info
	bad.Path, bad.Exe = "/usr/bin/true", ""
	if _, err := host.Reattach(ctx, bad, host.Config{}); !errors.As(err, new(*host.NotRunningError)) {
		t.Errorf("reattach to a pid running another binary: %v", err)
	}
}

func TestDescribe(t *testing.T) {
	cfg := config(t)
	info, err := host.Describe(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "anka-net-test" || info.Version != "0.1.0" || len(info.Types) != 2 || info.Types[0].Name != "alpha" ||
		info.Types[0].Endpoints[0] != sdk.EndpointDgram || len(info.ProtocolVersions) != 1 || info.ProtocolVersions[0] != 1 {
		t.Errorf("Describe: %+v", info)
	}
	if _, err := os.Stat(cfg.DataDir); err == nil {
		t.Error("--describe created the data dir")
	}

	// The JSON itself, as `anka plugin list` and people read it.
	cmd := exec.Command(self(t), "--describe")
	cmd.Env = append(os.Environ(), "ANKA_HOST_TEST_ROLE=plugin")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(out, &raw); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for _, k := range []string{"name", "version", "protocol_versions", "types"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("--describe output lacks %q: %s", k, out)
		}
	}

	cfg.SHA256 = strings.Repeat("00", 32)
	if _, err := host.Describe(context.Background(), cfg); !errors.As(err, new(*host.ChecksumError)) {
		t.Errorf("Describe with a wrong pin: %v", err)
	}
}

func TestRunByHand(t *testing.T) {
	cmd := exec.Command(self(t))
	cmd.Env = append(os.Environ(), "ANKA_HOST_TEST_ROLE=plugin")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit: %v", err)
	}
	if !strings.Contains(stderr.String(), "is an anka network plugin") || !strings.Contains(stderr.String(), "--describe") {
		t.Errorf("message: %s", stderr.String())
	}
}

func TestPluginThatCannotStart(t *testing.T) {
	cfg := config(t)
	cfg.Settings = map[string]string{"fail": "yes"}
	_, err := host.Launch(context.Background(), cfg)
	if err == nil {
		t.Fatal("launch succeeded")
	}
	logFile := filepath.Join(cfg.DataDir, "plugin.log")
	if !strings.Contains(err.Error(), logFile) {
		t.Errorf("the error does not point at the log: %v", err)
	}
	b, _ := os.ReadFile(logFile)
	if !strings.Contains(string(b), `setting fail is \"yes\"`) {
		t.Errorf("the log does not say why: %s", b)
	}
}

// lockedBuffer is a log destination goroutines share.
type lockedBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestStderrRelayedToHostLogger(t *testing.T) {
	var logs lockedBuffer
	cfg := config(t)
	cfg.DataDir = "" // no data dir, no log file: the plugin logs to stderr
	cfg.LogLevel = "info"
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	p := launch(t, cfg)
	if _, err := p.Client().Info(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the plugin's log line reaches the host's logger", func() bool {
		return strings.Contains(logs.String(), `level=INFO msg="Info called"`)
	})
	if strings.Contains(logs.String(), "level=DEBUG") {
		t.Errorf("debug lines passed an info logger:\n%s", logs.String())
	}
}

func TestPlugintestBinary(t *testing.T) {
	p := plugintest.Binary(t, self(t), host.Config{Env: []string{"ANKA_HOST_TEST_ROLE=plugin"}})
	info, err := p.Info(context.Background(), nil)
	if err != nil || info.Name != "anka-net-test" {
		t.Fatalf("Info: %+v, %v", info, err)
	}
	st, err := p.Status(context.Background(), &sdk.StatusRequest{Type: "alpha"})
	if err != nil || st.Details["data_dir"] == "" || st.Details["log_level"] != "debug" {
		t.Errorf("Status: %+v, %v", st, err)
	}
}

func TestLaunchThroughASymlink(t *testing.T) {
	cfg := config(t)
	link := filepath.Join(filepath.Dir(cfg.SocketDir), "anka-net-test")
	if err := os.Symlink(self(t), link); err != nil {
		t.Fatal(err)
	}
	cfg.Path = link
	cfg.SHA256 = selfSum(t)
	p := launch(t, cfg)
	info, err := p.ReattachInfo()
	if err != nil {
		t.Fatal(err)
	}
	if info.Path != link || info.Exe != self(t) {
		t.Errorf("ReattachInfo %+v", info)
	}
	q, err := host.Reattach(context.Background(), info, cfg)
	if err != nil {
		t.Fatal(err)
	}
	_ = q.Disconnect()
	info.Exe = "" // state saved without Exe
	q, err = host.Reattach(context.Background(), info, cfg)
	if err != nil {
		t.Fatal(err)
	}
	_ = q.Disconnect()
}
