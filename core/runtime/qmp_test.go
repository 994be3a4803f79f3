package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const greeting = `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}`

// fakeQMP serves one connection at a time on a unix socket in a temp dir
// with the handler, and records every command it received.
type fakeQMP struct {
	sock string
	mu   sync.Mutex
	cmds []map[string]any
}

func (f *fakeQMP) commands() []map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]map[string]any(nil), f.cmds...)
}

// session gives a handler the means to talk QMP.
type session struct {
	t    *testing.T
	f    *fakeQMP
	conn net.Conn
	dec  *json.Decoder
}

func (s *session) send(lines ...string) {
	for _, l := range lines {
		if _, err := s.conn.Write([]byte(l + "\r\n")); err != nil {
			s.t.Logf("fake QMP write: %v", err)
		}
	}
}

// recv reads one command; ok is false at EOF.
func (s *session) recv() (map[string]any, bool) {
	var m map[string]any
	if err := s.dec.Decode(&m); err != nil {
		return nil, false
	}
	s.f.mu.Lock()
	s.f.cmds = append(s.f.cmds, m)
	s.f.mu.Unlock()
	return m, true
}

// reply answers cmd with a return value, echoing its id as QEMU does.
func (s *session) reply(cmd map[string]any, ret string) {
	id, _ := json.Marshal(cmd["id"])
	s.send(`{"return": ` + ret + `, "id": ` + string(id) + `}`)
}

func startFakeQMP(t *testing.T, handler func(s *session)) *fakeQMP {
	t.Helper()
	f := &fakeQMP{sock: filepath.Join(t.TempDir(), "qmp.sock")}
	l, err := net.Listen("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			handler(&session{t: t, f: f, conn: c, dec: json.NewDecoder(c)})
			c.Close()
		}
	}()
	return f
}

// standard greets, negotiates, and answers the next command with ret.
func standard(ret string) func(s *session) {
	return func(s *session) {
		s.send(greeting)
		c, ok := s.recv()
		if !ok {
			return
		}
		s.reply(c, "{}")
		if c, ok = s.recv(); ok {
			s.reply(c, ret)
		}
	}
}

func TestQMPExec(t *testing.T) {
	f := startFakeQMP(t, standard(`{"status": "paused", "singlestep": false, "running": false}`))
	var st qmpStatus
	if err := qmpExec(context.Background(), f.sock, "query-status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Status != "paused" || st.Running || st.state() != Paused {
		t.Fatalf("status = %+v", st)
	}
	cmds := f.commands()
	if len(cmds) != 2 || cmds[0]["execute"] != "qmp_capabilities" || cmds[1]["execute"] != "query-status" {
		t.Fatalf("commands = %v", cmds)
	}
	if _, ok := cmds[1]["arguments"]; ok {
		t.Fatalf("arguments sent for a command without any: %v", cmds[1])
	}
}

func TestQMPArgumentsAndEvents(t *testing.T) {
	f := startFakeQMP(t, func(s *session) {
		// Events may come at any time, even before the greeting.
		s.send(`{"event": "RTC_CHANGE", "data": {"offset": 0}, "timestamp": {"seconds": 1, "microseconds": 2}}`)
		s.send(greeting)
		c, _ := s.recv()
		s.send(`{"event": "NIC_RX_FILTER_CHANGED", "data": {"path": "/machine/peripheral-anon/device[0]/virtio-backend"}, "timestamp": {"seconds": 1, "microseconds": 3}}`)
		s.reply(c, "{}")
		c, _ = s.recv()
		s.send(
			`{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 4}}`,
			// A stale reply to some other command must be skipped too.
			`{"return": {"wrong": true}, "id": "other"}`,
			`{"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 5}}`,
		)
		s.reply(c, "{}")
	})
	if err := qmpExec(context.Background(), f.sock, "set_link", map[string]any{"name": "n0", "up": false}, nil); err != nil {
		t.Fatal(err)
	}
	cmds := f.commands()
	if len(cmds) != 2 {
		t.Fatalf("commands = %v", cmds)
	}
	args, _ := cmds[1]["arguments"].(map[string]any)
	if cmds[1]["execute"] != "set_link" || args["name"] != "n0" || args["up"] != false {
		t.Fatalf("set_link sent as %v", cmds[1])
	}
}

