package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/anka-net/anka/core/errs"
)

// Files of a VM folder.
const (
	ConsoleLog = "console.log" // the serial console (ttyS0); the previous boot's is console.log.1
	QEMULog    = "qemu.log"    // QEMU's stderr; the previous start's is qemu.log.1
	QEMUPid    = "qemu.pid"
	QMPSocket  = "qmp.sock"
)

// DefaultQEMUBinary is looked up in PATH when QEMUOptions.Binary is empty.
const DefaultQEMUBinary = "qemu-system-x86_64"

const (
	defaultCPUs      = 1
	defaultMemoryMiB = 512
	// startTimeout bounds QEMU's start (up to daemonizing) when the
	// context has no deadline.
	startTimeout = 60 * time.Second
	// infoQMPTimeout bounds Info's status query: Info falls back to
	// Running when the monitor is busy, so it need not wait long.
	infoQMPTimeout = 2 * time.Second
	// termWait is how long Stop waits after SIGTERM before SIGKILL.
	termWait = 2 * time.Second
	// forceQuitWait bounds a forced stop's QMP quit, and the wait for
	// QEMU to exit after it, before SIGKILL.
	forceQuitWait = time.Second
	// killWait is how long Stop waits for a SIGKILLed process to die.
	killWait = 10 * time.Second
	// nicID names the VM's one netdev, for SetLink.
	nicID = "n0"
	// nicCharID and memID name a vhost-user NIC's socket and the guest
	// memory it shares.
	nicCharID = "n0sock"
	memID     = "anka-mem"
	// maxUnixPath is the longest unix socket path Linux accepts
	// (sun_path is 108 bytes with the terminating NUL).
	maxUnixPath = 107
)

// QEMUOptions configures the QEMU runtime.
type QEMUOptions struct {
	// Binary is the QEMU system emulator; empty means
	// qemu-system-x86_64 looked up in PATH.
	Binary string
	// KVM forces hardware acceleration on or off; nil means automatic:
	// KVM when /dev/kvm opens read-write and QEMU actually starts a KVM
	// vCPU with -cpu host (probed once, in a nested VM /dev/kvm may open
	// but fail at the first vCPU), else TCG software emulation.
	KVM *bool
	// VhostNet forces the kernel's vhost-net backend for a TAP NIC on or
	// off; nil means automatic: on when /dev/vhost-net opens read-write.
	// The guest's frames then go between its virtio queues and the TAP
	// in the kernel, without QEMU's I/O thread.
	VhostNet *bool
}

// QEMU runs VMs as daemonized qemu-system-x86_64 processes controlled over
// QMP. The zero value is not usable; call NewQEMU.
type QEMU struct {
	opts      QEMUOptions
	kvmOnce   sync.Once
	kvm       bool
	vhostOnce sync.Once
	vhost     bool
}

var _ Runtime = (*QEMU)(nil)

// NewQEMU returns the QEMU runtime.
func NewQEMU(o QEMUOptions) *QEMU { return &QEMU{opts: o} }

// Name is "qemu".
func (q *QEMU) Name() string { return "qemu" }

func (q *QEMU) binary() string {
	if q.opts.Binary != "" {
		return q.opts.Binary
	}
	return DefaultQEMUBinary
}

// lookBinary finds the QEMU binary or says how to install it.
func (q *QEMU) lookBinary() (string, error) {
	p, err := exec.LookPath(q.binary())
	if err != nil {
		if q.opts.Binary != "" && q.opts.Binary != DefaultQEMUBinary {
			return "", errs.Unavailablef("QEMU binary %s not found or not executable: %w", q.opts.Binary, err)
		}
		return "", errs.Unavailablef("qemu-system-x86_64 not found: install the qemu-system-x86 package (make deps does)")
	}
	return p, nil
}

// useKVM decides the accelerator.
func (q *QEMU) useKVM() bool {
	if q.opts.KVM != nil {
		return *q.opts.KVM
	}
	q.kvmOnce.Do(func() { q.kvm = probeKVM(q.binary()) })
	return q.kvm
}

// useVhostNet decides the TAP backend.
func (q *QEMU) useVhostNet() bool {
	if q.opts.VhostNet != nil {
		return *q.opts.VhostNet
	}
	q.vhostOnce.Do(func() { q.vhost = probeVhostNet() })
	return q.vhost
}

