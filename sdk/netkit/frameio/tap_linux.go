//go:build linux

package frameio

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TAPOptions configure a TAP port.
type TAPOptions struct {
	// MTU is set on the interface; 0 means DefaultMTU. AttachTAP only
	// sizes its buffers by it.
	MTU int
	// Up brings the interface up (addresses are the caller's business).
	Up bool
	// Persist keeps the interface after the port closes (TUNSETPERSIST).
	Persist bool
	// Owner and Group, when positive, are the only user and group allowed
	// to open a persistent interface later (TUNSETOWNER, TUNSETGROUP).
	Owner, Group int
	// Logger gets dropped frames, rate-limited; nil means slog.Default().
	Logger *slog.Logger
}

// TAPPort is a Linux TAP device: the kernel's end of a virtual Ethernet
// link, opened with IFF_TAP|IFF_NO_PI and without IFF_VNET_HDR, so every
// read is one plain frame no larger than the interface's MTU (with no
// offloads negotiated, the kernel segments before it queues to us). A TAP
// has no recvmmsg: a batch is one read per frame, taken in one poller
// wakeup.
type TAPPort struct {
	f      *os.File
	rc     syscall.RawConn
	name   string
	mtu    int
	fsize  int
	log    *slog.Logger
	ctr    Counters
	limit  logLimiter
	closed atomic.Bool

	rmu     sync.Mutex
	rframes []Frame
	rn      int
	rdrop   int
	rbytes  int
	rerr    unix.Errno
	readFn  func(uintptr) bool

	wmu     sync.Mutex
	wframes []Frame
	wn      int
	wdrop   int
	wbytes  int
	werr    unix.Errno
	writeFn func(uintptr) bool
}

// OpenTAP creates (or opens, when persistent) the TAP interface name in
// the calling thread's network namespace and sets its MTU.
func OpenTAP(name string, o TAPOptions) (*TAPPort, error) {
	mtu, err := mtuOrDefault(o.MTU)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("frameio: opening /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("frameio: TAP name %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("frameio: creating TAP %s: %w", name, err)
	}
	name = ifr.Name()
	fail := func(err error) (*TAPPort, error) {
		unix.Close(fd)
		return nil, err
	}
	if o.Owner > 0 {
		if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, o.Owner); err != nil {
			return fail(fmt.Errorf("frameio: TAP %s owner: %w", name, err))
		}
	}
	if o.Group > 0 {
		if err := unix.IoctlSetInt(fd, unix.TUNSETGROUP, o.Group); err != nil {
			return fail(fmt.Errorf("frameio: TAP %s group: %w", name, err))
		}
	}
	if o.Persist {
		if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
			return fail(fmt.Errorf("frameio: making TAP %s persistent: %w", name, err))
		}
	}
	if err := setLink(name, mtu, o.Up); err != nil {
		return fail(err)
	}
	return newTAPPort(fd, name, mtu, o)
}

// AttachTAP makes a port of a TAP file descriptor opened elsewhere (passed
// by the core, say); the port owns it from then on.
func AttachTAP(fd int, o TAPOptions) (*TAPPort, error) {
	mtu, err := mtuOrDefault(o.MTU)
	if err != nil {
		return nil, err
	}
	var ifr [unix.IFNAMSIZ + 64]byte
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNGETIFF, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
		return nil, fmt.Errorf("frameio: fd %d is not a TAP device: %w", fd, e)
	}
	flags := *(*uint16)(unsafe.Pointer(&ifr[unix.IFNAMSIZ]))
	if flags&unix.IFF_TAP == 0 || flags&unix.IFF_NO_PI == 0 || flags&unix.IFF_VNET_HDR != 0 {
		return nil, fmt.Errorf("frameio: fd %d: want a TAP opened with IFF_TAP|IFF_NO_PI and no IFF_VNET_HDR (flags %#x)", fd, flags)
	}
	n := 0
	for n < unix.IFNAMSIZ && ifr[n] != 0 {
		n++
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("frameio: fd %d: %w", fd, err)
	}
	return newTAPPort(fd, string(ifr[:n]), mtu, o)
}

func newTAPPort(fd int, name string, mtu int, o TAPOptions) (*TAPPort, error) {
	p := &TAPPort{name: name, mtu: mtu, fsize: FrameSize(mtu), log: loggerOrDefault(o.Logger)}
	p.f = os.NewFile(uintptr(fd), "tap:"+name)
	rc, err := p.f.SyscallConn()
	if err != nil {
		p.f.Close()
		return nil, fmt.Errorf("frameio: TAP %s: %w", name, err)
	}
	p.rc = rc
	p.readFn = p.doRead
	p.writeFn = p.doWrite
	return p, nil
}

