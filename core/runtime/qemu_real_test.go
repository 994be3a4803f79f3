package runtime

// Tests against a real QEMU and a real guest. They run when ANKA_GUEST_DIR
// names a folder with vmlinuz and initrd.img whose guest prints
// "anka-guest: booted" on its serial console (test/guest/build.sh OUTDIR
// builds one; TestQEMUNICLinkDown needs its virtio-net driver) and
// are skipped otherwise. ANKA_STOP_TIMEOUT (a Go duration, default 10s)
// bounds the graceful stop: a guest that ignores the ACPI power button is
// killed after it.

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anka-net/anka/core/errs"
)

const bootMarker = "anka-guest: booted"

type realVM struct {
	q    *QEMU
	dir  string
	spec *Spec
}

func guestDir(t *testing.T) string {
	t.Helper()
	g := os.Getenv("ANKA_GUEST_DIR")
	if g == "" {
		t.Skip("ANKA_GUEST_DIR not set: no guest to boot")
	}
	for _, f := range []string{"vmlinuz", "initrd.img"} {
		if _, err := os.Stat(filepath.Join(g, f)); err != nil {
			t.Fatalf("ANKA_GUEST_DIR: %v", err)
		}
	}
	needQEMU(t)
	return g
}

func stopTimeout(t *testing.T) time.Duration {
	if s := os.Getenv("ANKA_STOP_TIMEOUT"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("ANKA_STOP_TIMEOUT: %v", err)
		}
		return d
	}
	return 10 * time.Second
}

// newRealVM prepares a VM folder and makes sure no QEMU of it outlives the
// test, whatever happens.
func newRealVM(t *testing.T, nic *NIC) *realVM {
	g := guestDir(t)
	// ',' and '=' in the folder's path must survive QEMU's option syntax.
	dir := filepath.Join(t.TempDir(), "vm,a=b")
	vm := &realVM{
		q:   NewQEMU(QEMUOptions{}),
		dir: dir,
		spec: &Spec{
			Name: "rt-" + strconv.Itoa(os.Getpid()), UUID: "0a1b2c3d-0000-4000-8000-000000000001",
			Dir: dir, Kernel: filepath.Join(g, "vmlinuz"), Initrd: filepath.Join(g, "initrd.img"),
			CPUs: 1, MemoryMiB: 256, NIC: nic,
		},
	}
	t.Cleanup(func() {
		_ = vm.q.Stop(context.Background(), dir, true, 0)
		for _, pid := range processesMentioning(dir) {
			t.Errorf("QEMU pid %d of %s survived the test: killing it", pid, dir)
			if p, err := os.FindProcess(pid); err == nil {
				_ = p.Kill()
			}
		}
	})
	return vm
}