// probeVhostNet reports whether /dev/vhost-net opens read-write, as QEMU
// opens it for vhost=on (which fails the start when it cannot).
func probeVhostNet() bool {
	f, err := os.OpenFile("/dev/vhost-net", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// probeKVM reports whether /dev/kvm opens read-write and QEMU can run a KVM
// vCPU with -cpu host. The second check matters in nested VMs, where
// /dev/kvm opens but QEMU aborts setting the first vCPU's MSRs ("failed to
// set MSR 0x10a"); it costs one short QEMU run (-S, quit at once).
func probeKVM(binary string) bool {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	path, err := exec.LookPath(binary)
	if err != nil {
		return true // Start reports the missing binary; Args shows KVM
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "-accel", "kvm", "-cpu", "host", "-m", "64",
		"-nodefaults", "-no-user-config", "-display", "none", "-S", "-monitor", "stdio")
	cmd.Stdin = strings.NewReader("quit\n")
	return cmd.Run() == nil
}

// vmPaths are the absolute paths of a VM folder's files.
type vmPaths struct {
	dir, console, log, pid, qmp string
}

func pathsOf(dir string) (vmPaths, error) {
	if dir == "" {
		return vmPaths{}, errs.Invalidf("the VM folder is not set")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return vmPaths{}, fmt.Errorf("VM folder %s: %w", dir, err)
	}
	return vmPaths{
		dir:     abs,
		console: filepath.Join(abs, ConsoleLog),
		log:     filepath.Join(abs, QEMULog),
		pid:     filepath.Join(abs, QEMUPid),
		qmp:     filepath.Join(abs, QMPSocket),
	}, nil
}

// marks are the strings in a QEMU command line that tie it to this folder.
func (p vmPaths) marks() []string { return []string{p.pid, escapeOpt(p.qmp)} }

// livePID returns the PID of the folder's live QEMU process, or 0.
func (p vmPaths) livePID() (int, error) {
	pid, err := readPidfile(p.pid)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", p.pid, err)
	}
	if pid == 0 || !ownedProcess(pid, p.marks()...) {
		return 0, nil
	}
	return pid, nil
}

// name is how messages name the VM: its folder's name, which core/vm makes
// the VM's name.
func (p vmPaths) name() string { return filepath.Base(p.dir) }

// escapeOpt escapes a value inside a QEMU option list (a,b=c,...), where a
// comma is written twice.
func escapeOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

var (
	uuidRE  = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	modelRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+$`)
)

func validateSpec(s *Spec) error {
	switch {
	case s == nil:
		return errs.Invalidf("no VM spec")
	case s.Name == "":
		return errs.Invalidf("the VM has no name")
	case s.Dir == "":
		return errs.Invalidf("VM %s has no folder", s.Name)
	case s.Kernel == "" && s.Disk == "":
		return errs.Invalidf("VM %s needs a kernel (with initrd and append) or a disk", s.Name)
	case s.Kernel == "" && (s.Initrd != "" || s.Append != ""):
		return errs.Invalidf("VM %s has an initrd or kernel command line but no kernel", s.Name)
	case s.CPUs < 0:
		return errs.Invalidf("VM %s: %d CPUs is not a CPU count", s.Name, s.CPUs)
	case s.MemoryMiB < 0:
		return errs.Invalidf("VM %s: %d MiB is not a memory size", s.Name, s.MemoryMiB)
	case s.UUID != "" && !uuidRE.MatchString(s.UUID):
		return errs.Invalidf("VM %s: UUID %q is not of the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", s.Name, s.UUID)
	}
	if n := s.NIC; n != nil {
		if n.Model != "" && !modelRE.MatchString(n.Model) {
			return errs.Invalidf("VM %s: NIC model %q is not a QEMU device name", s.Name, n.Model)
		}
		if n.MAC != nil && len(n.MAC) != 6 {
			return errs.Invalidf("VM %s: MAC %s is not an Ethernet (EUI-48) address", s.Name, n.MAC)
		}
		sock := func(what, p string) error {
			switch {
			case p == "":
				return errs.Invalidf("VM %s: %s NIC needs its %s socket path", s.Name, n.Kind, what)
			case len(p) > maxUnixPath:
				return errs.Invalidf("VM %s: %s socket path %s is %d bytes long: unix sockets allow %d", s.Name, what, p, len(p), maxUnixPath)
			}
			return nil
		}
		switch n.Kind {
		case NICDgram:
			if err := sock("plugin", n.Path); err != nil {
				return err
			}
			if err := sock("local", n.LocalPath); err != nil {
				return err
			}
		case NICStream, NICVhostUser:
			if err := sock("plugin", n.Path); err != nil {
				return err
			}
		case NICTap:
			if n.TAP == "" || len(n.TAP) > 15 || strings.ContainsAny(n.TAP, ",/ \t\n") {
				return errs.Invalidf("VM %s: TAP interface name %q is not valid", s.Name, n.TAP)
			}
		default:
			return errs.Invalidf("VM %s: NIC kind %q is not supported: use dgram, stream, tap or vhost-user", s.Name, n.Kind)
		}
	}
	return nil
}

// kernelAppend puts console=ttyS0 first unless the user chose a console.
func kernelAppend(a string) string {
	for _, f := range strings.Fields(a) {
		if strings.HasPrefix(f, "console=") {
			return a
		}
	}
	if strings.TrimSpace(a) == "" {
		return "console=ttyS0"
	}
	return "console=ttyS0 " + a
}

// diskFormat names the image format from the file name, so QEMU does not
// probe (and warn about probing) raw images.
func diskFormat(path string) string {
	if strings.EqualFold(filepath.Ext(path), ".qcow2") {
		return "qcow2"
	}
	return "raw"
}

// Args returns QEMU's command line for the spec, without the binary. It
// validates the spec's form, not the files it names (Start does).
func (q *QEMU) Args(s *Spec) ([]string, error) {
	if err := validateSpec(s); err != nil {
		return nil, err
	}
	p, err := pathsOf(s.Dir)
	if err != nil {
		return nil, err
	}
	if len(p.qmp) > maxUnixPath {
		return nil, errs.Invalidf("VM %s: folder %s is too deep: its monitor socket path would be %d bytes long, unix sockets allow %d", s.Name, p.dir, len(p.qmp), maxUnixPath)
	}
	abs := func(f string) string {
		if a, err := filepath.Abs(f); err == nil {
			return a
		}
		return f
	}
	cpus, mem := s.CPUs, s.MemoryMiB
	if cpus == 0 {
		cpus = defaultCPUs
	}
	if mem == 0 {
		mem = defaultMemoryMiB
	}

	var a []string
	if q.useKVM() {
		a = append(a, "-accel", "kvm", "-cpu", "host")
	} else {
		a = append(a, "-accel", "tcg", "-cpu", "max")
	}
	a = append(a, "-name", "guest="+escapeOpt("anka-"+s.Name))
	if s.UUID != "" {
		a = append(a, "-uuid", s.UUID)
	}
	a = append(a, "-smp", strconv.Itoa(cpus), "-m", strconv.Itoa(mem))
	if s.Kernel != "" {
		a = append(a, "-kernel", abs(s.Kernel))
		if s.Initrd != "" {
			a = append(a, "-initrd", abs(s.Initrd))
		}
		a = append(a, "-append", kernelAppend(s.Append))
	}
	if s.Disk != "" {
		d := abs(s.Disk)
		a = append(a, "-drive", "file="+escapeOpt(d)+",if=virtio,format="+diskFormat(d))
	}
	a = append(a,
		"-display", "none", "-vga", "none",
		"-serial", "file:"+p.console,
		// The QMP socket as a chardev with explicit keys: in the short
		// form (-qmp unix:PATH,...) a folder path holding '=' is misread
		// as an option.
		"-chardev", "socket,id=qmp,path="+escapeOpt(p.qmp)+",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		// With -daemonize QEMU points its stderr at /dev/null once
		// started; -D keeps it on the log file instead.
		"-D", p.log,
		"-daemonize", "-pidfile", p.pid,
	)
	n := s.NIC
	if n == nil {
		return append(a, "-nic", "none"), nil
	}
	var netdev string
	switch n.Kind {
	case NICDgram:
		netdev = "dgram,id=" + nicID + ",local.type=unix,local.path=" + escapeOpt(n.LocalPath) +
			",remote.type=unix,remote.path=" + escapeOpt(n.Path)
	case NICStream:
		netdev = "stream,id=" + nicID + ",server=off,addr.type=unix,addr.path=" + escapeOpt(n.Path)
	case NICTap:
		netdev = "tap,id=" + nicID + ",ifname=" + n.TAP + ",script=no,downscript=no"
		if q.useVhostNet() {
			netdev += ",vhost=on"
		}
	case NICVhostUser:
		// The plugin reads the guest's virtqueues in the guest's memory,
		// so the memory is a shared memfd of exactly -m's size. QEMU
		// connects to the plugin's socket and, with reconnect, connects
		// again when a restarted plugin listens there anew.
		a = append(a,
			"-object", "memory-backend-memfd,id="+memID+",size="+strconv.Itoa(mem)+"M,share=on",
			"-machine", "memory-backend="+memID,
			"-chardev", "socket,id="+nicCharID+",path="+escapeOpt(n.Path)+",reconnect=1")
		netdev = "vhost-user,id=" + nicID + ",chardev=" + nicCharID
	}
	model := n.Model
	if model == "" {
		model = DefaultNICModel
	}
	device := model + ",netdev=" + nicID
	if n.MAC != nil {
		device += ",mac=" + n.MAC.String()
	}
	if n.Kind == NICVhostUser && model == DefaultNICModel {
		if n.MTU > 0 {
			// The plugin offers no mergeable buffers: a Linux guest posts
			// receive buffers big enough for frames above 1500 bytes
			// only when the device announces the MTU.
			device += ",host_mtu=" + strconv.Itoa(n.MTU)
		}
		// Rings of 1024 (QEMU's default is 256; above it only for
		// vhost-user) so a guest late to refill its receive buffers
		// loses fewer frames.
		device += ",rx_queue_size=1024,tx_queue_size=1024"
		if !q.useKVM() {
			// QEMU 7.2 under TCG segfaults in msix_set_vector_notifiers
			// when the guest starts a vhost-user virtio-net-pci with
			// MSI-X; legacy interrupts avoid it (with KVM, MSI-X goes
			// through irqfd and works).
			device += ",vectors=0"
		}
	}
	a = append(a, "-netdev", netdev, "-device", device)
	if !n.LinkUp {
		// Start with the vCPUs stopped; Start unplugs the cable over
		// QMP and then lets the guest run, so it never sees a link.
		a = append(a, "-S")
	}
	return a, nil
}

// checkInput makes sure a file QEMU must read exists and is not a folder.
func checkInput(vm, what, path string) error {
	if path == "" {
		return nil
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return errs.NotFoundf("VM %s: %s %s does not exist", vm, what, path)
	case errors.Is(err, fs.ErrPermission):
		return errs.Permissionf("VM %s: %s %s cannot be read: %w", vm, what, path, err)
	case err != nil:
		return fmt.Errorf("VM %s: %s %s: %w", vm, what, path, err)
	case fi.IsDir():
		return errs.Invalidf("VM %s: %s %s is a folder, not a file", vm, what, path)
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return errs.Permissionf("VM %s: %s %s cannot be read: %w", vm, what, path, err)
		}
		return fmt.Errorf("VM %s: %s %s: %w", vm, what, path, err)
	}
	f.Close()
	return nil
}

// rotate keeps the previous file as file.1.
func rotate(path string) error {
	err := os.Rename(path, path+".1")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// removeStaleSocket removes a socket file left by an earlier run. Anything
// that is not a socket is left alone (QEMU then says why it cannot bind).
func removeStaleSocket(path string) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSocket != 0 {
		_ = os.Remove(path)
	}
}

// logTail returns the last lines of a log file, for error messages.
func logTail(path string, lines int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const max = 4096
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		_, _ = f.Seek(-max, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.TrimSpace(strings.Join(all, "\n"))
}

func startFailed(name, log string, cause error) error {
	msg := fmt.Sprintf("QEMU could not start VM %s: %v", name, cause)
	if t := logTail(log, 10); t != "" {
		msg += "; " + log + " ends with:\n" + t
	}
	return &errs.Error{Kind: errs.Internal, Msg: msg, Err: cause}
}

// Start starts the VM process and returns once QEMU runs daemonized.
func (q *QEMU) Start(ctx context.Context, s *Spec) error {
	if err := validateSpec(s); err != nil {
		return err
	}
	bin, err := q.lookBinary()
	if err != nil {
		return err
	}
	p, err := pathsOf(s.Dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		return fmt.Errorf("VM %s: create folder: %w", s.Name, err)
	}
	if pid, err := p.livePID(); err != nil {
		return err
	} else if pid != 0 {
		return errs.Statef("VM %s is already running (QEMU pid %d)", s.Name, pid)
	}
	if err := checkInput(s.Name, "kernel", s.Kernel); err != nil {
		return err
	}
	if err := checkInput(s.Name, "initrd", s.Initrd); err != nil {
		return err
	}
	if err := checkInput(s.Name, "disk", s.Disk); err != nil {
		return err
	}
	args, err := q.Args(s)
	if err != nil {
		return err
	}

	// Leftovers of a QEMU that died without cleaning up.
	_ = os.Remove(p.pid)
	removeStaleSocket(p.qmp)
	if s.NIC != nil && s.NIC.Kind == NICDgram {
		removeStaleSocket(s.NIC.LocalPath)
	}
	if err := rotate(p.console); err != nil {
		return fmt.Errorf("VM %s: keep the previous console log: %w", s.Name, err)
	}
	if err := rotate(p.log); err != nil {
		return fmt.Errorf("VM %s: keep the previous QEMU log: %w", s.Name, err)
	}
	logf, err := os.OpenFile(p.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("VM %s: create %s: %w", s.Name, p.log, err)
	}
	defer logf.Close()

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, startTimeout)
		defer cancel()
	}
	// The process we start is QEMU's foreground half: it exits once the
	// daemonized half has set the VM up (0) or failed (1).
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return startFailed(s.Name, p.log, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		q.kill(p)
		return fmt.Errorf("VM %s: start QEMU: %w", s.Name, ctx.Err())
	}
	if err != nil {
		q.kill(p)
		return startFailed(s.Name, p.log, err)
	}
	pid, err := p.livePID()
	if err != nil {
		return err
	}
	if pid == 0 {
		return startFailed(s.Name, p.log, errors.New("QEMU exited right after starting"))
	}
	if s.NIC != nil && !s.NIC.LinkUp {
		err := func() error {
			qctx, cancel := context.WithTimeout(ctx, DefaultQMPTimeout)
			defer cancel()
			c, err := dialQMP(qctx, p.qmp)
			if err != nil {
				return err
			}
			defer c.Close()
			if err := c.execute("set_link", map[string]any{"name": nicID, "up": false}, nil); err != nil {
				return err
			}
			return c.execute("cont", nil, nil)
		}()
		if err != nil {
			q.kill(p)
			return fmt.Errorf("VM %s: start with the cable unplugged: %w", s.Name, err)
		}
	}
	return nil
}

// Info reports the VM process's state.
func (q *QEMU) Info(ctx context.Context, dir string) (Info, error) {
	p, err := pathsOf(dir)
	if err != nil {
		return Info{}, err
	}
	pid, err := p.livePID()
	if err != nil || pid == 0 {
		return Info{State: Stopped}, err
	}
	qctx, cancel := context.WithTimeout(ctx, infoQMPTimeout)
	defer cancel()
	var st qmpStatus
	if err := qmpExec(qctx, p.qmp, "query-status", nil, &st); err != nil {
		if ctx.Err() != nil {
			return Info{}, ctx.Err()
		}
		// The process lives; a monitor that does not answer (busy with
		// another client, or still starting) does not make it stopped.
		return Info{State: Running, PID: pid}, nil
	}
	return Info{State: st.state(), PID: pid}, nil
}

// monitor runs one QMP command on a live VM.
func (q *QEMU) monitor(ctx context.Context, dir, what, cmd string, args any) error {
	p, err := pathsOf(dir)
	if err != nil {
		return err
	}
	pid, err := p.livePID()
	if err != nil {
		return err
	}
	if pid == 0 {
		return errs.Statef("VM %s is not running: cannot %s", p.name(), what)
	}
	if err := qmpExec(ctx, p.qmp, cmd, args, nil); err != nil {
		return fmt.Errorf("VM %s: cannot %s: %w", p.name(), what, err)
	}
	return nil
}

// Suspend stops the vCPUs (QMP stop).
func (q *QEMU) Suspend(ctx context.Context, dir string) error {
	return q.monitor(ctx, dir, "suspend it", "stop", nil)
}

// Resume lets the vCPUs run (QMP cont).
func (q *QEMU) Resume(ctx context.Context, dir string) error {
	return q.monitor(ctx, dir, "resume it", "cont", nil)
}

// SetLink plugs or unplugs the NIC's cable (QMP set_link).
func (q *QEMU) SetLink(ctx context.Context, dir string, up bool) error {
	what := "unplug its network cable"
	if up {
		what = "plug in its network cable"
	}
	return q.monitor(ctx, dir, what, "set_link", map[string]any{"name": nicID, "up": up})
}

// Stop ends the VM process; see Runtime.Stop. A timeout <= 0 with force
// false presses the power button but does not wait for the guest: QEMU gets
// SIGTERM at once (it exits cleanly, flushing its disks).
func (q *QEMU) Stop(ctx context.Context, dir string, force bool, timeout time.Duration) error {
	p, err := pathsOf(dir)
	if err != nil {
		return err
	}
	pid, err := p.livePID()
	if err != nil {
		return err
	}
	if pid == 0 {
		q.cleanup(p)
		return nil
	}
	if !force {
		if q.powerdown(ctx, p, timeout) && timeout > 0 {
			dead, err := waitGone(ctx, pid, p, timeout)
			if err != nil {
				return fmt.Errorf("VM %s: wait for the guest to power off: %w", p.name(), err)
			}
			if dead {
				q.finish(pid, p)
				return nil
			}
		}
		if err := signalOwned(pid, unix.SIGTERM, p.marks()...); err != nil {
			return fmt.Errorf("VM %s: %w", p.name(), err)
		}
		if dead, _ := waitGone(context.Background(), pid, p, termWait); dead {
			q.finish(pid, p)
			return nil
		}
	}
	if force {
		// QMP quit ends QEMU at once too, but lets it flush its own
		// caches (qcow2 metadata) first; a QEMU that does not answer
		// within forceQuitWait is killed.
		qctx, cancel := context.WithTimeout(ctx, forceQuitWait)
		err := qmpExec(qctx, p.qmp, "quit", nil, nil)
		cancel()
		if err == nil || errors.Is(err, errMonitorClosed) {
			if dead, _ := waitGone(context.Background(), pid, p, forceQuitWait); dead {
				q.finish(pid, p)
				return nil
			}
		}
	}
	if err := signalOwned(pid, unix.SIGKILL, p.marks()...); err != nil {
		return fmt.Errorf("VM %s: %w", p.name(), err)
	}
	// Bounded, and not cut short by ctx: the signal is sent, and the
	// process must be gone before the folder is cleaned up.
	if dead, _ := waitGone(context.Background(), pid, p, killWait); !dead {
		return fmt.Errorf("VM %s: QEMU pid %d is still alive %v after SIGKILL", p.name(), pid, killWait)
	}
	q.finish(pid, p)
	return nil
}

// powerdown presses the ACPI power button, and reports whether the guest
// can react: a guest whose vCPUs are stopped cannot, nor can one whose
// monitor does not answer. The exchange takes at most DefaultQMPTimeout, or
// the stop timeout when that is shorter (but at least a second), so a hung
// QEMU does not stretch a short stop.
func (q *QEMU) powerdown(ctx context.Context, p vmPaths, timeout time.Duration) bool {
	d := min(DefaultQMPTimeout, max(timeout, time.Second))
	qctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	c, err := dialQMP(qctx, p.qmp)
	if err != nil {
		return false
	}
	defer c.Close()
	var st qmpStatus
	if err := c.execute("query-status", nil, &st); err != nil || st.state() != Running {
		return false
	}
	return c.execute("system_powerdown", nil, nil) == nil
}

// waitGone polls until the process is no longer the folder's live QEMU
// (exited, a zombie, or the PID reused), for at most d. It polls every
// pollInterval, faster at first, since a signalled QEMU exits within
// milliseconds.
func waitGone(ctx context.Context, pid int, p vmPaths, d time.Duration) (bool, error) {
	marks := p.marks()
	deadline := time.Now().Add(d)
	interval := 10 * time.Millisecond
	for {
		if !ownedProcess(pid, marks...) {
			return true, nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false, nil
		}
		t := time.NewTimer(min(interval, left))
		select {
		case <-ctx.Done():
			t.Stop()
			return false, ctx.Err()
		case <-t.C:
		}
		interval = min(2*interval, pollInterval)
	}
}

// kill SIGKILLs the folder's QEMU, if any, and cleans up; for failed starts.
func (q *QEMU) kill(p vmPaths) {
	pid, _ := p.livePID()
	if pid != 0 {
		_ = signalOwned(pid, unix.SIGKILL, p.marks()...)
		_, _ = waitGone(context.Background(), pid, p, killWait)
		reap(pid)
	}
	q.cleanup(p)
}

func (q *QEMU) finish(pid int, p vmPaths) {
	reap(pid)
	q.cleanup(p)
}

// cleanup removes the pidfile and the monitor socket of a dead VM.
func (q *QEMU) cleanup(p vmPaths) {
	_ = os.Remove(p.pid)
	removeStaleSocket(p.qmp)
}
