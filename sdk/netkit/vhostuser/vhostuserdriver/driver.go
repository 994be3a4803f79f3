//go:build linux

// Package vhostuserdriver is the other side of a vhost-user net back-end:
// what QEMU and a guest's virtio-net driver do together, in one process.
// It allocates "guest memory" in a memfd, lays out the receive and
// transmit split virtqueues in it, connects to a back-end's socket,
// performs the handshake QEMU 7.2's vhost-user-net performs, and then
// drives the queues as a virtio-net driver. A Driver is a frameio.Port:
// ReadBatch returns what the back-end put in the receive queue,
// WriteBatch sends through the transmit queue. Tests and benchmarks use it
// in place of a VM.
//
// It serves one connection: it does not reconnect. When the back-end goes
// away, ReadBatch blocks until Close and WriteBatch drops once the
// transmit queue is full. Mergeable buffers and EVENT_IDX are not
// negotiated.
// Indirect descriptors are, when the back-end offers them
// (DriverOptions.NoIndirect turns them off): as in Linux's virtio_ring,
// a buffer of more than one descriptor (RxChunk, TxChunk) then takes one
// ring descriptor pointing to a table in the driver's memory.
//
// With DriverOptions.Offload the driver takes VIRTIO_NET_F_CSUM,
// HOST_TSO4/TSO6, GUEST_CSUM and GUEST_TSO4/TSO6 when offered, and sends
// what a guest with checksum offload and TSO sends: each frame's
// virtio-net header says what its frameio.Frame.Off says (a partial
// checksum, a TCP segment of up to frameio.MaxGSOLen bytes to cut). It
// receives as such a guest does: a frame whose header says NEEDS_CSUM
// comes with Frame.Off partial (csum_start, csum_offset), one whose
// header says GSO_TCPV4/TCPV6 also with Off.GSO and GSOSize (a TCP
// segment of up to frameio.MaxGSOLen bytes: read it into batches made by
// frameio.NewBatchSize(n, frameio.MaxGSOLen)), any other with Off zero
// (DATA_VALID says the checksum is complete). With GUEST_TSO negotiated,
// as Linux does for "big packets" without mergeable buffers, every
// receive buffer holds a GSO frame: a header, then frameio.MaxGSOLen
// bytes in pieces of RxChunk (4096, a page, when RxChunk is 0), through
// an indirect table when indirect descriptors are negotiated (about
// 17 MiB of buffers for a queue of 256). The transmit queue then keeps its
// buffers of one frame (FrameSize(MTU)) for everything up to the MTU and
// adds a few large ones for GSO frames longer than that: 16 at most,
// using at most half of the queue's descriptors, each holding
// frameio.MaxGSOLen bytes (about 1 MiB of memory at any queue size), in
// the same form as the others (one descriptor, or a header and TxChunk
// pieces, direct or through an indirect table).
package vhostuserdriver

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/vhostuser/internal/vuproto"
	"golang.org/x/sys/unix"
)

var le = binary.LittleEndian

// DriverOptions configure a Driver.
type DriverOptions struct {
	// MTU sizes the buffers (frameio.FrameSize(MTU) per frame); 0 means
	// frameio.DefaultMTU.
	MTU int
	// HostMTU, when set and the back-end offers NET_MTU, is sent with
	// NET_SET_MTU, as QEMU sends virtio-net-pci's host_mtu=.
	HostMTU int
	// QueueSize is the size of both queues (a power of 2); 0 means 256,
	// QEMU's default.
	QueueSize int
	// RxChunk, when set, posts each receive buffer as a descriptor chain,
	// the way Linux posts "big packets" without mergeable buffers: the
	// header in its own descriptor, then pieces of RxChunk bytes. With
	// GUEST_TSO negotiated (Offload) 0 means 4096.
	RxChunk int
	// TxChunk, when set, sends each frame as a chain: the header in its
	// own descriptor, then pieces of TxChunk bytes.
	TxChunk int
	// NoIndirect keeps VIRTIO_RING_F_INDIRECT_DESC off. By default, as
	// Linux does, the driver negotiates it when the back-end offers it
	// and posts each buffer of more than one descriptor (RxChunk,
	// TxChunk) through an indirect table: one ring descriptor per buffer,
	// so a queue holds QueueSize buffers instead of QueueSize divided by
	// the chain's length (and the driver's memory holds as many more).
	NoIndirect bool
	// MixIndirect, for tests, keeps ring room for direct chains and puts
	// only the even buffer slots through indirect tables, the odd ones as
	// direct chains, so both kinds share each queue. It needs indirect
	// descriptors negotiated and RxChunk or TxChunk to matter.
	MixIndirect bool
	// WriteTimeout is how long WriteBatch waits for the back-end to free
	// transmit buffers; 0 means frameio.DefaultWriteTimeout, negative
	// means never wait.
	WriteTimeout time.Duration
	// GPABase is the guest physical address of the memory; 0 means 4 GiB
	// (unlike the user address, so a back-end that confuses the two
	// fails).
	GPABase uint64
	// Offload acknowledges VIRTIO_NET_F_CSUM, HOST_TSO4, HOST_TSO6,
	// GUEST_CSUM, GUEST_TSO4 and GUEST_TSO6 when the back-end offers them
	// (Features says which it did; GUEST_TSO only with GUEST_CSUM):
	// WriteBatch then sends frames with Frame.Off set (a partial
	// checksum; a TCP segment of up to frameio.MaxGSOLen bytes to cut)
	// with the virtio-net header that says so, and ReadBatch returns
	// frames the back-end left partial or whole (GSO) with Off saying so
	// (ReadsOffload; GSO frames need buffers of frameio.MaxGSOLen). Without it, or for an offload the back-end did not
	// offer, such frames are refused (dropped and counted), never sent
	// with a header that lies; a received frame whose header says what
	// was not negotiated is dropped and counted.
	Offload bool
	// Log receives warnings; nil discards them.
	Log *slog.Logger
}

