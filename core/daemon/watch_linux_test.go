package daemon

import (
	"context"
	"os/exec"
	"testing"
	"time"
)

// A watched process that exits wakes the supervisor at once, child or not
// (here a child, the simplest process a test can kill).
func TestWatchWakesOnExit(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Skip("no sleep binary:", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := &supervisor{kick: make(chan struct{}, 1)}
	s.watch(ctx, cmd.Process.Pid)
	s.watch(ctx, cmd.Process.Pid) // a second watch of one pid is a no-op
	select {
	case <-s.kick:
		t.Fatal("woken while the process runs")
	case <-time.After(200 * time.Millisecond):
	}
	cmd.Process.Kill()
	select {
	case <-s.kick:
	case <-time.After(5 * time.Second):
		t.Fatal("not woken within 5 s of the process's exit")
	}
	cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		n := len(s.watched)
		s.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the watch was not dropped after the exit")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A pid that does not exist is not watched.
	s.watch(ctx, 1<<30)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.watched[1<<30] {
		t.Fatal("a missing pid is watched")
	}
}
