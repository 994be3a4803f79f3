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
	// Offload opens the TAP with IFF_VNET_HDR and lets the kernel hand
	// TCP segments (IPv4 and IPv6) up to 64 KiB and frames with partial
	// checksums, which the port cuts to the MTU: far fewer reads and one
	// pass of the host's stack per 64 KiB. ReadBatch returns frames no
	// larger than the MTU; an untagged TCP frame's checksum may be left
	// partial (Frame.Off: the segments it cuts, a frame the kernel left
	// partial), every other checksum is complete. WriteBatch takes
	// frames whose checksum is partial too (the port is a PartialWriter)
	// and hands them to the kernel to complete, and merges runs of one
	// TCP flow's segments. OpenTAP only. See offload_linux.go.
	Offload bool
	// PassOffload opens the TAP with IFF_VNET_HDR and the same offloads
	// (but TSO_ECN: Offload cannot say ECN, so the kernel cuts those),
	// and passes them through, as a virtio NIC does between a guest and
	// its host: ReadBatch returns each packet as the kernel hands it,
	// Frame.Off filled from its virtio header (TCP segments up to
	// MaxGSOLen, which need buffers that large: a segment larger than its
	// buffer is dropped and counted), and WriteBatch writes each frame
	// behind the header its Off describes (GSO segments included), never
	// merging. A stand-in for a guest with TSO in tests and benchmarks.
	// OpenTAP only; not with Offload.
	PassOffload bool
	// HandGSO, with Offload, hands a TCP segment the kernel passes up
	// whole (Frame.Off saying how to cut it: frameio.WholeGSO) into a
	// frame buffer of MaxGSOLen bytes or more, and cuts it to the MTU
	// into smaller ones as before: the port is then a GSOReader. The
	// switch gives such an uplink large buffers and cuts only for the
	// ports that take no GSO frames (frameio.GSOWriter).
	HandGSO bool
}

// TAPPort is a Linux TAP device: the kernel's end of a virtual Ethernet
// link, opened with IFF_TAP|IFF_NO_PI and without IFF_VNET_HDR, so every
// read is one plain frame no larger than the interface's MTU (with no
// offloads negotiated, the kernel segments before it queues to us). A TAP
// has no recvmmsg: a batch is one read per frame, taken in one poller
// wakeup. With TAPOptions.Offload (the switch's uplink) it is opened with
// IFF_VNET_HDR instead: the kernel hands it TCP segments up to 64 KiB,
// which it cuts to the MTU, and it merges runs of one flow's segments on
// write; callers read frames within the MTU, TCP ones possibly with
// their checksum partial, and may write frames whose checksum is
// partial (offload_linux.go). With TAPOptions.PassOffload
// frames carry the kernel's offloads both ways.
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

	offload bool      // Offload: cut on read, merge on write
	pass    bool      // PassOffload: offloads passed through
	whole   bool      // HandGSO: segments handed whole into large buffers
	gr      gsoReader // offload: what the last read left to hand out

	rmu     sync.Mutex
	rframes []Frame
	rn      int
	rdrop   int
	rbytes  int
	rerr    unix.Errno
	readFn  func(uintptr) bool
	riov    [3]unix.Iovec    // the virtio header (pass only), the frame, spill
	rhdr    [vnetHdrLen]byte // pass: the virtio header read
	spill   [1]byte          // a byte past the frame's buffer: a read that reaches it was cut short

	wmu     sync.Mutex
	wiov    [2]unix.Iovec    // offload, pass: the virtio header, then the frame
	vhdr    [vnetHdrLen]byte // offload, pass: the frame's virtio header
	giov    []unix.Iovec     // offload: a merged segment's header, then payloads
	ghdr    []byte           // offload: its virtio header and headers
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
	if o.Offload && o.PassOffload {
		unix.Close(fd)
		return nil, fmt.Errorf("frameio: TAP %s: Offload and PassOffload exclude each other: set one", name)
	}
	if o.HandGSO && !o.Offload {
		unix.Close(fd)
		return nil, fmt.Errorf("frameio: TAP %s: HandGSO hands up what Offload lets the kernel pass: set Offload too", name)
	}
	flags := uint16(unix.IFF_TAP | unix.IFF_NO_PI)
	if o.Offload || o.PassOffload {
		flags |= unix.IFF_VNET_HDR
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("frameio: creating TAP %s: %w", name, err)
	}
	name = ifr.Name()
	fail := func(err error) (*TAPPort, error) {
		unix.Close(fd)
		return nil, err
	}
	if o.Offload || o.PassOffload {
		if err := enableOffload(fd, o.Offload); err != nil {
			return fail(fmt.Errorf("frameio: TAP %s offloads: %w", name, err))
		}
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
	o.Offload, o.PassOffload, o.HandGSO = false, false, false
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
	p.riov[2].Base = &p.spill[0]
	p.riov[2].SetLen(len(p.spill))
	if o.Offload || o.PassOffload {
		p.wiov[0].Base = &p.vhdr[0]
		p.wiov[0].SetLen(vnetHdrLen)
	}
	switch {
	case o.Offload:
		p.offload = true
		p.gr.buf = make([]byte, offloadBufLen)
		p.readFn = p.doReadOffload
		p.writeFn = p.doWriteOffload
		p.giov = make([]unix.Iovec, 1+maxCoalesce)
		p.ghdr = make([]byte, vnetHdrLen+EthHeaderLen+40+60)
		if o.HandGSO {
			p.whole = true
			p.riov[0].Base = &p.rhdr[0]
			p.riov[0].SetLen(vnetHdrLen)
		}
	case o.PassOffload:
		p.pass = true
		p.riov[0].Base = &p.rhdr[0]
		p.riov[0].SetLen(vnetHdrLen)
		p.readFn = p.doReadPass
		p.writeFn = p.doWritePass
	}
	return p, nil
}

