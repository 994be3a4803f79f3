//go:build linux

package vhostuser

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/vhostuser/internal/vuproto"
	"golang.org/x/sys/unix"
)

// Options configure a Port.
type Options struct {
	// MTU bounds the frames in both directions: up to
	// frameio.FrameSize(MTU) bytes. 0 means frameio.DefaultMTU. The port
	// offers VIRTIO_NET_F_MTU; with QEMU the value the guest sees is
	// virtio-net-pci's host_mtu=, which the port checks against MTU
	// (NET_SET_MTU).
	MTU int
	// MAC, when set, is offered with VIRTIO_NET_F_MAC through GET_CONFIG.
	// QEMU takes the guest's MAC from its own mac= instead.
	MAC net.HardwareAddr
	// WriteTimeout is how long WriteBatch waits for the guest to post
	// receive buffers before it drops the rest of the batch; 0 means
	// frameio.DefaultWriteTimeout, negative means never wait.
	WriteTimeout time.Duration
	// NoOffload withholds VIRTIO_NET_F_CSUM, HOST_TSO4/TSO6, GUEST_CSUM
	// and GUEST_TSO4/TSO6: the guest then completes its checksums and
	// cuts its TCP segments itself, every frame read from it is plain
	// (Frame.Off zero), and it gets only complete checksums and frames up
	// to the MTU (WriteBatch completes a partial checksum and cuts a GSO
	// frame; TakesPartial and TakesGSO are false).
	NoOffload bool
	// Log receives connection events and the reasons a front-end was
	// dropped; nil discards them.
	Log *slog.Logger
}

// Queue indexes of a single-queue-pair virtio-net device.
const (
	rxQ = 0 // guest receives: WriteBatch fills it
	txQ = 1 // guest transmits: ReadBatch drains it
)

// replyTimeout bounds a reply to a front-end that stopped reading.
const replyTimeout = 5 * time.Second

// helloTimeout bounds the wait for a new front-end's first message (QEMU
// sends GET_FEATURES at once), so a connection that says nothing does not
// hold the port from the next front-end for ever.
const helloTimeout = 10 * time.Second

// Port is a vhost-user net back-end on a unix socket; see the package doc.
type Port struct {
	path         string
	mtu          int
	frameSize    int
	mac          net.HardwareAddr
	writeTimeout time.Duration
	log          *slog.Logger

	ln      *net.UnixListener
	ctr     frameio.Counters
	closed  atomic.Bool
	done    chan struct{}
	conn    atomic.Pointer[net.UnixConn]
	limiter logLimiter
	faults  atomic.Uint64 // data path panics recovered (fuzzing checks it stays 0)

	q [2]vring

	// The reader waits in epoll on wakefd and the TX queue's kick fd.
	epfd, wakefd int
	waitMu       sync.RWMutex // readers hold it shared while waiting; Close takes it to close the fds
	evs          [4]unix.EpollEvent

	// Connection state, touched by the serving goroutine only.
	offered, acked uint64
	protoOffered   uint64
	protoAcked     uint64
	mem            *memTable
}

