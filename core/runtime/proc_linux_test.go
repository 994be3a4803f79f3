package runtime

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want procStat
	}{
		{"1234 (qemu-system-x86) S 1 1233 1233 0 -1 138412352 6000 0 0 0 3 2\n",
			procStat{PID: 1234, Comm: "qemu-system-x86", State: 'S', PPID: 1}},
		{"7 (with space) R 3 7 7", procStat{PID: 7, Comm: "with space", State: 'R', PPID: 3}},
		{"42 (a) Z 9 (b) ) X 7 42 42 0", procStat{PID: 42, Comm: "a) Z 9 (b) ", State: 'X', PPID: 7}},
		{"99 ((sd-pam)) S 98 99", procStat{PID: 99, Comm: "(sd-pam)", State: 'S', PPID: 98}},
		{"5 () Z 1 0", procStat{PID: 5, Comm: "", State: 'Z', PPID: 1}},
	} {
		got, err := parseStat(tc.in)
		if err != nil {
			t.Errorf("parseStat(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("parseStat(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
	for _, bad := range []string{"", "12", "12 (x", "x (y) S 1", "12 (x) ", "12 (x) SS 1", "12 (x) S", "12 (x) S y"} {
		if st, err := parseStat(bad); err == nil {
			t.Errorf("parseStat(%q) = %+v, want an error", bad, st)
		}
	}
	if !(procStat{State: 'Z'}).dead() || !(procStat{State: 'X'}).dead() || (procStat{State: 'D'}).dead() {
		t.Error("dead() is wrong")
	}
}

func TestMentions(t *testing.T) {
	args := []string{"qemu", "-chardev", "socket,id=qmp,path=/vms/a/qmp.sock,server=on,wait=off", "-pidfile", "/vms/a/qemu.pid",
		"-serial", "file:/vms/a/console.log", "-drive", "file=/img/x,,y.raw,if=virtio"}
	for p, want := range map[string]bool{
		"/vms/a/qemu.pid":    true,
		"/vms/a/qmp.sock":    true,
		"/vms/a/console.log": true,
		"/vms/a":             false,
		"/vms/a/qemu.pi":     false,
		"/a/qmp.sock":        false,
		"/img/x,,y.raw":      true,
		"":                   false,
	} {
		if got := mentions(args, p); got != want {
			t.Errorf("mentions(%q) = %v, want %v", p, got, want)
		}
	}
}

func TestOwnPIDIsAlive(t *testing.T) {
	st, err := readStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.PID != os.Getpid() || st.dead() || st.PPID != os.Getppid() {
		t.Fatalf("own stat = %+v", st)
	}
	if !ProcessAlive(os.Getpid()) {
		t.Fatal("this test is not alive")
	}
	// Alive, but not the QEMU of any folder: a reused PID.
	if ownedProcess(os.Getpid(), "/nonexistent/vm/qemu.pid") {
		t.Fatal("the test process passed for a VM's QEMU")
	}
	if _, err := readStat(1 << 30); err != errNoProcess {
		t.Fatalf("readStat of a missing PID: %v", err)
	}
}

func TestZombieIsDead(t *testing.T) {
	cmd := exec.Command("sleep", "0")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Wait() })
	pid := cmd.Process.Pid
	// Not waited for, the exited child stays a zombie of this process.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := readStat(pid)
		if err != nil {
			t.Fatalf("zombie vanished: %v", err)
		}
		if st.State == 'Z' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("child never became a zombie: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if ProcessAlive(pid) {
		t.Fatal("a zombie counts as alive")
	}
	if ownedProcess(pid, "sleep", "0") {
		t.Fatal("a zombie counts as an owned process")
	}
}

func TestOwnedProcess(t *testing.T) {
	pidfile := "/vms/owned-test/qemu.pid"
	cmd := exec.Command("sh", "-c", "sleep 60; :", "sh", "-pidfile", pidfile, "-chardev", "socket,id=qmp,path=/vms/owned-test/qmp.sock,server=on,wait=off")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	pid := cmd.Process.Pid
	waitFor(t, 5*time.Second, func() bool { return ownedProcess(pid, pidfile) })
	if !ownedProcess(pid, "/elsewhere/qemu.pid", "/vms/owned-test/qmp.sock") {
		t.Fatal("qmp socket mark not recognised")
	}
	if ownedProcess(pid, "/vms/other/qemu.pid", "/vms/other/qmp.sock") {
		t.Fatal("another folder's process counts as owned")
	}
	if err := signalOwned(pid, 9, "/vms/other/qemu.pid"); err != nil {
		t.Fatal(err)
	}
	if !ProcessAlive(pid) {
		t.Fatal("signalOwned killed a process it does not own")
	}
	if err := signalOwned(pid, 9, pidfile); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool { return !ownedProcess(pid, pidfile) })
	// Now a zombie of this test: signalling it again is harmless.
	if err := signalOwned(pid, 9, pidfile); err != nil {
		t.Fatal(err)
	}
}

// waitFor polls cond until it holds or fails the test after d.
func waitFor(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
