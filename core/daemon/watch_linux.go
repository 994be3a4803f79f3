package daemon

import (
	"context"
	"errors"

	"golang.org/x/sys/unix"
)

// watch wakes the supervisor the moment process pid exits, child or not
// (a plugin adopted from an earlier daemon is not this process's child, so
// no SIGCHLD comes for it): a pidfd turns readable when its process ends.
// Without pidfds (Linux before 5.3) the supervisor's poll still finds it.
func (s *supervisor) watch(ctx context.Context, pid int) {
	s.mu.Lock()
	if s.watched == nil {
		s.watched = map[int]bool{}
	}
	if s.watched[pid] {
		s.mu.Unlock()
		return
	}
	s.watched[pid] = true
	s.mu.Unlock()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		s.unwatch(pid)
		return
	}
	go func() {
		defer unix.Close(fd)
		defer s.unwatch(pid)
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for ctx.Err() == nil {
			n, err := unix.Poll(fds, 500)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return
			}
			if n > 0 {
				s.wake()
				return
			}
		}
	}()
}

func (s *supervisor) unwatch(pid int) {
	s.mu.Lock()
	delete(s.watched, pid)
	s.mu.Unlock()
}

// wake asks the supervisor for a check now; one pending request is enough.
func (s *supervisor) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}
