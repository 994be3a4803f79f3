package runtime

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/anka-net/anka/core/errs"
)

func ptr[T any](v T) *T { return &v }

// valueOf returns the value after flag, or "" when flag is missing.
func valueOf(args []string, flag string) (string, bool) {
	i := slices.Index(args, flag)
	if i < 0 || i+1 >= len(args) {
		return "", false
	}
	return args[i+1], true
}

func TestArgsFullKernelCommandLine(t *testing.T) {
	q := NewQEMU(QEMUOptions{KVM: ptr(false)})
	got, err := q.Args(&Spec{
		Name: "vm1", UUID: "6f1c6f0e-5a43-4d3e-9d0c-0123456789ab", Dir: "/var/lib/anka/vms/vm1",
		Kernel: "/k/vmlinuz", Initrd: "/k/initrd.img", Append: "quiet",
		CPUs: 2, MemoryMiB: 1024,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"-accel", "tcg", "-cpu", "max",
		"-name", "guest=anka-vm1",
		"-uuid", "6f1c6f0e-5a43-4d3e-9d0c-0123456789ab",
		"-smp", "2", "-m", "1024",
		"-kernel", "/k/vmlinuz", "-initrd", "/k/initrd.img", "-append", "console=ttyS0 quiet",
		"-display", "none", "-vga", "none",
		"-serial", "file:/var/lib/anka/vms/vm1/console.log",
		"-chardev", "socket,id=qmp,path=/var/lib/anka/vms/vm1/qmp.sock,server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-D", "/var/lib/anka/vms/vm1/qemu.log",
		"-daemonize", "-pidfile", "/var/lib/anka/vms/vm1/qemu.pid",
		"-nic", "none",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("args:\n got %q\nwant %q", got, want)
	}
}

func TestArgsTable(t *testing.T) {
	mac, _ := net.ParseMAC("52:54:00:12:34:56")
	base := func() *Spec {
		return &Spec{Name: "vm1", Dir: "/vms/vm1", Kernel: "/k/vmlinuz"}
	}
	tests := []struct {
		name  string
		kvm   bool
		spec  func(s *Spec)
		check func(t *testing.T, a []string)
	}{
		{"kvm", true, nil, func(t *testing.T, a []string) {
			if !slices.Equal(a[:4], []string{"-accel", "kvm", "-cpu", "host"}) {
				t.Errorf("want KVM first, got %q", a[:4])
			}
		}},
		{"tcg", false, nil, func(t *testing.T, a []string) {
			if !slices.Equal(a[:4], []string{"-accel", "tcg", "-cpu", "max"}) {
				t.Errorf("want TCG first, got %q", a[:4])
			}
		}},
		{"defaults", false, nil, func(t *testing.T, a []string) {
			if v, _ := valueOf(a, "-smp"); v != "1" {
				t.Errorf("-smp %q", v)
			}
			if v, _ := valueOf(a, "-m"); v != "512" {
				t.Errorf("-m %q", v)
			}
			if _, ok := valueOf(a, "-uuid"); ok {
				t.Error("no UUID given, but -uuid set")
			}
			if _, ok := valueOf(a, "-initrd"); ok {
				t.Error("no initrd given, but -initrd set")
			}
			if slices.Contains(a, "-S") || slices.Contains(a, "-no-shutdown") {
				t.Errorf("unexpected -S or -no-shutdown in %q", a)
			}
		}},
		{"empty append gets console", false, nil, func(t *testing.T, a []string) {
			if v, _ := valueOf(a, "-append"); v != "console=ttyS0" {
				t.Errorf("-append %q", v)
			}
		}},
		{"console prepended", false, func(s *Spec) { s.Append = "root=/dev/vda ro" }, func(t *testing.T, a []string) {
			if v, _ := valueOf(a, "-append"); v != "console=ttyS0 root=/dev/vda ro" {
				t.Errorf("-append %q", v)
			}
		}},
		{"user console kept", false, func(s *Spec) { s.Append = "quiet console=hvc0" }, func(t *testing.T, a []string) {
			if v, _ := valueOf(a, "-append"); v != "quiet console=hvc0" {
				t.Errorf("-append %q", v)
			}
		}},
		{"netconsole is not console", false, func(s *Spec) { s.Append = "netconsole=@/eth0" }, func(t *testing.T, a []string) {
			if v, _ := valueOf(a, "-append"); v != "console=ttyS0 netconsole=@/eth0" {
				t.Errorf("-append %q", v)
			}
		}},
		{"qcow2 disk", false, func(s *Spec) { s.Kernel = ""; s.Disk = "/img/ubuntu.QCOW2" }, func(t *testing.T, a []string) {
			if v, _ := valueOf(a, "-drive"); v != "file=/img/ubuntu.QCOW2,if=virtio,format=qcow2" {
				t.Errorf("-drive %q", v)
			}
			if _, ok := valueOf(a, "-kernel"); ok {
				t.Error("disk boot has -kernel")
			}
			if _, ok := valueOf(a, "-append"); ok {
				t.Error("disk boot has -append")
			}
		}},
		{"raw disk with comma", false, func(s *Spec) { s.Kernel = ""; s.Disk = "/img/a,b.img" }, func(t *testing.T, a []string) {
			if v, _ := valueOf(a, "-drive"); v != "file=/img/a,,b.img,if=virtio,format=raw" {
				t.Errorf("-drive %q", v)
			}
		}},
		{"kernel and disk", false, func(s *Spec) { s.Disk = "/img/root.raw" }, func(t *testing.T, a []string) {
			if _, ok := valueOf(a, "-kernel"); !ok {
				t.Error("no -kernel")
			}
			if v, _ := valueOf(a, "-drive"); v != "file=/img/root.raw,if=virtio,format=raw" {
				t.Errorf("-drive %q", v)
			}
		}},
		{"relative dir made absolute", false, func(s *Spec) { s.Dir = "rel/vm1" }, func(t *testing.T, a []string) {
			wd, _ := os.Getwd()
			if v, _ := valueOf(a, "-pidfile"); v != filepath.Join(wd, "rel/vm1/qemu.pid") {
				t.Errorf("-pidfile %q", v)
			}
		}},
		{"dgram nic", false, func(s *Spec) {
			s.NIC = &NIC{Kind: NICDgram, MAC: mac, Path: "/run/anka/shared.sock", LocalPath: "/vms/vm1/net0.sock", LinkUp: true}
		}, func(t *testing.T, a []string) {
			if v, _ := valueOf(a, "-netdev"); v != "dgram,id=n0,local.type=unix,local.path=/vms/vm1/net0.sock,remote.type=unix,remote.path=/run/anka/shared.sock" {
				t.Errorf("-netdev %q", v)
			}
			if v, _ := valueOf(a, "-device"); v != "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56" {
				t.Errorf("-device %q", v)
			}
			if slices.Contains(a, "-nic") || slices.Contains(a, "-S") {
				t.Errorf("unexpected -nic or -S in %q", a)
			}
		}},
		{"stream nic", false, func(s *Spec) {
			s.NIC = &NIC{Kind: NICStream, MAC: mac, Path: "/run/anka/host.sock", LinkUp: true}
		}, func(t *testing.T, a []string) {
			if v, _ := valueOf(a, "-netdev"); v != "stream,id=n0,server=off,addr.type=unix,addr.path=/run/anka/host.sock" {
				t.Errorf("-netdev %q", v)
			}
		}},
		{"vhost-user nic shares the guest's memory", false, func(s *Spec) {
			s.MemoryMiB = 384
			s.NIC = &NIC{Kind: NICVhostUser, MAC: mac, Path: "/run/anka/net/vm1/a,b.sock", LinkUp: true, MTU: 9000}
		}, func(t *testing.T, a []string) {
			if v, _ := valueOf(a, "-device"); v != "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,host_mtu=9000,rx_queue_size=1024,tx_queue_size=1024,vectors=0" {
				t.Errorf("-device %q", v)
			}
			if v, _ := valueOf(a, "-netdev"); v != "vhost-user,id=n0,chardev=n0sock" {
				t.Errorf("-netdev %q", v)
			}
			if v, _ := valueOf(a, "-chardev"); !strings.Contains(strings.Join(a, " "), "socket,id=n0sock,path=/run/anka/net/vm1/a,,b.sock,reconnect=1") {
				t.Errorf("no vhost-user chardev in %q (first -chardev %q)", a, v)
			}
			if v, _ := valueOf(a, "-object"); v != "memory-backend-memfd,id=anka-mem,size=384M,share=on" {
				t.Errorf("-object %q", v)
			}
			if v, _ := valueOf(a, "-machine"); v != "memory-backend=anka-mem" {
				t.Errorf("-machine %q", v)
			}
			if v, _ := valueOf(a, "-m"); v != "384" {
				t.Errorf("-m %q: the shared memory must be the guest's size", v)
			}
		}},
		{"vhost-user with KVM keeps MSI-X", true, func(s *Spec) {
			s.NIC = &NIC{Kind: NICVhostUser, MAC: mac, Path: "/run/vu.sock", LinkUp: true}
		}, func(t *testing.T, a []string) {
			if v, _ := valueOf(a, "-device"); v != "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,rx_queue_size=1024,tx_queue_size=1024" {
				t.Errorf("-device %q", v)
			}
		}},
		{"sockets keep private memory", false, func(s *Spec) {
			s.NIC = &NIC{Kind: NICDgram, MAC: mac, Path: "/run/p.sock", LocalPath: "/run/v.sock", LinkUp: true}
		}, func(t *testing.T, a []string) {
			if slices.Contains(a, "-object") || slices.Contains(a, "-machine") {
				t.Errorf("a dgram NIC got a shared memory backend: %q", a)
			}
		}},
		{"tap nic with model, no mac", false, func(s *Spec) {
			s.NIC = &NIC{Kind: NICTap, TAP: "anka-tap0", Model: "e1000", LinkUp: true}
		}, func(t *testing.T, a []string) {
			if v, _ := valueOf(a, "-netdev"); v != "tap,id=n0,ifname=anka-tap0,script=no,downscript=no" {
				t.Errorf("-netdev %q", v)
			}
			if v, _ := valueOf(a, "-device"); v != "e1000,netdev=n0" {
				t.Errorf("-device %q", v)
			}
		}},
		{"link down starts paused", false, func(s *Spec) {
			s.NIC = &NIC{Kind: NICTap, TAP: "t0", MAC: mac}
		}, func(t *testing.T, a []string) {
			if a[len(a)-1] != "-S" {
				t.Errorf("want -S last, got %q", a)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := base()
			if tc.spec != nil {
				tc.spec(s)
			}
			a, err := NewQEMU(QEMUOptions{KVM: ptr(tc.kvm), VhostNet: ptr(false)}).Args(s)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, a)
		})
	}
}

// TestArgsVhostNet: a TAP NIC gets the kernel's vhost-net backend when
// asked for (automatic: when /dev/vhost-net opens); sockets never do.
func TestArgsVhostNet(t *testing.T) {
	spec := func(nic *NIC) *Spec {
		return &Spec{Name: "vm1", Dir: "/vms/vm1", Kernel: "/k", NIC: nic}
	}
	tap := &NIC{Kind: NICTap, TAP: "aks1a2b3c4d", LinkUp: true}
	dgram := &NIC{Kind: NICDgram, Path: "/run/p.sock", LocalPath: "/run/v.sock", LinkUp: true}
	for _, tc := range []struct {
		name  string
		vhost *bool
		nic   *NIC
		want  string
	}{
		{"tap with vhost", ptr(true), tap, "tap,id=n0,ifname=aks1a2b3c4d,script=no,downscript=no,vhost=on"},
		{"tap without", ptr(false), tap, "tap,id=n0,ifname=aks1a2b3c4d,script=no,downscript=no"},
		{"dgram never", ptr(true), dgram, "dgram,id=n0,local.type=unix,local.path=/run/v.sock,remote.type=unix,remote.path=/run/p.sock"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := NewQEMU(QEMUOptions{KVM: ptr(false), VhostNet: tc.vhost}).Args(spec(tc.nic))
			if err != nil {
				t.Fatal(err)
			}
			if v, _ := valueOf(a, "-netdev"); v != tc.want {
				t.Errorf("-netdev %q; want %q", v, tc.want)
			}
		})
	}
	// Automatic follows the device.
	a, err := NewQEMU(QEMUOptions{KVM: ptr(false)}).Args(spec(tap))
	if err != nil {
		t.Fatal(err)
	}
	v, _ := valueOf(a, "-netdev")
	if got, want := strings.HasSuffix(v, ",vhost=on"), probeVhostNet(); got != want {
		t.Errorf("automatic: -netdev %q; /dev/vhost-net usable: %v", v, want)
	}
}