// Driver is a vhost-user front-end and virtio-net driver.
type Driver struct {
	mtu, frameSize int
	hdrLen         int
	writeTimeout   time.Duration
	log            *slog.Logger

	cmu  sync.Mutex // the control connection
	conn *vuproto.Conn
	ack  bool // REPLY_ACK negotiated

	memfd   int
	mem     []byte
	gpaBase uint64
	uva     uint64

	features, protoFeatures uint64
	txHdr                   [12]byte      // the header WriteBatch is writing (q[1].mu)
	refused                 atomic.Uint64 // frames WriteBatch refused (size, offload)

	q [2]queue

	ctr    frameio.Counters
	closed atomic.Bool
	wakefd int
	epfd   int
	waitMu sync.RWMutex
	evs    [4]unix.EpollEvent
}

// slots are a queue's buffers of one size.
type slots struct {
	n             uint16 // how many
	first         uint16 // ring descriptor of slot 0's head; slot s's is first+s*k
	k             uint16 // ring descriptors per slot
	nd            uint16 // descriptors per buffer (header and pieces)
	indirect, mix bool   // buffers of nd > 1 go through tables; mix: even slots only
	tblOff        int    // slot s's indirect table is mem[tblOff+s*16*nd:]
	bufOff, size  int    // slot s's buffer is mem[bufOff+s*size:]
	room          int    // frame bytes a buffer holds
	free          []uint16
}

// slotOf is the slot whose head is ring descriptor id, if any.
func (c *slots) slotOf(id uint32) (uint16, bool) {
	if c.n == 0 || id < uint32(c.first) || (id-uint32(c.first))%uint32(c.k) != 0 {
		return 0, false
	}
	s := (id - uint32(c.first)) / uint32(c.k)
	return uint16(s), s < uint32(c.n)
}

// queue is one split virtqueue as the driver sees it.
type queue struct {
	mu                         sync.Mutex
	idx                        int
	num                        uint16
	reg                        slots // buffers of one frame (FrameSize(MTU))
	big                        slots // TX with TSO: buffers of a GSO frame
	desc                       []byte
	avail, used                []byte
	availHdr, usedHdr          *uint32
	descOff, availOff, usedOff int // offsets in mem
	chunk                      int // piece size after the header descriptor; 0 = one descriptor

	availIdx   uint16
	availFlags uint16
	lastUsed   uint16

	kick, call int
	base       uint16 // for restart after Stop
	stopped    bool
	one, buf   [8]byte
}

const defaultGPABase = 1 << 32

func alignUp(n, a int) int { return (n + a - 1) &^ (a - 1) }

// Dial connects to a back-end at path, performs the handshake and starts
// both queues.
func Dial(path string, o DriverOptions) (*Driver, error) {
	mtu := o.MTU
	if mtu == 0 {
		mtu = frameio.DefaultMTU
	}
	if mtu < 68 || mtu > frameio.MaxMTU {
		return nil, fmt.Errorf("vhostuserdriver: MTU %d is out of range: use 68 to %d", mtu, frameio.MaxMTU)
	}
	num := o.QueueSize
	if num == 0 {
		num = 256
	}
	if num < 2 || num > vuproto.MaxQueueSize || num&(num-1) != 0 {
		return nil, fmt.Errorf("vhostuserdriver: queue size %d is not a power of 2 from 2 to %d", num, vuproto.MaxQueueSize)
	}
	if o.RxChunk < 0 || o.TxChunk < 0 || (o.RxChunk > 0 && o.RxChunk < 64) || (o.TxChunk > 0 && o.TxChunk < 64) {
		return nil, fmt.Errorf("vhostuserdriver: chunk sizes must be 0 or at least 64 bytes")
	}
	if o.Offload && o.TxChunk > 0 && num < 8 {
		return nil, fmt.Errorf("vhostuserdriver: Offload with TxChunk needs a queue of at least 8 (room for GSO buffers in pieces): got %d", num)
	}
	d := &Driver{mtu: mtu, frameSize: frameio.FrameSize(mtu), writeTimeout: o.WriteTimeout, log: o.Log, memfd: -1, wakefd: -1, epfd: -1}
	if d.writeTimeout == 0 {
		d.writeTimeout = frameio.DefaultWriteTimeout
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	d.gpaBase = o.GPABase
	if d.gpaBase == 0 {
		d.gpaBase = defaultGPABase
	}
	for i := range d.q {
		d.q[i].idx, d.q[i].kick, d.q[i].call = i, -1, -1
		d.q[i].one[0] = 1
	}
	ok := false
	defer func() {
		if !ok {
			d.release()
		}
	}()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("vhostuserdriver: connect to %s: %w", path, err)
	}
	d.conn = vuproto.NewConn(c)
	d.conn.Timeout = 5 * time.Second
	if err := d.handshake(uint16(num), o); err != nil {
		return nil, fmt.Errorf("vhostuserdriver: %s: %w", path, err)
	}
	ok = true
	return d, nil
}

