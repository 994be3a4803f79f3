package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/anka-net/anka/sdk/netkit/frameio"
)

// wirePort is the uplink: an AF_PACKET socket on the bridged interface,
// promiscuous, with PACKET_VNET_HDR. frameio.PacketPort cannot serve here:
// the kernel hands a packet socket what its stack holds, which on a veth or
// a Linux bridge carrying local guests is TCP with its checksum not yet
// computed (CHECKSUM_PARTIAL) and segments of up to 64 KiB that the
// sender's TSO or our GRO merged. The virtio-net header says which, so
// the port completes checksums and cuts merged packets back into frames
// of the interface's MTU (gso.go). VLAN tags the kernel stripped are put
// back from PACKET_AUXDATA, as frameio.PacketPort does.
type wirePort struct {
	f       *os.File
	rc      syscall.RawConn
	ifname  string
	ifindex int
	mtu     int
	log     *slog.Logger
	ctr     frameio.Counters
	closed  atomic.Bool
	stats   wireStats

	rmu    sync.Mutex
	bufs   [][]byte // one per message: vnet header + packet
	rhdr   []unix.Mmsghdr
	riov   []unix.Iovec
	rctl   []byte
	got    int // messages in bufs
	next   int // next message to hand up
	seg    gso // the packet being cut, when seg.active
	rerr   unix.Errno
	readFn func(uintptr) bool

	wmu     sync.Mutex
	whdr    []unix.Mmsghdr
	wiov    []unix.Iovec
	wn      int
	widx    int
	wbytes  int
	wdrop   int
	wwait   bool
	wagain  bool
	writeFn func(uintptr) bool
	zeroHdr [vnetHdrLen]byte
}

// wireStats count what the port did to frames beyond passing them.
type wireStats struct {
	merged    atomic.Uint64 // packets cut into frames (GSO/GRO)
	segments  atomic.Uint64 // frames cut from them
	checksums atomic.Uint64 // checksums completed
	dropped   atomic.Uint64 // packets that could not be handed up
}

const (
	// rxBatch messages per recvmmsg; each buffer holds a merged packet.
	rxBatch = 16
	// rxBufSize holds the largest packet GSO or GRO makes by default
	// (gso_max_size 65536) plus Ethernet and VLAN headers. Larger ones
	// (BIG TCP raised by hand) arrive truncated and are dropped.
	rxBufSize = vnetHdrLen + 65536 + 64
	// writeTimeout is how long a write waits for room in the socket.
	writeTimeout = 10 * time.Millisecond
)

var auxStride = unix.CmsgSpace(int(unsafe.Sizeof(unix.TpacketAuxdata{})))

