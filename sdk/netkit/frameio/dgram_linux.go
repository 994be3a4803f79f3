//go:build linux

package frameio

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DgramOptions configure a datagram port.
type DgramOptions struct {
	// MTU is the largest IP packet; 0 means DefaultMTU.
	MTU int
	// Peer is the VM side's socket path when it is known in advance
	// (QEMU's local.path). The port connects to it, retrying while it does
	// not exist yet: QEMU binds it only when it starts. Empty: the port
	// learns its peer from the first datagram's source address.
	Peer string
	// NoConnect sends every frame with sendto to Peer instead of
	// connecting, as QEMU's dgram netdev does. For tests and benchmarks
	// that stand in for QEMU; a plugin leaves it false.
	NoConnect bool
	// SocketBuffer is SO_SNDBUF and SO_RCVBUF; 0 means DefaultSocketBuffer.
	SocketBuffer int
	// WriteTimeout is how long WriteBatch waits for room before dropping;
	// 0 means DefaultWriteTimeout, negative means never wait.
	WriteTimeout time.Duration
	// PeerCheck is how often the port checks that the socket file it is
	// connected to is still the one it connected to; 0 means one second,
	// negative never. See DgramPort.
	PeerCheck time.Duration
	// Logger gets a line for every peer change and, rate-limited, for
	// dropped frames; nil means slog.Default().
	Logger *slog.Logger
}

// vfkitHello is the datagram vfkit sends first so that its peer learns
// its address.
const vfkitHello = "VFKT"

// reconnectEvery spaces attempts to connect to a peer that is not there.
const reconnectEvery = 100 * time.Millisecond

// DgramPort is a unix datagram socket carrying one Ethernet frame per
// datagram: QEMU's -netdev dgram, vfkit, and Apple's
// VZFileHandleNetworkDeviceAttachment. It serves one VM.
//
// It connects to its peer once it knows the peer's address. That matters
// for speed: the kernel caps how many datagrams may wait in a socket's
// queue from senders it is not connected to (net.unix.max_dgram_qlen, 10
// by default), and QEMU never connects, so an unconnected port would make
// QEMU fail its 11th queued frame. Connecting also means the kernel
// refuses datagrams from any other socket (EPERM), hence one port per VM.
//
// A connected port watches its peer: when a write finds the peer gone
// (ECONNREFUSED), or the socket file it connected to is removed or
// replaced (a restarted QEMU binds the same path again, a restarted vfkit
// another one), it disconnects, so the new peer's frames are accepted,
// and then reconnects to Peer or learns the new peer's address.
type DgramPort struct {
	s    mmsgSock
	path string
	id   fileID
	mtu  int
	opt  DgramOptions
	log  *slog.Logger
	done chan struct{}
	once sync.Once
	wg   sync.WaitGroup

	connected atomic.Bool
	// The peer, guarded by s.wmu.
	peerPath    string
	peerSA      unix.RawSockaddrUnix
	peerSALen   uint32
	peerID      fileID // of the socket file connected to; zero if none
	nextConnect time.Time
	learnedFrom string // last source a connect was tried for, to space retries
}

// ListenDgram binds a datagram socket at path, replacing a stale socket
// file left there (the port of a crashed plugin: QEMU keeps sending to
// the path, so a restarted plugin gets the VM's frames back).
func ListenDgram(path string, o DgramOptions) (*DgramPort, error) {
	mtu, err := mtuOrDefault(o.MTU)
	if err != nil {
		return nil, err
	}
	if o.NoConnect && o.Peer == "" {
		return nil, errors.New("frameio: NoConnect needs a Peer to send to")
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("frameio: datagram socket for %s: %w", path, err)
	}
	if err := setSocketBuffers(fd, o.SocketBuffer); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("frameio: binding datagram socket %s: %w", path, err)
	}
	id, err := statID(path)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("frameio: datagram socket %s: %w", path, err)
	}
	p := &DgramPort{path: path, id: id, mtu: mtu, opt: o, log: loggerOrDefault(o.Logger), done: make(chan struct{})}
	if err := p.s.init(fd, "unixgram:"+path, mtu, o.WriteTimeout, p.log); err != nil {
		os.Remove(path)
		return nil, err
	}
	p.s.wantNames()
	if o.Peer != "" {
		p.s.wmu.Lock()
		p.setPeerLocked(o.Peer)
		if !o.NoConnect {
			p.tryConnectLocked()
		}
		p.s.wmu.Unlock()
	}
	if o.PeerCheck >= 0 && !o.NoConnect {
		every := o.PeerCheck
		if every == 0 {
			every = time.Second
		}
		p.wg.Add(1)
		go p.watchPeer(every)
	}
	return p, nil
}

// removeStaleSocket removes a socket file at path, and refuses anything
// else that is there.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("frameio: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("frameio: %s exists and is not a socket: remove it or choose another path", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("frameio: removing stale socket: %w", err)
	}
	return nil
}

// Path is the socket's own path, where the VM sends.
func (p *DgramPort) Path() string { return p.path }

