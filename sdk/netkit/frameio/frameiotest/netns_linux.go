//go:build linux

package frameiotest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Netns is a network namespace a test created with `ip netns add`, and a
// thread inside it that runs whatever must be created there (sockets,
// TAPs, sysctls). It is deleted when the test ends; nothing it holds
// touches the host's interfaces.
type Netns struct {
	Name string
	work chan func()
}

// NewNetns creates a namespace for tb, or skips tb when not root or
// without iproute2.
func NewNetns(tb testing.TB) *Netns {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root: creates a network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		tb.Skip("needs ip from iproute2")
	}
	var rnd [4]byte
	rand.Read(rnd[:])
	n := &Netns{Name: "anka-test-" + hex.EncodeToString(rnd[:]), work: make(chan func())}
	if out, err := exec.Command("ip", "netns", "add", n.Name).CombinedOutput(); err != nil {
		tb.Fatalf("ip netns add %s: %v: %s", n.Name, err, out)
	}
	ready := make(chan error)
	go n.thread(ready)
	if err := <-ready; err != nil {
		exec.Command("ip", "netns", "del", n.Name).Run()
		tb.Fatalf("entering namespace %s: %v", n.Name, err)
	}
	tb.Cleanup(func() {
		close(n.work)
		if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
			tb.Errorf("ip netns del %s: %v: %s", n.Name, err, out)
		}
	})
	return n
}

// thread is locked to its OS thread and never unlocks it: when it
// returns, the runtime ends the thread rather than reuse one that is in
// another namespace.
func (n *Netns) thread(ready chan<- error) {
	runtime.LockOSThread()
	fd, err := unix.Open("/run/netns/"+n.Name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		ready <- err
		return
	}
	err = unix.Setns(fd, unix.CLONE_NEWNET)
	unix.Close(fd)
	ready <- err
	if err != nil {
		return
	}
	for f := range n.work {
		f()
	}
}

// Run runs f on a thread inside the namespace and returns its error.
// Sockets and devices f opens belong to the namespace and may be used
// from any goroutine afterwards.
func (n *Netns) Run(f func() error) error {
	done := make(chan error, 1)
	n.work <- func() { done <- f() }
	return <-done
}

// IP runs `ip -n NAME args...` and returns its output, failing tb on
// error.
func (n *Netns) IP(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := exec.Command("ip", append([]string{"-n", n.Name}, args...)...).CombinedOutput()
	if err != nil {
		tb.Fatalf("ip -n %s %s: %v: %s", n.Name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Exec runs a command inside the namespace (ip netns exec).
func (n *Netns) Exec(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...).CombinedOutput()
	if err != nil {
		tb.Fatalf("in %s: %s %s: %v: %s", n.Name, name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Receive listens on network and addr inside the namespace and returns
// what the first connection to it sends: total bytes, or what came before
// the connection ended or timeout passed after it was accepted; nil when
// no connection came. The listener closes when the test ends.
func (n *Netns) Receive(tb testing.TB, network, addr string, total int, timeout time.Duration) <-chan []byte {
	tb.Helper()
	var ln net.Listener
	if err := n.Run(func() (err error) { ln, err = net.Listen(network, addr); return err }); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(timeout))
		b, _ := io.ReadAll(io.LimitReader(c, int64(total)))
		got <- b
	}()
	return got
}

func (n *Netns) String() string { return fmt.Sprintf("netns %s", n.Name) }

// RerunIsolated runs this process's command line again under unshare(1)
// in new network and mount namespaces (private mount propagation), with
// env=1 set so the rerun knows it is the isolated one, and returns its
// exit code. A TestMain calls it (as root, env unset) and exits with the
// code, so nothing its tests do reaches the host's own network.
func RerunIsolated(env string) int {
	cmd := exec.Command("unshare", append([]string{"--net", "--mount", "--propagation", "private", "--", os.Args[0]}, os.Args[1:]...)...)
	cmd.Env = append(os.Environ(), env+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	fmt.Fprintf(os.Stderr, "%s: running the tests in namespaces of their own: %v\n", filepath.Base(os.Args[0]), err)
	return 1
}