// openWire opens the uplink on ifname in the calling thread's network
// namespace, in promiscuous mode; Close leaves it (the kernel also drops
// the membership if the process dies).
func openWire(ifname string, log *slog.Logger) (*wirePort, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("packet socket for %s: %w", ifname, err)
	}
	fail := func(err error) (*wirePort, error) {
		unix.Close(fd)
		return nil, err
	}
	ifr, err := unix.NewIfreq(ifname)
	if err != nil {
		return fail(fmt.Errorf("interface name %q: %w", ifname, err))
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return fail(fmt.Errorf("interface %s: %w", ifname, err))
	}
	ifindex := int(ifr.Uint32())
	ifr, _ = unix.NewIfreq(ifname)
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFMTU, ifr); err != nil {
		return fail(fmt.Errorf("MTU of %s: %w", ifname, err))
	}
	mtu := min(int(ifr.Uint32()), frameio.MaxMTU)
	for _, o := range []struct {
		name      string
		opt, val  int
		sol       int
		mandatory bool
	}{
		{"PACKET_IGNORE_OUTGOING", unix.PACKET_IGNORE_OUTGOING, 1, unix.SOL_PACKET, true},
		{"PACKET_AUXDATA", unix.PACKET_AUXDATA, 1, unix.SOL_PACKET, true},
		{"PACKET_VNET_HDR", unix.PACKET_VNET_HDR, 1, unix.SOL_PACKET, true},
		{"SO_RCVBUFFORCE", unix.SO_RCVBUFFORCE, frameio.DefaultSocketBuffer, unix.SOL_SOCKET, false},
		{"SO_SNDBUFFORCE", unix.SO_SNDBUFFORCE, frameio.DefaultSocketBuffer, unix.SOL_SOCKET, false},
	} {
		if err := unix.SetsockoptInt(fd, o.sol, o.opt, o.val); err != nil && o.mandatory {
			return fail(fmt.Errorf("%s on %s: %w", o.name, ifname, err))
		}
	}
	mreq := unix.PacketMreq{Ifindex: int32(ifindex), Type: unix.PACKET_MR_PROMISC}
	if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
		return fail(fmt.Errorf("promiscuous mode on %s: %w", ifname, err))
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}); err != nil {
		return fail(fmt.Errorf("binding the packet socket to %s: %w", ifname, err))
	}
	p := &wirePort{ifname: ifname, ifindex: ifindex, mtu: mtu, log: log}
	p.f = os.NewFile(uintptr(fd), "packet:"+ifname)
	if p.rc, err = p.f.SyscallConn(); err != nil {
		p.f.Close()
		return nil, err
	}
	p.bufs = make([][]byte, rxBatch)
	for i := range p.bufs {
		p.bufs[i] = make([]byte, rxBufSize)
	}
	p.rhdr = make([]unix.Mmsghdr, rxBatch)
	p.riov = make([]unix.Iovec, rxBatch)
	p.rctl = make([]byte, rxBatch*auxStride)
	p.readFn = p.doRecv
	p.writeFn = p.doSend
	return p, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (p *wirePort) Kind() frameio.Kind   { return frameio.KindPacket }
func (p *wirePort) MTU() int             { return p.mtu }
func (p *wirePort) Stats() frameio.Stats { return p.ctr.Snapshot() }

// ReadBatch hands up frames in the order they arrived, a merged packet as
// the frames it was made of. It blocks only while it has nothing.
func (p *wirePort) ReadBatch(frames []frameio.Frame) (int, error) {
	p.rmu.Lock()
	defer p.rmu.Unlock()
	n, bytes := 0, 0
	for {
		for n < len(frames) && (p.seg.active || p.next < p.got) {
			k := p.emit(frames[n])
			if k > 0 {
				frames[n].N = k
				bytes += k
				n++
			}
		}
		if n > 0 {
			p.ctr.AddRx(n, bytes)
			return n, nil
		}
		if err := p.recv(); err != nil {
			return 0, err
		}
	}
}

// emit writes the next frame into fr and returns its length, 0 when the
// message gave none (dropped, or its last segment was written already).
func (p *wirePort) emit(fr frameio.Frame) int {
	dst := fr.Buf[:cap(fr.Buf)]
	if p.seg.active {
		return p.cut(dst)
	}
	i := p.next
	h := &p.rhdr[i]
	l := int(h.Len)
	if h.Hdr.Flags&unix.MSG_TRUNC != 0 || l < vnetHdrLen+frameio.MinFrameLen {
		p.next++
		p.drop("a packet longer than the socket buffer (BIG TCP?) or shorter than an Ethernet header", l)
		return 0
	}
	vh := parseVnetHdr(p.bufs[i][:vnetHdrLen])
	pkt := p.bufs[i][vnetHdrLen:l]
	tag, tagged := vlanTag(p.rctl[i*auxStride:], int(h.Hdr.Controllen))
	if vh.gsoType&^gsoECN != gsoNone {
		if err := p.seg.start(pkt, vh, tag, tagged, p.mtu); err != nil {
			p.next++
			p.drop(err.Error(), len(pkt))
			return 0
		}
		p.stats.merged.Add(1)
		return p.cut(dst)
	}
	p.next++
	if vh.flags&vnetNeedsCsum != 0 {
		if !completeChecksum(pkt, int(vh.csumStart), int(vh.csumOffset)) {
			p.drop("a packet whose checksum offsets lie outside it", len(pkt))
			return 0
		}
		p.stats.checksums.Add(1)
	}
	if len(pkt) > frameio.EthHeaderLen+p.mtu+frameio.VLANTagLen || len(pkt)+tagLen(tagged) > len(dst) {
		p.drop("a frame longer than the interface's MTU without a segment size (LRO on the interface?)", len(pkt))
		return 0
	}
	return putFrame(dst, pkt, tag, tagged)
}

