package plugins

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/anka-net/anka/core/runtime"
	"github.com/anka-net/anka/sdk/host"
)

// DataDir is a plugin binary's private folder under the state dir: its
// leases and its log live there, and nothing of the core's.
func DataDir(stateDir, binary string) string {
	return filepath.Join(stateDir, "plugins", filepath.Base(binary))
}

// LogFile is where the plugin logs (the host passes it at launch).
func LogFile(stateDir, binary string) string {
	return filepath.Join(DataDir(stateDir, binary), "plugin.log")
}

// ReattachFile holds the go-plugin reattach information of a running
// plugin, written by whoever launched it, so the next host finds it.
func ReattachFile(stateDir, binary string) string {
	return filepath.Join(DataDir(stateDir, binary), "reattach.json")
}

// launchLock serialises launches of binary across anka processes. It is
// beside the plugin's data dir, which the plugin user owns.
func launchLock(stateDir, binary string) string {
	return filepath.Join(stateDir, "plugins", filepath.Base(binary)+".lock")
}

// Running reports the running plugin process for binary, if its reattach
// file names a live process (a zombie is dead).
func Running(stateDir, binary string) (host.ReattachInfo, bool) {
	var info host.ReattachInfo
	data, err := readOwnFile(ReattachFile(stateDir, binary))
	if err != nil || json.Unmarshal(data, &info) != nil || info.Pid <= 0 {
		return info, false
	}
	return info, runtime.ProcessAlive(info.Pid)
}

// readOwnFile reads a file the core wrote into a folder the plugin user
// owns: the plugin may remove or replace it there, so only a regular file
// of this process's user counts, and a symlink is never followed (it
// could lead to a device whose open does something).
func readOwnFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st := fi.Sys().(*syscall.Stat_t); !fi.Mode().IsRegular() || int(st.Uid) != os.Geteuid() || fi.Size() > 1<<20 {
		return nil, fmt.Errorf("%s is not a file anka wrote: ignored", path)
	}
	return io.ReadAll(f)
}

// FileSHA256 is the hex SHA-256 of a file, as plugins.<type>.sha256 pins it.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// stopProcess ends a plugin: SIGTERM, then SIGKILL after two seconds, and
// waits until it is gone (a zombie counts as gone).
func stopProcess(pid int) error {
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && err != syscall.ESRCH {
		return err
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.ProcessAlive(pid) {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			deadline = time.Now().Add(5 * time.Second)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}