// TakesPartial says whether WriteBatch takes frames whose checksum is
// partial (Frame.Off): with Offload or PassOffload, the kernel completes
// them. Only PassOffload takes GSO segments.
func (p *TAPPort) TakesPartial() bool { return p.offload || p.pass }

// TakesGSO says whether WriteBatch takes GSO frames whole (PassOffload,
// or Offload with HandGSO: a guest's TSO segments go to the host's
// stack as they came).
func (p *TAPPort) TakesGSO() bool { return p.pass || p.whole }

// GSOBuffers is how many large buffers (MaxGSOLen) a batch should start
// with for ReadBatch to hand TCP segments up whole (HandGSO): 16, a
// megabyte of the host's TCP per read; 0 without HandGSO.
func (p *TAPPort) GSOBuffers() int {
	if p.whole {
		return tapGSOBuffers
	}
	return 0
}

// tapGSOBuffers: see GSOBuffers. One uplink per network has them.
const tapGSOBuffers = 16

// ReadsOffload says whether ReadBatch hands up frames with Offload set:
// with Offload, TCP frames within the MTU whose checksum is partial;
// with PassOffload, GSO frames up to MaxGSOLen too.
func (p *TAPPort) ReadsOffload() bool { return p.offload || p.pass }

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
		if p.offload && p.gr.pending() {
			// What the last call could not take of a segment.
			p.drainSeg()
			if p.rn == len(frames) {
				p.rframes = nil
				p.ctr.AddRx(p.rn, p.rbytes)
				p.ctr.AddRxDropped(p.rdrop)
				return p.rn, nil
			}
		}
		err := p.rc.Read(p.readFn)
		p.rframes = nil
		p.ctr.AddRx(p.rn, p.rbytes)
		if p.rdrop > 0 {
			p.ctr.AddRxDropped(p.rdrop)
			p.limit.warn(p.log, "frameio: dropping TAP frames longer than the MTU (or, passing offloads, the buffer) allows, shorter than an Ethernet header, or with an offload no port takes", "port", p.name, "frames", p.rdrop)
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
		// A TAP read returns at most the buffer's length, cutting a
		// longer frame short (its MTU raised behind the port's back):
		// a byte of spill tells the two apart.
		n, ok, ret := p.readv(fd, b, false)
		if !ok {
			return ret
		}
		if n > len(b) || n < MinFrameLen {
			p.rdrop++
			continue
		}
		f.N, f.Off = n, Offload{}
		p.rbytes += n
		p.rn++
	}
	return true
}