// Listen creates the socket at path and serves front-ends on it, one at a
// time, until Close.
func Listen(path string, o Options) (*Port, error) {
	mtu := o.MTU
	if mtu == 0 {
		mtu = frameio.DefaultMTU
	}
	if mtu < 68 || mtu > frameio.MaxMTU {
		return nil, fmt.Errorf("vhostuser: MTU %d is out of range: use 68 to %d", mtu, frameio.MaxMTU)
	}
	if o.MAC != nil && len(o.MAC) != 6 {
		return nil, fmt.Errorf("vhostuser: MAC %s is not an Ethernet (6-byte) address", o.MAC)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("vhostuser: %s exists and is not a socket: remove it or choose another path", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("vhostuser: remove the stale socket %s: %w", path, err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("vhostuser: listen on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	p := &Port{
		path: path, mtu: mtu, frameSize: frameio.FrameSize(mtu), mac: o.MAC,
		writeTimeout: o.WriteTimeout, log: o.Log, ln: ln, done: make(chan struct{}),
	}
	if p.writeTimeout == 0 {
		p.writeTimeout = frameio.DefaultWriteTimeout
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.offered = 1<<vuproto.FVersion1 | 1<<vuproto.NetFMTU | 1<<vuproto.FProtocolFeatures | 1<<vuproto.FRingIndirectDesc
	if o.MAC != nil {
		p.offered |= 1 << vuproto.NetFMAC
	}
	if !o.NoOffload {
		p.offered |= 1<<vuproto.NetFCsum | 1<<vuproto.NetFHostTSO4 | 1<<vuproto.NetFHostTSO6 |
			1<<vuproto.NetFGuestCsum | 1<<vuproto.NetFGuestTSO4 | 1<<vuproto.NetFGuestTSO6
	}
	p.protoOffered = 1<<vuproto.PFReplyAck | 1<<vuproto.PFNetMTU
	if o.MAC != nil {
		// QEMU's virtio-net does not use it (and warns that it does
		// not); a front-end that reads the MAC from the back-end does.
		p.protoOffered |= 1 << vuproto.PFConfig
	}
	for i := range p.q {
		p.q[i].init(i)
	}
	if p.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		ln.Close()
		os.Remove(path)
		return nil, fmt.Errorf("vhostuser: epoll_create: %w", err)
	}
	if p.wakefd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		unix.Close(p.epfd)
		ln.Close()
		os.Remove(path)
		return nil, fmt.Errorf("vhostuser: eventfd: %w", err)
	}
	unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, p.wakefd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(p.wakefd)})
	go p.serve()
	return p, nil
}

// Kind is frameio.KindVhostUser.
func (p *Port) Kind() frameio.Kind { return frameio.KindVhostUser }

// MTU is the port's MTU.
func (p *Port) MTU() int { return p.mtu }

// Stats are the port's counters: Rx is what the guest sent, Tx what it was
// given.
func (p *Port) Stats() frameio.Stats { return p.ctr.Snapshot() }

// Path is the socket's path.
func (p *Port) Path() string { return p.path }

// Connected reports whether a front-end is connected now.
func (p *Port) Connected() bool { return p.conn.Load() != nil }

// TakesPartial says whether WriteBatch takes frames whose checksum is
// partial (frameio.PartialWriter): unless NoOffload, it always does. A
// front-end that negotiated VIRTIO_NET_F_GUEST_CSUM gets them partial
// (NEEDS_CSUM in the virtio-net header), so neither the port nor the
// guest sums the payload; for any other, WriteBatch completes them in its
// own copy, as the switch would have. The answer does not depend on the
// front-end: the switch asks once, when the port is attached, which is
// before a guest connects, and guests come and go (reconnects) under it.
func (p *Port) TakesPartial() bool { return p.offered&(1<<vuproto.NetFGuestCsum) != 0 }

// TakesGSO says whether WriteBatch takes GSO frames (TCP segments of up
// to frameio.MaxGSOLen bytes, frameio.GSOWriter) whole: unless NoOffload,
// it always does. A front-end that negotiated VIRTIO_NET_F_GUEST_TSO4
// (TSO6) gets a TCP/IPv4 (IPv6) one whole, in one receive buffer behind
// a header that says how to cut it; for any other, WriteBatch cuts it
// itself (frameio.Segmenter) into frames of the MTU. Like TakesPartial,
// the answer is the port's, not the front-end's: the switch asks once.
func (p *Port) TakesGSO() bool { return p.offered&(1<<vuproto.NetFGuestTSO4) != 0 }

// GSOBuffers is how many frame buffers of frameio.MaxGSOLen bytes the
// port wants at the start of each batch (frameio.GSOReader): 4 unless
// NoOffload (HOST_TSO4/TSO6 not offered: 0). A guest's TSO frame read
// into one is handed up whole when the switch may carry it so
// (frameio.WholeGSO); into any other buffer it is cut to the MTU. Only 4:
// every VM port gets that many 64 KiB buffers from the switch, for as
// long as it is attached, and a batch seldom holds more TSO frames than
// that (the rest are cut as before). Like TakesGSO, the answer is the
// port's, not the front-end's.
func (p *Port) GSOBuffers() int {
	if p.offered&(1<<vuproto.NetFHostTSO4|1<<vuproto.NetFHostTSO6) == 0 {
		return 0
	}
	return gsoBuffers
}

// gsoBuffers is GSOBuffers unless NoOffload.
const gsoBuffers = 4

