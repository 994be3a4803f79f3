package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

// Hygiene (issue 8, item 6): after many start/stop cycles the daemon's and
// the plugin's open files, goroutines and memory are back at their
// baseline, and no TAP, nftables table, socket or QEMU process is left.
// The figures are logged as "hygiene-figure" lines for
// docs/reliability/hygiene.md.
//
// TestHygiene: 20 cycles of a socket VM (external runtime) and 3 quick
// ones of a QEMU VM (start --no-wait, stop --force: the TAP, QEMU and its
// sockets come and go without waiting for a boot). TestHygieneSoak
// (ANKA_SOAK=1): 100 socket cycles, 10 quick QEMU ones and 10 booting to
// a lease and powering off gracefully.
func TestHygiene(t *testing.T) { runHygiene(t, 20, 3, 0) }

func TestHygieneSoak(t *testing.T) {
	if os.Getenv("ANKA_SOAK") != "1" {
		t.Skip("the long version runs with ANKA_SOAK=1 (make soak)")
	}
	runHygiene(t, 100, 10, 10)
}

// Margins for "back at the baseline".
const (
	fdMargin        = 2
	goroutineMargin = 5
	// rssMargin: RSS is what the kernel has not taken back, and Go returns
	// freed memory lazily; a leak of one port's buffers per cycle would
	// pass it only with fewer than a handful of cycles.
	rssMargin = 8 << 20
)

type resources struct {
	FDs        int    `json:"fds"`
	Threads    int    `json:"threads"`
	RSS        int64  `json:"rss_bytes"`
	Goroutines int    `json:"goroutines"`
	HeapAlloc  uint64 `json:"heap_alloc_bytes"`
}

// daemonStatus is `anka -j daemon status`, what the tests read of it.
type daemonStatus struct {
	PID       int
	Resources resources
	Plugins   []daemonPlugin
}

type daemonPlugin struct {
	Binary    string
	PID       int
	Running   bool
	Restarts  int
	Resources *resources
}

// daemonStatus asks the daemon for its status.
func (e *env) daemonStatus() daemonStatus {
	e.t.Helper()
	var s daemonStatus
	if err := json.Unmarshal(e.jsonOK("daemon", "status"), &s); err != nil {
		e.t.Fatalf("anka -j daemon status: %v", err)
	}
	return s
}

func (s daemonStatus) plugin(t *testing.T, binary string) (int, resources) {
	t.Helper()
	for _, p := range s.Plugins {
		if filepath.Base(p.Binary) == binary && p.Running && p.Resources != nil {
			return p.PID, *p.Resources
		}
	}
	t.Fatalf("daemon status shows no running %s with resources: %+v", binary, s.Plugins)
	return 0, resources{}
}

// leftovers is what a test namespace and state dir hold that anka made.
type leftovers struct {
	links, tables, sockets []string
	qemu                   int
}

func takeLeftovers(t *testing.T, e *env, ns *frameiotest.Netns) leftovers {
	t.Helper()
	var lo leftovers
	for _, line := range strings.Split(ns.IP(t, "-o", "link", "show"), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			lo.links = append(lo.links, strings.TrimSuffix(strings.Split(f[1], "@")[0], ":"))
		}
	}
	for _, line := range strings.Split(ns.Exec(t, "nft", "list", "tables"), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			lo.tables = append(lo.tables, line)
		}
	}
	state := filepath.Join(e.dir, "state")
	filepath.WalkDir(state, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.Type()&os.ModeSocket != 0 {
			rel, _ := filepath.Rel(state, path)
			lo.sockets = append(lo.sockets, rel)
		}
		return nil
	})
	lo.qemu = len(qemuFor(filepath.Join(state, "vms")))
	slices.Sort(lo.links)
	slices.Sort(lo.tables)
	slices.Sort(lo.sockets)
	return lo
}

