package runtime

// A small QMP (QEMU Machine Protocol) client: JSON objects over a unix
// socket. QEMU greets with {"QMP": {...}}, accepts commands only after
// qmp_capabilities, answers each command with {"return": ...} or
// {"error": {"class", "desc"}}, and may send asynchronous events
// ({"event": ...}) at any time, which are skipped.
//
// QEMU serves one QMP client at a time on a socket: a second client is
// accepted by the kernel but not greeted until the first disconnects, so
// every call here is bounded by a deadline.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
)

// DefaultQMPTimeout bounds a QMP exchange when the context has no deadline.
const DefaultQMPTimeout = 5 * time.Second

// QMPError is an error reply from QEMU.
type QMPError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("QEMU refused: %s (%s)", e.Desc, e.Class)
}

// errMonitorClosed means QEMU hung up, as it does right after "quit".
var errMonitorClosed = errors.New("QEMU closed the monitor connection")

type qmpMessage struct {
	QMP    json.RawMessage `json:"QMP"`
	Event  string          `json:"event"`
	Return json.RawMessage `json:"return"`
	Error  *QMPError       `json:"error"`
	ID     json.RawMessage `json:"id"`
}

type qmpCommand struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
	ID        string `json:"id"`
}

// qmpConn is one negotiated QMP session.
type qmpConn struct {
	conn net.Conn
	dec  *json.Decoder
	seq  int
	stop func() bool
}

// dialQMP connects to the socket, reads the greeting and negotiates
// capabilities. The whole session is bounded by ctx's deadline, or
// DefaultQMPTimeout from now when ctx has none; cancelling ctx aborts it.
func dialQMP(ctx context.Context, sock string) (*qmpConn, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(DefaultQMPTimeout)
	}
	d := net.Dialer{Deadline: deadline}
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, fmt.Errorf("connect to QEMU monitor %s: %w", sock, err)
	}
	if err := conn.SetDeadline(deadline); err != nil {
		conn.Close()
		return nil, err
	}
	c := &qmpConn{conn: conn, dec: json.NewDecoder(conn)}
	// Unblock reads and writes at once when ctx is cancelled.
	c.stop = context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })

	var greeting qmpMessage
	for {
		if err := c.read(&greeting); err != nil {
			c.Close()
			return nil, fmt.Errorf("QEMU monitor %s: no greeting: %w", sock, c.ctxErr(ctx, err))
		}
		if greeting.QMP != nil {
			break
		}
		if greeting.Event == "" {
			c.Close()
			return nil, fmt.Errorf("QEMU monitor %s: unexpected greeting", sock)
		}
	}
	if err := c.execute("qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, fmt.Errorf("QEMU monitor %s: capabilities negotiation: %w", sock, c.ctxErr(ctx, err))
	}
	return c, nil
}

// ctxErr prefers the context's error to the timeout it caused.
func (c *qmpConn) ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

func (c *qmpConn) read(m *qmpMessage) error {
	*m = qmpMessage{}
	if err := c.dec.Decode(m); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return errMonitorClosed
		}
		return err
	}
	return nil
}

// execute runs one command and decodes its "return" value into out (which
// may be nil), skipping asynchronous events.
func (c *qmpConn) execute(cmd string, args any, out any) error {
	c.seq++
	id := "anka-" + strconv.Itoa(c.seq)
	b, err := json.Marshal(qmpCommand{Execute: cmd, Arguments: args, ID: id})
	if err != nil {
		return err
	}
	if _, err := c.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("send %s: %w", cmd, err)
	}
	wantID, _ := json.Marshal(id)
	for {
		var m qmpMessage
		if err := c.read(&m); err != nil {
			return fmt.Errorf("%s: %w", cmd, err)
		}
		if m.Event != "" {
			continue
		}
		// A reply with another id answers an earlier command; skip it.
		if m.ID != nil && !bytes.Equal(m.ID, wantID) {
			continue
		}
		switch {
		case m.Error != nil:
			return fmt.Errorf("%s: %w", cmd, m.Error)
		case m.Return != nil:
			if out != nil {
				if err := json.Unmarshal(m.Return, out); err != nil {
					return fmt.Errorf("%s: unexpected reply %s: %w", cmd, m.Return, err)
				}
			}
			return nil
		}
		// Neither event nor reply (e.g. a second greeting): skip it.
	}
}

// Close ends the session.
func (c *qmpConn) Close() error {
	c.stop()
	return c.conn.Close()
}

// qmpExec runs one command in a session of its own.
func qmpExec(ctx context.Context, sock, cmd string, args any, out any) error {
	c, err := dialQMP(ctx, sock)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.execute(cmd, args, out); err != nil {
		return c.ctxErr(ctx, err)
	}
	return nil
}

// qmpStatus is the reply of query-status.
type qmpStatus struct {
	Running bool   `json:"running"`
	Status  string `json:"status"`
}

// state maps QEMU's run state onto ours. Running vCPUs are Running. A guest
// that powered off ("shutdown") is Running too: without -no-shutdown QEMU
// exits a moment later, and until then the process is alive and Stop works
// on it. Every other state has stopped vCPUs (paused, prelaunch, inmigrate,
// postmigrate, finish-migrate, save-vm, restore-vm, suspended, io-error,
// internal-error, guest-panicked, watchdog, debug, colo): Paused.
func (s qmpStatus) state() State {
	if s.Running || s.Status == "running" || s.Status == "shutdown" {
		return Running
	}
	return Paused
}
