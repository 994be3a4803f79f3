package daemon

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anka-net/anka/core/config"
	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/core/plugins"
	"github.com/anka-net/anka/core/runtime/runtimetest"
	"github.com/anka-net/anka/core/vm"
)

func TestBackoff(t *testing.T) {
	var b backoff
	t0 := time.Unix(1000, 0)
	if !b.ready(t0) {
		t.Fatal("the first restart waits")
	}
	b.record(t0)
	if b.delay != 0 {
		t.Fatalf("first restart after a stable run: delay %v", b.delay)
	}
	// Crashing again and again soon after each restart doubles the wait.
	now := t0
	var delays []time.Duration
	for range 8 {
		now = now.Add(b.delay + 100*time.Millisecond)
		if !b.ready(now) {
			t.Fatalf("not ready after its delay %v", b.delay)
		}
		b.record(now)
		delays = append(delays, b.delay)
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second, 30 * time.Second}
	for i := range want {
		if delays[i] != want[i] {
			t.Fatalf("delays %v, want %v", delays, want)
		}
	}
	if b.ready(now.Add(29 * time.Second)) {
		t.Fatal("ready before the backoff passed")
	}
	// A run longer than stableAfter starts afresh.
	now = now.Add(stableAfter + time.Second)
	b.record(now)
	if b.delay != 0 {
		t.Fatalf("after a stable run: delay %v", b.delay)
	}
}