// Peer is the path the port sends to, "" while it has none.
func (p *DgramPort) Peer() string {
	p.s.wmu.Lock()
	defer p.s.wmu.Unlock()
	return p.peerPath
}

// Connected reports whether the port is connected to its peer.
func (p *DgramPort) Connected() bool { return p.connected.Load() }

func (p *DgramPort) Kind() Kind   { return KindDgram }
func (p *DgramPort) MTU() int     { return p.mtu }
func (p *DgramPort) Stats() Stats { return p.s.ctr.Snapshot() }

// ReadBatch reads up to len(frames) datagrams with one recvmmsg. A
// datagram longer than FrameSize(MTU) or shorter than an Ethernet header
// is dropped and counted, vfkit's hello is consumed; when it drops one it
// may exchange the Bufs of frames so the good ones come first.
func (p *DgramPort) ReadBatch(frames []Frame) (int, error) {
	p.s.rmu.Lock()
	defer p.s.rmu.Unlock()
	for {
		m, err := p.s.recv(frames, p.s.frameSize)
		if err != nil {
			return 0, err
		}
		n, bytes, dropped := 0, 0, 0
		for i := 0; i < m; i++ {
			h := &p.s.rhdr[i]
			l := int(h.Len)
			if !p.connected.Load() && !p.opt.NoConnect {
				p.learn(&p.s.rname[i], h.Hdr.Namelen)
			}
			switch {
			case h.Hdr.Flags&unix.MSG_TRUNC != 0:
				dropped++
				p.s.limit.warn(p.log, "frameio: dropping a datagram longer than the MTU allows", "port", p.path, "mtu", p.mtu)
				continue
			case l == len(vfkitHello) && string(frames[i].Buf[:l]) == vfkitHello:
				continue
			case l < MinFrameLen:
				dropped++
				p.s.limit.warn(p.log, "frameio: dropping a datagram shorter than an Ethernet header", "port", p.path, "bytes", l)
				continue
			}
			if n != i {
				frames[n].Buf, frames[i].Buf = frames[i].Buf, frames[n].Buf
			}
			frames[n].N = l
			bytes += l
			n++
		}
		p.s.ctr.AddRxDropped(dropped)
		p.s.ctr.AddRx(n, bytes)
		if n > 0 {
			return n, nil
		}
	}
}

// WriteBatch sends frames with one sendmmsg (more when the socket fills),
// waiting up to WriteTimeout for room. Without a peer every frame is
// dropped and counted.
func (p *DgramPort) WriteBatch(frames []Frame) (int, error) {
	return p.writeBatch(frames, p.s.writeTimeout)
}

// WriteBatchNoWait is WriteBatch without the wait: what the peer's queue
// has no room for now is dropped and counted (NoWaitWriter).
func (p *DgramPort) WriteBatchNoWait(frames []Frame) (int, error) {
	return p.writeBatch(frames, 0)
}

func (p *DgramPort) writeBatch(frames []Frame, timeout time.Duration) (int, error) {
	if p.s.pk.closed.Load() {
		return 0, ErrClosed
	}
	if len(frames) == 0 {
		return 0, nil
	}
	p.s.wmu.Lock()
	defer p.s.wmu.Unlock()
	var name *byte
	var namelen uint32
	switch {
	case p.opt.NoConnect:
		name, namelen = (*byte)(unsafe.Pointer(&p.peerSA)), p.peerSALen
	case !p.connected.Load() && !p.tryConnectLocked():
		p.s.ctr.AddTxDropped(len(frames))
		return 0, nil
	}
	sent, err := p.s.sendWait(frames, name, namelen, timeout)
	switch {
	case errors.Is(err, ErrClosed):
		return sent, err
	case err != nil && p.opt.NoConnect:
		p.s.limit.warn(p.log, "frameio: datagram send failed; frames dropped", "port", p.path, "peer", p.peerPath, "err", err)
	case errors.Is(err, unix.ECONNREFUSED), errors.Is(err, unix.ENOTCONN), errors.Is(err, unix.EDESTADDRREQ),
		errors.Is(err, unix.ENOENT), errors.Is(err, unix.EPERM):
		p.peerGoneLocked(err.Error())
	case err != nil:
		p.s.limit.warn(p.log, "frameio: datagram send failed; frames dropped", "port", p.path, "err", err)
	}
	return sent, nil
}

// learn connects to the source of a datagram when the port has no peer
// yet, or to Peer when the datagram came from there.
func (p *DgramPort) learn(sa *unix.RawSockaddrUnix, salen uint32) {
	src := sockaddrPath(sa, salen)
	if src == "" {
		return // an unbound sender: nothing to reply to
	}
	p.s.wmu.Lock()
	defer p.s.wmu.Unlock()
	if p.connected.Load() {
		return
	}
	if p.opt.Peer != "" {
		if src == p.opt.Peer {
			// The peer is there now: try at once, even if an attempt
			// made before it was bound failed a moment ago, or the
			// reply to this very datagram would be dropped.
			p.nextConnect = time.Time{}
			p.tryConnectLocked()
		}
		return
	}
	if src == p.learnedFrom && time.Now().Before(p.nextConnect) {
		return
	}
	p.learnedFrom = src
	p.setPeerLocked(src)
	p.nextConnect = time.Time{}
	p.tryConnectLocked()
}