// cut writes the next frame of the merged packet being cut.
func (p *wirePort) cut(dst []byte) int {
	n := p.seg.next(dst)
	if n > 0 {
		p.stats.segments.Add(1)
	} else {
		p.drop("a merged packet whose frames do not fit the buffers", len(p.seg.pkt))
	}
	if !p.seg.active {
		p.next++
	}
	return n
}

func tagLen(tagged bool) int {
	if tagged {
		return frameio.VLANTagLen
	}
	return 0
}

func (p *wirePort) drop(why string, n int) {
	p.ctr.AddRxDropped(1)
	p.stats.dropped.Add(1)
	p.log.Debug("dropping a frame from the interface", "interface", p.ifname, "why", why, "bytes", n)
}

// recv reads a batch of messages, blocking until one arrives.
func (p *wirePort) recv() error {
	for i := range p.rhdr {
		iov := &p.riov[i]
		iov.Base = &p.bufs[i][0]
		iov.SetLen(len(p.bufs[i]))
		h := &p.rhdr[i]
		h.Len = 0
		h.Hdr.Iov = iov
		h.Hdr.SetIovlen(1)
		h.Hdr.Flags = 0
		h.Hdr.Control = &p.rctl[i*auxStride]
		h.Hdr.SetControllen(auxStride)
	}
	for {
		p.got, p.next, p.rerr = 0, 0, 0
		if err := p.rc.Read(p.readFn); err != nil {
			return p.mapErr(err)
		}
		switch p.rerr {
		case 0:
			return nil
		case unix.ENETDOWN, unix.ENXIO:
			// The interface went down; it may come back, and the
			// socket with it.
			continue
		default:
			return p.rerr
		}
	}
}

func (p *wirePort) doRecv(fd uintptr) bool {
	for {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&p.rhdr[0])), uintptr(len(p.rhdr)), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			p.got = int(n)
			return true
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			p.rerr = e
			return true
		}
	}
}

// WriteBatch sends frames out of the interface (a zero virtio-net header
// before each: no offload asked), waiting up to writeTimeout for room.
func (p *wirePort) WriteBatch(frames []frameio.Frame) (int, error) {
	if p.closed.Load() {
		return 0, frameio.ErrClosed
	}
	if len(frames) == 0 {
		return 0, nil
	}
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if len(frames) > len(p.whdr) {
		p.whdr = make([]unix.Mmsghdr, len(frames))
		p.wiov = make([]unix.Iovec, 2*len(frames))
	}
	k, bad := 0, 0
	for i := range frames {
		n := frames[i].N
		if n < frameio.MinFrameLen || n > len(frames[i].Buf) {
			bad++
			continue
		}
		iov := p.wiov[2*k : 2*k+2]
		iov[0].Base = &p.zeroHdr[0]
		iov[0].SetLen(vnetHdrLen)
		iov[1].Base = &frames[i].Buf[0]
		iov[1].SetLen(n)
		h := &p.whdr[k]
		h.Len = 0
		h.Hdr.Iov = &iov[0]
		h.Hdr.SetIovlen(2)
		k++
	}
	p.ctr.AddTxDropped(bad)
	if k == 0 {
		return 0, nil
	}
	p.wn, p.widx, p.wbytes, p.wdrop, p.wwait, p.wagain = k, 0, 0, 0, false, false
	err := p.rc.Write(p.writeFn)
	if err == nil && p.wagain {
		p.wwait = true
		p.f.SetWriteDeadline(time.Now().Add(writeTimeout))
		err = p.rc.Write(p.writeFn)
		p.f.SetWriteDeadline(time.Time{})
	}
	sent := p.widx - p.wdrop
	p.ctr.AddTx(sent, p.wbytes-sent*vnetHdrLen)
	p.ctr.AddTxDropped(p.wdrop + k - p.widx)
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return sent, p.mapErr(err)
	}
	return sent, nil
}