// layout sizes the memory: rings first, then the buffer slots.
func (d *Driver) layout(num uint16, o DriverOptions) int {
	off := 0
	ind := d.features&(1<<vuproto.FRingIndirectDesc) != 0
	for i := range d.q {
		q := &d.q[i]
		q.num = num
		q.chunk = o.RxChunk
		room := d.frameSize
		if i == 0 && d.guestTSO() {
			// Every receive buffer takes a GSO frame, as Linux's big
			// packets do: a header and pages.
			room = frameio.MaxGSOLen
			if q.chunk == 0 {
				q.chunk = 4096
			}
		}
		if i == 1 {
			q.chunk = o.TxChunk
		}
		q.reg, q.big = slots{}, slots{}
		descs := num
		if i == 1 && d.features&(1<<vuproto.NetFHostTSO4|1<<vuproto.NetFHostTSO6) != 0 {
			// GSO frames larger than the MTU: up to 16 large buffers on
			// at most half of the ring.
			d.shape(&q.big, q.chunk, frameio.MaxGSOLen, num/2, ind, o.MixIndirect)
			q.big.n = min(16, max(1, num/2/q.big.k))
			descs -= q.big.n * q.big.k
		}
		d.shape(&q.reg, q.chunk, room, descs, ind, o.MixIndirect)
		q.reg.n = descs / q.reg.k
		q.big.first = q.reg.n * q.reg.k
		q.descOff = alignUp(off, 4096)
		q.availOff = q.descOff + vuproto.DescSize(int(num))
		q.usedOff = alignUp(q.availOff+vuproto.AvailSize(int(num)), 4096)
		off = q.usedOff + vuproto.UsedSize(int(num))
	}
	for i := range d.q {
		for _, c := range []*slots{&d.q[i].reg, &d.q[i].big} {
			c.bufOff = alignUp(off, 4096)
			off = c.bufOff + int(c.n)*c.size
			if c.indirect {
				c.tblOff = alignUp(off, 64)
				off = c.tblOff + int(c.n)*16*int(c.nd)
			}
		}
	}
	return alignUp(off, 1<<21)
}

// shape sizes the slots of a class for frames of room bytes, in pieces of
// chunk (0: one descriptor), with at most most ring descriptors a slot.
func (d *Driver) shape(c *slots, chunk, room int, most uint16, ind, mix bool) {
	c.room, c.k, c.nd, c.size = room, 1, 1, alignUp(d.hdrLen+room, 64)
	if chunk == 0 {
		return
	}
	pieces := (room + chunk - 1) / chunk
	c.nd = uint16(min(1+pieces, vuproto.MaxQueueSize))
	c.k = max(2, min(c.nd, most))
	c.size = alignUp(d.hdrLen, 64) + pieces*chunk
	if ind {
		c.indirect, c.mix = true, mix
		if !mix {
			c.k = 1
		}
	}
}

// buildSlot writes slot s's descriptors for a buffer of frameLen bytes
// of frame after the header and returns the head: one descriptor without
// RxChunk/TxChunk; else the header's, then the pieces', chained in the
// ring or, with indirect descriptors, in the slot's table behind one ring
// descriptor (Linux's rule: a table for any buffer of more than one). A
// direct chain longer than the slot's ring descriptors puts the rest of
// the frame in its last one.
func (d *Driver) buildSlot(q *queue, c *slots, s uint16, frameLen int, write bool) uint16 {
	head := c.first + s*c.k
	base := c.bufOff + int(s)*c.size
	var flags uint16
	if write {
		flags = vuproto.DescFWrite
	}
	if q.chunk == 0 {
		putDesc(q.desc, head, d.gpaBase+uint64(base), uint32(d.hdrLen+frameLen), flags, 0)
		return head
	}
	tbl, first, most := q.desc, head, c.k
	ind := c.indirect && frameLen > 0 && (!c.mix || s%2 == 0)
	if ind {
		tbl, first, most = d.mem[c.tblOff+int(s)*16*int(c.nd):], 0, c.nd
	}
	hf := flags
	if frameLen > 0 {
		hf |= vuproto.DescFNext
	}
	putDesc(tbl, first, d.gpaBase+uint64(base), uint32(d.hdrLen), hf, first+1)
	n, left, off := uint16(1), frameLen, base+alignUp(d.hdrLen, 64)
	for ; n < most && left > 0; n++ {
		l := min(left, q.chunk)
		if n+1 == most {
			l = left
		}
		left -= l
		nf := flags
		if left > 0 {
			nf |= vuproto.DescFNext
		}
		putDesc(tbl, first+n, d.gpaBase+uint64(off), uint32(l), nf, first+n+1)
		off += l
	}
	if ind {
		tblAddr := d.gpaBase + uint64(c.tblOff+int(s)*16*int(c.nd))
		putDesc(q.desc, head, tblAddr, 16*uint32(n), vuproto.DescFIndirect, 0)
	}
	return head
}

func putDesc(tbl []byte, i uint16, addr uint64, n uint32, flags, next uint16) {
	b := tbl[int(i)*16:]
	le.PutUint64(b, addr)
	le.PutUint32(b[8:], n)
	le.PutUint16(b[12:], flags)
	le.PutUint16(b[14:], next)
}

// slotCopyIn writes header and frame into slot s.
func (d *Driver) slotCopyIn(q *queue, c *slots, s uint16, hdr *[12]byte, frame []byte) {
	base := c.bufOff + int(s)*c.size
	copy(d.mem[base:base+d.hdrLen], hdr[:])
	if q.chunk == 0 {
		copy(d.mem[base+d.hdrLen:], frame)
	} else {
		copy(d.mem[base+alignUp(d.hdrLen, 64):], frame)
	}
}