func (p *DgramPort) setPeerLocked(path string) {
	p.peerPath = path
	p.peerSA = unix.RawSockaddrUnix{Family: unix.AF_UNIX}
	name := path
	if len(name) > 0 && name[0] == '@' {
		name = "\x00" + name[1:] // abstract
	}
	for i := 0; i < len(name) && i < len(p.peerSA.Path); i++ {
		p.peerSA.Path[i] = int8(name[i])
	}
	p.peerSALen = uint32(unsafe.Offsetof(p.peerSA.Path)) + uint32(min(len(name), len(p.peerSA.Path)))
	if name == path {
		p.peerSALen++ // the path's terminating NUL, as the kernel reports it
	}
}

// tryConnectLocked connects to peerPath unless an attempt failed less
// than reconnectEvery ago.
func (p *DgramPort) tryConnectLocked() bool {
	if p.peerPath == "" || p.s.pk.closed.Load() {
		return false
	}
	now := time.Now()
	if now.Before(p.nextConnect) {
		return false
	}
	err := p.s.control(func(fd int) error { return unix.Connect(fd, &unix.SockaddrUnix{Name: p.peerPath}) })
	if err != nil {
		p.nextConnect = now.Add(reconnectEvery)
		if !p.connected.Load() {
			p.log.Debug("frameio: peer not reachable yet", "port", p.path, "peer", p.peerPath, "err", err)
		}
		return false
	}
	p.peerID = fileID{}
	if p.peerPath[0] != '@' {
		p.peerID, _ = statID(p.peerPath)
	}
	p.connected.Store(true)
	p.log.Info("frameio: connected to peer", "port", p.path, "peer", p.peerPath)
	return true
}

// peerGoneLocked disconnects from a peer that has gone, so another
// socket may send to the port, and forgets a learned peer.
func (p *DgramPort) peerGoneLocked(why string) {
	if p.connected.Swap(false) {
		p.log.Info("frameio: peer gone; disconnected", "port", p.path, "peer", p.peerPath, "why", why)
	}
	p.s.control(disconnect)
	if p.opt.Peer == "" {
		p.peerPath = ""
		p.peerSALen = 0
	}
	p.nextConnect = time.Time{}
}

// disconnect dissolves a datagram socket's association (connect to
// AF_UNSPEC).
func disconnect(fd int) error {
	sa := unix.RawSockaddr{Family: unix.AF_UNSPEC}
	_, _, e := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
	if e != 0 {
		return e
	}
	return nil
}

// watchPeer notices a peer whose socket file was removed or replaced,
// which no write may reveal when the port has nothing to send, and
// connects to a Peer that has appeared.
func (p *DgramPort) watchPeer(every time.Duration) {
	defer p.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-t.C:
		}
		p.s.wmu.Lock()
		switch {
		case p.connected.Load() && p.peerID != fileID{}:
			id, err := statID(p.peerPath)
			if err == nil && id == p.peerID {
				break
			}
			why := "socket file replaced"
			if err != nil {
				why = "socket file gone"
			}
			p.peerGoneLocked(why)
			p.tryConnectLocked()
		case !p.connected.Load() && p.opt.Peer != "":
			p.tryConnectLocked()
		}
		p.s.wmu.Unlock()
	}
}

// Close closes the socket, which wakes a blocked ReadBatch, and removes
// the socket file unless another socket has been bound there since.
func (p *DgramPort) Close() error {
	var err error
	p.once.Do(func() {
		close(p.done)
		err = p.s.close()
		if id, err := statID(p.path); err == nil && id == p.id {
			os.Remove(p.path)
		}
		p.wg.Wait()
	})
	return err
}

// fileID tells a socket file from one bound at the same path later. The
// inode number alone does not: a file system hands a freed one out again
// at once.
type fileID struct {
	dev, ino uint64
	ctime    unix.Timespec
}

func statID(path string) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileID{}, err
	}
	return fileID{dev: st.Dev, ino: st.Ino, ctime: st.Ctim}, nil
}

// sockaddrPath is the path of a unix address as recvmsg reports it: ""
// for an unbound socket, "@name" for an abstract one.
func sockaddrPath(sa *unix.RawSockaddrUnix, salen uint32) string {
	off := uint32(unsafe.Offsetof(sa.Path))
	if salen <= off {
		return ""
	}
	n := min(int(salen-off), len(sa.Path))
	b := unsafe.Slice((*byte)(unsafe.Pointer(&sa.Path[0])), n)
	if b[0] == 0 {
		return "@" + string(b[1:])
	}
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

var (
	_ Port         = (*DgramPort)(nil)
	_ NoWaitWriter = (*DgramPort)(nil)
)
