package runtime

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// FuzzParseStat reads arbitrary /proc/PID/stat lines, and lines built
// from an arbitrary comm: a process may name itself anything, parentheses
// and spaces included, and must not fake its state or parent that way.
func FuzzParseStat(f *testing.F) {
	f.Add("4242 (qemu-system-x86) S 1 4242 4242 0 -1 4194560", "qemu-system-x86", byte('S'), 1)
	f.Add("77 (a) Z 1) R 5 0", "a) R 5 (b", byte('Z'), 0)
	f.Add("1 (init) ", ") ) (", byte('X'), -1)
	f.Add("(x) S 1", "", byte('R'), 99999999)
	f.Fuzz(func(t *testing.T, line, comm string, state byte, ppid int) {
		if st, err := parseStat(line); err == nil {
			again, err := parseStat(fmt.Sprintf("%d (%s) %s %d", st.PID, st.Comm, []byte{st.State}, st.PPID))
			if err != nil || again != st {
				t.Fatalf("%q read as %+v, written and read again as %+v (%v)", line, st, again, err)
			}
		}
		if !(state >= 'A' && state <= 'Z' || state >= 'a' && state <= 'z') || strings.ContainsRune(comm, '\x00') { // the kernel's states are letters
			return
		}
		built := fmt.Sprintf("4242 (%s) %c %d 4242 4242 0 -1", comm, state, ppid)
		st, err := parseStat(built)
		if err != nil {
			t.Fatalf("%q: %v", built, err)
		}
		if st.PID != 4242 || st.Comm != comm || st.State != state || st.PPID != ppid {
			t.Fatalf("%q read as %+v", built, st)
		}
	})
}

// FuzzExternalState reads an arbitrary endpoint.json (written by anka,
// but in a folder root can edit): a refusal names the file and the way
// out; what is read is written back unchanged.
func FuzzExternalState(f *testing.F) {
	f.Add([]byte(`{"state":"running","endpoint":{"kind":"dgram","plugin_path":"/var/lib/anka/plugins/anka-net-shared/vm1.sock","vm_path":"/var/lib/anka/vms/vm1/nic.sock","mac":"0e:61:6e:6b:00:01","link_up":true}}`))
	f.Add([]byte(`{"state":"stopped"}`))
	f.Add([]byte(`{"state":"running","endpoint":{"kind":"tap","tap":"akx0123abcd","mac":""}}`))
	f.Add([]byte(`{"state":"running","endpoint":`))
	f.Add([]byte(`{"state":7,"endpoint":[]}`))
	dir := f.TempDir()
	if d, err := os.MkdirTemp("/dev/shm", "anka-fuzz-"); err == nil {
		dir = d // writes sync; on tmpfs that costs nothing
		f.Cleanup(func() { os.RemoveAll(d) })
	}
	e := External{}
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(e.file(dir), data, 0o644); err != nil {
			t.Fatal(err)
		}
		st, err := e.Read(dir)
		if err != nil {
			if !strings.Contains(err.Error(), e.file(dir)) || !strings.Contains(err.Error(), "--force") {
				t.Fatalf("error names neither the file nor the way out: %v", err)
			}
			return
		}
		if err := e.write(dir, st); err != nil {
			t.Fatalf("a state read does not write back: %v", err)
		}
		st2, err := e.Read(filepath.Clean(dir))
		if err != nil || !reflect.DeepEqual(st, st2) {
			t.Fatalf("round trip %+v -> %+v (%v)", st, st2, err)
		}
	})
}

// monitorConn is QEMU's side of a QMP socket: it answers with a fixed
// script and swallows what anka sends.
type monitorConn struct {
	r     *bytes.Reader
	wrote bytes.Buffer
}

func (c *monitorConn) Read(p []byte) (int, error)         { return c.r.Read(p) }
func (c *monitorConn) Write(p []byte) (int, error)        { return c.wrote.Write(p) }
func (c *monitorConn) Close() error                       { return nil }
func (c *monitorConn) LocalAddr() net.Addr                { return &net.UnixAddr{} }
func (c *monitorConn) RemoteAddr() net.Addr               { return &net.UnixAddr{} }
func (c *monitorConn) SetDeadline(t time.Time) error      { return nil }
func (c *monitorConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *monitorConn) SetWriteDeadline(t time.Time) error { return nil }

// FuzzQMP hands the monitor client arbitrary answers to query-status.
// It returns, never loops on a stream that ended, and reports either a
// state or an error naming the command.
func FuzzQMP(f *testing.F) {
	f.Add([]byte(`{"return": {"running": true, "singlestep": false, "status": "running"}, "id": "anka-1"}` + "\n"))
	f.Add([]byte(`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}` + "\n" + `{"return": {"running": false, "status": "paused"}, "id": "anka-1"}`))
	f.Add([]byte(`{"return": {}, "id": "anka-0"}{"error": {"class": "GenericError", "desc": "no"}, "id": "anka-1"}`))
	f.Add([]byte(`{"QMP": {"version": {}}}{"return": {"running": "yes"}, "id": "anka-1"}`))
	f.Add([]byte(`{"return": {"running": true`))
	f.Add([]byte(`{"id": {"x": 1}, "return": 5}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		mc := &monitorConn{r: bytes.NewReader(data)}
		c := &qmpConn{conn: mc, dec: json.NewDecoder(mc), stop: func() bool { return true }}
		var st qmpStatus
		err := c.execute("query-status", nil, &st)
		if err != nil && !strings.Contains(err.Error(), "query-status") {
			t.Fatalf("error does not name the command: %v", err)
		}
		var qe *QMPError
		if errors.As(err, &qe) && qe == nil {
			t.Fatal("nil QMP error in the chain")
		}
		if !bytes.Contains(mc.wrote.Bytes(), []byte(`"execute":"query-status"`)) {
			t.Fatalf("sent %q", mc.wrote.Bytes())
		}
		_ = st.state()
	})
}
