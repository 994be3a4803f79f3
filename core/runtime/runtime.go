// Package runtime runs VM processes. A Runtime starts a VM from a Spec as a
// daemonized process whose files (pidfile, monitor socket, serial console
// log, the hypervisor's own log) live in the VM folder, and later finds that
// process again from the folder alone, so the CLI, the daemon and a restarted
// daemon all see the same VM. QEMU is the first implementation (qemu.go).
package runtime

import (
	"context"
	"net"
	"time"
)

// State is what the runtime sees of a VM process.
type State string

const (
	// Stopped: no live VM process (none, exited, a zombie, or the pidfile
	// names a PID that now belongs to another program).
	Stopped State = "stopped"
	// Running: the process lives and its vCPUs run (or the monitor did
	// not answer, see Runtime.Info).
	Running State = "running"
	// Paused: the process lives and its vCPUs are stopped.
	Paused State = "paused"
)

// NIC kinds: how the VM's network card reaches its network plugin.
const (
	// NICDgram is one Ethernet frame per datagram on unix sockets: the VM
	// binds LocalPath and sends to Path (the plugin's socket).
	NICDgram = "dgram"
	// NICStream is a unix stream socket at Path (listened on by the
	// plugin), each frame behind a 4-byte big-endian length.
	NICStream = "stream"
	// NICTap is a TAP device named TAP, created beforehand.
	NICTap = "tap"
	// NICVhostUser is a vhost-user socket at Path (listened on by the
	// plugin); the VM's memory is shared with the plugin, which moves
	// frames through the virtqueues directly.
	NICVhostUser = "vhost-user"
)

// DefaultNICModel is the guest-visible device model of a NIC.
const DefaultNICModel = "virtio-net-pci"

// NIC is the VM's one network card. The runtime names its backend "n0",
// which is also the name SetLink acts on.
type NIC struct {
	MAC       net.HardwareAddr // nil: the hypervisor picks one
	Kind      string           // NICDgram, NICStream, NICTap or NICVhostUser
	Path      string           // dgram: the plugin's socket; stream, vhost-user: the socket to connect to
	LocalPath string           // dgram: the VM's own socket, bound by the VM process
	TAP       string           // tap: the interface name
	LinkUp    bool             // false: the guest sees the cable unplugged from its first instruction
	MTU       int              // vhost-user: the MTU the device offers the guest (host_mtu); 0: the default
	Model     string           // "": DefaultNICModel
}

// Spec is everything needed to start a VM process.
type Spec struct {
	Name string
	UUID string
	// Dir is the VM folder: console.log (the serial console; the previous
	// boot's is kept as console.log.1), qemu.pid, qmp.sock and qemu.log
	// (the hypervisor's stderr, previous kept as qemu.log.1) live here.
	Dir string
	// Kernel (with optional Initrd and Append) boots a kernel directly;
	// Disk attaches a disk image (.qcow2 is qcow2, anything else raw).
	// At least one of Kernel and Disk is needed.
	Kernel, Initrd, Append, Disk string
	CPUs                         int  // 0: 1
	MemoryMiB                    int  // 0: 512
	NIC                          *NIC // nil: no network device at all
}

// Info is the live state of a VM process.
type Info struct {
	State State
	PID   int // 0 when Stopped
}

// Runtime runs VM processes. Every method but Start finds the process from
// the VM folder alone, so it works from any process, including after a
// daemon restart. Methods are safe for concurrent use on different VMs; the
// caller serialises calls on one VM (core/vm holds a per-VM lock).
type Runtime interface {
	// Name is the runtime's name, e.g. "qemu".
	Name() string
	// Start validates the spec and starts the VM process; it returns once
	// the process runs daemonized (not when the guest has booted). A VM
	// that already runs is an errs.State error; a missing hypervisor is
	// errs.Unavailable; a missing kernel, initrd or disk is errs.NotFound.
	Start(ctx context.Context, s *Spec) error
	// Info reports Stopped when no live process belongs to the folder.
	// When the process lives but its monitor does not answer, it reports
	// Running without an error.
	Info(ctx context.Context, dir string) (Info, error)
	// Suspend stops the vCPUs; the process and its devices stay.
	Suspend(ctx context.Context, dir string) error
	// Resume lets the vCPUs run again.
	Resume(ctx context.Context, dir string) error
	// Stop ends the VM process. Graceful (force false): press the ACPI
	// power button and wait up to timeout for the guest to power off, then
	// SIGTERM, then SIGKILL. Force: end the process at once, without
	// asking the guest (the runtime may first ask the hypervisor to quit,
	// which takes milliseconds, before SIGKILL). Either way it returns
	// once the process is gone (or a zombie, which is dead for every
	// purpose), and removes the pidfile and monitor socket. Stopping a VM
	// that does not run is a no-op returning nil.
	Stop(ctx context.Context, dir string, force bool, timeout time.Duration) error
	// SetLink plugs (up) or unplugs the virtual cable of NIC n0.
	SetLink(ctx context.Context, dir string, up bool) error
}
