package vm

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"syscall"

	"go.yaml.in/yaml/v3"

	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/core/fsutil"
)

// FileName is the definition file inside each VM folder.
const FileName = "vm.yaml"

// Store keeps one folder per VM under <state_dir>/vms. Every change is a
// locked read-modify-write with an atomic replace, so concurrent anka
// processes lose no update and a crash leaves the old or the new file.
type Store struct {
	stateDir string
}

// OpenStore prepares the folders under stateDir.
func OpenStore(stateDir string) (*Store, error) {
	s := &Store{stateDir: stateDir}
	for _, d := range []string{s.vmsDir(), s.locksDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, PathError(stateDir, err)
		}
	}
	return s, nil
}

// StorageError explains a full or read-only state filesystem and leaves
// every other error as it is.
func StorageError(stateDir string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, syscall.EROFS) {
		return PathError(stateDir, err)
	}
	return err
}

// PathError turns a permission problem under the state dir into the plain
// advice the seed's `sudo anka` implies; other errors keep their cause.
func PathError(stateDir string, err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return &errs.Error{Kind: errs.Unavailable, Err: err, Msg: fmt.Sprintf("no space left in the state dir %s (%v): free space on its filesystem and retry; the VM files are as they were", stateDir, err)}
	}
	if errors.Is(err, syscall.EROFS) {
		return &errs.Error{Kind: errs.Unavailable, Err: err, Msg: fmt.Sprintf("the state dir %s is on a read-only filesystem (%v): remount it read-write, or point --state-dir (ANKA_STATE_DIR) at a writable folder; the VM files are as they were", stateDir, err)}
	}
	if errors.Is(err, fs.ErrPermission) {
		if os.Geteuid() != 0 {
			return &errs.Error{Kind: errs.Permission, Err: err, Msg: fmt.Sprintf("anka needs root to write its state in %s: run it with sudo, or point --state-dir (ANKA_STATE_DIR) at a folder you own", stateDir)}
		}
		return &errs.Error{Kind: errs.Permission, Err: err, Msg: fmt.Sprintf("cannot write the state dir %s: %v", stateDir, err)}
	}
	return err
}

func (s *Store) vmsDir() string   { return filepath.Join(s.stateDir, "vms") }
func (s *Store) locksDir() string { return filepath.Join(s.stateDir, "locks") }

// StateDir is the root the store lives in.
func (s *Store) StateDir() string { return s.stateDir }

// Dir is the folder of VM name (console.log and runtime files live there).
func (s *Store) Dir(name string) string { return filepath.Join(s.vmsDir(), name) }

func (s *Store) file(name string) string { return filepath.Join(s.Dir(name), FileName) }

// LockVM serialises every change to one VM across processes. Lock files
// live outside the VM folder so deleting a VM never pulls a lock away
// from a waiter.
func (s *Store) LockVM(name string) (*fsutil.Lock, error) {
	if err := ValidateName("VM", name); err != nil {
		return nil, err
	}
	l, err := fsutil.LockFile(filepath.Join(s.locksDir(), name+".lock"))
	if err != nil {
		return nil, PathError(s.stateDir, err)
	}
	return l, nil
}

// LockAll serialises changes that span VMs: creating and deleting names,
// choosing host ports. Take it before any VM lock, never while holding one.
func (s *Store) LockAll() (*fsutil.Lock, error) {
	l, err := fsutil.LockFile(filepath.Join(s.locksDir(), "store.lock"))
	if err != nil {
		return nil, PathError(s.stateDir, err)
	}
	return l, nil
}

// Get reads one VM.
func (s *Store) Get(name string) (*VM, error) {
	if err := ValidateName("VM", name); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(s.file(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errs.NotFoundf("VM %q does not exist: see `anka list` for the VMs there are", name)
	}
	if err != nil {
		return nil, PathError(s.stateDir, err)
	}
	return decode(s.file(name), data)
}

func decode(path string, data []byte) (*VM, error) {
	var v VM
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&v); err != nil {
		return nil, errs.Invalidf("%s is not a valid VM definition (%v): fix or restore the file", path, err)
	}
	if v.Version != SchemaVersion {
		return nil, errs.Invalidf("%s has schema version %d, this anka reads version %d", path, v.Version, SchemaVersion)
	}
	if err := ValidateName("VM", v.Name); err != nil || v.UUID == "" {
		return nil, errs.Invalidf("%s is not a valid VM definition: name or uuid missing or wrong", path)
	}
	return &v, nil
}

