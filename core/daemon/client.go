package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/anka-net/anka/core/config"
	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/core/fsutil"
	"github.com/anka-net/anka/core/vm"
	"github.com/anka-net/anka/sdk"
)

// Client talks to the daemon of one state dir, starting it on demand.
type Client struct {
	Config config.Snapshot
	// StateDir is the daemon's state dir (the config's state_dir).
	StateDir string
	// Exe is the anka binary to run `anka daemon` with; "" = this one.
	Exe string
	// Env is the started daemon's environment; nil = this process's.
	Env []string
	// StartTimeout bounds how long a daemon started on demand may take
	// to listen.
	StartTimeout time.Duration
	// NoStart makes a missing daemon an error instead of starting one.
	NoStart bool

	http *http.Client
}

var _ Service = (*Client)(nil)

func (c *Client) client() *http.Client {
	if c.http == nil {
		sock := SocketPath(c.StateDir)
		c.http = &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			},
			DisableKeepAlives: true,
		}}
	}
	return c.http
}

// unreachable says whether err means nobody listens on the socket.
func unreachable(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)
}

func (c *Client) post(ctx context.Context, op string, req *request) (*http.Response, error) {
	req.Config = c.Config
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://anka/v1/"+op, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", "application/json")
	return c.client().Do(hr)
}

// call sends one request, starting the daemon first when none listens.
func (c *Client) call(ctx context.Context, op string, req *request) (*response, error) {
	hresp, err := c.post(ctx, op, req)
	if err != nil && unreachable(err) && !c.NoStart {
		if err = c.start(ctx); err == nil {
			hresp, err = c.post(ctx, op, req)
		}
	}
	if err != nil {
		var ke *errs.Error
		if errors.As(err, &ke) {
			return nil, err
		}
		if errors.Is(err, syscall.EACCES) {
			return nil, errs.Permissionf("cannot reach the anka daemon at %s: permission denied; run anka as root (sudo)", SocketPath(c.StateDir))
		}
		if unreachable(err) {
			return nil, errs.Unavailablef("no anka daemon is running for %s: `anka daemon` starts one (any command that needs it starts it too)", c.StateDir)
		}
		return nil, errs.Unavailablef("talking to the anka daemon at %s: %v", SocketPath(c.StateDir), err)
	}
	defer hresp.Body.Close()
	var resp response
	if err := json.NewDecoder(io.LimitReader(hresp.Body, 64<<20)).Decode(&resp); err != nil {
		return nil, errs.Unavailablef("the anka daemon at %s gave an answer this anka cannot read (%v): is it another version? `anka daemon stop` and retry", SocketPath(c.StateDir), err)
	}
	if resp.Error != nil {
		return &resp, resp.Error.err()
	}
	return &resp, nil
}

// start runs `anka daemon` in the background, detached from this
// terminal and session, and waits until it listens.
func (c *Client) start(ctx context.Context) error {
	exe := c.Exe
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return errs.Unavailablef("cannot find the anka binary to start the daemon: %v", err)
		}
	}
	if err := os.MkdirAll(c.StateDir, 0o755); err != nil {
		return vm.PathError(c.StateDir, err)
	}
	logPath := filepath.Join(c.StateDir, LogName)
	if fi, err := os.Stat(logPath); err == nil && fi.Size() > 10<<20 {
		os.Rename(logPath, logPath+".1")
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return vm.PathError(c.StateDir, err)
	}
	defer logf.Close()
	start, _ := logf.Seek(0, io.SeekEnd)
	cmd := exec.Command(exe, "daemon", "--state-dir", c.StateDir)
	cmd.Env = c.Env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return errs.Unavailablef("starting the anka daemon (%s daemon): %v", exe, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	timeout := c.StartTimeout
	if timeout == 0 {
		timeout = 15 * time.Second
	}
	deadline := time.Now().Add(timeout)
	for {
		conn, err := net.Dial("unix", SocketPath(c.StateDir))
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case err := <-exited:
			// Another CLI may have started one at the same moment: it
			// holds the lock and is about to listen.
			if c.waitListening(deadline) {
				return nil
			}
			return errs.Unavailablef("the anka daemon exited at once (%v): %s", err, logTail(logPath, start))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errs.Unavailablef("the anka daemon did not listen on %s within %s: see %s", SocketPath(c.StateDir), timeout, logPath)
		}
	}
}