// slotCopyOut reads n bytes (header included) out of slot s into dst.
func (d *Driver) slotCopyOut(q *queue, c *slots, s uint16, n int, dst []byte) int {
	base := c.bufOff + int(s)*c.size
	fl := n - d.hdrLen
	if q.chunk == 0 {
		return copy(dst, d.mem[base+d.hdrLen:base+d.hdrLen+fl])
	}
	off := base + alignUp(d.hdrLen, 64)
	return copy(dst, d.mem[off:off+fl])
}

func (d *Driver) call(req uint32, payload []byte, fds []int, wantReply bool) ([]byte, error) {
	h := vuproto.Header{Request: req, Flags: vuproto.Version}
	needAck := !wantReply && d.ack
	if needAck {
		h.Flags |= vuproto.FlagNeedReply
	}
	if err := d.conn.Write(h, payload, fds); err != nil {
		return nil, fmt.Errorf("send %s: %w", vuproto.Name(req), err)
	}
	if !wantReply && !needAck {
		return nil, nil
	}
	d.conn.C.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer d.conn.C.SetReadDeadline(time.Time{})
	m, err := d.conn.Read()
	if err != nil {
		return nil, fmt.Errorf("reply to %s: %w", vuproto.Name(req), err)
	}
	for _, fd := range m.FDs {
		unix.Close(fd)
	}
	if m.Request != req || m.Flags&vuproto.FlagReply == 0 {
		return nil, fmt.Errorf("reply to %s is %s with flags %#x", vuproto.Name(req), vuproto.Name(m.Request), m.Flags)
	}
	if needAck {
		v, err := vuproto.U64(req, m.Payload)
		if err != nil {
			return nil, err
		}
		if v != 0 {
			return nil, fmt.Errorf("the back-end refused %s (status %d)", vuproto.Name(req), v)
		}
		return nil, nil
	}
	return append([]byte(nil), m.Payload...), nil
}

func (d *Driver) callU64(req uint32, v uint64, fds []int) error {
	_, err := d.call(req, le.AppendUint64(nil, v), fds, false)
	return err
}

func (d *Driver) getU64(req uint32) (uint64, error) {
	r, err := d.call(req, nil, nil, true)
	if err != nil {
		return 0, err
	}
	return vuproto.U64(req, r)
}

func (d *Driver) handshake(num uint16, o DriverOptions) error {
	f, err := d.getU64(vuproto.GetFeatures)
	if err != nil {
		return err
	}
	if f&(1<<vuproto.FProtocolFeatures) != 0 {
		pf, err := d.getU64(vuproto.GetProtocolFeatures)
		if err != nil {
			return err
		}
		d.protoFeatures = pf & (1<<vuproto.PFReplyAck | 1<<vuproto.PFNetMTU | 1<<vuproto.PFConfig)
		if err := d.callU64(vuproto.SetProtocolFeatures, d.protoFeatures, nil); err != nil {
			return err
		}
		d.ack = d.protoFeatures&(1<<vuproto.PFReplyAck) != 0
	}
	if _, err := d.call(vuproto.SetOwner, nil, nil, false); err != nil {
		return err
	}
	if f, err = d.getU64(vuproto.GetFeatures); err != nil {
		return err
	}
	want := uint64(1<<vuproto.FVersion1 | 1<<vuproto.NetFMTU | 1<<vuproto.NetFMAC | 1<<vuproto.FProtocolFeatures)
	if !o.NoIndirect {
		want |= 1 << vuproto.FRingIndirectDesc
	}
	if o.Offload && f&(1<<vuproto.NetFCsum) != 0 {
		// TSO needs CSUM (virtio 1.x, 5.1.3.1).
		want |= 1<<vuproto.NetFCsum | 1<<vuproto.NetFHostTSO4 | 1<<vuproto.NetFHostTSO6
	}
	if o.Offload && f&(1<<vuproto.NetFGuestCsum) != 0 {
		// GUEST_TSO needs GUEST_CSUM (virtio 1.x, 5.1.3.1).
		want |= 1<<vuproto.NetFGuestCsum | 1<<vuproto.NetFGuestTSO4 | 1<<vuproto.NetFGuestTSO6
	}
	d.features = f & want
	d.hdrLen = 10
	if d.features&(1<<vuproto.FVersion1) != 0 {
		d.hdrLen = 12
	}
	// Memory.
	size := d.layout(num, o)
	if d.memfd, err = unix.MemfdCreate("vhostuserdriver", unix.MFD_CLOEXEC); err != nil {
		return fmt.Errorf("memfd_create: %w", err)
	}
	if err := unix.Ftruncate(d.memfd, int64(size)); err != nil {
		return fmt.Errorf("size the memfd: %w", err)
	}
	if d.mem, err = unix.Mmap(d.memfd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fmt.Errorf("mmap the memfd: %w", err)
	}
	d.uva = uint64(uintptr(unsafe.Pointer(&d.mem[0])))
	for i := range d.q {
		q := &d.q[i]
		q.desc = d.mem[q.descOff : q.descOff+vuproto.DescSize(int(num))]
		q.avail = d.mem[q.availOff : q.availOff+vuproto.AvailSize(int(num))]
		q.used = d.mem[q.usedOff : q.usedOff+vuproto.UsedSize(int(num))]
		q.availHdr = (*uint32)(unsafe.Pointer(&q.avail[0]))
		q.usedHdr = (*uint32)(unsafe.Pointer(&q.used[0]))
		if q.kick, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
			return err
		}
		if q.call, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
			return err
		}
	}
	if d.wakefd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return err
	}
	if d.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return err
	}
	for _, fd := range []int{d.wakefd, d.q[0].call} {
		if err := unix.EpollCtl(d.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}); err != nil {
			return err
		}
	}
	// Receive buffers go in before the device starts, as Linux does.
	rx := &d.q[0]
	for s := uint16(0); s < rx.reg.n; s++ {
		head := d.buildSlot(rx, &rx.reg, s, rx.reg.room, true)
		le.PutUint16(rx.avail[4+2*int(rx.availIdx&(num-1)):], head)
		rx.availIdx++
	}
	rx.publishAvail()
	tx := &d.q[1]
	tx.availFlags = vuproto.AvailFNoInterrupt
	tx.publishAvail()
	for _, c := range []*slots{&tx.reg, &tx.big} {
		c.free = make([]uint16, 0, c.n)
		for s := c.n; s > 0; s-- {
			c.free = append(c.free, s-1)
		}
	}
	// QEMU's order: the call fds at init, then at start features, memory
	// and each queue, then enable.
	for i := range d.q {
		if err := d.callU64(vuproto.SetVringCall, uint64(i), []int{d.q[i].call}); err != nil {
			return err
		}
	}
	if err := d.callU64(vuproto.SetFeatures, d.features, nil); err != nil {
		return err
	}
	mt := vuproto.PutMemTable(nil, []vuproto.MemRegion{{GuestPhysAddr: d.gpaBase, MemorySize: uint64(size), UserspaceAddr: d.uva}})
	if _, err := d.call(vuproto.SetMemTable, mt, []int{d.memfd}, false); err != nil {
		return err
	}
	for i := range d.q {
		if err := d.startQueue(i); err != nil {
			return err
		}
	}
	if d.features&(1<<vuproto.FProtocolFeatures) != 0 {
		for i := range d.q {
			if _, err := d.call(vuproto.SetVringEnable, vuproto.VringState{Index: uint32(i), Num: 1}.Put(nil), nil, false); err != nil {
				return err
			}
		}
	}
	if o.HostMTU > 0 && d.protoFeatures&(1<<vuproto.PFNetMTU) != 0 {
		if err := d.callU64(vuproto.NetSetMTU, uint64(o.HostMTU), nil); err != nil {
			return err
		}
	}
	return nil
}

