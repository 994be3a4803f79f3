// Package macpool hands out the dynamic MAC addresses VMs are seen with on
// the network, host-wide and persistently.
//
// A dynamic MAC is prefix:hi:lo. The 4-octet prefix is derived from the host
// identity (SHA-256 of "anka-macpool:"+machine-id; first octet forced to
// locally administered unicast), which leaves 30 host-specific bits, so two
// hosts bridged to one LAN almost never share a prefix. hi:lo is an index
// 1..65535, big-endian; index 0 is never used. The lowest free index is
// handed out, so a MAC freed by a deleted VM is the next one given, as Anka
// does.
//
// The pool lives in one YAML file (see [FileName]); every change is a
// read-modify-write under an exclusive flock on the file's ".lock" sibling
// and an atomic replace, so concurrent anka processes never hand one MAC to
// two VMs.
package macpool

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"

	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/core/fsutil"
)

// FileName is the pool file's conventional name inside the state dir.
const FileName = "macpool.yaml"

// maxIndexDefault is the whole 16-bit index space minus the reserved 0.
const maxIndexDefault = 65535

// Options says where the pool lives and how to identify the host.
type Options struct {
	// Path is the pool file, usually <state_dir>/macpool.yaml.
	Path string
	// StateDir holds the host-id fallback; empty means the folder of Path.
	StateDir string
	// MachineIDPaths are tried in order for the host identity; nil means
	// DefaultMachineIDPaths(). A non-nil empty slice goes straight to the
	// persisted random host-id.
	MachineIDPaths []string
}

// Pool is a handle on the pool file. It keeps no allocation state in memory
// and holds no lock between calls, so any number of Pool values, goroutines
// and processes may share one file.
type Pool struct {
	path     string
	lockPath string
	prefix   [4]byte
	maxIndex int // test hook: shrinks the index space to test exhaustion
}

// Open derives the host prefix (creating the persisted host-id if the host
// has no machine-id) and returns a handle; it does not read the pool file,
// so a broken pool does not stop commands that never touch MACs.
func Open(o Options) (*Pool, error) {
	if o.Path == "" {
		return nil, errs.Invalidf("macpool: no pool file path given")
	}
	stateDir := o.StateDir
	if stateDir == "" {
		stateDir = filepath.Dir(o.Path)
	}
	paths := o.MachineIDPaths
	if paths == nil {
		paths = DefaultMachineIDPaths()
	}
	id, err := hostID(paths, stateDir)
	if err != nil {
		return nil, err
	}
	return &Pool{
		path:     o.Path,
		lockPath: o.Path + ".lock",
		prefix:   prefixFor(id),
		maxIndex: maxIndexDefault,
	}, nil
}

// Path returns the pool file, for messages and `anka show`.
func (p *Pool) Path() string { return p.path }

// Prefix returns the host-specific first four octets of every MAC this host
// hands out.
func (p *Pool) Prefix() net.HardwareAddr {
	return net.HardwareAddr{p.prefix[0], p.prefix[1], p.prefix[2], p.prefix[3]}
}