func encode(v *VM) ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return b.Bytes(), enc.Close()
}

func (s *Store) write(v *VM) error {
	data, err := encode(v)
	if err != nil {
		return err
	}
	if err := fsutil.WriteFileAtomic(s.file(v.Name), data, 0o644); err != nil {
		return PathError(s.stateDir, err)
	}
	return nil
}

// List reads every VM, sorted by name. A broken definition does not hide
// the others: it is returned in the error list beside them.
func (s *Store) List() ([]*VM, []error, error) {
	ents, err := os.ReadDir(s.vmsDir())
	if err != nil {
		return nil, nil, PathError(s.stateDir, err)
	}
	var vms []*VM
	var bad []error
	for _, e := range ents {
		if !e.IsDir() || ValidateName("VM", e.Name()) != nil {
			continue
		}
		v, err := s.Get(e.Name())
		if err != nil {
			if errs.Is(err, errs.NotFound) {
				continue // a folder without vm.yaml is not a VM
			}
			bad = append(bad, err)
			continue
		}
		vms = append(vms, v)
	}
	sort.Slice(vms, func(i, j int) bool { return vms[i].Name < vms[j].Name })
	return vms, bad, nil
}

// Create writes a new VM. The folder is built under a temp name and
// renamed into place, so a half-created VM is never visible.
func (s *Store) Create(v *VM) error {
	if err := ValidateName("VM", v.Name); err != nil {
		return err
	}
	all, err := s.LockAll()
	if err != nil {
		return err
	}
	defer all.Unlock()
	if _, err := os.Stat(s.Dir(v.Name)); err == nil {
		return errs.Conflictf("VM %q already exists: choose another name or delete it first", v.Name)
	}
	v.Version = SchemaVersion
	if v.UUID == "" {
		v.UUID = NewUUID()
	}
	data, err := encode(v)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(s.vmsDir(), ".new-")
	if err != nil {
		return PathError(s.stateDir, err)
	}
	if err := fsutil.WriteFileAtomic(filepath.Join(tmp, FileName), data, 0o644); err != nil {
		os.RemoveAll(tmp)
		return PathError(s.stateDir, err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		os.RemoveAll(tmp)
		return err
	}
	if err := os.Rename(tmp, s.Dir(v.Name)); err != nil {
		os.RemoveAll(tmp)
		return PathError(s.stateDir, err)
	}
	return PathError(s.stateDir, fsutil.SyncDir(s.vmsDir()))
}

// Update applies fn to VM name under its lock and writes the result if fn
// succeeds and changed something; on any error the file is untouched.
func (s *Store) Update(name string, fn func(*VM) error) (*VM, error) {
	l, err := s.LockVM(name)
	if err != nil {
		return nil, err
	}
	defer l.Unlock()
	return s.UpdateLocked(name, fn)
}

// UpdateLocked is Update for a caller that already holds the VM lock.
func (s *Store) UpdateLocked(name string, fn func(*VM) error) (*VM, error) {
	v, err := s.Get(name)
	if err != nil {
		return nil, err
	}
	before, err := encode(v)
	if err != nil {
		return nil, err
	}
	if err := fn(v); err != nil {
		return nil, err
	}
	v.Name, v.Version = name, SchemaVersion
	after, err := encode(v)
	if err != nil {
		return nil, err
	}
	if bytes.Equal(before, after) {
		return v, nil
	}
	return v, s.write(v)
}

// Remove deletes VM name's folder; the caller holds LockAll and the VM lock.
// The folder is renamed away first so a crash never leaves half a VM.
func (s *Store) Remove(name string) error {
	if err := ValidateName("VM", name); err != nil {
		return err
	}
	trash, err := os.MkdirTemp(s.vmsDir(), ".trash-")
	if err != nil {
		return PathError(s.stateDir, err)
	}
	dst := filepath.Join(trash, name)
	if err := os.Rename(s.Dir(name), dst); err != nil {
		os.Remove(trash)
		return PathError(s.stateDir, err)
	}
	if err := fsutil.SyncDir(s.vmsDir()); err != nil {
		return PathError(s.stateDir, err)
	}
	return os.RemoveAll(trash)
}

// NewUUID returns a random (version 4) UUID.
func NewUUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