func (d *Driver) startQueue(i int) error {
	q := &d.q[i]
	st := func(n uint32) []byte { return vuproto.VringState{Index: uint32(i), Num: n}.Put(nil) }
	if _, err := d.call(vuproto.SetVringNum, st(uint32(q.num)), nil, false); err != nil {
		return err
	}
	if _, err := d.call(vuproto.SetVringBase, st(uint32(q.base)), nil, false); err != nil {
		return err
	}
	a := vuproto.VringAddr{Index: uint32(i), Desc: d.uva + uint64(q.descOff), Used: d.uva + uint64(q.usedOff), Avail: d.uva + uint64(q.availOff)}
	if _, err := d.call(vuproto.SetVringAddr, a.Put(nil), nil, false); err != nil {
		return err
	}
	if err := d.callU64(vuproto.SetVringKick, uint64(i), []int{q.kick}); err != nil {
		return err
	}
	return d.callU64(vuproto.SetVringCall, uint64(i), []int{q.call})
}

// StopQueue stops queue i with GET_VRING_BASE, as QEMU does when the
// guest stops the device, and returns the back-end's next avail index.
func (d *Driver) StopQueue(i int) (uint16, error) {
	d.cmu.Lock()
	defer d.cmu.Unlock()
	r, err := d.call(vuproto.GetVringBase, vuproto.VringState{Index: uint32(i)}.Put(nil), nil, true)
	if err != nil {
		return 0, err
	}
	s, err := vuproto.ParseVringState(vuproto.GetVringBase, r)
	if err != nil {
		return 0, err
	}
	d.q[i].base = uint16(s.Num)
	return uint16(s.Num), nil
}

// StartQueue starts queue i again where StopQueue left it.
func (d *Driver) StartQueue(i int) error {
	d.cmu.Lock()
	defer d.cmu.Unlock()
	if err := d.startQueue(i); err != nil {
		return err
	}
	if d.features&(1<<vuproto.FProtocolFeatures) != 0 {
		_, err := d.call(vuproto.SetVringEnable, vuproto.VringState{Index: uint32(i), Num: 1}.Put(nil), nil, false)
		return err
	}
	return nil
}

// EnableQueue sends SET_VRING_ENABLE for queue i.
func (d *Driver) EnableQueue(i int, on bool) error {
	d.cmu.Lock()
	defer d.cmu.Unlock()
	var n uint32
	if on {
		n = 1
	}
	_, err := d.call(vuproto.SetVringEnable, vuproto.VringState{Index: uint32(i), Num: n}.Put(nil), nil, false)
	return err
}