func TestArgsInvalid(t *testing.T) {
	long := "/" + strings.Repeat("d", 110)
	tests := []struct {
		name string
		spec *Spec
		want string
	}{
		{"nil", nil, "no VM spec"},
		{"no name", &Spec{Dir: "/v", Kernel: "/k"}, "no name"},
		{"no dir", &Spec{Name: "a", Kernel: "/k"}, "no folder"},
		{"no kernel or disk", &Spec{Name: "a", Dir: "/v"}, "needs a kernel"},
		{"initrd without kernel", &Spec{Name: "a", Dir: "/v", Disk: "/d", Initrd: "/i"}, "no kernel"},
		{"negative cpus", &Spec{Name: "a", Dir: "/v", Kernel: "/k", CPUs: -1}, "CPU count"},
		{"bad uuid", &Spec{Name: "a", Dir: "/v", Kernel: "/k", UUID: "nope"}, "UUID"},
		{"unknown nic", &Spec{Name: "a", Dir: "/v", Kernel: "/k", NIC: &NIC{Kind: "vde"}}, `"vde" is not supported`},
		{"dgram without local", &Spec{Name: "a", Dir: "/v", Kernel: "/k", NIC: &NIC{Kind: NICDgram, Path: "/p"}}, "local socket path"},
		{"stream without path", &Spec{Name: "a", Dir: "/v", Kernel: "/k", NIC: &NIC{Kind: NICStream}}, "plugin socket path"},
		{"long socket", &Spec{Name: "a", Dir: "/v", Kernel: "/k", NIC: &NIC{Kind: NICStream, Path: long}}, "unix sockets allow"},
		{"vhost-user without path", &Spec{Name: "a", Dir: "/v", Kernel: "/k", NIC: &NIC{Kind: NICVhostUser}}, "plugin socket path"},
		{"tap name", &Spec{Name: "a", Dir: "/v", Kernel: "/k", NIC: &NIC{Kind: NICTap, TAP: "a,b"}}, "TAP interface name"},
		{"model injection", &Spec{Name: "a", Dir: "/v", Kernel: "/k", NIC: &NIC{Kind: NICTap, TAP: "t", Model: "e1000,romfile=/x"}}, "NIC model"},
		{"bad mac", &Spec{Name: "a", Dir: "/v", Kernel: "/k", NIC: &NIC{Kind: NICTap, TAP: "t", MAC: net.HardwareAddr{1, 2}}}, "EUI-48"},
		{"deep dir", &Spec{Name: "a", Dir: long, Kernel: "/k"}, "too deep"},
	}
	q := NewQEMU(QEMUOptions{KVM: ptr(false)})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := q.Args(tc.spec)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
			if !errs.Is(err, errs.Invalid) {
				t.Fatalf("kind = %v, want invalid", errs.KindOf(err))
			}
		})
	}
}

