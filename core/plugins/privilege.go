package plugins

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/host"
	"golang.org/x/sys/unix"
)

// DefaultPluginUser is the system user plugins run as unless plugin_user
// says otherwise; `make install` creates it.
const DefaultPluginUser = "anka-net"

// CreateUserCommand is how a missing plugin user is made.
func CreateUserCommand(name string) string {
	return "useradd --system --no-create-home --shell /usr/sbin/nologin " + name
}

// pluginUser resolves plugin_user: nil means plugins run as this process
// does (plugin_user root, or anka not running as root, which cannot
// switch users).
func (h *Host) pluginUser() (*host.Credential, error) {
	name := h.User
	if name == "" {
		name = DefaultPluginUser
	}
	if os.Geteuid() != 0 || name == "root" {
		return nil, nil
	}
	var c host.Credential
	if u, g, ok := strings.Cut(name, ":"); ok {
		uid, err1 := strconv.ParseUint(u, 10, 32)
		gid, err2 := strconv.ParseUint(g, 10, 32)
		if err1 != nil || err2 != nil {
			return nil, errs.Invalidf("plugin_user %q is not uid:gid: give two numbers, like 990:990, or a user name", name)
		}
		c = host.Credential{UID: uint32(uid), GID: uint32(gid)}
	} else {
		u, err := user.Lookup(name)
		if err != nil {
			var unknown user.UnknownUserError
			if errors.As(err, &unknown) {
				return nil, errs.Unavailablef("plugin_user is %s, but there is no such user: create it with `sudo %s` (make install does), or let plugins run as root with `sudo anka config plugin_user root`", name, CreateUserCommand(name))
			}
			return nil, errs.Unavailablef("looking up plugin_user %s: %v", name, err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		c = host.Credential{Name: name, UID: uint32(uid), GID: uint32(gid)}
	}
	if c.UID == 0 {
		return nil, nil // root by number
	}
	return &c, nil
}

// credential is who the plugin binary of fd runs as, with the
// capabilities it declares (`--describe`, run as that user). A capability
// or sysctl anka does not grant is refused before the plugin runs; the
// sysctls it may have are set here, since writing /proc/sys takes root.
func (h *Host) credential(ctx context.Context, fd Found) (*host.Credential, error) {
	c, err := h.pluginUser()
	if c == nil || err != nil {
		return nil, err
	}
	info, err := host.Describe(ctx, host.Config{Path: fd.Path, SHA256: h.Pins[fd.Type], PinName: "plugins." + fd.Type + ".sha256", Credential: c})
	if err != nil {
		return nil, pluginError(fd.Type, err)
	}
	grantable := host.GrantableCaps()
	for _, p := range info.Privileges {
		if !slices.Contains(grantable, p) {
			return nil, errs.Unavailablef("plugin %s asks for %s, which anka never grants a plugin (only %s): if you trust it with more, run plugins as root with `sudo anka config plugin_user root`",
				fd.Path, p, strings.Join(grantable, ", "))
		}
	}
	for _, s := range info.Sysctls {
		if err := applySysctl(s); err != nil {
			return nil, errs.Unavailablef("plugin %s needs sysctl %s: %v", fd.Path, s, err)
		}
	}
	c.Caps = slices.Clone(info.Privileges)
	if err := LockDown(h.StateDir); err != nil {
		return nil, fmt.Errorf("closing the state dir %s to the plugin user: %w", h.StateDir, err)
	}
	return c, nil
}

// sysctlFile maps the sysctls anka sets for a plugin to their file, and
// whether the value is a floor (raised, never lowered).
var sysctlFile = map[string]struct {
	path  string
	floor bool
}{
	"net.ipv4.ip_forward":     {"/proc/sys/net/ipv4/ip_forward", false},
	"net.unix.max_dgram_qlen": {"/proc/sys/net/unix/max_dgram_qlen", true},
}

// applySysctl sets one "key=value" a plugin declared, if anka allows it.
func applySysctl(kv string) error {
	k, v, _ := strings.Cut(kv, "=")
	f, ok := sysctlFile[k]
	want, err := strconv.Atoi(v)
	if !ok || err != nil || want < 0 || (k == "net.ipv4.ip_forward" && want != 1) || want > 1<<20 {
		return fmt.Errorf("anka sets only %s and %s for a plugin", sdk.SysctlIPForward, "net.unix.max_dgram_qlen=N")
	}
	b, err := os.ReadFile(f.path)
	if err != nil {
		return err
	}
	have, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("%s reads %q", f.path, b)
	}
	if have == want || (f.floor && have > want) {
		return nil
	}
	return os.WriteFile(f.path, []byte(strconv.Itoa(want)), 0o644)
}

// Folders under the state dir a plugin user reaches: its own data dirs
// and gRPC sockets under plugins/, and the VMs' socket folders under
// net/. Everything else is the core's.
const (
	pluginsDirName = "plugins"
	netDirName     = "net"
)

// LockDown closes the state dir to everyone but root, except the way to
// what plugins own: the state dir and plugins/ and net/ become 0711
// (enter, not list), every other entry at the top (vms/, the MAC pool,
// the daemon's socket, pid and log, ...) loses its group and other
// permissions. It changes only what root owns; symlinks are left alone.
func LockDown(dir string) error {
	if err := chmodOwned(dir, 0o711); err != nil {
		return err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if e.Type()&fs.ModeSymlink != 0 {
			continue
		}
		if e.IsDir() && (e.Name() == pluginsDirName || e.Name() == netDirName) {
			if err := chmodOwned(p, 0o711); err != nil {
				return err
			}
			continue
		}
		fi, err := e.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return err
		}
		if fi.Mode().Perm()&0o077 != 0 {
			if err := chmodOwned(p, fi.Mode().Perm()&^0o077); err != nil {
				return err
			}
		}
	}
	return nil
}