// Config reads the device's config space (GET_CONFIG) when the back-end
// offers it: the MAC and MTU it advertises.
func (d *Driver) Config() (mac net.HardwareAddr, mtu int, err error) {
	if d.protoFeatures&(1<<vuproto.PFConfig) == 0 {
		return nil, 0, errors.New("vhostuserdriver: the back-end does not offer GET_CONFIG")
	}
	d.cmu.Lock()
	defer d.cmu.Unlock()
	req := make([]byte, vuproto.ConfigHeaderSize+12)
	le.PutUint32(req[4:], 12)
	r, err := d.call(vuproto.GetConfig, req, nil, true)
	if err != nil {
		return nil, 0, err
	}
	c, err := vuproto.ParseConfig(vuproto.GetConfig, r)
	if err != nil || len(c.Data) < 12 {
		return nil, 0, fmt.Errorf("vhostuserdriver: bad GET_CONFIG reply: %v", err)
	}
	if d.features&(1<<vuproto.NetFMAC) != 0 {
		mac = append(net.HardwareAddr(nil), c.Data[:6]...)
	}
	return mac, int(le.Uint16(c.Data[10:])), nil
}

// Features are the virtio features the driver acknowledged: with
// Offload, VIRTIO_NET_F_CSUM (bit 0), GUEST_CSUM (1), GUEST_TSO4 (7),
// GUEST_TSO6 (8), HOST_TSO4 (11) and HOST_TSO6 (12) when the back-end
// offered them.
func (d *Driver) Features() uint64 { return d.features }

// guestTSO says whether GUEST_TSO4 or GUEST_TSO6 was negotiated.
func (d *Driver) guestTSO() bool {
	return d.features&(1<<vuproto.NetFGuestTSO4|1<<vuproto.NetFGuestTSO6) != 0
}

// TakesPartial says whether WriteBatch sends frames whose checksum is
// partial (frameio.PartialWriter): the back-end took VIRTIO_NET_F_CSUM.
func (d *Driver) TakesPartial() bool { return d.features&(1<<vuproto.NetFCsum) != 0 }

// ReadsOffload says whether ReadBatch may return frames whose checksum
// is partial (frameio.OffloadReader): GUEST_CSUM was negotiated, and
// with it (Offload) GUEST_TSO4/TSO6 when offered, so they may be GSO
// frames of up to frameio.MaxGSOLen bytes: read into batches made by
// frameio.NewBatchSize(n, frameio.MaxGSOLen) (frameio.Relay does).
func (d *Driver) ReadsOffload() bool { return d.features&(1<<vuproto.NetFGuestCsum) != 0 }

// TakesGSO says whether WriteBatch sends GSO frames whole
// (frameio.GSOWriter): the back-end took HOST_TSO4 and HOST_TSO6. With
// one of them only, Relay would pass a GSO frame of the other kind that
// the driver then refuses; the back-ends here offer both or neither.
func (d *Driver) TakesGSO() bool {
	const both = 1<<vuproto.NetFHostTSO4 | 1<<vuproto.NetFHostTSO6
	return d.features&both == both
}

// Refused is how many frames WriteBatch refused to send since Dial (part
// of TxDropped): too short or too long, or an Off the back-end did not
// negotiate.
func (d *Driver) Refused() uint64 { return d.refused.Load() }

// txHeader writes into h the virtio-net header for f and reports whether
// f goes into a large (GSO) buffer, or !ok when f cannot be sent: its
// length, or an offload the back-end did not negotiate.
func (d *Driver) txHeader(f *frameio.Frame, h *[12]byte) (big, ok bool) {
	*h = [12]byte{10: 1} // num_buffers (not in a 10-byte header)
	o := f.Off
	if f.N < frameio.MinFrameLen || f.N > len(f.Buf) {
		return false, false
	}
	if !o.Partial && o.GSO == frameio.GSONone {
		return false, f.N <= d.frameSize
	}
	if !o.Partial || d.features&(1<<vuproto.NetFCsum) == 0 {
		return false, false // a GSO frame's checksum is partial
	}
	h[0] = vuproto.NetHdrFNeedsCsum
	le.PutUint16(h[6:], o.CsumStart)
	le.PutUint16(h[8:], o.CsumOffset)
	switch {
	case o.GSO == frameio.GSONone:
		return false, f.N <= d.frameSize
	case o.GSO == frameio.GSOTCPv4 && d.features&(1<<vuproto.NetFHostTSO4) != 0,
		o.GSO == frameio.GSOTCPv6 && d.features&(1<<vuproto.NetFHostTSO6) != 0:
	default:
		return false, false
	}
	l4 := int(o.CsumStart)
	if f.N > frameio.MaxGSOLen || o.GSOSize == 0 || l4+20 > f.N || l4+int(f.Buf[l4+12]>>4)*4 > f.N {
		return false, false
	}
	h[1] = byte(o.GSO)
	le.PutUint16(h[2:], uint16(l4+int(f.Buf[l4+12]>>4)*4)) // hdr_len: all headers
	le.PutUint16(h[4:], o.GSOSize)
	return f.N > d.frameSize, true
}

func (q *queue) publishAvail() {
	atomic.StoreUint32(q.availHdr, uint32(q.availFlags)|uint32(q.availIdx)<<16)
}

func (q *queue) kickIfWanted() {
	if atomic.LoadUint32(q.usedHdr)&vuproto.UsedFNoNotify == 0 {
		unix.Write(q.kick, q.one[:])
	}
}

// Kind is frameio.KindVhostUser.
func (d *Driver) Kind() frameio.Kind { return frameio.KindVhostUser }

// MTU is the driver's MTU.
func (d *Driver) MTU() int { return d.mtu }

// Stats: Rx is what the back-end delivered, Tx what was sent to it.
func (d *Driver) Stats() frameio.Stats { return d.ctr.Snapshot() }

