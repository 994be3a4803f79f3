package host

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"

	"github.com/hashicorp/go-plugin"
	"golang.org/x/sys/unix"
)

// Credential is the user a plugin runs as and the capabilities it keeps.
type Credential struct {
	// Name is for messages ("anka-net"); may be empty for a bare uid.
	Name     string
	UID, GID uint32
	// Caps are capability names from capabilities(7) ("CAP_NET_ADMIN").
	// The plugin gets exactly these as ambient (so effective and
	// permitted) capabilities; the bounding set it inherits is cut to
	// them too, so no setuid or file-capability binary gives it more.
	Caps []string
}

// capNumbers are the capabilities a Credential may name: what network
// plugins need, nothing that reaches beyond networking.
var capNumbers = map[string]uintptr{
	"CAP_NET_ADMIN":        unix.CAP_NET_ADMIN,
	"CAP_NET_RAW":          unix.CAP_NET_RAW,
	"CAP_NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE,
}

// GrantableCaps lists the capability names a Credential may carry.
func GrantableCaps() []string {
	out := make([]string, 0, len(capNumbers))
	for k := range capNumbers {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// CapMask is the bit mask /proc/PID/status shows (CapEff, ...) for caps.
func CapMask(caps []string) (uint64, error) {
	var m uint64
	for _, c := range caps {
		n, ok := capNumbers[c]
		if !ok {
			return 0, fmt.Errorf("capability %q is not one anka grants a plugin (%s)", c, strings.Join(GrantableCaps(), ", "))
		}
		m |= 1 << n
	}
	return m, nil
}

func (c *Credential) String() string {
	if c.Name != "" {
		return fmt.Sprintf("%s (uid %d)", c.Name, c.UID)
	}
	return fmt.Sprintf("uid %d", c.UID)
}

// apply sets the user and the ambient capabilities of the child.
func (c *Credential) apply(a *syscall.SysProcAttr) {
	if c == nil {
		return
	}
	for _, name := range c.Caps {
		a.AmbientCaps = append(a.AmbientCaps, capNumbers[name])
	}
	// Groups empty: setgroups(0) drops root's supplementary groups.
	a.Credential = &syscall.Credential{Uid: c.UID, Gid: c.GID, Groups: []uint32{}}
}

// prepare checks the user can run the binary and reach its folders, and
// gives it SocketDir (for its gRPC socket), DataDir (all of it, when a
// plugin run as root left files there) and the log file.
func (c *Credential) prepare(binary, socketDir, dataDir, logFile string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("running plugin %s as %s needs root; this process is uid %d: run anka as root, or set plugin_user to your own user", binary, c, os.Geteuid())
	}
	if _, err := CapMask(c.Caps); err != nil {
		return fmt.Errorf("plugin %s: %w", binary, err)
	}
	if err := c.reach(binary, 0o1, "run"); err != nil {
		return err
	}
	for _, d := range []string{socketDir, dataDir} {
		if d == "" {
			continue
		}
		if err := c.reach(filepath.Dir(d), 0o1, ""); err != nil {
			return err
		}
		if err := c.own(d); err != nil {
			return err
		}
	}
	if logFile != "" && (dataDir == "" || filepath.Dir(logFile) != dataDir) {
		f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			return fmt.Errorf("plugin log %s: %w", logFile, err)
		}
		defer f.Close()
		if err := f.Chown(int(c.UID), int(c.GID)); err != nil {
			return fmt.Errorf("giving plugin log %s to %s: %w", logFile, c, err)
		}
	}
	return nil
}

// own gives dir to the user. Only a folder that is not the user's yet is
// walked (a first start, or one after plugins ran as root): the plugin
// does not run then, so nothing it controls can move under the walk, and
// symlinks are changed themselves, never followed.
func (c *Credential) own(dir string) error {
	st, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	sys := st.Sys().(*syscall.Stat_t)
	if sys.Uid == c.UID && sys.Gid == c.GID {
		return nil
	}
	err = filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(c.UID), int(c.GID))
	})
	if err != nil {
		return fmt.Errorf("giving %s to the plugin user %s: %w", dir, c, err)
	}
	return nil
}

// reach checks that the user can walk to path (x on every folder above
// it) and has the permission bits want (0o1 run, 0o2 write, 0o4 read) on
// path itself; the kernel would refuse later with a bare EACCES.
func (c *Credential) reach(path string, want fs.FileMode, what string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	var dirs []string
	for d := filepath.Dir(abs); ; d = filepath.Dir(d) {
		dirs = append(dirs, d)
		if d == "/" {
			break
		}
	}
	check := func(p string, bits fs.FileMode) error {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if !c.allows(st, bits) {
			return &ReachError{User: c.String(), Path: abs, Blocker: p, Mode: st.Mode().Perm(), What: what}
		}
		return nil
	}
	for _, d := range dirs {
		if err := check(d, 0o1); err != nil {
			return err
		}
	}
	if want != 0 {
		return check(abs, want)
	}
	return nil
}

func (c *Credential) allows(st fs.FileInfo, bits fs.FileMode) bool {
	sys := st.Sys().(*syscall.Stat_t)
	mode := st.Mode().Perm()
	switch {
	case sys.Uid == c.UID:
		return (mode>>6)&bits == bits
	case sys.Gid == c.GID:
		return (mode>>3)&bits == bits
	default:
		return mode&bits == bits
	}
}

// ReachError says the plugin user cannot get to a file it needs.
type ReachError struct {
	User, Path, Blocker, What string
	Mode                      fs.FileMode
}

func (e *ReachError) Error() string {
	if e.Blocker == e.Path && e.What != "" {
		// the file itself
		return fmt.Sprintf("the plugin user %s cannot %s %s (mode %04o): make it readable and executable for that user (chmod o+rx %s) or install it elsewhere", e.User, e.What, e.Path, e.Mode, e.Path)
	}
	return fmt.Sprintf("the plugin user %s cannot reach %s: the folder %s is mode %04o; let others through it (chmod o+x %s) or move the file", e.User, e.Path, e.Blocker, e.Mode, e.Blocker)
}

// start runs go-plugin's start on a thread of its own whose capability
// bounding set is cut to c.Caps first: the child inherits it, and Go
// gives a locked thread that exits to no one else (it ends with the
// goroutine, and Go never clones new threads from it).
func (c *Credential) start(client *plugin.Client) (plugin.ClientProtocol, error) {
	if c == nil {
		return client.Client()
	}
	type result struct {
		rpc plugin.ClientProtocol
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: this thread's bounding set is cut
		if err := dropBounding(c.Caps); err != nil {
			done <- result{err: err}
			return
		}
		rpc, err := client.Client()
		done <- result{rpc, err}
	}()
	r := <-done
	return r.rpc, r.err
}

// dropBounding removes from the calling thread's bounding set every
// capability but keep.
func dropBounding(keep []string) error {
	kept := map[uintptr]bool{}
	for _, k := range keep {
		kept[capNumbers[k]] = true
	}
	for n := uintptr(0); n <= unix.CAP_LAST_CAP; n++ {
		if kept[n] {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, n, 0, 0, 0); err != nil {
			if errors.Is(err, unix.EINVAL) {
				break // past the kernel's last capability
			}
			return fmt.Errorf("dropping capability %d from the bounding set: %w", n, err)
		}
	}
	return nil
}
