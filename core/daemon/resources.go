package daemon

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/anka-net/anka/sdk"
)

// Resources are one process's footprint, for `anka daemon status` and the
// hygiene tests that check nothing leaks across VM start/stop cycles. The
// daemon reports all of it for itself; a plugin's fds, threads and RSS come
// from /proc, its goroutines and heap from the sdk over the wire
// (InfoRequest.Runtime), zero when it does not answer within a second.
type Resources struct {
	FDs     int   `json:"fds"`
	Threads int   `json:"threads"`
	RSS     int64 `json:"rss_bytes"`
	// Goroutines and HeapAlloc, after a GC.
	Goroutines int    `json:"goroutines,omitempty"`
	HeapAlloc  uint64 `json:"heap_alloc_bytes,omitempty"`
}

// procResources reads pid's open files, threads and resident memory from
// /proc. A process that is gone, or a system without /proc, gives an error.
func procResources(pid int) (Resources, error) {
	var r Resources
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return r, err
	}
	r.FDs = len(fds)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return r, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(val)
		if len(f) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		switch key {
		case "Threads":
			r.Threads = int(n)
		case "VmRSS":
			r.RSS = n << 10 // kB
		}
	}
	return r, nil
}

// selfResources is the daemon's own footprint. It collects garbage first so
// that two readings compare live memory, not the collector's timing.
func selfResources() Resources {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	r, _ := procResources(os.Getpid())
	r.Goroutines = runtime.NumGoroutine()
	r.HeapAlloc = ms.HeapAlloc
	return r
}

// FormatResources is a short human form: "fds 12, threads 9, rss 14.2 MiB".
func FormatResources(r *Resources) string {
	if r == nil {
		return "-"
	}
	s := fmt.Sprintf("fds %d, threads %d, rss %.1f MiB", r.FDs, r.Threads, float64(r.RSS)/(1<<20))
	if r.Goroutines > 0 {
		s += fmt.Sprintf(", goroutines %d, heap %.1f MiB", r.Goroutines, float64(r.HeapAlloc)/(1<<20))
	}
	return s
}

// pluginRuntime adds a plugin's goroutines and live heap, as its sdk
// reports them, to what /proc gave.
func pluginRuntime(pl sdk.NetworkPlugin, r *Resources) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	info, err := pl.Info(ctx, &sdk.InfoRequest{Runtime: true})
	if err != nil || info.Runtime == nil {
		return
	}
	r.Goroutines, r.HeapAlloc = info.Runtime.Goroutines, info.Runtime.HeapAlloc
}
