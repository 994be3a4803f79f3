package macpool

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/anka-net/anka/core/fsutil"
)

// DefaultMachineIDPaths lists where systemd and D-Bus keep the host
// identity; both survive reboots, which is what keeps the prefix stable. A
// function, not a variable, so no caller can change it for everyone.
func DefaultMachineIDPaths() []string {
	return []string{"/etc/machine-id", "/var/lib/dbus/machine-id"}
}

// HostIDFile is the fallback identity, created once in the state dir on
// hosts without a machine-id (minimal containers), so the prefix survives
// restarts there too.
const HostIDFile = "host-id"

// hostID returns the first usable identity from paths, else the persisted
// random one. A read error other than "missing" is returned, not skipped:
// falling through to another source would silently change the prefix.
func hostID(paths []string, stateDir string) (string, error) {
	for _, p := range paths {
		id, err := readID(p)
		if err != nil {
			return "", ioErr("read", p, err)
		}
		if id != "" {
			return id, nil
		}
	}
	return persistedHostID(stateDir)
}

// readID returns "" for a missing or empty file and for systemd's
// "uninitialized" placeholder, which first-boot images carry until the real
// id is written.
func readID(path string) (string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	id := strings.TrimSpace(string(b))
	if id == "uninitialized" {
		return "", nil
	}
	return id, nil
}

// persistedHostID reads or creates <stateDir>/host-id. Creation happens
// under a lock and re-checks, so two first-time processes agree on one id.
func persistedHostID(stateDir string) (string, error) {
	path := filepath.Join(stateDir, HostIDFile)
	id, err := readID(path)
	if err != nil {
		return "", ioErr("read", path, err)
	}
	if id != "" {
		return id, nil
	}
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return "", ioErr("create", stateDir, err)
	}
	l, err := fsutil.LockFile(path + ".lock")
	if err != nil {
		return "", ioErr("lock", path+".lock", err)
	}
	defer l.Unlock()
	id, err = readID(path)
	if err != nil {
		return "", ioErr("read", path, err)
	}
	if id != "" {
		return id, nil
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", err
	}
	id = hex.EncodeToString(raw[:]) // same shape as a machine-id
	if err := fsutil.WriteFileAtomic(path, []byte(id+"\n"), 0o600); err != nil {
		return "", ioErr("write", path, err)
	}
	return id, nil
}

// prefixFor hashes the identity rather than using it raw, so the prefix
// reveals nothing about the machine-id and different ids spread evenly over
// the 30 free bits. The salt keeps it unrelated to other machine-id
// derivations on the host.
func prefixFor(id string) [4]byte {
	h := sha256.Sum256([]byte("anka-macpool:" + id))
	return [4]byte{(h[0] &^ 0x03) | 0x02, h[1], h[2], h[3]}
}