func (c *Client) waitListening(deadline time.Time) bool {
	for time.Now().Before(deadline) {
		if conn, err := net.Dial("unix", SocketPath(c.StateDir)); err == nil {
			conn.Close()
			return true
		}
		// Whoever won holds the daemon lock from before it listens.
		l, err := fsutil.TryLockFile(filepath.Join(c.StateDir, LockName))
		if err == nil {
			l.Unlock()
			return false // nobody is about to listen
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// logTail is what the daemon wrote to its log since offset, trimmed.
func logTail(path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return "see " + path
	}
	defer f.Close()
	f.Seek(offset, io.SeekStart)
	b, _ := io.ReadAll(io.LimitReader(f, 4096))
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "see " + path
	}
	return s
}

// Running reports whether a daemon answers on the socket now.
func (c *Client) Running() bool {
	conn, err := net.Dial("unix", SocketPath(c.StateDir))
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

func (c *Client) status(ctx context.Context, op string, req *request) (*vm.Status, error) {
	resp, err := c.call(ctx, op, req)
	if err != nil {
		return nil, err
	}
	if resp.Status == nil {
		return nil, errs.Unavailablef("the anka daemon answered %s without the VM's state", op)
	}
	return resp.Status, nil
}

func (c *Client) Start(ctx context.Context, name string) (*vm.Status, error) {
	return c.status(ctx, opStart, &request{Name: name})
}

func (c *Client) Suspend(ctx context.Context, name string) (*vm.Status, error) {
	return c.status(ctx, opSuspend, &request{Name: name})
}

func (c *Client) Stop(ctx context.Context, name string, force bool, timeout time.Duration) (*vm.Status, error) {
	return c.status(ctx, opStop, &request{Name: name, Force: force, Timeout: timeout})
}

func (c *Client) StopAll(ctx context.Context, force bool, timeout time.Duration) ([]string, error) {
	resp, err := c.call(ctx, opStopAll, &request{Force: force, Timeout: timeout})
	if resp == nil {
		return nil, err
	}
	return resp.Names, err
}

func (c *Client) Delete(ctx context.Context, name string, force bool) error {
	_, err := c.call(ctx, opDelete, &request{Name: name, Force: force})
	return err
}

func (c *Client) SetCard(ctx context.Context, name string, ch vm.CardChange, add bool) (*vm.Status, error) {
	return c.status(ctx, opSetCard, &request{Name: name, Card: &ch, Add: add})
}

func (c *Client) DeleteCard(ctx context.Context, name string) (*vm.Status, error) {
	return c.status(ctx, opDeleteCard, &request{Name: name})
}

func (c *Client) AddPortForward(ctx context.Context, name string, r vm.PortForward) (*vm.PortForward, error) {
	resp, err := c.call(ctx, opAddForward, &request{Name: name, Rule: &r})
	if err != nil {
		return nil, err
	}
	return resp.Rule, nil
}

func (c *Client) DeletePortForward(ctx context.Context, name, rule string, all bool) error {
	_, err := c.call(ctx, opDeleteForward, &request{Name: name, RuleName: rule, All: all})
	return err
}

func (c *Client) Show(ctx context.Context, name string) (*vm.Status, error) {
	return c.status(ctx, opShow, &request{Name: name})
}

func (c *Client) RestartPlugin(ctx context.Context, typ string) (int, error) {
	resp, err := c.call(ctx, opRestartPlugin, &request{Type: typ})
	if err != nil {
		return 0, err
	}
	return resp.PID, nil
}

// Status asks the daemon about itself.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	resp, err := c.call(ctx, opStatus, &request{})
	if err != nil {
		return nil, err
	}
	return resp.Daemon, nil
}

// Shutdown asks the daemon to stop (see Server.shutdown) and waits until
// it has let go of the state dir.
func (c *Client) Shutdown(ctx context.Context, all bool) (*ShutdownReport, error) {
	resp, err := c.call(ctx, opShutdown, &request{All: all})
	if err != nil {
		if resp != nil {
			return resp.Shutdown, err
		}
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for c.Running() {
		if time.Now().After(deadline) {
			return resp.Shutdown, fmt.Errorf("the daemon said it stops but still listens on %s", SocketPath(c.StateDir))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return resp.Shutdown, nil
}

// Ensure starts the daemon unless one listens.
func (c *Client) Ensure(ctx context.Context) error {
	if c.Running() {
		return nil
	}
	return c.start(ctx)
}

func (c *Client) Capture(ctx context.Context, name, path string, stop bool) (*sdk.CaptureResponse, error) {
	op := opCaptureStart
	if stop {
		op = opCaptureStop
	}
	resp, err := c.call(ctx, op, &request{Name: name, Path: path})
	if err != nil {
		return nil, err
	}
	return resp.Capture, nil
}