// processesMentioning lists live (non-zombie) processes whose command line
// names something in dir.
func processesMentioning(dir string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cl, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !bytes.Contains(cl, []byte(dir+"/")) {
			continue
		}
		if ProcessAlive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitConsole polls console.log until it contains marker.
func (vm *realVM) waitConsole(t *testing.T, marker string, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(d)
	log := filepath.Join(vm.dir, ConsoleLog)
	for {
		b, _ := os.ReadFile(log)
		if bytes.Contains(b, []byte(marker)) {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			tail := b
			if len(tail) > 2000 {
				tail = tail[len(tail)-2000:]
			}
			t.Fatalf("%q not on the console within %v; console.log ends with:\n%s\nqemu.log: %s",
				marker, d, tail, logTail(filepath.Join(vm.dir, QEMULog), 10))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (vm *realVM) start(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	if err := vm.q.Start(context.Background(), vm.spec); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Logf("Start returned after %v", time.Since(start).Round(time.Millisecond))
	boot := vm.waitConsole(t, bootMarker, 60*time.Second)
	t.Logf("guest booted %v after Start returned", boot.Round(100*time.Millisecond))
	return boot
}

func (vm *realVM) wantState(t *testing.T, want State) Info {
	t.Helper()
	info, err := vm.q.Info(context.Background(), vm.dir)
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	if info.State != want {
		t.Fatalf("Info = %+v, want %s", info, want)
	}
	if (want == Stopped) != (info.PID == 0) {
		t.Fatalf("Info = %+v: PID does not match the state", info)
	}
	return info
}

// wantGone checks that no process of the folder is left and the folder is
// clean.
func (vm *realVM) wantGone(t *testing.T, pid int) {
	t.Helper()
	if pids := processesMentioning(vm.dir); len(pids) > 0 {
		t.Fatalf("processes of %s still alive: %v", vm.dir, pids)
	}
	if ProcessAlive(pid) {
		if ownedProcess(pid, vm.dir+"/"+QEMUPid) {
			t.Fatalf("QEMU pid %d still alive", pid)
		}
	}
	for _, f := range []string{QEMUPid, QMPSocket} {
		if _, err := os.Lstat(filepath.Join(vm.dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind (%v)", f, err)
		}
	}
	vm.wantState(t, Stopped)
}

func TestQEMULifecycle(t *testing.T) {
	vm := newRealVM(t, nil)
	ctx := context.Background()
	vm.start(t)
	info := vm.wantState(t, Running)

	if err := vm.q.Start(ctx, vm.spec); !errs.Is(err, errs.State) {
		t.Fatalf("second Start: %v (%v), want a state error", err, errs.KindOf(err))
	}
	if err := vm.q.Suspend(ctx, vm.dir); err != nil {
		t.Fatalf("Suspend: %v", err)
	}
	vm.wantState(t, Paused)
	if err := vm.q.Resume(ctx, vm.dir); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	vm.wantState(t, Running)

	// The monitor serves one client at a time: while another holds it,
	// Info still reports the live process, as Running.
	busy, err := dialQMP(ctx, filepath.Join(vm.dir, QMPSocket))
	if err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	vm.wantState(t, Running)
	t.Logf("Info with a busy monitor took %v", time.Since(begin).Round(time.Millisecond))
	busy.Close()

	timeout := stopTimeout(t)
	begin = time.Now()
	if err := vm.q.Stop(ctx, vm.dir, false, timeout); err != nil {
		t.Fatalf("graceful Stop: %v", err)
	}
	took := time.Since(begin)
	how := "the guest powered off on the ACPI power button"
	if strings.Contains(logTail(filepath.Join(vm.dir, QEMULog), 5), "terminating on signal") || took >= timeout {
		how = "the guest ignored the power button; QEMU was signalled after the timeout"
	}
	t.Logf("graceful Stop (timeout %v) took %v: %s", timeout, took.Round(time.Millisecond), how)
	vm.wantGone(t, info.PID)

	if err := vm.q.Stop(ctx, vm.dir, false, timeout); err != nil {
		t.Fatalf("Stop of a stopped VM: %v", err)
	}
}

func TestQEMUForceStopAndRestart(t *testing.T) {
	vm := newRealVM(t, nil)
	ctx := context.Background()
	vm.start(t)
	info := vm.wantState(t, Running)

	begin := time.Now()
	if err := vm.q.Stop(ctx, vm.dir, true, time.Minute); err != nil {
		t.Fatalf("force Stop: %v", err)
	}
	t.Logf("force Stop took %v", time.Since(begin).Round(time.Millisecond))
	vm.wantGone(t, info.PID)

	// A second boot in the same folder keeps the first console log.
	first, _ := os.ReadFile(filepath.Join(vm.dir, ConsoleLog))
	vm.start(t)
	vm.wantState(t, Running)
	prev, err := os.ReadFile(filepath.Join(vm.dir, ConsoleLog+".1"))
	if err != nil || !bytes.Equal(prev, first) {
		t.Fatalf("console.log.1 is not the first boot's console (%v)", err)
	}
	// Suspended, then forced: the usual way to stop a paused VM.
	if err := vm.q.Suspend(ctx, vm.dir); err != nil {
		t.Fatal(err)
	}
	info = vm.wantState(t, Paused)
	if err := vm.q.Stop(ctx, vm.dir, true, 0); err != nil {
		t.Fatalf("force Stop of a paused VM: %v", err)
	}
	vm.wantGone(t, info.PID)
}

// A graceful stop of a paused VM does not wait for a guest that cannot
// run: QEMU is terminated at once.
func TestQEMUGracefulStopPaused(t *testing.T) {
	vm := newRealVM(t, nil)
	ctx := context.Background()
	vm.start(t)
	if err := vm.q.Suspend(ctx, vm.dir); err != nil {
		t.Fatal(err)
	}
	info := vm.wantState(t, Paused)
	begin := time.Now()
	if err := vm.q.Stop(ctx, vm.dir, false, time.Minute); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(begin); d > 10*time.Second {
		t.Fatalf("graceful stop of a paused VM took %v", d)
	}
	vm.wantGone(t, info.PID)
}

// A hung QEMU (SIGSTOPped: its monitor is silent and SIGTERM stays
// pending) is SIGKILLed in the end, and a graceful stop still returns.
func TestQEMUStopHung(t *testing.T) {
	for _, force := range []bool{false, true} {
		t.Run("force="+strconv.FormatBool(force), func(t *testing.T) {
			vm := newRealVM(t, nil)
			ctx := context.Background()
			if err := vm.q.Start(ctx, vm.spec); err != nil {
				t.Fatal(err)
			}
			info := vm.wantState(t, Running)
			if err := syscall.Kill(info.PID, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			// Stopped by a signal is not dead: Info still sees it (the
			// monitor does not answer, so Running).
			vm.wantState(t, Running)
			begin := time.Now()
			if err := vm.q.Stop(ctx, vm.dir, force, time.Second); err != nil {
				t.Fatal(err)
			}
			took := time.Since(begin)
			t.Logf("Stop (force %v, timeout 1s) of a hung QEMU took %v", force, took.Round(time.Millisecond))
			if took > 8*time.Second {
				t.Fatalf("took %v", took)
			}
			vm.wantGone(t, info.PID)
		})
	}
}

// A datagram NIC that starts unplugged: QEMU binds the VM's socket (a
// stale one from an earlier run is replaced), the VM runs (it was started
// with -S, unplugged, then continued), and the guest sends nothing to the
// plugin's socket until SetLink plugs the cable in; then its DHCP and IPv6
// traffic arrives from the VM's MAC. This needs a guest with a virtio-net
// driver that sends on link up, as test/guest's does.
func TestQEMUNICLinkDown(t *testing.T) {
	g := t.TempDir()
	plugin := filepath.Join(g, "plugin.sock")
	pc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: plugin, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	frames := make(chan []byte, 256)
	go func() {
		buf := make([]byte, 65536)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			select {
			case frames <- append([]byte(nil), buf[:n]...):
			default:
			}
		}
	}()
	local := filepath.Join(g, "vm.sock")
	stale, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: local, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	stale.Close() // leaves the socket file behind, as a crashed QEMU would
	mac, _ := net.ParseMAC("52:54:00:aa:bb:cc")
	vm := newRealVM(t, &NIC{Kind: NICDgram, MAC: mac, Path: plugin, LocalPath: local})
	ctx := context.Background()
	vm.start(t)
	vm.wantState(t, Running)
	var out string
	if err := qmpExec(ctx, filepath.Join(vm.dir, QMPSocket), "human-monitor-command",
		map[string]any{"command-line": "info network"}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "macaddr=52:54:00:aa:bb:cc") || !strings.Contains(out, "type=dgram") {
		t.Fatalf("info network:\n%s\nwant a dgram netdev with our MAC", out)
	}
	if fi, err := os.Lstat(local); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("the VM's socket %s: %v", local, err)
	}
	fromVM := func(f []byte) bool { return len(f) >= 14 && bytes.Equal(f[6:12], mac) }

	// Unplugged: the guest is up and would send DHCP discovers at once.
	quiet := time.NewTimer(3 * time.Second)
	for waiting := true; waiting; {
		select {
		case f := <-frames:
			if fromVM(f) {
				t.Fatalf("a frame from the VM while its cable is unplugged: % x", f[:14])
			}
		case <-quiet.C:
			waiting = false
		}
	}
	if err := vm.q.SetLink(ctx, vm.dir, true); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	deadline := time.NewTimer(20 * time.Second)
	for got := false; !got; {
		select {
		case f := <-frames:
			got = fromVM(f)
		case <-deadline.C:
			t.Fatal("no frame from the VM within 20s of plugging its cable in")
		}
	}
	t.Logf("first frame from the VM %v after SetLink up", time.Since(begin).Round(time.Millisecond))
	if err := vm.q.SetLink(ctx, vm.dir, false); err != nil {
		t.Fatal(err)
	}
	if err := vm.q.Stop(ctx, vm.dir, true, 0); err != nil {
		t.Fatal(err)
	}
}

// SetLink on a VM without a NIC is QEMU's error, passed on.
func TestQEMUSetLinkWithoutNIC(t *testing.T) {
	vm := newRealVM(t, nil)
	if err := vm.q.Start(context.Background(), vm.spec); err != nil {
		t.Fatal(err)
	}
	err := vm.q.SetLink(context.Background(), vm.dir, false)
	var qe *QMPError
	if !errors.As(err, &qe) {
		t.Fatalf("SetLink without a NIC: %v, want QEMU's error", err)
	}
	t.Logf("SetLink without a NIC: %v", err)
}
