//go:build linux

package frameio

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PacketOptions configure an AF_PACKET port.
type PacketOptions struct {
	// MTU bounds the frames handed up and sent; 0 means the interface's.
	MTU int
	// NoPromisc leaves the interface out of promiscuous mode, so only
	// frames for its own MAC, broadcast and joined multicast arrive.
	NoPromisc bool
	// SocketBuffer is SO_SNDBUF and SO_RCVBUF; 0 means DefaultSocketBuffer.
	SocketBuffer int
	// WriteTimeout is how long WriteBatch waits for room before dropping;
	// 0 means DefaultWriteTimeout, negative means never wait.
	WriteTimeout time.Duration
	// Logger gets dropped frames, rate-limited; nil means slog.Default().
	Logger *slog.Logger
}

const sizeofAuxdata = int(unsafe.Sizeof(unix.TpacketAuxdata{}))

// auxStride is the control buffer per message: one PACKET_AUXDATA.
var auxStride = unix.CmsgSpace(sizeofAuxdata)

// PacketPort is an AF_PACKET socket on a host interface, for bridged
// networks: frames the interface receives come up, frames written go out
// of it. The host's own traffic is not seen (PACKET_IGNORE_OUTGOING), and
// what we send does not reach the host's stack either, as with macvtap.
//
// The kernel strips a VLAN tag before a packet socket sees the frame; the
// port puts it back from PACKET_AUXDATA, so a VM never takes another
// VLAN's frame for its own.
//
// Frames longer than FrameSize(MTU) are dropped and counted: a NIC doing
// GRO or LRO hands up coalesced packets far larger than the wire's, which
// a VM would not accept either. Turn GRO off on the interface (ethtool -K
// IF gro off); segmenting them here is left to a later change.
type PacketPort struct {
	s       mmsgSock
	ifname  string
	ifindex int
	mtu     int
	promisc bool
	log     *slog.Logger
}

// OpenPacket opens an AF_PACKET socket on ifname in the calling thread's
// network namespace. It needs CAP_NET_RAW.
func OpenPacket(ifname string, o PacketOptions) (*PacketPort, error) {
	// Protocol 0 receives nothing until bind sets ETH_P_ALL on the one
	// interface, so no other interface's frames slip in.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("frameio: packet socket for %s: %w", ifname, err)
	}
	fail := func(err error) (*PacketPort, error) {
		unix.Close(fd)
		return nil, err
	}
	ifr, err := unix.NewIfreq(ifname)
	if err != nil {
		return fail(fmt.Errorf("frameio: interface name %q: %w", ifname, err))
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return fail(fmt.Errorf("frameio: interface %s: %w", ifname, err))
	}
	ifindex := int(ifr.Uint32())
	mtu := o.MTU
	if mtu == 0 {
		ifr, _ = unix.NewIfreq(ifname)
		if err := unix.IoctlIfreq(fd, unix.SIOCGIFMTU, ifr); err != nil {
			return fail(fmt.Errorf("frameio: MTU of %s: %w", ifname, err))
		}
		mtu = min(int(ifr.Uint32()), MaxMTU)
	}
	if err := checkMTU(mtu); err != nil {
		return fail(err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		return fail(fmt.Errorf("frameio: PACKET_IGNORE_OUTGOING on %s (Linux 4.20 or later): %w", ifname, err))
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
		return fail(fmt.Errorf("frameio: PACKET_AUXDATA on %s: %w", ifname, err))
	}
	if err := setSocketBuffers(fd, o.SocketBuffer); err != nil {
		return fail(err)
	}
	if !o.NoPromisc {
		mreq := unix.PacketMreq{Ifindex: int32(ifindex), Type: unix.PACKET_MR_PROMISC}
		if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, &mreq); err != nil {
			return fail(fmt.Errorf("frameio: promiscuous mode on %s: %w", ifname, err))
		}
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}
	if err := unix.Bind(fd, sa); err != nil {
		return fail(fmt.Errorf("frameio: binding packet socket to %s: %w", ifname, err))
	}
	p := &PacketPort{ifname: ifname, ifindex: ifindex, mtu: mtu, promisc: !o.NoPromisc, log: loggerOrDefault(o.Logger)}
	if err := p.s.init(fd, "packet:"+ifname, mtu, o.WriteTimeout, p.log); err != nil {
		return nil, err
	}
	p.s.wantControl(auxStride)
	return p, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Interface is the interface's name.
func (p *PacketPort) Interface() string { return p.ifname }

