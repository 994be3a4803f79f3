package daemon

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const prSetChildSubreaper = 36 // PR_SET_CHILD_SUBREAPER

// becomeSubreaper makes this process the parent of every orphan among its
// descendants (QEMU daemonizes: its parent exits and the VM process would
// otherwise go to init), so it can reap them and none lingers as a zombie.
func becomeSubreaper() error {
	if _, _, e := syscall.RawSyscall6(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0, 0, 0, 0); e != 0 {
		return e
	}
	return nil
}

// reap waits for adopted children that exited. A zombie child is reaped
// only when it is still a zombie at the next sweep: a child this process
// started itself with os/exec is waited for by its own Wait, which must
// not find it gone.
func reap(ctx context.Context, log *slog.Logger) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGCHLD)
	defer signal.Stop(sig)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	seen := map[int]bool{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-sig:
		case <-t.C:
		}
		now := zombieChildren(os.Getpid())
		for pid := range now {
			if !seen[pid] {
				continue
			}
			var ws syscall.WaitStatus
			if got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil); err == nil && got == pid {
				log.Debug("reaped an adopted process", "pid", pid, "status", ws.ExitStatus())
				delete(now, pid)
			}
		}
		seen = now
	}
}

// zombieChildren lists the children of ppid that exited and were not
// waited for.
func zombieChildren(ppid int) map[int]bool {
	out := map[int]bool{}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 || f[0] != "Z" {
			continue
		}
		if pp, _ := strconv.Atoi(f[1]); pp != ppid {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		out[pid] = true
	}
	return out
}