// readv reads one packet into b, with the byte of spill after it, and
// with the virtio header into p.rhdr before it when hdr. It retries an
// interrupted read; ok false ends the batch, and ret is then what the
// read function returns (an empty TAP with nothing read yet waits on).
func (p *TAPPort) readv(fd uintptr, b []byte, hdr bool) (n int, ok, ret bool) {
	p.riov[1].Base = &b[0]
	p.riov[1].SetLen(len(b))
	iov, cnt := &p.riov[1], 2
	if hdr {
		iov, cnt = &p.riov[0], 3
	}
	for {
		r, _, e := unix.Syscall(unix.SYS_READV, fd, uintptr(unsafe.Pointer(iov)), uintptr(cnt))
		switch e {
		case 0:
			return int(r), true, false
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, false, p.rn > 0 || p.rdrop > 0
		default:
			p.rerr = e
			return 0, false, true
		}
	}
}

// drainSeg hands out what the last read left into the free frames.
func (p *TAPPort) drainSeg() {
	for p.gr.pending() && p.rn < len(p.rframes) {
		f := &p.rframes[p.rn]
		if !p.gr.next(f, p.fsize) {
			p.rdrop++
			continue
		}
		p.rbytes += f.N
		p.rn++
	}
}

// doReadOffload reads what an offloading TAP holds and cuts it into
// frames until the batch is full; what is left of a segment stays pending.
func (p *TAPPort) doReadOffload(fd uintptr) bool {
	for p.rn < len(p.rframes) {
		if p.whole && cap(p.rframes[p.rn].Buf) >= MaxGSOLen {
			if ok, ret := p.readWhole(fd); !ok {
				return ret
			}
			continue
		}
		b := p.gr.buf
		n, _, e := unix.Syscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			return p.rn > 0 || p.rdrop > 0
		case e != 0:
			p.rerr = e
			return true
		case !p.gr.load(int(n)):
			p.rdrop++
			continue
		}
		p.drainSeg()
	}
	return true
}

// readWhole reads one packet with its virtio header straight into the
// next frame, a large one (HandGSO): a TCP segment the switch may carry
// whole stays whole, a plain frame is settled in place as the cutting
// path settles one, and a segment that may not travel whole (tagged,
// CWR) is cut through p.gr, from a copy. ok false ends the batch, as
// readv's.
func (p *TAPPort) readWhole(fd uintptr) (ok, ret bool) {
	f := &p.rframes[p.rn]
	b := f.Buf[:MaxGSOLen]
	n, ok, ret := p.readv(fd, b, true)
	if !ok {
		return false, ret
	}
	m := n - vnetHdrLen
	o, ok := passRead(p.rhdr[:], m, len(b), p.fsize)
	f.N, f.Off = m, o
	switch {
	case !ok:
		p.rdrop++
	case o.GSO == GSONone && !settlePlain(f, PartialTCP(b[:m], o)):
		p.rdrop++
	case o.GSO == GSONone || WholeGSO(b[:m], o):
		p.rbytes += m
		p.rn++
	default:
		copy(p.gr.buf, p.rhdr[:])
		if !p.gr.load(vnetHdrLen + copy(p.gr.buf[vnetHdrLen:], b[:m])) {
			p.rdrop++
			break
		}
		p.drainSeg()
	}
	return true, false
}

// doReadPass reads each packet with its virtio header, straight into the
// caller's frame (one readv), and fills Off from the header.
func (p *TAPPort) doReadPass(fd uintptr) bool {
	for p.rn < len(p.rframes) {
		f := &p.rframes[p.rn]
		b := f.Buf[:cap(f.Buf)]
		b = b[:min(len(b), MaxGSOLen)]
		n, ok, ret := p.readv(fd, b, true)
		if !ok {
			return ret
		}
		m := n - vnetHdrLen // past len(b): cut short
		o, ok := passRead(p.rhdr[:], m, len(b), p.fsize)
		if !ok {
			p.rdrop++
			continue
		}
		f.N, f.Off = m, o
		p.rbytes += m
		p.rn++
	}
	return true
}