// An orphan whose parent exits is adopted by the subreaper and reaped;
// a child started with os/exec is left to its own Wait.
func TestSubreaperReapsOrphans(t *testing.T) {
	if err := becomeSubreaper(); err != nil {
		t.Skipf("prctl: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go reap(ctx, discardLogger())
	// sh exits at once; its background sleep becomes our child, exits
	// after 0.2 s and must not stay a zombie.
	out, err := exec.Command("sh", "-c", "sleep 0.2 & echo $!").Output()
	if err != nil {
		t.Fatal(err)
	}
	orphan := strings.TrimSpace(string(out))
	own := exec.Command("sh", "-c", "sleep 2.5")
	if err := own.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat("/proc/" + orphan); errors.Is(err, os.ErrNotExist) {
			break // reaped: not even a zombie is left
		}
		if time.Now().After(deadline) {
			t.Fatalf("orphan %s not reaped; zombies: %v", orphan, zombieChildren(os.Getpid()))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := own.Wait(); err != nil {
		t.Fatalf("the reaper took a child its starter waits for: %v", err)
	}
}

// newServer runs a daemon with a fake runtime on a temp state dir.
func newServer(t *testing.T, hooks ...func(*config.Config, plugins.Finder) vm.Hooks) (*Client, *Server, *config.Config) {
	t.Helper()
	dir := t.TempDir()
	// Whatever happens below, no daemon outlives the test, and none is
	// still writing its log when the temporary folder goes.
	t.Cleanup(func() {
		b, err := os.ReadFile(filepath.Join(dir, "state", "daemon.pid"))
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			return
		}
		syscall.Kill(pid, syscall.SIGKILL)
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if syscall.Kill(pid, 0) != nil {
				return
			}
		}
	})
	env := map[string]string{"ANKA_STATE_DIR": filepath.Join(dir, "state"), "ANKA_CONFIG": filepath.Join(dir, "u.yaml"),
		"ANKA_SYSTEM_CONFIG": filepath.Join(dir, "s.yaml"), "ANKA_PLUGIN_DIR": filepath.Join(dir, "plugins")}
	cfg, err := config.Load(config.Options{LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok }, Environ: func() []string { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Config: cfg, Wiring: Wiring{Runtime: runtimetest.New(), SelfDir: filepath.Join(dir, "bin")}, Logger: discardLogger(), Version: "test"}
	if len(hooks) > 0 {
		srv.Wiring.Hooks = hooks[0]
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	c := &Client{Config: cfg.Snapshot(), StateDir: cfg.StateDir, NoStart: true}
	deadline := time.Now().Add(5 * time.Second)
	for !c.Running() {
		if time.Now().After(deadline) {
			t.Fatal("the daemon did not listen")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	})
	return c, srv, cfg
}

func TestLifecycleThroughTheSocket(t *testing.T) {
	c, _, cfg := newServer(t)
	ctx := context.Background()
	store, _ := vm.OpenStore(cfg.StateDir)
	if err := store.Create(&vm.VM{Name: "v1", UUID: vm.NewUUID(), Runtime: vm.RuntimeSpec{Kernel: "/k", CPU: 1, RAMMiB: 256}, State: vm.Stopped}); err != nil {
		t.Fatal(err)
	}
	st, err := c.Start(ctx, "v1")
	if err != nil || st.State != vm.Running || st.Name != "v1" || st.PID == 0 {
		t.Fatalf("start: %+v %v", st, err)
	}
	if st, err = c.Suspend(ctx, "v1"); err != nil || st.State != vm.Suspended {
		t.Fatalf("suspend: %+v %v", st, err)
	}
	if st, err = c.Show(ctx, "v1"); err != nil || st.State != vm.Suspended {
		t.Fatalf("show: %+v %v", st, err)
	}
	r, err := c.AddPortForward(ctx, "v1", vm.PortForward{Name: "web", GuestPort: 80, Protocol: "tcp", HostIP: "0.0.0.0"})
	if err == nil {
		t.Fatalf("a forward on a VM without a card was accepted: %+v", r)
	}
	// Errors keep their kind (the exit code) and their sentence.
	if _, err := c.Start(ctx, "nope"); errs.KindOf(err) != errs.NotFound || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("start of a missing VM: kind %v: %v", errs.KindOf(err), err)
	}
	if _, err := c.Suspend(ctx, "v1"); errs.KindOf(err) != errs.State {
		t.Fatalf("suspending a suspended VM: kind %v: %v", errs.KindOf(err), err)
	}
	names, err := c.StopAll(ctx, true, time.Second)
	if err != nil || len(names) != 1 || names[0] != "v1" {
		t.Fatalf("stop all: %v %v", names, err)
	}
	if err := c.Delete(ctx, "v1", false); err != nil {
		t.Fatal(err)
	}
	st2, err := c.Status(ctx)
	if err != nil || st2.PID != os.Getpid() || st2.StateDir != cfg.StateDir || st2.VMsRunning != 0 {
		t.Fatalf("status: %+v %v", st2, err)
	}
	// A call for another state dir is refused: one daemon per state dir.
	other := *c
	snap := cfg.Snapshot()
	for i := range snap.Entries {
		if snap.Entries[i].Key == "state_dir" {
			snap.Entries[i].Value = "/elsewhere"
		}
	}
	other.Config, other.http = snap, nil
	if _, err := other.Status(ctx); err == nil || !strings.Contains(err.Error(), "serves state dir") {
		t.Fatalf("call for another state dir: %v", err)
	}
}

func TestOneDaemonPerStateDir(t *testing.T) {
	_, srv, cfg := newServer(t)
	second := &Server{Config: cfg, Wiring: srv.Wiring, Logger: discardLogger()}
	err := second.Run(context.Background())
	if errs.KindOf(err) != errs.Conflict || !strings.Contains(err.Error(), "already serves") {
		t.Fatalf("second daemon: %v", err)
	}
	if fi, err := os.Stat(SocketPath(cfg.StateDir)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket after a refused second daemon: %v %v", fi, err)
	}
}

func TestShutdownStopsTheDaemon(t *testing.T) {
	c, _, cfg := newServer(t)
	rep, err := c.Shutdown(context.Background(), false)
	if err != nil || rep == nil {
		t.Fatalf("shutdown: %+v %v", rep, err)
	}
	if c.Running() {
		t.Fatal("still listening after shutdown")
	}
	if _, err := os.Stat(SocketPath(cfg.StateDir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left behind: %v", err)
	}
	if _, err := c.Status(context.Background()); errs.KindOf(err) != errs.Unavailable || !strings.Contains(err.Error(), "no anka daemon is running") {
		t.Fatalf("status without a daemon: %v", err)
	}
}

// recordHooks notes the bridge_name each call's configuration carried.
type recordHooks struct {
	vm.NoHooks
	bridge string
	seen   *[]string
	mu     *sync.Mutex
}

func (h recordHooks) ValidateCard(context.Context, *vm.VM, *vm.NetworkCard) error {
	h.mu.Lock()
	*h.seen = append(*h.seen, h.bridge)
	h.mu.Unlock()
	return nil
}

// Each call runs with the configuration its command resolved, not the
// daemon's: `ANKA_BRIDGE_NAME=x anka ...` applies to that command.
func TestEachCallBringsItsConfig(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	c, _, cfg := newServer(t, func(cfg *config.Config, _ plugins.Finder) vm.Hooks {
		return recordHooks{bridge: cfg.BridgeName, seen: &seen, mu: &mu}
	})
	store, _ := vm.OpenStore(cfg.StateDir)
	if err := store.Create(&vm.VM{Name: "v1", UUID: vm.NewUUID(), Runtime: vm.RuntimeSpec{Kernel: "/k", CPU: 1, RAMMiB: 256}, State: vm.Stopped}); err != nil {
		t.Fatal(err)
	}
	typ := "disconnected"
	for _, bridge := range []string{"eth1", "eth2"} {
		snap := cfg.Snapshot()
		for i := range snap.Entries {
			if snap.Entries[i].Key == "bridge_name" {
				snap.Entries[i].Value, snap.Entries[i].Source = bridge, config.SourceEnv
			}
		}
		c.Config = snap
		if _, err := c.SetCard(context.Background(), "v1", vm.CardChange{Type: &typ}, bridge == "eth1"); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(seen, ",") != "eth1,eth2" {
		t.Fatalf("bridge_name per call: %v", seen)
	}
}

// Commands racing to start the daemon all end up talking to the one that
// won the lock.
func TestConcurrentStartsShareOneDaemon(t *testing.T) {
	if testing.Short() {
		t.Skip("builds anka")
	}
	dir := t.TempDir()
	// A racer's daemon slow to start (a loaded machine) may take the lock
	// after the shutdown below and serve on: kill every daemon of this
	// state dir, whoever started it.
	t.Cleanup(func() { killDaemonsOf(filepath.Join(dir, "state")) })
	exe := filepath.Join(dir, "anka")
	if out, err := exec.Command("go", "build", "-o", exe, "github.com/anka-net/anka/cmd/anka").CombinedOutput(); err != nil {
		t.Fatalf("building anka: %v\n%s", err, out)
	}
	env := map[string]string{"ANKA_STATE_DIR": filepath.Join(dir, "state"), "ANKA_CONFIG": filepath.Join(dir, "u.yaml"),
		"ANKA_SYSTEM_CONFIG": filepath.Join(dir, "s.yaml"), "ANKA_PLUGIN_DIR": filepath.Join(dir, "plugins")}
	var envList []string
	for k, v := range env {
		envList = append(envList, k+"="+v)
	}
	cfg, err := config.Load(config.Options{LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok }, Environ: func() []string { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 8)
	for range 8 {
		go func() {
			c := &Client{Config: cfg.Snapshot(), StateDir: cfg.StateDir, Exe: exe, Env: envList}
			_, err := c.Status(context.Background())
			errc <- err
		}()
	}
	for range 8 {
		if err := <-errc; err != nil {
			t.Errorf("a racing command: %v", err)
		}
	}
	c := &Client{Config: cfg.Snapshot(), StateDir: cfg.StateDir, NoStart: true}
	if _, err := c.Shutdown(context.Background(), true); err != nil {
		t.Fatal(err)
	}
}

// killDaemonsOf kills every process whose command line names stateDir,
// and waits (up to 5 s) for them to go.
func killDaemonsOf(stateDir string) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var pids []int
	for _, f := range procs {
		b, err := os.ReadFile(f)
		if err != nil || !strings.Contains(string(b), stateDir) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(f))); err == nil && pid != os.Getpid() {
			syscall.Kill(pid, syscall.SIGKILL)
			pids = append(pids, pid)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		alive := false
		for _, pid := range pids {
			if syscall.Kill(pid, 0) == nil {
				alive = true
			}
		}
		if !alive {
			return
		}
	}
}
