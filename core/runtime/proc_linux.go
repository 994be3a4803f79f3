package runtime

// Liveness of a daemonized VM process, from /proc alone.
//
// kill(pid, 0) is not enough: a daemonized QEMU is reparented to PID 1 (or
// the nearest subreaper), and on a machine whose PID 1 does not reap, a QEMU
// that exited stays a zombie for ever, which kill(pid, 0) reports as alive.
// A PID may also be reused by an unrelated program after QEMU exited, so a
// live process only counts when its command line names this VM's files.

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// procStat is the part of /proc/PID/stat the runtime needs.
type procStat struct {
	PID   int
	Comm  string // the executable name, at most 15 bytes, may hold spaces and parentheses
	State byte   // R, S, D, T, t, Z, X, I, ...
	PPID  int
}

// dead reports whether the state is one of a process that has exited: a
// zombie (Z) waiting for its parent, or dead (X).
func (s procStat) dead() bool { return s.State == 'Z' || s.State == 'X' }

// parseStat parses the content of /proc/PID/stat: "pid (comm) state ppid ...".
// comm is the text between the first '(' and the last ')', because comm may
// itself contain spaces and parentheses.
func parseStat(s string) (procStat, error) {
	var st procStat
	open := strings.IndexByte(s, '(')
	closing := strings.LastIndexByte(s, ')')
	if open < 1 || closing < open {
		return st, fmt.Errorf("malformed /proc stat line %q", truncate(s, 80))
	}
	pid, err := strconv.Atoi(strings.TrimSpace(s[:open]))
	if err != nil {
		return st, fmt.Errorf("malformed /proc stat line %q: bad pid", truncate(s, 80))
	}
	st.PID = pid
	st.Comm = s[open+1 : closing]
	rest := strings.Fields(s[closing+1:])
	if len(rest) < 2 || len(rest[0]) != 1 {
		return st, fmt.Errorf("malformed /proc stat line %q: no state", truncate(s, 80))
	}
	st.State = rest[0][0]
	if st.PPID, err = strconv.Atoi(rest[1]); err != nil {
		return st, fmt.Errorf("malformed /proc stat line %q: bad ppid", truncate(s, 80))
	}
	return st, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// errNoProcess means /proc has no such PID.
var errNoProcess = errors.New("no such process")

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return procStat{}, errNoProcess
		}
		return procStat{}, err
	}
	return parseStat(string(b))
}

// ProcessAlive reports whether pid exists and has not exited (a zombie has):
// the liveness check every part of anka uses, since a PID 1 that does not
// reap leaves exited processes as zombies.
func ProcessAlive(pid int) bool {
	st, err := readStat(pid)
	return err == nil && !st.dead()
}

func readCmdline(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return nil, err
	}
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil, nil
	}
	return strings.Split(string(b), "\x00"), nil
}

// mentions reports whether one argument names path as a whole option value:
// the argument itself, or path right after ':' or '=' and followed by the end
// or ',' (as in "socket,id=qmp,path=/vm/qmp.sock,server=on").
func mentions(args []string, path string) bool {
	if path == "" {
		return false
	}
	for _, a := range args {
		for i := 0; ; {
			j := strings.Index(a[i:], path)
			if j < 0 {
				break
			}
			start, end := i+j, i+j+len(path)
			before := start == 0 || a[start-1] == ':' || a[start-1] == '='
			after := end == len(a) || a[end] == ','
			if before && after {
				return true
			}
			i = start + 1
		}
	}
	return false
}

// ownedProcess reports whether pid is a live (not zombie) process whose
// command line names one of paths, i.e. the VM process of that folder and
// not a program that reused the PID.
func ownedProcess(pid int, paths ...string) bool {
	if pid <= 0 {
		return false
	}
	st, err := readStat(pid)
	if err != nil || st.dead() {
		return false
	}
	args, err := readCmdline(pid)
	if err != nil {
		return false
	}
	for _, p := range paths {
		if mentions(args, p) {
			// The process may have exited between the two reads; a
			// zombie has an empty cmdline, so it cannot get here.
			return true
		}
	}
	return false
}

// readPidfile returns the PID in a pidfile, 0 when the file is missing or
// does not hold a PID (QEMU may be writing it right now).
func readPidfile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, nil
		}
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, nil
	}
	return pid, nil
}

// signalOwned sends sig to pid if it is still the owned process. Through a
// pidfd the check and the signal are free of PID-reuse races: the pidfd is
// opened first, so a process that passes the check afterwards is the one the
// pidfd refers to. A process that is already gone is not an error.
func signalOwned(pid int, sig unix.Signal, paths ...string) error {
	fd, err := unix.PidfdOpen(pid, 0)
	switch {
	case errors.Is(err, unix.ESRCH):
		return nil
	case err != nil: // no pidfd support (Linux < 5.3): check, then kill
		if !ownedProcess(pid, paths...) {
			return nil
		}
		if err := unix.Kill(pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("signal %v to pid %d: %w", sig, pid, err)
		}
		return nil
	}
	defer unix.Close(fd)
	if !ownedProcess(pid, paths...) {
		return nil
	}
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal %v to pid %d: %w", sig, pid, err)
	}
	return nil
}

// pollInterval is how often waits look at /proc.
const pollInterval = 100 * time.Millisecond

// reap collects pid's exit status if it happens to be our child (it is when
// this process is a child subreaper, see PR_SET_CHILD_SUBREAPER), so no
// zombie stays behind. Otherwise it does nothing.
func reap(pid int) {
	var ws unix.WaitStatus
	_, _ = unix.Wait4(pid, &ws, unix.WNOHANG, nil)
}
