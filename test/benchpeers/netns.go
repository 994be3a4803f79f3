package benchpeers

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// cleanups is a stack of undo steps, run last first.
type cleanups struct {
	mu    sync.Mutex
	steps []func()
}

func (c *cleanups) add(f func()) {
	c.mu.Lock()
	c.steps = append(c.steps, f)
	c.mu.Unlock()
}

func (c *cleanups) run() {
	c.mu.Lock()
	steps := c.steps
	c.steps = nil
	c.mu.Unlock()
	for i := len(steps) - 1; i >= 0; i-- {
		steps[i]()
	}
}

// netns is a network namespace made with `ip netns add`, deleted by the
// session's cleanup.
type netns struct{ name string }

var nsPrefix = func() string {
	var b [3]byte
	rand.Read(b[:])
	return "abp" + hex.EncodeToString(b[:])
}()

var nsSeq struct {
	sync.Mutex
	n int
}

func newNetns(cl *cleanups, role string) (*netns, error) {
	nsSeq.Lock()
	nsSeq.n++
	name := fmt.Sprintf("%s-%s%d", nsPrefix, role, nsSeq.n)
	nsSeq.Unlock()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v: %s", name, err, out)
	}
	n := &netns{name: name}
	cl.add(func() { exec.Command("ip", "netns", "del", name).Run() })
	if err := n.ip("link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	return n, nil
}

// ip runs `ip -n NAME args...`.
func (n *netns) ip(args ...string) error {
	out, err := exec.Command("ip", append([]string{"-n", n.name}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip -n %s %s: %v: %s", n.name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// output runs a command inside the namespace and returns its stdout.
func (n *netns) output(ctx context.Context, env []string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
	if env != nil {
		cmd.Env = env
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.Bytes(), fmt.Errorf("%s %s in %s: %v: %s", name, strings.Join(args, " "), n.name, err, tail(errb.String()+out.String(), 800))
	}
	return out.Bytes(), nil
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// proc is a long-running process inside a namespace, in a process group
// of its own, its output kept in a log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// start runs name args... in the namespace (nil: the harness's own),
// logging to dir/<label>.log, and registers its stop with cl.
func startProc(cl *cleanups, n *netns, dir, label string, env []string, name string, args ...string) (*proc, error) {
	argv := append([]string{name}, args...)
	if n != nil {
		argv = append([]string{"ip", "netns", "exec", n.name}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	if env != nil {
		cmd.Env = env
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	logPath := filepath.Join(dir, label+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	f.Close()
	p := &proc{name: label, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	cl.add(p.stop)
	return p, nil
}

// stop ends the process group: SIGTERM, then SIGKILL after 3 s.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(3 * time.Second):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// logTail is the end of the process's log, for error messages.
func (p *proc) logTail() string {
	b, _ := os.ReadFile(p.log)
	return tail(string(b), 1200)
}

// waitFor polls cond every 50 ms until it holds, ctx ends or d passes.
func waitFor(ctx context.Context, d time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(d)
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if err != nil && errors.Is(err, errStop) {
			return err
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("waiting %s for %s: %w", d, what, err)
			}
			return fmt.Errorf("waiting %s for %s: timed out", d, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// errStop wrapped in a condition's error ends waitFor at once.
var errStop = errors.New("stop waiting")