// Close stops serving, drops the front-end, unblocks a pending ReadBatch
// (which returns frameio.ErrClosed) and removes the socket file.
func (p *Port) Close() error {
	if p.closed.Swap(true) {
		return nil
	}
	p.ln.Close()
	if c := p.conn.Load(); c != nil {
		c.Close()
	}
	<-p.done
	p.wake()
	p.waitMu.Lock()
	unix.Close(p.epfd)
	unix.Close(p.wakefd)
	p.waitMu.Unlock()
	if err := os.Remove(p.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("vhostuser: remove %s: %w", p.path, err)
	}
	return nil
}

func (p *Port) wake() {
	var one = [8]byte{1}
	unix.Write(p.wakefd, one[:])
}

// serve accepts front-ends one after the other.
func (p *Port) serve() {
	defer close(p.done)
	for {
		c, err := p.ln.AcceptUnix()
		if err != nil {
			if p.closed.Load() {
				return
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			p.log.Error("vhostuser: accept failed; no more front-ends are served", "path", p.path, "err", err)
			return
		}
		p.serveConn(c)
	}
}

// serveConn runs one front-end's session and tears its state down after.
func (p *Port) serveConn(c *net.UnixConn) {
	p.conn.Store(c)
	if p.closed.Load() {
		c.Close()
	}
	p.log.Info("vhostuser: front-end connected", "path", p.path)
	vc := vuproto.NewConn(c)
	vc.Timeout = replyTimeout
	reason := p.session(vc)
	p.teardown()
	p.conn.Store(nil)
	c.Close()
	if p.closed.Load() {
		return
	}
	if reason == nil || errors.Is(reason, io.EOF) || errors.Is(reason, net.ErrClosed) {
		p.log.Info("vhostuser: front-end disconnected", "path", p.path)
	} else {
		p.log.Warn("vhostuser: front-end dropped", "path", p.path, "reason", reason)
	}
}

func (p *Port) session(vc *vuproto.Conn) error {
	vc.C.SetReadDeadline(time.Now().Add(helloTimeout))
	for first := true; ; first = false {
		m, err := vc.Read()
		if err != nil {
			if first && errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("no request within %v of connecting", helloTimeout)
			}
			return err
		}
		if first {
			vc.C.SetReadDeadline(time.Time{})
		}
		if p.log.Enabled(context.Background(), slog.LevelDebug) {
			p.log.Debug("vhostuser: request", "path", p.path, "request", vuproto.Name(m.Request), "flags", m.Flags, "size", m.Size, "fds", len(m.FDs), "payload", fmt.Sprintf("%x", m.Payload))
		}
		reply, herr := p.handle(&m)
		for _, fd := range m.FDs {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
		rh := vuproto.Header{Request: m.Request, Flags: vuproto.Version | vuproto.FlagReply}
		switch {
		case herr != nil && m.Flags&vuproto.FlagNeedReply != 0 && p.protoAcked&(1<<vuproto.PFReplyAck) != 0 && !errors.Is(herr, errFatal):
			p.log.Warn("vhostuser: request refused", "path", p.path, "request", vuproto.Name(m.Request), "reason", herr)
			if err := vc.Write(rh, u64(1), nil); err != nil {
				return err
			}
		case herr != nil:
			return fmt.Errorf("%s: %w", vuproto.Name(m.Request), herr)
		case reply != nil:
			if err := vc.Write(rh, reply, nil); err != nil {
				return err
			}
		case m.Flags&vuproto.FlagNeedReply != 0 && p.protoAcked&(1<<vuproto.PFReplyAck) != 0:
			if err := vc.Write(rh, u64(0), nil); err != nil {
				return err
			}
		}
	}
}

// errFatal marks errors after which the session cannot go on, even when
// the front-end asked for an acknowledgement.
var errFatal = errors.New("unsupported")

func u64(v uint64) []byte {
	b := make([]byte, 8)
	for i := range b {
		b[i] = byte(v >> (8 * i))
	}
	return b
}

// takeFD takes the single fd a message must carry (or none with nofd).
func takeFD(m *vuproto.Msg, nofd bool) (int, error) {
	switch {
	case nofd && len(m.FDs) == 0:
		return -1, nil
	case nofd:
		return -1, fmt.Errorf("%w: the no-fd flag is set but %d file descriptors came", vuproto.ErrMalformed, len(m.FDs))
	case len(m.FDs) != 1:
		return -1, fmt.Errorf("%w: want one file descriptor, got %d", vuproto.ErrMalformed, len(m.FDs))
	}
	fd := m.FDs[0]
	m.FDs[0] = -1
	return fd, nil
}

func (p *Port) queue(idx uint32) (*vring, error) {
	if idx >= uint32(len(p.q)) {
		return nil, fmt.Errorf("%w: queue %d does not exist (this device has queues 0 and 1)", vuproto.ErrMalformed, idx)
	}
	return &p.q[idx], nil
}

// vringState parses a request's vring state and finds its queue.
func (p *Port) vringState(req uint32, pl []byte) (vuproto.VringState, *vring, error) {
	s, err := vuproto.ParseVringState(req, pl)
	if err != nil {
		return s, nil, err
	}
	q, err := p.queue(s.Index)
	return s, q, err
}

func (p *Port) hdrLen() int {
	if p.acked&(1<<vuproto.FVersion1|1<<vuproto.NetFMrgRxbuf) != 0 {
		return 12
	}
	return 10
}

// handle serves one request; a nil reply with a nil error means none
// (or a REPLY_ACK acknowledgement).
func (p *Port) handle(m *vuproto.Msg) ([]byte, error) {
	pl := m.Payload
	switch m.Request {
	case vuproto.GetFeatures:
		return u64(p.offered), nil
	case vuproto.SetFeatures:
		v, err := vuproto.U64(m.Request, pl)
		if err != nil {
			return nil, err
		}
		if extra := v &^ p.offered; extra != 0 {
			return nil, fmt.Errorf("features %#x were not offered (offered %#x)", extra, p.offered)
		}
		if v&(1<<vuproto.NetFHostTSO4|1<<vuproto.NetFHostTSO6) != 0 && v&(1<<vuproto.NetFCsum) == 0 {
			return nil, fmt.Errorf("features %#x: HOST_TSO4 and HOST_TSO6 need VIRTIO_NET_F_CSUM (virtio 1.x, 5.1.3.1): acknowledge it too", v)
		}
		if v&(1<<vuproto.NetFGuestTSO4|1<<vuproto.NetFGuestTSO6) != 0 && v&(1<<vuproto.NetFGuestCsum) == 0 {
			return nil, fmt.Errorf("features %#x: GUEST_TSO4 and GUEST_TSO6 need VIRTIO_NET_F_GUEST_CSUM (virtio 1.x, 5.1.3.1): acknowledge it too", v)
		}
		p.acked = v
		hl := p.hdrLen()
		p.lockAll()
		for i := range p.q {
			q := &p.q[i]
			q.hdrLen = hl
			q.indirectOK = v&(1<<vuproto.FRingIndirectDesc) != 0
			q.csumOK = v&(1<<vuproto.NetFCsum) != 0
			q.tso4OK = v&(1<<vuproto.NetFHostTSO4) != 0
			q.tso6OK = v&(1<<vuproto.NetFHostTSO6) != 0
			q.guestCsum = q.idx == rxQ && v&(1<<vuproto.NetFGuestCsum) != 0
			q.guestTSO4 = q.idx == rxQ && v&(1<<vuproto.NetFGuestTSO4) != 0
			q.guestTSO6 = q.idx == rxQ && v&(1<<vuproto.NetFGuestTSO6) != 0
			if (q.tso4OK || q.tso6OK) && q.idx == txQ && q.scratch == nil {
				q.scratch = make([]byte, frameio.MaxGSOLen)
			}
		}
		p.unlockAll()
		return nil, nil
	case vuproto.GetProtocolFeatures:
		return u64(p.protoOffered), nil
	case vuproto.SetProtocolFeatures:
		v, err := vuproto.U64(m.Request, pl)
		if err != nil {
			return nil, err
		}
		if extra := v &^ p.protoOffered; extra != 0 {
			return nil, fmt.Errorf("protocol features %#x were not offered (offered %#x)", extra, p.protoOffered)
		}
		p.protoAcked = v
		return nil, nil
	case vuproto.SetOwner:
		return nil, nil
	case vuproto.ResetOwner:
		p.teardown()
		return nil, nil
	case vuproto.GetQueueNum:
		return u64(1), nil
	case vuproto.SetMemTable:
		rs, err := vuproto.ParseMemTable(m.Request, pl, len(m.FDs))
		if err != nil {
			return nil, err
		}
		fds := append([]int(nil), m.FDs...)
		for i := range m.FDs {
			m.FDs[i] = -1
		}
		mt, err := mapMemTable(rs, fds)
		if err != nil {
			return nil, err
		}
		p.lockAll()
		old := p.mem
		p.mem = mt
		var rerr error
		for i := range p.q {
			q := &p.q[i]
			q.mem = mt
			if q.addrSet {
				if err := q.resolve(); err != nil && rerr == nil {
					rerr = err
				}
			}
		}
		p.unlockAll()
		old.unmap()
		p.wake()
		return nil, rerr
	case vuproto.SetVringNum:
		s, q, err := p.vringState(m.Request, pl)
		if err != nil {
			return nil, err
		}
		if s.Num == 0 || s.Num > vuproto.MaxQueueSize || s.Num&(s.Num-1) != 0 {
			return nil, fmt.Errorf("queue %d: size %d is not a power of 2 from 1 to %d", s.Index, s.Num, vuproto.MaxQueueSize)
		}
		q.mu.Lock()
		defer q.mu.Unlock()
		if q.started {
			return nil, fmt.Errorf("queue %d: size change while the queue runs", s.Index)
		}
		q.num = uint16(s.Num)
		q.desc, q.avail, q.used = nil, nil, nil
		if q.addrSet && q.mem != nil {
			return nil, q.resolve()
		}
		return nil, nil
	case vuproto.SetVringAddr:
		a, err := vuproto.ParseVringAddr(m.Request, pl)
		if err != nil {
			return nil, err
		}
		q, err := p.queue(a.Index)
		if err != nil {
			return nil, err
		}
		q.mu.Lock()
		defer q.mu.Unlock()
		q.addr, q.addrSet = a, true
		if q.mem == nil {
			return nil, fmt.Errorf("queue %d: ring addresses before SET_MEM_TABLE", a.Index)
		}
		if err := q.resolve(); err != nil {
			return nil, err
		}
		// Resume where the used ring is (libvhost-user does the same):
		// the driver has seen every entry up to it.
		q.usedIdx = uint16(q.usedWord() >> 16)
		q.published = q.usedIdx
		return nil, nil
	case vuproto.SetVringBase:
		s, q, err := p.vringState(m.Request, pl)
		if err != nil {
			return nil, err
		}
		if s.Num > 0xffff {
			return nil, fmt.Errorf("queue %d: base %d does not fit 16 bits", s.Index, s.Num)
		}
		q.mu.Lock()
		q.lastAvail = uint16(s.Num)
		q.mu.Unlock()
		return nil, nil
	case vuproto.GetVringBase:
		s, q, err := p.vringState(m.Request, pl)
		if err != nil {
			return nil, err
		}
		q.mu.Lock()
		q.started = false
		p.setKick(q, -1, false)
		base := q.lastAvail
		q.mu.Unlock()
		p.wake()
		return vuproto.VringState{Index: s.Index, Num: uint32(base)}.Put(nil), nil
	case vuproto.SetVringKick, vuproto.SetVringCall, vuproto.SetVringErr:
		v, err := vuproto.U64(m.Request, pl)
		if err != nil {
			return nil, err
		}
		if v&^uint64(vuproto.VringIdxMask|vuproto.VringNoFDMask) != 0 {
			return nil, fmt.Errorf("%w: unknown bits in %#x", vuproto.ErrMalformed, v)
		}
		q, err := p.queue(uint32(v & vuproto.VringIdxMask))
		if err != nil {
			return nil, err
		}
		nofd := v&vuproto.VringNoFDMask != 0
		fd, err := takeFD(m, nofd)
		if err != nil {
			return nil, err
		}
		if fd >= 0 {
			unix.SetNonblock(fd, true)
		}
		q.mu.Lock()
		switch m.Request {
		case vuproto.SetVringKick:
			p.setKick(q, fd, nofd)
			q.started = true
			if p.acked&(1<<vuproto.FProtocolFeatures) == 0 {
				q.enabled = true
			}
		case vuproto.SetVringCall:
			closeFD(&q.call)
			q.call = fd
		case vuproto.SetVringErr:
			closeFD(&q.errfd)
			q.errfd = fd
		}
		q.mu.Unlock()
		p.wake()
		return nil, nil
	case vuproto.SetVringEnable:
		s, q, err := p.vringState(m.Request, pl)
		if err != nil {
			return nil, err
		}
		if s.Num > 1 {
			return nil, fmt.Errorf("%w: enable state %d, want 0 or 1", vuproto.ErrMalformed, s.Num)
		}
		q.mu.Lock()
		q.enabled = s.Num == 1
		q.mu.Unlock()
		p.wake()
		return nil, nil
	case vuproto.NetSetMTU:
		v, err := vuproto.U64(m.Request, pl)
		if err != nil {
			return nil, err
		}
		if v < 68 || v > uint64(p.mtu) {
			return nil, fmt.Errorf("the front-end's MTU %d does not fit this port's MTU %d: set host_mtu to at most %d", v, p.mtu, p.mtu)
		}
		return nil, nil
	case vuproto.GetConfig:
		c, err := vuproto.ParseConfig(m.Request, pl)
		if err != nil {
			return nil, err
		}
		if c.Size > 256 {
			return nil, fmt.Errorf("%w: GET_CONFIG of %d bytes, at most 256", vuproto.ErrMalformed, c.Size)
		}
		var space [12]byte // struct virtio_net_config: mac, status, max_virtqueue_pairs, mtu
		copy(space[0:6], p.mac)
		space[6] = 1 // VIRTIO_NET_S_LINK_UP
		space[8] = 1
		space[10], space[11] = byte(p.mtu), byte(p.mtu>>8)
		out := make([]byte, vuproto.ConfigHeaderSize+int(c.Size))
		copy(out, pl[:vuproto.ConfigHeaderSize])
		if c.Offset < uint32(len(space)) {
			copy(out[vuproto.ConfigHeaderSize:], space[c.Offset:])
		}
		return out, nil
	default:
		return nil, fmt.Errorf("%w: %s is not supported by this back-end", errFatal, vuproto.Name(m.Request))
	}
}

func closeFD(fd *int) {
	if *fd >= 0 {
		unix.Close(*fd)
	}
	*fd = -1
}

// setKick replaces q's kick fd, keeping the reader's epoll set in step.
// q.mu is held.
func (p *Port) setKick(q *vring, fd int, nofd bool) {
	if q.kick >= 0 {
		if q.idx == txQ {
			unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, q.kick, nil)
		}
		unix.Close(q.kick)
	}
	q.kick, q.kickNoFD = fd, nofd
	if fd >= 0 && q.idx == txQ {
		unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)})
	}
}

