//go:build linux

package frameio

import (
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// parker waits for a socket in poll(2), asking for readiness only while it
// waits, instead of on the runtime poller, which registers every socket
// for EPOLLIN|EPOLLOUT edge-triggered for its whole life: there, every
// datagram the peer takes from our socket's send side wakes the runtime's
// poller thread (unix_write_space -> ep_poll_callback), a cost paid by the
// peer, usually a VM's hypervisor, on every frame.
type parker struct {
	fd     int
	wake   int          // eventfd: close writes it to end every wait
	mu     sync.RWMutex // read-held around every use of fd; close takes it
	closed atomic.Bool  // set by the first close; every use checks it
}

// init takes fd, a non-blocking socket.
func (p *parker) init(fd int) error {
	e, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return os.NewSyscallError("eventfd", err)
	}
	p.fd, p.wake = fd, e
	return nil
}

// wait blocks until fd has events or Close, or timeout (negative: none).
func (p *parker) wait(events int16, timeout time.Duration) {
	ms := -1
	if timeout >= 0 {
		ms = int((timeout + time.Millisecond - 1) / time.Millisecond)
	}
	fds := [2]unix.PollFd{{Fd: int32(p.fd), Events: events}, {Fd: int32(p.wake), Events: unix.POLLIN}}
	unix.Poll(fds[:], ms)
}

// read calls f until it reports done, waiting for input between calls.
func (p *parker) read(f func(uintptr) bool) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	for {
		if p.closed.Load() {
			return ErrClosed
		}
		if f(uintptr(p.fd)) {
			return nil
		}
		p.wait(unix.POLLIN, -1)
	}
}

// write calls f once; when f reports EAGAIN (again) and timeout > 0 it sets
// waiting and calls f again whenever there is room, until done or timeout.
func (p *parker) write(f func(uintptr) bool, again, waiting *bool, timeout time.Duration) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed.Load() {
		return ErrClosed
	}
	f(uintptr(p.fd))
	if !*again || timeout <= 0 {
		return nil
	}
	*waiting = true
	end := time.Now().Add(timeout)
	for {
		left := time.Until(end)
		if left <= 0 {
			return nil
		}
		p.wait(unix.POLLOUT, left)
		if p.closed.Load() {
			return ErrClosed
		}
		if f(uintptr(p.fd)) {
			return nil
		}
	}
}

func (p *parker) control(f func(fd int) error) error {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed.Load() {
		return ErrClosed
	}
	return f(p.fd)
}

// close ends every wait and closes the socket once nobody uses it; only
// the first call does anything.
func (p *parker) close() error {
	if p.closed.Swap(true) {
		return nil
	}
	var one = [8]byte{1}
	unix.Write(p.wake, one[:])
	p.mu.Lock()
	defer p.mu.Unlock()
	err := unix.Close(p.fd)
	unix.Close(p.wake)
	return err
}