func runHygiene(t *testing.T, socketCycles, qemuQuick, qemuBoot int) {
	g := guestDir(t)
	e := newEnv(t)
	ns := frameiotest.NewNetns(t)
	ns.IP(t, "link", "set", "lo", "up")
	e.ns = ns.Name
	t.Cleanup(func() { e.run("daemon", "stop", "--all") })
	e.ok("create", "x1", "--runtime", "external")
	e.ok("modify", "x1", "set", "network-card", "-t", "shared")
	e.ok("create", "q1", "--kernel", filepath.Join(g, "vmlinuz"), "--initrd", filepath.Join(g, "initrd.img"), "--ram", "256M",
		"--append", "no_timer_check anka.ipv6=0")
	e.ok("modify", "q1", "set", "network-card", "-t", "shared")
	e.ok("modify", "q1", "add", "port-forwarding", "web", "-g", "80", "-p", "18080", "-l", "127.0.0.1")

	qemuCycle := func(boot bool) {
		if boot {
			if out := e.ok("start", "q1"); !startIP.MatchString(out) {
				t.Fatalf("q1 started without an address:\n%s", out)
			}
			e.ok("stop", "q1", "--timeout", "60s")
		} else {
			e.ok("start", "--no-wait", "q1")
			e.ok("stop", "--force", "q1")
		}
	}
	cycle := func() {
		e.ok("start", "x1")
		e.ok("stop", "x1")
	}
	// One warm-up of each: the daemon and the plugin start, and whatever
	// they set up once (the bridge, the tables, pools) exists.
	cycle()
	qemuCycle(qemuBoot > 0)
	status := e.daemonStatus
	// Two status calls: the first one's connection has gone when the
	// second reads the figures.
	status()
	before := status()
	pluginPID, pluginBefore := before.plugin(t, "anka-net-shared")
	loBefore := takeLeftovers(t, e, ns)
	t.Logf("hygiene-figure when=baseline proc=daemon fds=%d goroutines=%d threads=%d rss_kib=%d heap_kib=%d",
		before.Resources.FDs, before.Resources.Goroutines, before.Resources.Threads, before.Resources.RSS>>10, before.Resources.HeapAlloc>>10)
	t.Logf("hygiene-figure when=baseline proc=anka-net-shared fds=%d goroutines=%d threads=%d rss_kib=%d heap_kib=%d",
		pluginBefore.FDs, pluginBefore.Goroutines, pluginBefore.Threads, pluginBefore.RSS>>10, pluginBefore.HeapAlloc>>10)
	if pluginBefore.Goroutines == 0 || pluginBefore.HeapAlloc == 0 {
		t.Fatalf("daemon status has no goroutines or heap for the plugin: %+v", pluginBefore)
	}

	start := time.Now()
	for i := 1; i <= socketCycles; i++ {
		cycle()
		// A leak grows with the cycles, a heap settling does not: the
		// readings along the way tell them apart.
		if i%25 == 0 && i < socketCycles {
			status()
			mid := status()
			_, p := mid.plugin(t, "anka-net-shared")
			t.Logf("hygiene-figure when=cycle-%d proc=daemon fds=%d goroutines=%d rss_kib=%d heap_kib=%d; proc=anka-net-shared fds=%d goroutines=%d rss_kib=%d heap_kib=%d",
				i, mid.Resources.FDs, mid.Resources.Goroutines, mid.Resources.RSS>>10, mid.Resources.HeapAlloc>>10, p.FDs, p.Goroutines, p.RSS>>10, p.HeapAlloc>>10)
		}
	}
	socketTime := time.Since(start)
	start = time.Now()
	for i := 0; i < qemuQuick+qemuBoot; i++ {
		qemuCycle(i >= qemuQuick)
	}
	t.Logf("hygiene-figure cycles socket=%d in %v, qemu quick=%d booted=%d in %v", socketCycles, socketTime.Round(time.Millisecond),
		qemuQuick, qemuBoot, time.Since(start).Round(time.Millisecond))

	status()
	after := status()
	pid, pluginAfter := after.plugin(t, "anka-net-shared")
	t.Logf("hygiene-figure when=after proc=daemon fds=%d goroutines=%d threads=%d rss_kib=%d heap_kib=%d",
		after.Resources.FDs, after.Resources.Goroutines, after.Resources.Threads, after.Resources.RSS>>10, after.Resources.HeapAlloc>>10)
	t.Logf("hygiene-figure when=after proc=anka-net-shared fds=%d goroutines=%d threads=%d rss_kib=%d heap_kib=%d",
		pluginAfter.FDs, pluginAfter.Goroutines, pluginAfter.Threads, pluginAfter.RSS>>10, pluginAfter.HeapAlloc>>10)
	if after.PID != before.PID || pid != pluginPID {
		t.Fatalf("the daemon (%d -> %d) or the plugin (%d -> %d) was restarted during the cycles", before.PID, after.PID, pluginPID, pid)
	}
	for _, c := range []struct {
		what          string
		before, after int64
		margin        int64
	}{
		{"daemon fds", int64(before.Resources.FDs), int64(after.Resources.FDs), fdMargin},
		{"daemon goroutines", int64(before.Resources.Goroutines), int64(after.Resources.Goroutines), goroutineMargin},
		{"daemon heap", int64(before.Resources.HeapAlloc), int64(after.Resources.HeapAlloc), rssMargin},
		{"daemon RSS", before.Resources.RSS, after.Resources.RSS, rssMargin},
		{"plugin fds", int64(pluginBefore.FDs), int64(pluginAfter.FDs), fdMargin},
		{"plugin goroutines", int64(pluginBefore.Goroutines), int64(pluginAfter.Goroutines), goroutineMargin},
		{"plugin heap", int64(pluginBefore.HeapAlloc), int64(pluginAfter.HeapAlloc), rssMargin},
		{"plugin RSS", pluginBefore.RSS, pluginAfter.RSS, rssMargin},
	} {
		if c.after > c.before+c.margin {
			t.Errorf("%s grew from %d to %d over the cycles (margin %d)", c.what, c.before, c.after, c.margin)
		}
	}
	// Nothing else left: the network's bridge and tables stay while the
	// plugin runs, as they were at the baseline.
	loAfter := takeLeftovers(t, e, ns)
	if !slices.Equal(loBefore.links, loAfter.links) || !slices.Equal(loBefore.tables, loAfter.tables) ||
		!slices.Equal(loBefore.sockets, loAfter.sockets) || loAfter.qemu != 0 {
		t.Fatalf("left over by the cycles:\nbefore %+v\nafter  %+v", loBefore, loAfter)
	}
	t.Logf("hygiene-figure when=after-cycles links=%v tables=%v sockets=%v qemu=%d", loAfter.links, loAfter.tables, loAfter.sockets, loAfter.qemu)

	// daemon stop --all: nothing of anka's at all.
	e.ok("daemon", "stop", "--all")
	waitFor(t, "the daemon and the plugin to exit", 10*time.Second, func() bool { return !alive(after.PID) && !alive(pluginPID) })
	lo := takeLeftovers(t, e, ns)
	if !slices.Equal(lo.links, []string{"lo"}) || len(lo.tables) != 0 || len(lo.sockets) != 0 || lo.qemu != 0 {
		t.Fatalf("left over after daemon stop --all: %+v", lo)
	}
	t.Logf("hygiene-figure when=after-stop-all links=%v tables=%v sockets=%v qemu=%d", lo.links, lo.tables, lo.sockets, lo.qemu)
}