func (p *Port) lockAll() {
	for i := range p.q {
		p.q[i].mu.Lock()
	}
}

func (p *Port) unlockAll() {
	for i := len(p.q) - 1; i >= 0; i-- {
		p.q[i].mu.Unlock()
	}
}

// teardown forgets the front-end's device state: rings stop, fds close,
// memory is unmapped.
func (p *Port) teardown() {
	p.lockAll()
	for i := range p.q {
		q := &p.q[i]
		p.setKick(q, -1, false)
		closeFD(&q.call)
		closeFD(&q.errfd)
		q.reset()
	}
	old := p.mem
	p.mem = nil
	p.unlockAll()
	old.unmap()
	p.acked, p.protoAcked = 0, 0
	p.wake()
}

// kill drops the current front-end from the data path: its session ends
// and the port waits for the next one.
func (p *Port) kill(q *vring, reason string) {
	q.broken = true
	if c := p.conn.Load(); c != nil {
		p.log.Error("vhostuser: dropping the front-end", "path", p.path, "queue", q.idx, "reason", reason)
		c.Close()
	}
}

// logLimiter keeps a flood of bad frames from becoming a flood of logs.
type logLimiter struct {
	next atomic.Int64
}

func (l *logLimiter) allow() bool {
	now := time.Now().UnixNano()
	next := l.next.Load()
	return now >= next && l.next.CompareAndSwap(next, now+int64(time.Second))
}

var (
	_ frameio.Port          = (*Port)(nil)
	_ frameio.NoWaitWriter  = (*Port)(nil)
	_ frameio.PartialWriter = (*Port)(nil)
	_ frameio.GSOWriter     = (*Port)(nil)
	_ frameio.GSOReader     = (*Port)(nil)
)