// setLink sets an interface's MTU and, if up, brings it up, through an
// ioctl socket in the calling thread's network namespace.
func setLink(name string, mtu int, up bool) error {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("frameio: ioctl socket: %w", err)
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(s, unix.SIOCGIFMTU, ifr); err != nil {
		return fmt.Errorf("frameio: reading MTU of %s: %w", name, err)
	}
	if int(ifr.Uint32()) != mtu {
		ifr.SetUint32(uint32(mtu))
		if err := unix.IoctlIfreq(s, unix.SIOCSIFMTU, ifr); err != nil {
			return fmt.Errorf("frameio: setting MTU %d on %s: %w", mtu, name, err)
		}
	}
	if !up {
		return nil
	}
	ifr, _ = unix.NewIfreq(name)
	if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("frameio: reading flags of %s: %w", name, err)
	}
	if flags := ifr.Uint16(); flags&unix.IFF_UP == 0 {
		ifr.SetUint16(flags | unix.IFF_UP)
		if err := unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr); err != nil {
			return fmt.Errorf("frameio: bringing %s up: %w", name, err)
		}
	}
	return nil
}

// Name is the interface's name.
func (p *TAPPort) Name() string { return p.name }

func (p *TAPPort) Kind() Kind   { return KindTAP }
func (p *TAPPort) MTU() int     { return p.mtu }
func (p *TAPPort) Stats() Stats { return p.ctr.Snapshot() }

// ReadBatch waits for a frame, then takes what else is queued, one read
// per frame, up to len(frames).
func (p *TAPPort) ReadBatch(frames []Frame) (int, error) {
	if len(frames) == 0 {
		return 0, nil
	}
	p.rmu.Lock()
	defer p.rmu.Unlock()
	for i := range frames {
		if cap(frames[i].Buf) < MinFrameLen {
			return 0, fmt.Errorf("frameio: frame buffer %d holds %d bytes, want at least %d", i, cap(frames[i].Buf), MinFrameLen)
		}
	}
	for {
		p.rframes, p.rn, p.rdrop, p.rbytes, p.rerr = frames, 0, 0, 0, 0
		err := p.rc.Read(p.readFn)
		p.rframes = nil
		p.ctr.AddRx(p.rn, p.rbytes)
		if p.rdrop > 0 {
			p.ctr.AddRxDropped(p.rdrop)
			p.limit.warn(p.log, "frameio: dropping TAP frames longer than the MTU allows or shorter than an Ethernet header", "port", p.name, "frames", p.rdrop)
		}
		if err != nil {
			return 0, p.mapErr(err)
		}
		if p.rn > 0 {
			return p.rn, nil
		}
		if p.rerr != 0 {
			return 0, fmt.Errorf("frameio: reading TAP %s: %w", p.name, p.rerr)
		}
	}
}

func (p *TAPPort) doRead(fd uintptr) bool {
	for p.rn < len(p.rframes) {
		f := &p.rframes[p.rn]
		b := f.Buf[:cap(f.Buf)]
		b = b[:min(len(b), p.fsize)]
		n, _, e := unix.Syscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			return p.rn > 0 || p.rdrop > 0
		case e != 0:
			p.rerr = e
			return true
		case int(n) > len(b) || int(n) < MinFrameLen:
			p.rdrop++
			continue
		}
		f.N = int(n)
		p.rbytes += int(n)
		p.rn++
	}
	return true
}

// WriteBatch writes each frame with its own write. The kernel never makes
// a TAP writer wait: a frame it refuses (interface down) is dropped.
func (p *TAPPort) WriteBatch(frames []Frame) (int, error) {
	if p.closed.Load() {
		return 0, ErrClosed
	}
	if len(frames) == 0 {
		return 0, nil
	}
	p.wmu.Lock()
	defer p.wmu.Unlock()
	p.wframes, p.wn, p.wdrop, p.wbytes, p.werr = frames, 0, 0, 0, 0
	err := p.rc.Write(p.writeFn)
	p.wframes = nil
	p.ctr.AddTx(p.wn, p.wbytes)
	p.ctr.AddTxDropped(p.wdrop)
	if p.werr != 0 {
		p.limit.warn(p.log, "frameio: TAP refused frames; dropped", "port", p.name, "frames", p.wdrop, "err", p.werr)
	}
	if err != nil {
		return p.wn, p.mapErr(err)
	}
	return p.wn, nil
}

func (p *TAPPort) doWrite(fd uintptr) bool {
	for i := range p.wframes {
		f := &p.wframes[i]
		if f.N < MinFrameLen || f.N > p.fsize || f.N > len(f.Buf) {
			p.wdrop++
			continue
		}
		for {
			_, _, e := unix.Syscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&f.Buf[0])), uintptr(f.N))
			if e == unix.EINTR {
				continue
			}
			if e != 0 {
				p.werr = e
				p.wdrop++
			} else {
				p.wn++
				p.wbytes += f.N
			}
			break
		}
	}
	return true
}

func (p *TAPPort) mapErr(err error) error {
	if p.closed.Load() || errors.Is(err, os.ErrClosed) {
		return ErrClosed
	}
	return err
}

// Close closes the device; a TAP that is not persistent disappears.
func (p *TAPPort) Close() error {
	if p.closed.Swap(true) {
		return nil
	}
	return p.f.Close()
}

var _ Port = (*TAPPort)(nil)