func (p *PacketPort) Kind() Kind   { return KindPacket }
func (p *PacketPort) MTU() int     { return p.mtu }
func (p *PacketPort) Stats() Stats { return p.s.ctr.Snapshot() }

// ReadBatch reads up to len(frames) frames with one recvmmsg, with their
// VLAN tags restored. When it drops one it may exchange the Bufs of
// frames so the good ones come first.
func (p *PacketPort) ReadBatch(frames []Frame) (int, error) {
	p.s.rmu.Lock()
	defer p.s.rmu.Unlock()
	for {
		m, err := p.s.recv(frames, p.s.frameSize)
		if err == unix.ENETDOWN || err == unix.ENXIO {
			// The interface went down; it may come back, and the socket
			// with it.
			p.s.limit.warn(p.log, "frameio: interface is down", "port", p.ifname, "err", err)
			continue
		}
		if err != nil {
			return 0, err
		}
		n, bytes, dropped := 0, 0, 0
		for i := 0; i < m; i++ {
			h := &p.s.rhdr[i]
			l := int(h.Len)
			if h.Hdr.Flags&unix.MSG_TRUNC != 0 || l < MinFrameLen {
				dropped++
				p.s.limit.warn(p.log, "frameio: dropping a frame shorter than an Ethernet header or longer than the MTU allows (GRO on the interface?)",
					"port", p.ifname, "mtu", p.mtu, "bytes", l)
				continue
			}
			if tci, tpid, ok := vlanTag(p.s.rctl[i*p.s.rstride:], int(h.Hdr.Controllen)); ok {
				b := frames[i].Buf[:min(cap(frames[i].Buf), p.s.frameSize)]
				if l+VLANTagLen > len(b) {
					dropped++
					p.s.limit.warn(p.log, "frameio: dropping a VLAN-tagged frame with no room for its tag", "port", p.ifname, "bytes", l)
					continue
				}
				copy(b[12+VLANTagLen:l+VLANTagLen], b[12:l])
				binary.BigEndian.PutUint16(b[12:], tpid)
				binary.BigEndian.PutUint16(b[14:], tci)
				l += VLANTagLen
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

// vlanTag finds a stripped VLAN tag in a message's PACKET_AUXDATA.
func vlanTag(ctl []byte, n int) (tci, tpid uint16, ok bool) {
	ctl = ctl[:min(n, len(ctl))]
	for len(ctl) >= unix.SizeofCmsghdr {
		cm := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
		if int(cm.Len) < unix.SizeofCmsghdr || int(cm.Len) > len(ctl) {
			return 0, 0, false
		}
		if cm.Level == unix.SOL_PACKET && cm.Type == unix.PACKET_AUXDATA && int(cm.Len) >= unix.CmsgLen(sizeofAuxdata) {
			aux := (*unix.TpacketAuxdata)(unsafe.Pointer(&ctl[unix.CmsgLen(0)]))
			if aux.Status&unix.TP_STATUS_VLAN_VALID == 0 {
				return 0, 0, false
			}
			tpid = unix.ETH_P_8021Q
			if aux.Status&unix.TP_STATUS_VLAN_TPID_VALID != 0 {
				tpid = aux.Vlan_tpid
			}
			return aux.Vlan_tci, tpid, true
		}
		next := unix.CmsgSpace(int(cm.Len) - unix.CmsgLen(0))
		if next > len(ctl) {
			break
		}
		ctl = ctl[next:]
	}
	return 0, 0, false
}

// WriteBatch sends frames out of the interface with one sendmmsg (more
// when the socket fills), waiting up to WriteTimeout for room.
func (p *PacketPort) WriteBatch(frames []Frame) (int, error) {
	if p.s.pk.closed.Load() {
		return 0, ErrClosed
	}
	if len(frames) == 0 {
		return 0, nil
	}
	p.s.wmu.Lock()
	defer p.s.wmu.Unlock()
	sent, err := p.s.send(frames, nil, 0)
	if err == ErrClosed {
		return sent, err
	}
	if err != nil {
		p.s.limit.warn(p.log, "frameio: sending on the interface failed; frames dropped", "port", p.ifname, "err", err)
	}
	return sent, nil
}

// Close leaves promiscuous mode and closes the socket.
func (p *PacketPort) Close() error {
	if p.promisc {
		p.s.control(func(fd int) error {
			mreq := unix.PacketMreq{Ifindex: int32(p.ifindex), Type: unix.PACKET_MR_PROMISC}
			return unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_DROP_MEMBERSHIP, &mreq)
		})
	}
	return p.s.close()
}

var _ Port = (*PacketPort)(nil)
