//go:build linux

package frameio

import (
	"fmt"
	"log/slog"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// maxVlen caps the messages of one recvmmsg call; the kernel caps both
// calls at UIO_MAXIOV anyway.
const maxVlen = 1024

// recvmmsg and sendmmsg are raw because x/sys/unix has no wrappers for
// them in every version, and wrappers would allocate.
func recvmmsg(fd uintptr, hs []unix.Mmsghdr, flags int) (int, unix.Errno) {
	n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&hs[0])), uintptr(len(hs)), uintptr(flags), 0, 0)
	return int(n), e
}

func sendmmsg(fd uintptr, hs []unix.Mmsghdr, flags int) (int, unix.Errno) {
	n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&hs[0])), uintptr(len(hs)), uintptr(flags), 0, 0)
	return int(n), e
}

// mmsgSock is a non-blocking socket, read and written in batches through
// headers allocated once. It waits for the socket in poll(2) (see parker),
// not on the Go runtime poller, so a blocked read holds a thread; Close
// wakes it.
//
// The read and write callbacks are method values made once, and take
// their arguments from fields guarded by rmu and wmu, so a call allocates
// nothing.
type mmsgSock struct {
	pk           parker
	name         string
	frameSize    int
	writeTimeout time.Duration
	log          *slog.Logger
	ctr          Counters
	limit        logLimiter

	rmu     sync.Mutex
	rhdr    []unix.Mmsghdr
	riov    []unix.Iovec
	rname   []unix.RawSockaddrUnix // source addresses; nil when not wanted
	rctl    []byte                 // control messages; nil when not wanted
	rstride int                    // bytes of rctl per message
	rreq    int                    // messages asked for
	rgot    int                    // messages received
	rerr    unix.Errno
	readFn  func(uintptr) bool

	wmu      sync.Mutex
	whdr     []unix.Mmsghdr
	wiov     []unix.Iovec
	wn       int // messages set up
	widx     int // next message to send
	wbytes   int
	wdropped int
	wwait    bool // wait for room instead of reporting EAGAIN
	wagain   bool
	werr     unix.Errno
	writeFn  func(uintptr) bool
}

// init takes ownership of a non-blocking socket fd.
func (s *mmsgSock) init(fd int, name string, mtu int, writeTimeout time.Duration, log *slog.Logger) error {
	s.name = name
	if err := s.pk.init(fd); err != nil {
		unix.Close(fd)
		return fmt.Errorf("frameio: %s: %w", name, err)
	}
	s.frameSize = FrameSize(mtu)
	s.writeTimeout = timeoutOrDefault(writeTimeout)
	s.log = log
	s.readFn = s.doRecv
	s.writeFn = s.doSend
	s.growR(64)
	return nil
}

func (s *mmsgSock) growR(n int) {
	if n <= len(s.rhdr) {
		return
	}
	s.rhdr = make([]unix.Mmsghdr, n)
	s.riov = make([]unix.Iovec, n)
	if s.rname != nil {
		s.rname = make([]unix.RawSockaddrUnix, n)
	}
	if s.rstride > 0 {
		s.rctl = make([]byte, n*s.rstride)
	}
}

// wantNames makes recv record each datagram's source address.
func (s *mmsgSock) wantNames() {
	s.rname = make([]unix.RawSockaddrUnix, len(s.rhdr))
}

// wantControl makes recv keep stride bytes of control messages each.
func (s *mmsgSock) wantControl(stride int) {
	s.rstride = stride
	s.rctl = make([]byte, len(s.rhdr)*stride)
}

// recv reads up to len(frames) datagrams, blocking until at least one
// arrives. It fills the headers only: the caller reads rhdr[i].Len and
// flags and sets frames[i].N. Each frame is read into at most limit bytes
// of its buffer. The caller holds rmu.
func (s *mmsgSock) recv(frames []Frame, limit int) (int, error) {
	n := min(len(frames), maxVlen)
	if n == 0 {
		return 0, nil
	}
	s.growR(n)
	for i := 0; i < n; i++ {
		b := frames[i].Buf[:cap(frames[i].Buf)]
		if len(b) < MinFrameLen {
			return 0, fmt.Errorf("frameio: frame buffer %d holds %d bytes, want at least %d", i, len(b), MinFrameLen)
		}
		iov := &s.riov[i]
		iov.Base = &b[0]
		iov.SetLen(min(len(b), limit))
		h := &s.rhdr[i]
		h.Len = 0
		h.Hdr.Iov = iov
		h.Hdr.SetIovlen(1)
		h.Hdr.Flags = 0
		if s.rname != nil {
			h.Hdr.Name = (*byte)(unsafe.Pointer(&s.rname[i]))
			h.Hdr.Namelen = unix.SizeofSockaddrUnix
		}
		if s.rctl != nil {
			h.Hdr.Control = &s.rctl[i*s.rstride]
			h.Hdr.SetControllen(s.rstride)
		}
	}
	s.rreq, s.rgot, s.rerr = n, 0, 0
	if err := s.pk.read(s.readFn); err != nil {
		return 0, err
	}
	if s.rerr != 0 {
		return 0, s.rerr
	}
	return s.rgot, nil
}