// ReadBatch waits for frames in the receive queue.
func (d *Driver) ReadBatch(frames []frameio.Frame) (int, error) {
	for {
		if d.closed.Load() {
			return 0, frameio.ErrClosed
		}
		if len(frames) == 0 {
			return 0, nil
		}
		if n := d.readOnce(frames); n > 0 {
			return n, nil
		}
		d.waitMu.RLock()
		if d.closed.Load() {
			d.waitMu.RUnlock()
			return 0, frameio.ErrClosed
		}
		unix.EpollWait(d.epfd, d.evs[:], -1)
		var b [8]byte
		unix.Read(d.wakefd, b[:])
		unix.Read(d.q[0].call, b[:])
		d.waitMu.RUnlock()
	}
}

func (d *Driver) readOnce(frames []frameio.Frame) int {
	q := &d.q[0]
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.desc == nil {
		return 0
	}
	got, bytes, dropped := 0, 0, 0
	mask := q.num - 1
	for got < len(frames) {
		usedIdx := uint16(atomic.LoadUint32(q.usedHdr) >> 16)
		if usedIdx == q.lastUsed {
			if got > 0 {
				break
			}
			if q.availFlags&vuproto.AvailFNoInterrupt != 0 {
				q.availFlags &^= vuproto.AvailFNoInterrupt
				q.publishAvail()
				continue
			}
			break
		}
		if q.availFlags&vuproto.AvailFNoInterrupt == 0 {
			q.availFlags |= vuproto.AvailFNoInterrupt
			q.publishAvail()
		}
		for ; q.lastUsed != usedIdx && got < len(frames); q.lastUsed++ {
			off := 4 + 8*int(q.lastUsed&mask)
			id, n := le.Uint32(q.used[off:]), int(le.Uint32(q.used[off+4:]))
			s, ok := q.reg.slotOf(id)
			if !ok {
				d.log.Warn("vhostuserdriver: the back-end returned a bad descriptor id", "id", id)
				continue
			}
			f := &frames[got]
			if n < d.hdrLen+frameio.MinFrameLen || n > d.hdrLen+q.reg.room || n-d.hdrLen > len(f.Buf) {
				dropped++ // too short, or longer than the buffer or the caller's
			} else if off, ok := d.rxOffload(q, s, n-d.hdrLen); !ok {
				dropped++
			} else {
				f.N, f.Off = d.slotCopyOut(q, &q.reg, s, n, f.Buf), off
				bytes += f.N
				got++
			}
			le.PutUint16(q.avail[4+2*int(q.availIdx&mask):], uint16(id))
			q.availIdx++
		}
		q.publishAvail()
	}
	if got > 0 || dropped > 0 {
		q.kickIfWanted()
	}
	d.ctr.AddRx(got, bytes)
	d.ctr.AddRxDropped(dropped)
	return got
}

// rxOffload reads the virtio-net header of receive slot s, holding a
// frame of n bytes, as a guest's driver does: NEEDS_CSUM (only with
// GUEST_CSUM negotiated) makes the frame's checksum partial, its place
// inside the frame; DATA_VALID, or no flag, means complete; GSO_TCPV4
// or TCPV6 (only with the matching GUEST_TSO, with NEEDS_CSUM and a
// gso_size) makes it a GSO frame. Anything else (a GSO type not
// negotiated, the ECN bit, NEEDS_CSUM without GUEST_CSUM, a checksum's
// place outside the frame, a frame larger than the MTU that is not GSO):
// !ok, drop it.
func (d *Driver) rxOffload(q *queue, s uint16, n int) (frameio.Offload, bool) {
	h := d.mem[q.reg.bufOff+int(s)*q.reg.size:][:d.hdrLen]
	var o frameio.Offload
	switch h[1] {
	case vuproto.NetHdrGSONone:
		if n > d.frameSize {
			return o, false
		}
	case vuproto.NetHdrGSOTCPv4, vuproto.NetHdrGSOTCPv6:
		bit := vuproto.NetFGuestTSO4
		if h[1] == vuproto.NetHdrGSOTCPv6 {
			bit = vuproto.NetFGuestTSO6
		}
		if d.features&(1<<bit) == 0 || h[0]&vuproto.NetHdrFNeedsCsum == 0 || le.Uint16(h[4:]) == 0 {
			return o, false
		}
		o.GSO, o.GSOSize = frameio.GSOType(h[1]), le.Uint16(h[4:])
	default:
		return o, false
	}
	if h[0]&vuproto.NetHdrFNeedsCsum == 0 {
		return o, true
	}
	o.Partial, o.CsumStart, o.CsumOffset = true, le.Uint16(h[6:]), le.Uint16(h[8:])
	if d.features&(1<<vuproto.NetFGuestCsum) == 0 || int(o.CsumStart) < frameio.MinFrameLen || int(o.CsumStart)+int(o.CsumOffset)+2 > n {
		return frameio.Offload{}, false
	}
	return o, true
}

// WriteBatch sends frames through the transmit queue, waiting up to
// WriteTimeout for free buffers.
func (d *Driver) WriteBatch(frames []frameio.Frame) (int, error) {
	return d.writeBatch(frames, d.writeTimeout)
}

// WriteBatchNoWait is WriteBatch without waiting (frameio.NoWaitWriter).
func (d *Driver) WriteBatchNoWait(frames []frameio.Frame) (int, error) {
	return d.writeBatch(frames, -1)
}

