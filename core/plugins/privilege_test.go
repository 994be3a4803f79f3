package plugins

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/anka-net/anka/core/errs"
)

func mode(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestLockDown(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the layout is for a state dir root owns")
	}
	dir := t.TempDir()
	mk := func(p string, perm os.FileMode, isDir bool) {
		p = filepath.Join(dir, p)
		if isDir {
			if err := os.MkdirAll(p, perm); err != nil {
				t.Fatal(err)
			}
		} else if err := os.WriteFile(p, []byte("x"), perm); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, perm); err != nil {
			t.Fatal(err)
		}
	}
	mk("vms/vm1", 0o755, true)
	mk("vms/vm1/vm.yaml", 0o644, false)
	mk("plugins/anka-net-shared", 0o700, true)
	mk("net", 0o755, true)
	mk("macpool.yaml", 0o644, false)
	mk("daemon.pid", 0o644, false)
	mk("locks", 0o755, true)
	// A file the plugin user owns is not root's to change.
	mk("theirs", 0o644, false)
	if err := os.Lchown(filepath.Join(dir, "theirs"), 4242003, 4242003); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/hostname", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)

	if err := LockDown(dir); err != nil {
		t.Fatal(err)
	}
	want := map[string]os.FileMode{
		"":                        0o711,
		"plugins":                 0o711,
		"net":                     0o711,
		"vms":                     0o700,
		"vms/vm1":                 0o755, // closed by vms/ above it
		"vms/vm1/vm.yaml":         0o644,
		"plugins/anka-net-shared": 0o700,
		"macpool.yaml":            0o600,
		"daemon.pid":              0o600,
		"locks":                   0o700,
		"theirs":                  0o644,
	}
	for p, w := range want {
		if got := mode(t, filepath.Join(dir, p)); got != w {
			t.Errorf("%s: mode %04o, want %04o", p, got, w)
		}
	}
	if fi, err := os.Stat("/etc/hostname"); err == nil && fi.Mode().Perm()&0o044 == 0 {
		t.Error("LockDown followed the symlink")
	}
	// Twice is the same.
	if err := LockDown(dir); err != nil {
		t.Fatal(err)
	}
}

func TestFolderName(t *testing.T) {
	for _, bad := range []string{"", ".", "..", "../x", "a/b", "/abs", "x\x00"} {
		if err := folderName(bad); !errs.Is(err, errs.Invalid) {
			t.Errorf("folderName(%q) = %v, want invalid", bad, err)
		}
		h := &Host{StateDir: t.TempDir(), User: "root"}
		if _, err := h.runDir(bad); err == nil {
			t.Errorf("runDir(%q) made a folder", bad)
		}
	}
	for _, ok := range []string{"vm1", "a.b", "x-y_z", "..."} {
		if err := folderName(ok); err != nil {
			t.Errorf("folderName(%q): %v", ok, err)
		}
	}
}

func TestRunDirIsThePluginUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("giving a folder to another user needs root")
	}
	h := &Host{StateDir: t.TempDir(), User: "4242004:4242005"}
	dir, err := h.runDir("vm1")
	if err != nil {
		t.Fatal(err)
	}
	if dir != filepath.Join(h.StateDir, "net", "vm1") {
		t.Fatalf("runDir %s", dir)
	}
	fi, _ := os.Lstat(dir)
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 4242004 || st.Gid != 4242005 || fi.Mode().Perm() != 0o700 {
		t.Errorf("%s: %d:%d %04o, want 4242004:4242005 0700", dir, st.Uid, st.Gid, fi.Mode().Perm())
	}
	// A plain file in its place is refused, never chowned through.
	os.RemoveAll(dir)
	os.WriteFile(dir, nil, 0o600)
	if _, err := h.runDir("vm1"); err == nil {
		t.Error("runDir took a file for the folder")
	}
}

func TestPluginUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("plugins run as another user only when anka is root")
	}
	for _, tt := range []struct {
		user     string
		uid, gid uint32
		none     bool
		err      string
	}{
		{user: "root", none: true},
		{user: "0:0", none: true},
		{user: "990:991", uid: 990, gid: 991},
		{user: "nobody", uid: 65534},
		{user: "anka-no-such-user-x", err: "useradd --system --no-create-home --shell /usr/sbin/nologin anka-no-such-user-x"},
	} {
		c, err := (&Host{User: tt.user}).pluginUser()
		switch {
		case tt.err != "":
			if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), "plugin_user root") {
				t.Errorf("%s: %v, want an error saying how to create the user", tt.user, err)
			}
		case tt.none:
			if c != nil || err != nil {
				t.Errorf("%s: %+v %v, want root (no credential)", tt.user, c, err)
			}
		case err != nil || c == nil || c.UID != tt.uid || (tt.gid != 0 && c.GID != tt.gid):
			t.Errorf("%s: %+v %v", tt.user, c, err)
		}
	}
}

func TestReadOwnFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "reattach.json")
	os.WriteFile(good, []byte(`{"pid":1}`), 0o600)
	if b, err := readOwnFile(good); err != nil || string(b) != `{"pid":1}` {
		t.Fatalf("readOwnFile: %q %v", b, err)
	}
	link := filepath.Join(dir, "link.json")
	os.Symlink(good, link)
	if _, err := readOwnFile(link); err == nil {
		t.Error("readOwnFile followed a symlink")
	}
	if _, err := readOwnFile(dir); err == nil {
		t.Error("readOwnFile read a folder")
	}
	if os.Geteuid() == 0 {
		theirs := filepath.Join(dir, "theirs.json")
		os.WriteFile(theirs, []byte(`{"pid":1}`), 0o600)
		os.Chown(theirs, 4242003, 4242003)
		if _, err := readOwnFile(theirs); err == nil || !strings.Contains(err.Error(), "not a file anka wrote") {
			t.Errorf("readOwnFile of another user's file: %v", err)
		}
	}
	// Running ignores what it cannot trust.
	state := t.TempDir()
	os.MkdirAll(DataDir(state, "anka-net-x"), 0o700)
	os.Symlink(good, ReattachFile(state, "anka-net-x"))
	if _, ok := Running(state, "anka-net-x"); ok {
		t.Error("Running trusted a symlinked reattach file")
	}
}

func TestCopyOut(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "capture.pcap"), filepath.Join(dir, "out.pcap")
	os.WriteFile(src, []byte("pcap"), 0o600)
	if err := copyOut(src, dst); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "pcap" {
		t.Fatalf("copied %q", b)
	}
	if _, err := os.Stat(src); err == nil {
		t.Error("the plugin's file is still there")
	}
	// A symlink the plugin put in its place is not followed.
	secret := filepath.Join(dir, "secret")
	os.WriteFile(secret, []byte("secret"), 0o600)
	os.Symlink(secret, src)
	if err := copyOut(src, dst); err == nil {
		t.Error("copyOut followed a symlink")
	}
	if b, _ := os.ReadFile(dst); string(b) == "secret" {
		t.Error("the secret was copied")
	}
}

func TestApplySysctlRefuses(t *testing.T) {
	for _, kv := range []string{"kernel.core_pattern=|/bin/sh", "net.ipv4.ip_forward=0", "net.ipv4.ip_forward=2", "net.unix.max_dgram_qlen=-1", "net.unix.max_dgram_qlen=x", "../../etc/passwd=1", "net.unix.max_dgram_qlen"} {
		if err := applySysctl(kv); err == nil || !strings.Contains(err.Error(), "anka sets only") {
			t.Errorf("applySysctl(%q) = %v, want a refusal", kv, err)
		}
	}
}

// The hypervisor's socket, bound by root with umask 022 in the VM's
// folder, is handed to the plugin user, who must send to it.
func TestGiveSockets(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("giving a folder to another user needs root")
	}
	h := &Host{StateDir: t.TempDir(), User: "4242004:4242004"}
	dir, err := h.runDir("vm1")
	if err != nil {
		t.Fatal(err)
	}
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	sock := filepath.Join(dir, "vm.sock")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	other := filepath.Join(dir, "not-a-socket")
	os.WriteFile(other, nil, 0o600)
	h.giveSockets("vm1")
	if fi, _ := os.Lstat(sock); fi.Sys().(*syscall.Stat_t).Uid != 4242004 {
		t.Error("giveSockets left the socket to root")
	}
	if fi, _ := os.Lstat(other); fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Error("giveSockets gave away a file that is not a socket")
	}
}
