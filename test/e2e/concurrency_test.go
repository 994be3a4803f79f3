package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// parallel runs n copies of fn at once and waits for them all, failing
// the test when they do not finish within deadline (a deadlock).
func parallel(t *testing.T, what string, n int, deadline time.Duration, fn func(i int)) time.Duration {
	t.Helper()
	began := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); fn(i) }()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(deadline):
		t.Fatalf("%s: %d parallel commands did not finish within %v: a deadlock?", what, n, deadline)
	}
	return time.Since(began)
}

// sockets lists the unix sockets left under the VM folders and the
// VMs' socket folders (net/<vm>).
func sockets(stateDir string) []string {
	var out []string
	for _, dir := range []string{"vms", "net"} {
		filepath.Walk(filepath.Join(stateDir, dir), func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode()&os.ModeSocket != 0 {
				out = append(out, p)
			}
			return nil
		})
	}
	sort.Strings(out)
	return out
}

// Twenty VMs started and stopped by twenty anka processes at once, and
// ten processes modifying one VM at once: nothing is lost, nothing
// deadlocks, no port is left behind.
func TestParallelLifecycle(t *testing.T) { parallelLifecycle(t, 2) }

// The soak: fifty rounds of twenty parallel starts and stops (make soak).
func TestSoakParallelLifecycle(t *testing.T) {
	if os.Getenv("ANKA_SOAK") == "" {
		t.Skip("the long version runs with ANKA_SOAK=1 (make soak)")
	}
	parallelLifecycle(t, 50)
}

func parallelLifecycle(t *testing.T, rounds int) {
	e := newEnv(t)
	t.Cleanup(func() { e.run("daemon", "stop", "--all") })
	stateDir := filepath.Join(e.dir, "state")
	const n = 20
	name := func(i int) string { return fmt.Sprintf("p%02d", i) }
	for i := 0; i < n; i++ {
		e.ok("create", name(i), "--runtime", "external")
	}
	// The card changes run in parallel too: each takes the store lock.
	took := parallel(t, "set network-card", n, 2*time.Minute, func(i int) {
		if r := e.run("modify", name(i), "set", "network-card", "-t", "segment", "-o", "segment=s"+fmt.Sprint(i%3)); r.code != 0 {
			t.Errorf("modify %s: exit %d %s", name(i), r.code, r.stderr)
		}
	})
	t.Logf("%d parallel set network-card: %v", n, took.Round(time.Millisecond))

	for round := 0; round < rounds; round++ {
		took = parallel(t, "start --no-wait", n, 2*time.Minute, func(i int) {
			if r := e.run("start", "--no-wait", name(i)); r.code != 0 {
				t.Errorf("start %s: exit %d %s", name(i), r.code, r.stderr)
			}
		})
		if round < 2 || round == rounds-1 {
			t.Logf("round %d: %d parallel start --no-wait: %v", round, n, took.Round(time.Millisecond))
		}
		var list struct {
			Body []struct{ Name, Status string }
		}
		json.Unmarshal([]byte(e.ok("-j", "list")), &list)
		running := 0
		for _, v := range list.Body {
			if v.Status == "running" {
				running++
			}
		}
		if running != n {
			t.Fatalf("round %d: %d of %d VMs running after parallel starts: %+v", round, running, n, list.Body)
		}
		if s := sockets(stateDir); len(s) < n {
			t.Fatalf("round %d: %d sockets for %d attached VMs: %v", round, len(s), n, s)
		}
		var shown struct {
			NetworkCard struct{ Attached *bool } `json:"network_card"`
		}
		json.Unmarshal(e.jsonOK("show", name(round%n)), &shown)
		if a := shown.NetworkCard.Attached; a == nil || !*a {
			t.Fatalf("round %d: a running VM is not attached by the plugin's word: %v", round, a)
		}
		took = parallel(t, "stop", n, 2*time.Minute, func(i int) {
			if r := e.run("stop", name(i)); r.code != 0 {
				t.Errorf("stop %s: exit %d %s", name(i), r.code, r.stderr)
			}
		})
		if round < 2 || round == rounds-1 {
			t.Logf("round %d: %d parallel stop: %v", round, n, took.Round(time.Millisecond))
		}
		for i := 0; i < n; i++ {
			var show struct {
				Status      string
				NetworkCard struct {
					Attached *bool
					Error    string `json:"network_error"`
				} `json:"network_card"`
			}
			json.Unmarshal(e.jsonOK("show", name(i)), &show)
			if show.Status != "stopped" {
				t.Errorf("round %d: %s is %s after stop", round, name(i), show.Status)
			}
			// The plugin's own word: no port left for the VM.
			if a := show.NetworkCard.Attached; a == nil || *a {
				t.Errorf("round %d: %s after stop: the plugin reports attached=%v (%s)", round, name(i), a, show.NetworkCard.Error)
			}
		}
		if s := sockets(stateDir); len(s) != 0 {
			t.Fatalf("round %d: sockets left after every VM stopped (leaked ports): %v", round, s)
		}
	}
	for _, p := range e.daemonStatus().Plugins {
		if strings.HasSuffix(p.Binary, "anka-net-segment") && (!p.Running || p.Restarts != 0) {
			t.Fatalf("the segment plugin after the parallel rounds: %+v", p)
		}
	}

	// Ten processes add a rule each and change the card's options of one
	// VM at once: every change is there at the end.
	e.ok("create", "one", "--runtime", "external")
	const m = 10
	took = parallel(t, "modify one VM", m, 2*time.Minute, func(i int) {
		var r result
		if i%2 == 0 {
			r = e.run("modify", "one", "add", "port-forwarding", fmt.Sprintf("r%d", i), "-g", fmt.Sprint(100+i), "-p", fmt.Sprint(31000+i))
		} else {
			r = e.run("modify", "one", "add", "port-forwarding", fmt.Sprintf("r%d", i), "-g", fmt.Sprint(100+i))
		}
		if r.code != 0 {
			t.Errorf("modify %d: exit %d %s", i, r.code, r.stderr)
		}
	})
	t.Logf("%d parallel modify of one VM: %v", m, took.Round(time.Millisecond))
	var card struct {
		Rules []struct {
			Name      string
			HostPort  int `json:"host_port"`
			GuestPort int `json:"guest_port"`
		} `json:"port_forwarding_rules"`
	}
	json.Unmarshal(e.jsonOK("show", "one", "network"), &card)
	names, ports := map[string]int{}, map[int]bool{}
	for _, r := range card.Rules {
		names[r.Name] = r.GuestPort
		ports[r.HostPort] = true
	}
	for i := 0; i < m; i++ {
		if names[fmt.Sprintf("r%d", i)] != 100+i {
			t.Errorf("rule r%d lost or wrong after parallel modifies: %+v", i, card.Rules)
		}
	}
	if len(card.Rules) != m || len(ports) != m {
		t.Fatalf("after %d parallel modifies: %d rules on %d host ports: %+v", m, len(card.Rules), len(ports), card.Rules)
	}
}