// chmodOwned sets mode on path if root (this process) owns it.
func chmodOwned(path string, mode fs.FileMode) error {
	fi, err := os.Lstat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	if int(st.Uid) != os.Geteuid() || fi.Mode()&fs.ModeSymlink != 0 || fi.Mode().Perm() == mode {
		return nil
	}
	return os.Chmod(path, mode)
}

// RunDir is the folder where the plugin creates the sockets of VM name:
// the plugin user's, outside the VM's own folder (which holds vm.yaml).
func RunDir(stateDir, name string) string {
	return filepath.Join(stateDir, netDirName, name)
}

// runDir makes RunDir for v, owned by the plugin user when plugins run
// as one. A name that is not a single path element is refused: it would
// lead the plugin out of net/.
func (h *Host) runDir(v string) (string, error) {
	if err := folderName(v); err != nil {
		return "", err
	}
	dir := RunDir(h.StateDir, v)
	if err := os.MkdirAll(filepath.Dir(dir), 0o711); err != nil {
		return "", err
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", err
	}
	c, err := h.pluginUser()
	if err != nil || c == nil {
		return dir, err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return "", err
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("%s is not a folder: remove it", dir)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != c.UID || st.Gid != c.GID {
		if err := os.Lchown(dir, int(c.UID), int(c.GID)); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// giveSockets hands the sockets in v's run folder that root made to the
// plugin user: QEMU (root, umask 022) binds its datagram socket there,
// and the plugin, which sends to it, needs write permission on it. (A
// default ACL on the folder would not do: bind applies the umask to the
// ACL mask.)
func (h *Host) giveSockets(name string) {
	c, err := h.pluginUser()
	if c == nil || err != nil || folderName(name) != nil {
		return
	}
	dir := RunDir(h.StateDir, name)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if e.Type()&fs.ModeSocket == 0 {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if fi, err := os.Lstat(p); err == nil && fi.Sys().(*syscall.Stat_t).Uid == 0 {
			if err := os.Lchown(p, int(c.UID), int(c.GID)); err != nil {
				h.log().Warn("giving a VM socket to the plugin user", "socket", p, "err", err)
			}
		}
	}
}

// folderName refuses a VM name that is not one path element.
func folderName(v string) error {
	if v == "" || v == "." || v == ".." || strings.ContainsAny(v, "/\x00") {
		return errs.Invalidf("VM name %q cannot name a folder: use letters, digits, dots, dashes and underscores", v)
	}
	return nil
}

// copyOut moves a file the plugin user wrote (src, in its folder) to dst
// as root: never through a symlink, only a regular file.
func copyOut(src, dst string) error {
	in, err := os.OpenFile(src, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Remove(src)
}