// passRead checks what a PassOffload read got (virtio header h, then a
// packet of m bytes into a buffer of size bytes) and returns its offload:
// false for a packet cut short by its buffer, outside MinFrameLen..max
// (MaxGSOLen for a GSO segment), or with an offload no port takes.
func passRead(h []byte, m, size, max int) (Offload, bool) {
	if m < MinFrameLen || m > size {
		return Offload{}, false
	}
	o, ok := parseVnetHdr(h).offload(m)
	if !ok || (o.GSO == GSONone && m > max) {
		return Offload{}, false
	}
	return o, true
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
		p.write(fd, unix.SYS_WRITE, unsafe.Pointer(&f.Buf[0]), uintptr(f.N), 1, f.N)
	}
	return true
}

// write makes one write or writev system call (trap) of buf and n,
// retrying an interrupted one, and counts frames frames of bytes bytes as
// sent or, when the kernel refused them, dropped.
func (p *TAPPort) write(fd, trap uintptr, buf unsafe.Pointer, n uintptr, frames, bytes int) {
	for {
		_, _, e := unix.Syscall(trap, fd, uintptr(buf), n)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			p.werr = e
			p.wdrop += frames
		} else {
			p.wn += frames
			p.wbytes += bytes
		}
		return
	}
}

// doWriteOffload writes each frame behind its virtio header (empty, or
// NEEDS_CSUM for a partial checksum), and runs of one TCP flow's
// segments merged into one (coalesceRun). GSO segments are refused.
func (p *TAPPort) doWriteOffload(fd uintptr) bool {
	for i := 0; i < len(p.wframes); i++ {
		f := &p.wframes[i]
		if f.N < MinFrameLen || f.N > len(f.Buf) || !writable(f.Off, f.N, p.fsize, p.whole) {
			p.wdrop++
			continue
		}
		if f.Off.GSO != GSONone { // HandGSO: merged already
			p.writeVnet(fd, f)
			continue
		}
		if n, mss := coalesceRun(p.wframes[i:], p.fsize); n > 1 {
			p.writeMerged(fd, p.wframes[i:i+n], mss)
			i += n - 1
			continue
		}
		p.writeVnet(fd, f)
	}
	return true
}

// doWritePass writes each frame behind the virtio header its Off
// describes, GSO segments up to MaxGSOLen included.
func (p *TAPPort) doWritePass(fd uintptr) bool {
	for i := range p.wframes {
		f := &p.wframes[i]
		if f.N < MinFrameLen || f.N > len(f.Buf) || !writable(f.Off, f.N, p.fsize, true) {
			p.wdrop++
			continue
		}
		p.writeVnet(fd, f)
	}
	return true
}

// writeVnet writes one frame behind the virtio header its Off describes.
func (p *TAPPort) writeVnet(fd uintptr, f *Frame) {
	if f.Off == (Offload{}) {
		clear(p.vhdr[:])
	} else {
		putVnetHdr(p.vhdr[:], f.Off, f.Bytes())
	}
	p.wiov[1].Base = &f.Buf[0]
	p.wiov[1].SetLen(f.N)
	p.write(fd, unix.SYS_WRITEV, unsafe.Pointer(&p.wiov[0]), 2, 1, f.N)
}

// writeMerged writes frames (a run coalesceRun found) as one TCP segment
// the kernel cuts at mss: the first frame's headers, fixed up, then every
// frame's payload, with no copy of the payloads.
func (p *TAPPort) writeMerged(fd uintptr, frames []Frame, mss int) {
	hn := mergeHeader(p.ghdr, frames, mss)
	hl := hn - vnetHdrLen
	bytes := 0
	for i := range frames {
		f := frames[i].Bytes()
		p.giov[1+i].Base = &f[hl]
		p.giov[1+i].SetLen(len(f) - hl)
		bytes += len(f)
	}
	p.giov[0].Base = &p.ghdr[0]
	p.giov[0].SetLen(hn)
	p.write(fd, unix.SYS_WRITEV, unsafe.Pointer(&p.giov[0]), uintptr(1+len(frames)), len(frames), bytes)
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

var (
	_ Port          = (*TAPPort)(nil)
	_ PartialWriter = (*TAPPort)(nil)
)
