package daemon

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/anka-net/anka/core/config"
	"github.com/anka-net/anka/core/plugins"
	"github.com/anka-net/anka/core/runtime"
	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/host"
)

// Backoff bounds for restarting a plugin that keeps crashing.
const (
	minBackoff   = time.Second
	maxBackoff   = 30 * time.Second
	stableAfter  = 2 * maxBackoff // a plugin that ran this long (beyond its wait) starts its backoff afresh
	pollInterval = time.Second
	// exitNoticeWait bounds waitExited.
	exitNoticeWait = 2 * time.Second
)

// backoff spaces the restarts of one plugin: the first restart after a
// stable run is immediate, then each crash soon after a restart doubles
// the wait, up to maxBackoff.
type backoff struct {
	last  time.Time
	delay time.Duration
}

func (b *backoff) ready(now time.Time) bool { return now.Sub(b.last) >= b.delay }

func (b *backoff) record(now time.Time) {
	if !b.last.IsZero() && now.Sub(b.last) < stableAfter {
		b.delay = min(max(2*b.delay, minBackoff), maxBackoff)
	} else {
		b.delay = 0
	}
	b.last = now
}

type pluginState struct {
	backoff
	restarts int
	lastErr  string
}

// supervisor watches every plugin that was launched (it has a reattach
// file) and starts again any whose process died, attaching its VMs again.
type supervisor struct {
	host func(*config.Config) (*Local, error)
	log  *slog.Logger
	cfg  func() *config.Config

	// kick asks for a check before the next poll: a watched plugin or a
	// child (QEMU, adopted as the subreaper's) exited.
	kick chan struct{}

	mu      sync.Mutex
	state   map[string]*pluginState // by binary path
	paused  bool
	watched map[int]bool // plugin and QEMU pids with a pidfd watch
}

func (s *supervisor) get(path string) *pluginState {
	st := s.state[path]
	if st == nil {
		st = &pluginState{}
		s.state[path] = st
	}
	return st
}

// adopt reattaches to every plugin still running from an earlier daemon
// and revives those that died meanwhile.
func (s *supervisor) adopt(ctx context.Context) {
	s.check(ctx, true)
}

func (s *supervisor) run(ctx context.Context) {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	// A QEMU killed behind anka's back is this subreaper's child: its
	// SIGCHLD releases the VM's port and forwards at once.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGCHLD)
	defer signal.Stop(sig)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.kick:
		case <-sig:
		}
		s.check(ctx, false)
	}
}

func (s *supervisor) pause()  { s.mu.Lock(); s.paused = true; s.mu.Unlock() }
func (s *supervisor) resume() { s.mu.Lock(); s.paused = false; s.mu.Unlock() }

// check looks at every launched plugin once. adopting also connects to
// the live ones, checking their pinned sha256 against the running binary.
func (s *supervisor) check(ctx context.Context, adopting bool) {
	s.mu.Lock()
	paused := s.paused
	s.mu.Unlock()
	if paused || s.cfg == nil {
		return
	}
	l, err := s.host(s.cfg())
	if err != nil || l.Host == nil {
		if err != nil {
			s.log.Warn("supervisor cannot open the state dir", "err", err)
		}
		return
	}
	// A VM whose process died on its own gives its port and forwards back
	// now, not at the next command about it.
	if err := l.Manager.ReconcileAll(ctx); err != nil {
		s.log.Warn("releasing the network of a VM that stopped on its own", "err", err)
	}
	h := l.Host
	// QEMU processes an earlier daemon started are not this one's
	// children: a pidfd tells when one ends.
	pidFiles, _ := filepath.Glob(filepath.Join(h.StateDir, "vms", "*", runtime.QEMUPid))
	for _, f := range pidFiles {
		if b, err := os.ReadFile(f); err == nil {
			if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); pid > 0 && runtime.ProcessAlive(pid) {
				s.watch(ctx, pid)
			}
		}
	}
	seen := map[string]bool{}
	for _, fd := range h.Finder.All() {
		if seen[fd.Path] {
			continue
		}
		seen[fd.Path] = true
		if _, err := os.Stat(plugins.ReattachFile(h.StateDir, fd.Path)); err != nil {
			continue // never launched, or stopped on purpose
		}
		ri, alive := plugins.Running(h.StateDir, fd.Path)
		if alive {
			s.watch(ctx, ri.Pid)
		}
		if alive && !adopting {
			continue
		}
		now := time.Now()
		s.mu.Lock()
		st := s.get(fd.Path)
		ready := alive || st.ready(now)
		if ready && !alive {
			st.record(now)
			st.restarts++
		}
		s.mu.Unlock()
		if !ready {
			continue
		}
		if !alive {
			s.log.Warn("plugin died: starting it again and attaching its VMs", "binary", fd.Path)
			waitExited(h.Conns.Loaded()[fd.Path])
		}
		// A plugin hung at start must not stop the supervision of the rest.
		cctx, cancel := context.WithTimeout(ctx, plugins.ConnectTimeout)
		_, err := h.Connect(cctx, fd)
		cancel()
		s.mu.Lock()
		if err != nil {
			st.lastErr = err.Error()
			s.log.Error("plugin could not be started again", "binary", fd.Path, "err", err, "next_try_in", st.delay)
		} else {
			st.lastErr = ""
		}
		s.mu.Unlock()
		if ri, ok := plugins.Running(h.StateDir, fd.Path); ok {
			s.watch(ctx, ri.Pid)
		}
	}
}

// waitExited waits (up to exitNoticeWait) for the client of a plugin whose
// process is gone to see it gone: the pidfd wakes the supervisor before
// go-plugin notices (at once for a child, within its 1 s poll for an
// adopted plugin), and connecting before then would hand back the dead
// client and restart the plugin only at the next check.
func waitExited(p *host.Plugin) {
	if p == nil {
		return
	}
	deadline := time.Now().Add(exitNoticeWait)
	for !p.Exited() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

// restarted notes a restart asked for by `anka plugin restart`.
func (s *supervisor) restarted(h *plugins.Host, typ string) {
	fd, err := h.Finder.Find(typ)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.get(fd.Path).lastErr = ""
	s.mu.Unlock()
}

// report lists the plugins launched on this host.
func (s *supervisor) report(h *plugins.Host) []PluginStatus {
	out := []PluginStatus{}
	if h == nil {
		return out
	}
	loaded := h.Conns.Loaded()
	seen := map[string]bool{}
	for _, fd := range h.Finder.All() {
		if seen[fd.Path] {
			continue
		}
		seen[fd.Path] = true
		if _, err := os.Stat(plugins.ReattachFile(h.StateDir, fd.Path)); err != nil {
			continue
		}
		ps := PluginStatus{Binary: fd.Path, Types: []string{fd.Type}}
		if ri, ok := plugins.Running(h.StateDir, fd.Path); ok {
			ps.Running, ps.PID = true, ri.Pid
			if r, err := procResources(ri.Pid); err == nil {
				ps.Resources = &r
			}
		}
		if p := loaded[fd.Path]; p != nil {
			ps.Types = typeNames(p.Info())
			if ps.Resources != nil {
				pluginRuntime(p.Client(), ps.Resources)
			}
		}
		s.mu.Lock()
		if st := s.state[fd.Path]; st != nil {
			ps.Restarts, ps.LastErr = st.restarts, st.lastErr
		}
		s.mu.Unlock()
		out = append(out, ps)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Binary < out[j].Binary })
	return out
}

func typeNames(info *sdk.InfoResponse) []string {
	var out []string
	if info != nil {
		for _, t := range info.Types {
			out = append(out, t.Name)
		}
	}
	return out
}