func (p *wirePort) doSend(fd uintptr) bool {
	for p.widx < p.wn {
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&p.whdr[p.widx])), uintptr(p.wn-p.widx), unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
		if e == 0 {
			for i := p.widx; i < p.widx+int(n); i++ {
				p.wbytes += int(p.whdr[i].Len)
			}
			p.widx += int(n)
			continue
		}
		switch e {
		case unix.EINTR:
		case unix.EAGAIN:
			if p.wwait {
				return false
			}
			p.wagain = true
			return true
		default:
			// This frame only (too long, interface down): drop it.
			p.widx++
			p.wdrop++
		}
	}
	return true
}

func (p *wirePort) mapErr(err error) error {
	if p.closed.Load() || errors.Is(err, os.ErrClosed) {
		return frameio.ErrClosed
	}
	return err
}

// Close leaves promiscuous mode and closes the socket.
func (p *wirePort) Close() error {
	if p.closed.Swap(true) {
		return nil
	}
	p.rc.Control(func(fd uintptr) {
		mreq := unix.PacketMreq{Ifindex: int32(p.ifindex), Type: unix.PACKET_MR_PROMISC}
		unix.SetsockoptPacketMreq(int(fd), unix.SOL_PACKET, unix.PACKET_DROP_MEMBERSHIP, &mreq)
	})
	return p.f.Close()
}

// vlanTag finds a stripped VLAN tag in a message's PACKET_AUXDATA.
func vlanTag(ctl []byte, n int) (vlan, bool) {
	ctl = ctl[:min(n, len(ctl))]
	for len(ctl) >= unix.SizeofCmsghdr {
		cm := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
		if int(cm.Len) < unix.SizeofCmsghdr || int(cm.Len) > len(ctl) {
			return vlan{}, false
		}
		if cm.Level == unix.SOL_PACKET && cm.Type == unix.PACKET_AUXDATA && int(cm.Len) >= unix.CmsgLen(int(unsafe.Sizeof(unix.TpacketAuxdata{}))) {
			aux := (*unix.TpacketAuxdata)(unsafe.Pointer(&ctl[unix.CmsgLen(0)]))
			if aux.Status&unix.TP_STATUS_VLAN_VALID == 0 {
				return vlan{}, false
			}
			v := vlan{tci: aux.Vlan_tci, tpid: unix.ETH_P_8021Q}
			if aux.Status&unix.TP_STATUS_VLAN_TPID_VALID != 0 {
				v.tpid = aux.Vlan_tpid
			}
			return v, true
		}
		next := unix.CmsgSpace(int(cm.Len) - unix.CmsgLen(0))
		if next > len(ctl) {
			break
		}
		ctl = ctl[next:]
	}
	return vlan{}, false
}

// putFrame copies pkt into dst with the VLAN tag put back after the MAC
// addresses when tagged, and returns the frame's length.
func putFrame(dst, pkt []byte, tag vlan, tagged bool) int {
	if !tagged {
		return copy(dst, pkt)
	}
	copy(dst[:12], pkt[:12])
	binary.BigEndian.PutUint16(dst[12:], tag.tpid)
	binary.BigEndian.PutUint16(dst[14:], tag.tci)
	return 16 + copy(dst[16:], pkt[12:])
}

var _ frameio.Port = (*wirePort)(nil)