// Acquire returns owner's MAC, allocating the lowest free one on first use.
// Calling it again for the same owner returns the same MAC, so starting a
// VM twice never changes its address (plugins key leases by MAC).
func (p *Pool) Acquire(owner string) (net.HardwareAddr, error) {
	if owner == "" {
		return nil, errs.Invalidf("macpool: a MAC owner (the VM uuid) is required")
	}
	// Fast path without the lock: an owner's entry only goes away through
	// Release, and racing a Release of the same owner has no right answer.
	if m, ok, err := p.Lookup(owner); err != nil || ok {
		return m, err
	}
	var got mac
	err := p.update(func(s *state) (bool, error) {
		if m, ok := s.owners[owner]; ok {
			got = m
			return false, nil
		}
		m, ok := s.lowestFree(p.prefix, p.maxIndex)
		if !ok {
			return false, errs.Conflictf(
				"macpool: all %d dynamic MACs of this host (%s:00:01 to %s) are in use; "+
					"delete VMs you no longer need (their MACs return to the pool) and try again",
				p.maxIndex, p.Prefix(), macAt(p.prefix, p.maxIndex).hw())
		}
		s.set(owner, m)
		got = m
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	return got.hw(), nil
}

// Lookup returns owner's MAC without allocating one. It reads without the
// lock (the file is only ever replaced whole), so it works for users who
// may read but not write the state dir.
func (p *Pool) Lookup(owner string) (net.HardwareAddr, bool, error) {
	s, err := p.read()
	if err != nil {
		return nil, false, err
	}
	m, ok := s.owners[owner]
	if !ok {
		return nil, false, nil
	}
	return m.hw(), true, nil
}

// Release returns owner's MAC to the pool. Releasing an owner that holds
// none is not an error, so a half-finished delete can simply be retried.
func (p *Pool) Release(owner string) error {
	return p.update(func(s *state) (bool, error) {
		return s.remove(owner), nil
	})
}

// Prune releases every owner for which keep returns false and returns them
// sorted. It repairs leaks left by a delete that crashed between removing
// the VM and releasing its MAC. keep runs under the pool lock and must not
// call back into any Pool on the same file.
func (p *Pool) Prune(keep func(owner string) bool) ([]string, error) {
	var removed []string
	err := p.update(func(s *state) (bool, error) {
		for o := range s.owners {
			if !keep(o) {
				removed = append(removed, o)
			}
		}
		for _, o := range removed {
			s.remove(o)
		}
		return len(removed) > 0, nil
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(removed)
	return removed, nil
}

// List returns every owner and its MAC; like Lookup it reads without the
// lock.
func (p *Pool) List() (map[string]net.HardwareAddr, error) {
	s, err := p.read()
	if err != nil {
		return nil, err
	}
	out := make(map[string]net.HardwareAddr, len(s.owners))
	for o, m := range s.owners {
		out[o] = m.hw()
	}
	return out, nil
}

// read loads the current file; a missing file is an empty pool.
func (p *Pool) read() (*state, error) {
	data, err := os.ReadFile(p.path)
	if errors.Is(err, fs.ErrNotExist) {
		return newState(), nil
	}
	if err != nil {
		return nil, ioErr("read", p.path, err)
	}
	return decode(p.path, data)
}

// update runs fn on the freshest state under the lock and writes the result
// if fn reports a change; holding the lock across read and write is what
// stops two processes picking the same free index.
func (p *Pool) update(fn func(*state) (bool, error)) (err error) {
	if err := os.MkdirAll(filepath.Dir(p.path), 0o755); err != nil {
		return ioErr("create the folder of", p.path, err)
	}
	l, err := fsutil.LockFile(p.lockPath)
	if err != nil {
		return ioErr("lock", p.lockPath, err)
	}
	defer func() {
		if uerr := l.Unlock(); err == nil && uerr != nil {
			err = ioErr("unlock", p.lockPath, uerr)
		}
	}()
	s, err := p.read()
	if err != nil {
		return err
	}
	changed, err := fn(s)
	if err != nil || !changed {
		return err
	}
	data, err := encode(s)
	if err != nil {
		return fmt.Errorf("macpool: encode %s: %w", p.path, err)
	}
	if err := fsutil.WriteFileAtomic(p.path, data, 0o600); err != nil {
		return ioErr("write", p.path, err)
	}
	return nil
}

// ioErr turns permission failures into errs.Permission, since the usual
// cause is running anka without root.
func ioErr(verb, path string, err error) error {
	if errors.Is(err, fs.ErrPermission) {
		return errs.Permissionf("macpool: cannot %s %s: %w; run anka as root", verb, path, err)
	}
	return fmt.Errorf("macpool: cannot %s %s: %w", verb, path, err)
}
