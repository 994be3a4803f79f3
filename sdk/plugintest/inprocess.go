package plugintest

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/host"
	"github.com/anka-net/anka/sdk/internal/wire"
)

// InProcess serves p over gRPC inside the test process and returns the
// host's client for it, so a test exercises the whole wire path
// (converters, type checks, error codes) without building a binary. The
// client also implements sdk.Suspender and sdk.PortForwarder; a plugin
// without them answers sdk.CodeUnsupported.
func InProcess(t testing.TB, p sdk.NetworkPlugin) sdk.NetworkPlugin {
	t.Helper()
	log := testLogger(t)
	client, server := plugin.TestPluginGRPCConn(t, false, plugin.PluginSet{
		wire.PluginName: wire.NewPlugin(p, "in-process", log),
	})
	t.Cleanup(func() {
		// Not client.Close: its shutdown call stops the server inside a
		// handler, racing with a Stop here (go-plugin's Stop is not safe
		// for concurrent use).
		_ = client.Conn.Close()
		server.Stop()
	})
	raw, err := client.Dispense(wire.PluginName)
	if err != nil {
		t.Fatalf("plugintest.InProcess: %v", err)
	}
	return raw.(sdk.NetworkPlugin)
}

// Binary starts the plugin binary at path as anka would and returns its
// client; the plugin is killed when the test ends. Empty SocketDir and
// DataDir get fresh private directories; a failed test shows the tail of
// the plugin's log.
func Binary(t testing.TB, path string, cfg host.Config) sdk.NetworkPlugin {
	t.Helper()
	cfg.Path = path
	if cfg.SocketDir == "" {
		// Short: t.TempDir() under a long test name can exceed the 107
		// bytes of a unix socket path.
		dir, err := os.MkdirTemp("", "anka-plugin-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(dir) })
		cfg.SocketDir = dir
	}
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	if cfg.LogFile == "" {
		cfg.LogFile = cfg.DataDir + "/plugin.log"
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "debug"
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := host.Launch(ctx, cfg)
	if err != nil {
		t.Fatalf("plugintest.Binary: %v", err)
	}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			logTail(t, cfg.LogFile)
		}
	})
	return p.Client()
}

func logTail(t testing.TB, path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	t.Logf("last lines of the plugin log %s:\n%s", path, strings.Join(lines, "\n"))
}

// testLogger logs to t until the test's cleanups start; after that a
// goroutine still logging would make testing panic.
func testLogger(t testing.TB) *slog.Logger {
	h := &tbHandler{state: &tbState{t: t}}
	t.Cleanup(func() {
		h.state.mu.Lock()
		h.state.done = true
		h.state.mu.Unlock()
	})
	return slog.New(h)
}

type tbState struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

type tbHandler struct {
	state *tbState
	attrs []slog.Attr
}

func (h *tbHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelDebug }

func (h *tbHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	for _, a := range h.attrs {
		b.WriteString(" " + a.String())
	}
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.String())
		return true
	})
	h.state.mu.Lock()
	defer h.state.mu.Unlock()
	if !h.state.done {
		h.state.t.Log(b.String())
	}
	return nil
}

func (h *tbHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &tbHandler{state: h.state, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

// WithGroup is flattened: test output needs no nesting.
func (h *tbHandler) WithGroup(string) slog.Handler { return h }