func TestStartMissingBinary(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	q := NewQEMU(QEMUOptions{KVM: ptr(false)})
	err := q.Start(context.Background(), &Spec{Name: "a", Dir: t.TempDir(), Kernel: "/nonexistent"})
	if !errs.Is(err, errs.Unavailable) {
		t.Fatalf("err = %v (%v), want unavailable", err, errs.KindOf(err))
	}
	want := "qemu-system-x86_64 not found: install the qemu-system-x86 package (make deps does)"
	if err.Error() != want {
		t.Fatalf("err = %q, want %q", err, want)
	}
}

func needQEMU(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath(DefaultQEMUBinary); err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
}

func TestStartMissingFiles(t *testing.T) {
	needQEMU(t)
	q := NewQEMU(QEMUOptions{KVM: ptr(false)})
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(kernel, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		spec Spec
		want string
		kind errs.Kind
	}{
		{"kernel", Spec{Kernel: filepath.Join(dir, "nope")}, "kernel " + filepath.Join(dir, "nope") + " does not exist", errs.NotFound},
		{"initrd", Spec{Kernel: kernel, Initrd: filepath.Join(dir, "nope.img")}, "initrd " + filepath.Join(dir, "nope.img") + " does not exist", errs.NotFound},
		{"disk", Spec{Disk: filepath.Join(dir, "d.qcow2")}, "disk " + filepath.Join(dir, "d.qcow2") + " does not exist", errs.NotFound},
		{"disk is a folder", Spec{Disk: dir}, "is a folder", errs.Invalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.spec
			s.Name, s.Dir = "vm1", filepath.Join(dir, "vm1")
			err := q.Start(context.Background(), &s)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errs.Is(err, tc.kind) {
				t.Fatalf("err = %v (%v), want %v containing %q", err, errs.KindOf(err), tc.kind, tc.want)
			}
		})
	}
}