func TestQMPErrorReply(t *testing.T) {
	f := startFakeQMP(t, func(s *session) {
		s.send(greeting)
		c, _ := s.recv()
		s.reply(c, "{}")
		c, _ = s.recv()
		id, _ := json.Marshal(c["id"])
		s.send(`{"error": {"class": "DeviceNotFound", "desc": "Device 'n0' not found"}, "id": ` + string(id) + `}`)
	})
	err := qmpExec(context.Background(), f.sock, "set_link", map[string]any{"name": "n0", "up": true}, nil)
	var qe *QMPError
	if !errors.As(err, &qe) {
		t.Fatalf("err = %v, want a QMPError", err)
	}
	if qe.Class != "DeviceNotFound" || qe.Desc != "Device 'n0' not found" {
		t.Fatalf("QMPError = %+v", qe)
	}
	if !strings.Contains(err.Error(), "Device 'n0' not found") {
		t.Fatalf("message %q lacks QEMU's description", err)
	}
}

func TestQMPCapabilitiesRefused(t *testing.T) {
	f := startFakeQMP(t, func(s *session) {
		s.send(greeting)
		s.recv()
		s.send(`{"error": {"class": "CommandNotFound", "desc": "nope"}}`)
	})
	err := qmpExec(context.Background(), f.sock, "cont", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "capabilities") {
		t.Fatalf("err = %v", err)
	}
}

func TestQMPConnectionClosed(t *testing.T) {
	f := startFakeQMP(t, func(s *session) {
		s.send(greeting)
		c, _ := s.recv()
		s.reply(c, "{}")
		s.recv() // and hang up without an answer
	})
	err := qmpExec(context.Background(), f.sock, "stop", nil, nil)
	if err == nil || !strings.Contains(err.Error(), "closed the monitor connection") {
		t.Fatalf("err = %v", err)
	}
}

func TestQMPNoSocket(t *testing.T) {
	err := qmpExec(context.Background(), filepath.Join(t.TempDir(), "qmp.sock"), "stop", nil, nil)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v", err)
	}
}

// QEMU greets one client at a time; a second one waits in silence. The
// client must give up at the context's deadline.
func TestQMPDeadline(t *testing.T) {
	release := make(chan struct{})
	f := startFakeQMP(t, func(s *session) { <-release })
	t.Cleanup(func() { close(release) }) // runs before the server's cleanup
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := qmpExec(ctx, f.sock, "query-status", nil, nil)
	if err == nil {
		t.Fatal("no error from a silent monitor")
	}
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("err = %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("gave up after %v", d)
	}
}

func TestQMPCancel(t *testing.T) {
	release := make(chan struct{})
	f := startFakeQMP(t, func(s *session) {
		s.send(greeting)
		c, _ := s.recv()
		s.reply(c, "{}")
		s.recv()
		<-release
	})
	t.Cleanup(func() { close(release) }) // runs before the server's cleanup
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	err := qmpExec(ctx, f.sock, "system_powerdown", nil, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("cancel took %v", d)
	}
}

func TestQMPStatusState(t *testing.T) {
	for _, tc := range []struct {
		st   qmpStatus
		want State
	}{
		{qmpStatus{Running: true, Status: "running"}, Running},
		{qmpStatus{Status: "paused"}, Paused},
		{qmpStatus{Status: "prelaunch"}, Paused},
		{qmpStatus{Status: "postmigrate"}, Paused},
		{qmpStatus{Status: "suspended"}, Paused},
		{qmpStatus{Status: "guest-panicked"}, Paused},
		{qmpStatus{Status: "shutdown"}, Running},
	} {
		if got := tc.st.state(); got != tc.want {
			t.Errorf("%+v -> %s, want %s", tc.st, got, tc.want)
		}
	}
}

// Info reads the state over QMP; Info's fallback (process alive, monitor
// silent) is covered by the real-QEMU tests.
func TestQMPStatusRoundTrip(t *testing.T) {
	f := startFakeQMP(t, standard(`{"status": "running", "singlestep": false, "running": true}`))
	var st qmpStatus
	if err := qmpExec(context.Background(), f.sock, "query-status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.state() != Running {
		t.Fatalf("state %s", st.state())
	}
}