// reclaim takes back the transmit buffers the back-end is done with.
func (q *queue) reclaim() {
	usedIdx := uint16(atomic.LoadUint32(q.usedHdr) >> 16)
	for ; q.lastUsed != usedIdx; q.lastUsed++ {
		off := 4 + 8*int(q.lastUsed&(q.num-1))
		id := le.Uint32(q.used[off:])
		c := &q.reg
		s, ok := c.slotOf(id)
		if !ok {
			c = &q.big
			s, ok = c.slotOf(id)
		}
		if ok && len(c.free) < cap(c.free) {
			c.free = append(c.free, s)
		}
	}
}

func (d *Driver) writeBatch(frames []frameio.Frame, timeout time.Duration) (int, error) {
	if d.closed.Load() {
		return 0, frameio.ErrClosed
	}
	q := &d.q[1]
	q.mu.Lock()
	if q.desc == nil {
		q.mu.Unlock()
		return 0, frameio.ErrClosed
	}
	sent, bytes := 0, 0
	var deadline time.Time
	mask := q.num - 1
	for i := range frames {
		f := &frames[i]
		c := &q.reg
		big, ok := d.txHeader(f, &d.txHdr)
		if !ok {
			d.refused.Add(1)
			continue
		}
		if big {
			c = &q.big
		}
		if len(c.free) == 0 {
			q.reclaim()
		}
		for len(c.free) == 0 && timeout >= 0 && !d.closed.Load() {
			if deadline.IsZero() {
				deadline = time.Now().Add(timeout)
			}
			left := time.Until(deadline)
			if left <= 0 {
				break
			}
			d.waitTx(q, c, left)
		}
		if len(c.free) == 0 {
			break
		}
		s := c.free[len(c.free)-1]
		c.free = c.free[:len(c.free)-1]
		d.slotCopyIn(q, c, s, &d.txHdr, f.Bytes())
		head := d.buildSlot(q, c, s, f.N, false)
		le.PutUint16(q.avail[4+2*int(q.availIdx&mask):], head)
		q.availIdx++
		sent++
		bytes += f.N
		if sent%64 == 0 {
			q.publishAvail()
			q.kickIfWanted()
		}
	}
	if sent%64 != 0 {
		q.publishAvail()
		q.kickIfWanted()
	}
	q.mu.Unlock()
	d.ctr.AddTx(sent, bytes)
	d.ctr.AddTxDropped(len(frames) - sent)
	return sent, nil
}

// waitTx asks for an interrupt and waits up to left for freed buffers.
func (d *Driver) waitTx(q *queue, c *slots, left time.Duration) {
	q.publishAvail()
	q.kickIfWanted()
	q.availFlags &^= vuproto.AvailFNoInterrupt
	q.publishAvail()
	defer func() {
		q.availFlags |= vuproto.AvailFNoInterrupt
		q.publishAvail()
	}()
	if q.reclaim(); len(c.free) > 0 {
		return
	}
	ms := int((left + time.Millisecond - 1) / time.Millisecond)
	fds := [1]unix.PollFd{{Fd: int32(q.call), Events: unix.POLLIN}}
	unix.Poll(fds[:], ms)
	unix.Read(q.call, q.buf[:])
	q.reclaim()
}

// Close disconnects from the back-end and frees the memory.
func (d *Driver) Close() error {
	if d.closed.Swap(true) {
		return nil
	}
	d.conn.C.Close()
	var one = [8]byte{1}
	unix.Write(d.wakefd, one[:])
	d.waitMu.Lock()
	d.q[0].mu.Lock()
	d.q[1].mu.Lock()
	d.release()
	d.q[1].mu.Unlock()
	d.q[0].mu.Unlock()
	d.waitMu.Unlock()
	return nil
}

func (d *Driver) release() {
	if d.conn != nil {
		d.conn.C.Close()
	}
	for i := range d.q {
		q := &d.q[i]
		for _, fd := range []*int{&q.kick, &q.call} {
			if *fd >= 0 {
				unix.Close(*fd)
				*fd = -1
			}
		}
		q.desc, q.avail, q.used, q.availHdr, q.usedHdr = nil, nil, nil, nil, nil
	}
	for _, fd := range []*int{&d.wakefd, &d.epfd, &d.memfd} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
	if d.mem != nil {
		unix.Munmap(d.mem)
		d.mem = nil
	}
}

var (
	_ frameio.Port          = (*Driver)(nil)
	_ frameio.NoWaitWriter  = (*Driver)(nil)
	_ frameio.PartialWriter = (*Driver)(nil)
	_ frameio.GSOWriter     = (*Driver)(nil)
	_ frameio.OffloadReader = (*Driver)(nil)
)

// Rings returns queue i's descriptor table, avail ring and used ring in
// the driver's memory, and the guest physical address of the memory's
// start: for tests that play a hostile driver. Writing them races with
// the driver's own use; a test does so while the driver is idle.
func (d *Driver) Rings(i int) (desc, avail, used []byte, gpaBase uint64) {
	q := &d.q[i]
	return q.desc, q.avail, q.used, d.gpaBase
}

// Kick notifies the back-end on queue i, as the driver does after adding
// buffers (for tests that write the rings themselves).
func (d *Driver) Kick(i int) {
	unix.Write(d.q[i].kick, d.q[i].one[:])
}

// MemFD is the memfd holding the driver's memory (for fault-injection
// tests: shrinking it makes the back-end's mapping fault).
func (d *Driver) MemFD() int { return d.memfd }