// A kernel file that is not a kernel: QEMU fails after we launched it, and
// the error carries QEMU's own words from qemu.log.
func TestStartFailureQuotesQEMULog(t *testing.T) {
	needQEMU(t)
	q := NewQEMU(QEMUOptions{KVM: ptr(false)})
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(kernel, []byte("not a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	vmDir := filepath.Join(dir, "vm1")
	t.Cleanup(func() { _ = q.Stop(context.Background(), vmDir, true, 0) })
	err := q.Start(context.Background(), &Spec{Name: "vm1", Dir: vmDir, Kernel: kernel})
	if err == nil {
		t.Fatal("start of a bogus kernel succeeded")
	}
	if !strings.Contains(err.Error(), "qemu.log ends with") || !strings.Contains(err.Error(), "qemu") {
		t.Fatalf("error does not quote qemu.log: %v", err)
	}
	t.Logf("error: %v", err)
	if info, err := q.Info(context.Background(), vmDir); err != nil || info.State != Stopped {
		t.Fatalf("Info after failed start = %+v, %v", info, err)
	}
	if _, err := os.Stat(filepath.Join(vmDir, QEMUPid)); !os.IsNotExist(err) {
		t.Fatalf("pidfile left after failed start: %v", err)
	}
}

func TestStoppedFolder(t *testing.T) {
	q := NewQEMU(QEMUOptions{KVM: ptr(false)})
	ctx := context.Background()
	dir := t.TempDir()
	// A stale pidfile naming a PID that is not QEMU (this test).
	if err := os.WriteFile(filepath.Join(dir, QEMUPid), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	info, err := q.Info(ctx, dir)
	if err != nil || info != (Info{State: Stopped}) {
		t.Fatalf("Info = %+v, %v; want stopped", info, err)
	}
	for name, f := range map[string]func() error{
		"suspend": func() error { return q.Suspend(ctx, dir) },
		"resume":  func() error { return q.Resume(ctx, dir) },
		"setlink": func() error { return q.SetLink(ctx, dir, true) },
	} {
		if err := f(); !errs.Is(err, errs.State) {
			t.Errorf("%s on a stopped VM: %v (%v), want a state error", name, err, errs.KindOf(err))
		}
	}
	if err := q.Stop(ctx, dir, false, 0); err != nil {
		t.Fatalf("Stop on a stopped VM: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, QEMUPid)); !os.IsNotExist(err) {
		t.Fatalf("stale pidfile not removed: %v", err)
	}
	if !ProcessAlive(os.Getpid()) {
		t.Fatal("Stop harmed the process a stale pidfile named")
	}
}

func TestProbeKVMAgreesWithQEMU(t *testing.T) {
	needQEMU(t)
	// Whatever the machine, auto mode must pick an accelerator QEMU can
	// start with; the result is only logged, as it depends on the host.
	q := NewQEMU(QEMUOptions{})
	a, err := q.Args(&Spec{Name: "a", Dir: "/v", Kernel: "/k"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("auto accelerator: %s", a[1])
}