func (s *mmsgSock) doRecv(fd uintptr) bool {
	for {
		n, e := recvmmsg(fd, s.rhdr[:s.rreq], unix.MSG_DONTWAIT)
		switch e {
		case 0:
			s.rgot = n
			return true
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			s.rerr = e
			return true
		}
	}
}

// send sends frames, to name when it is not nil (an unconnected socket),
// waiting up to writeTimeout when the socket is full. Frames that cannot
// be sent are dropped and counted. It returns how many were sent and the
// error that stopped it early, if any (the peer is gone, say). The caller
// holds wmu.
func (s *mmsgSock) send(frames []Frame, name *byte, namelen uint32) (int, error) {
	return s.sendWait(frames, name, namelen, s.writeTimeout)
}

// sendWait is send waiting up to timeout (0: not at all) for room.
func (s *mmsgSock) sendWait(frames []Frame, name *byte, namelen uint32, timeout time.Duration) (int, error) {
	if len(frames) > len(s.whdr) {
		s.whdr = make([]unix.Mmsghdr, len(frames))
		s.wiov = make([]unix.Iovec, len(frames))
	}
	k, bad := 0, 0
	for i := range frames {
		n := frames[i].N
		if n < MinFrameLen || n > s.frameSize || n > len(frames[i].Buf) {
			bad++
			continue
		}
		iov := &s.wiov[k]
		iov.Base = &frames[i].Buf[0]
		iov.SetLen(n)
		h := &s.whdr[k]
		h.Len = 0
		h.Hdr.Iov = iov
		h.Hdr.SetIovlen(1)
		h.Hdr.Name = name
		h.Hdr.Namelen = namelen
		k++
	}
	if bad > 0 {
		s.ctr.AddTxDropped(bad)
		s.limit.warn(s.log, "frameio: dropping frames to send that are shorter than an Ethernet header or longer than the MTU allows",
			"port", s.name, "frames", bad)
	}
	if k == 0 {
		return 0, nil
	}
	s.wn, s.widx, s.wbytes, s.wdropped, s.werr = k, 0, 0, 0, 0
	s.wwait, s.wagain = false, false
	err := s.pk.write(s.writeFn, &s.wagain, &s.wwait, timeout)
	sent := s.widx - s.wdropped
	s.ctr.AddTx(sent, s.wbytes)
	s.ctr.AddTxDropped(s.wdropped + k - s.widx)
	if err != nil {
		return sent, err
	}
	if s.werr != 0 {
		return sent, s.werr
	}
	return sent, nil
}

func (s *mmsgSock) doSend(fd uintptr) bool {
	for s.widx < s.wn {
		n, e := sendmmsg(fd, s.whdr[s.widx:s.wn], unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		if e == 0 {
			for i := s.widx; i < s.widx+n; i++ {
				s.wbytes += int(s.whdr[i].Len)
			}
			s.widx += n
			continue
		}
		switch e {
		case unix.EINTR:
		case unix.EAGAIN:
			if s.wwait {
				return false
			}
			s.wagain = true
			return true
		case unix.EMSGSIZE, unix.EINVAL:
			// This frame only: the kernel will not take it.
			s.widx++
			s.wdropped++
		default:
			s.werr = e
			return true
		}
	}
	return true
}

// control runs f on the file descriptor, kept open meanwhile.
func (s *mmsgSock) control(f func(fd int) error) error {
	return s.pk.control(f)
}

func (s *mmsgSock) close() error { return s.pk.close() }

// setSocketBuffers sizes SO_SNDBUF and SO_RCVBUF, past the sysctl
// maximum (net.core.wmem_max) when we have CAP_NET_ADMIN.
func setSocketBuffers(fd, size int) error {
	if size <= 0 {
		size = DefaultSocketBuffer
	}
	for _, o := range [][2]int{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}} {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[0], size); err == nil {
			continue
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[1], size); err != nil {
			return fmt.Errorf("frameio: setting socket buffers to %d bytes: %w", size, err)
		}
	}
	return nil
}
