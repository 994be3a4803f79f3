//go:build linux

package vhostuser_test

import (
	"encoding/binary"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/vhostuser"
	"github.com/anka-net/anka/sdk/netkit/vhostuser/internal/vuproto"
	"github.com/anka-net/anka/sdk/netkit/vhostuser/vhostuserdriver"
	"golang.org/x/sys/unix"
)

var le = binary.LittleEndian

func rawDial(t *testing.T, p *vhostuser.Port) *vuproto.Conn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: p.Path(), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	vc := vuproto.NewConn(c)
	vc.Timeout = 20 * time.Second
	return vc
}

func rawSend(t *testing.T, c *vuproto.Conn, req, flags uint32, payload []byte, fds ...int) {
	t.Helper()
	if err := c.Write(vuproto.Header{Request: req, Flags: vuproto.Version | flags}, payload, fds); err != nil {
		t.Fatalf("send %s: %v", vuproto.Name(req), err)
	}
}

// rawSendBytes sends b as is (a header of our own making).
func rawSendBytes(t *testing.T, c *vuproto.Conn, b []byte, fds ...int) {
	t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.C.WriteMsgUnix(b, oob, nil); err != nil {
		t.Fatal(err)
	}
}

// expectClosed reads until the back-end closes the connection.
func expectClosed(t *testing.T, c *vuproto.Conn) {
	t.Helper()
	c.C.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		m, err := c.Read()
		if err == nil {
			for _, fd := range m.FDs {
				unix.Close(fd)
			}
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the back-end kept the connection open")
		}
		return
	}
}

func rawReply(t *testing.T, c *vuproto.Conn, req uint32) []byte {
	t.Helper()
	c.C.SetReadDeadline(time.Now().Add(20 * time.Second))
	m, err := c.Read()
	if err != nil {
		t.Fatalf("reply to %s: %v", vuproto.Name(req), err)
	}
	if m.Request != req || m.Flags&vuproto.FlagReply == 0 {
		t.Fatalf("reply to %s: got %s flags %#x", vuproto.Name(req), vuproto.Name(m.Request), m.Flags)
	}
	return m.Payload
}

func eventfd(t *testing.T) int {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func memfd(t *testing.T, size int) (int, []byte) {
	fd, err := unix.MemfdCreate("hostile", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(m) })
	return fd, m
}

// The port survives and serves a well-behaved driver after each attack.
func checkStillServes(t *testing.T, p *vhostuser.Port) {
	t.Helper()
	eventually(t, "the hostile front-end is dropped", func() bool { return !p.Connected() })
	d, err := vhostuserdriver.Dial(p.Path(), vhostuserdriver.DriverOptions{MTU: p.MTU(), WriteTimeout: -1})
	if err != nil {
		t.Fatalf("a good driver after the attack: %v", err)
	}
	defer d.Close()
	transfer(t, d, p, [][]byte{frame(64, 1)}, p.MTU())
	transfer(t, p, d, [][]byte{frame(64, 2)}, p.MTU())
}

func TestHostileMessages(t *testing.T) {
	p := listen(t, vhostuser.Options{MTU: 1500})
	state := func(i, n uint32) []byte { return vuproto.VringState{Index: i, Num: n}.Put(nil) }
	hdr := func(req, flags, size uint32) []byte {
		b := make([]byte, vuproto.HeaderSize)
		vuproto.PutHeader(b, vuproto.Header{Request: req, Flags: flags, Size: size})
		return b
	}
	for _, tc := range []struct {
		name string
		do   func(t *testing.T, c *vuproto.Conn)
	}{
		{"bad version", func(t *testing.T, c *vuproto.Conn) {
			rawSendBytes(t, c, hdr(vuproto.GetFeatures, 2, 0))
		}},
		{"payload too large", func(t *testing.T, c *vuproto.Conn) {
			rawSendBytes(t, c, hdr(vuproto.SetFeatures, 1, 1<<20))
		}},
		{"truncated message", func(t *testing.T, c *vuproto.Conn) {
			rawSendBytes(t, c, append(hdr(vuproto.SetFeatures, 1, 8), 1, 2, 3))
			c.C.CloseWrite()
		}},
		{"too many fds", func(t *testing.T, c *vuproto.Conn) {
			var fds []int
			for range 12 {
				fds = append(fds, eventfd(t))
			}
			rawSendBytes(t, c, hdr(vuproto.GetFeatures, 1, 0), fds...)
		}},
		{"unknown request", func(t *testing.T, c *vuproto.Conn) {
			rawSend(t, c, 99, 0, nil)
		}},
		{"unsupported request", func(t *testing.T, c *vuproto.Conn) {
			rawSend(t, c, vuproto.SetLogBase, 0, make([]byte, 16))
		}},
		{"short payload", func(t *testing.T, c *vuproto.Conn) {
			rawSend(t, c, vuproto.SetVringNum, 0, []byte{0, 0, 0, 0})
		}},
		{"features not offered", func(t *testing.T, c *vuproto.Conn) {
			rawSend(t, c, vuproto.SetFeatures, 0, le.AppendUint64(nil, 1<<vuproto.FRingEventIdx))
		}},
		{"queue size not a power of 2", func(t *testing.T, c *vuproto.Conn) {
			rawSend(t, c, vuproto.SetVringNum, 0, state(0, 3))
		}},
		{"queue does not exist", func(t *testing.T, c *vuproto.Conn) {
			rawSend(t, c, vuproto.SetVringKick, 0, le.AppendUint64(nil, 5), eventfd(t))
		}},
		{"kick without fd", func(t *testing.T, c *vuproto.Conn) {
			rawSend(t, c, vuproto.SetVringCall, 0, le.AppendUint64(nil, 1))
		}},
		{"no-fd flag with an fd", func(t *testing.T, c *vuproto.Conn) {
			rawSend(t, c, vuproto.SetVringCall, 0, le.AppendUint64(nil, 1|vuproto.VringNoFDMask), eventfd(t))
		}},
		{"mem table region past the end of its file", func(t *testing.T, c *vuproto.Conn) {
			fd, _ := memfd(t, 1<<16)
			mt := vuproto.PutMemTable(nil, []vuproto.MemRegion{{GuestPhysAddr: 0, MemorySize: 1 << 20, UserspaceAddr: 1 << 30}})
			rawSend(t, c, vuproto.SetMemTable, 0, mt, fd)
		}},
		{"mem table regions and fds disagree", func(t *testing.T, c *vuproto.Conn) {
			fd, _ := memfd(t, 1<<16)
			mt := vuproto.PutMemTable(nil, []vuproto.MemRegion{{MemorySize: 1 << 12}, {GuestPhysAddr: 1 << 12, MemorySize: 1 << 12}})
			rawSend(t, c, vuproto.SetMemTable, 0, mt, fd)
		}},
		{"mem table wraps", func(t *testing.T, c *vuproto.Conn) {
			fd, _ := memfd(t, 1<<16)
			mt := vuproto.PutMemTable(nil, []vuproto.MemRegion{{GuestPhysAddr: ^uint64(0) - 10, MemorySize: 1 << 12}})
			rawSend(t, c, vuproto.SetMemTable, 0, mt, fd)
		}},
		{"rings outside memory", func(t *testing.T, c *vuproto.Conn) {
			fd, m := memfd(t, 1<<16)
			uva := uint64(uintptr(unsafe.Pointer(&m[0])))
			rawSend(t, c, vuproto.SetMemTable, 0, vuproto.PutMemTable(nil, []vuproto.MemRegion{{MemorySize: 1 << 16, UserspaceAddr: uva}}), fd)
			rawSend(t, c, vuproto.SetVringNum, 0, state(0, 256))
			rawSend(t, c, vuproto.SetVringAddr, 0, vuproto.VringAddr{Index: 0, Desc: uva + 1<<16 - 64, Avail: uva, Used: uva + 4096}.Put(nil))
		}},
		{"GET_CONFIG larger than its message", func(t *testing.T, c *vuproto.Conn) {
			b := make([]byte, vuproto.ConfigHeaderSize)
			le.PutUint32(b[4:], 200)
			rawSend(t, c, vuproto.GetConfig, 0, b)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := rawDial(t, p)
			tc.do(t, c)
			expectClosed(t, c)
			checkStillServes(t, p)
		})
	}

	t.Run("refused with REPLY_ACK keeps the connection", func(t *testing.T) {
		c := rawDial(t, p)
		rawSend(t, c, vuproto.GetProtocolFeatures, 0, nil)
		pf, _ := vuproto.U64(0, rawReply(t, c, vuproto.GetProtocolFeatures))
		if pf&(1<<vuproto.PFReplyAck) == 0 {
			t.Fatal("REPLY_ACK not offered")
		}
		rawSend(t, c, vuproto.SetProtocolFeatures, 0, le.AppendUint64(nil, 1<<vuproto.PFReplyAck))
		fd, _ := memfd(t, 1<<16)
		mt := vuproto.PutMemTable(nil, []vuproto.MemRegion{{MemorySize: 1 << 20, UserspaceAddr: 1 << 30}})
		rawSend(t, c, vuproto.SetMemTable, vuproto.FlagNeedReply, mt, fd)
		if v, _ := vuproto.U64(0, rawReply(t, c, vuproto.SetMemTable)); v == 0 {
			t.Fatal("a memory table past the end of its file was acknowledged")
		}
		rawSend(t, c, vuproto.GetFeatures, 0, nil)
		rawReply(t, c, vuproto.GetFeatures)
		c.C.Close()
		checkStillServes(t, p)
	})

	t.Run("front-end that never says anything", func(t *testing.T) {
		if testing.Short() {
			t.Skip("waits for the first-message timeout")
		}
		rawDial(t, p)
		eventually(t, "the silent front-end is served", p.Connected)
		checkStillServes(t, p)
	})

	t.Run("front-end that never reads replies", func(t *testing.T) {
		if testing.Short() {
			t.Skip("waits for the reply timeout")
		}
		c := rawDial(t, p)
		c.C.SetWriteBuffer(4096)
		msg := hdr(vuproto.GetFeatures, 1, 0)
		batch := make([]byte, 0, 1<<16)
		for len(batch)+len(msg) <= cap(batch) {
			batch = append(batch, msg...)
		}
		// Keep sending requests and never read: the back-end's replies
		// fill the socket; its reply timeout ends the session.
		c.C.SetWriteDeadline(time.Now().Add(30 * time.Second))
		for {
			if _, err := c.C.Write(batch); err != nil {
				break
			}
		}
		checkStillServes(t, p)
	})
}

// hostileFE is a front-end the test drives by hand: its own memory, its
// own rings, everything written directly.
type hostileFE struct {
	t       *testing.T
	c       *vuproto.Conn
	fd      int
	mem     []byte
	uva     uint64
	kick    [2]int
	avail   [2]uint16
	num     uint16
	gpaBase uint64
	feats   uint64 // acknowledged with SET_FEATURES
}

const (
	feMemSize = 1 << 20
	feNum     = 8
	feGPA     = 0x40000000
)

func (f *hostileFE) descOff(q int) int  { return q * 0x1000 }
func (f *hostileFE) availOff(q int) int { return q*0x1000 + 0x200 }
func (f *hostileFE) usedOff(q int) int  { return q*0x1000 + 0x400 }
func (f *hostileFE) bufOff(q, i int) int {
	return 0x10000 + q*0x10000 + i*0x1000
}

func newHostileFE(t *testing.T, p *vhostuser.Port) *hostileFE {
	return newHostileFEFeatures(t, p, 1<<vuproto.FVersion1)
}

func newHostileFEFeatures(t *testing.T, p *vhostuser.Port, feats uint64) *hostileFE {
	f := &hostileFE{t: t, num: feNum, gpaBase: feGPA, feats: feats}
	f.fd, f.mem = memfd(t, feMemSize)
	f.uva = uint64(uintptr(unsafe.Pointer(&f.mem[0])))
	f.connect(p)
	return f
}

// connect runs the handshake on a new connection, starting each queue
// where the driver's avail index is (as QEMU does after a reconnect).
func (f *hostileFE) connect(p *vhostuser.Port) {
	t := f.t
	f.c = rawDial(t, p)
	c := f.c
	rawSend(t, c, vuproto.GetFeatures, 0, nil)
	rawReply(t, c, vuproto.GetFeatures)
	rawSend(t, c, vuproto.SetOwner, 0, nil)
	rawSend(t, c, vuproto.SetFeatures, 0, le.AppendUint64(nil, f.feats))
	rawSend(t, c, vuproto.SetMemTable, 0, vuproto.PutMemTable(nil, []vuproto.MemRegion{{GuestPhysAddr: feGPA, MemorySize: feMemSize, UserspaceAddr: f.uva}}), f.fd)
	for q := range 2 {
		rawSend(t, c, vuproto.SetVringNum, 0, vuproto.VringState{Index: uint32(q), Num: feNum}.Put(nil))
		rawSend(t, c, vuproto.SetVringBase, 0, vuproto.VringState{Index: uint32(q), Num: uint32(f.avail[q])}.Put(nil))
		rawSend(t, c, vuproto.SetVringAddr, 0, vuproto.VringAddr{Index: uint32(q),
			Desc: f.uva + uint64(f.descOff(q)), Avail: f.uva + uint64(f.availOff(q)), Used: f.uva + uint64(f.usedOff(q))}.Put(nil))
		f.kick[q] = eventfd(t)
		rawSend(t, c, vuproto.SetVringKick, 0, le.AppendUint64(nil, uint64(q)), f.kick[q])
		rawSend(t, c, vuproto.SetVringCall, 0, le.AppendUint64(nil, uint64(q)|vuproto.VringNoFDMask))
	}
	// Round trip: the back-end has handled everything above.
	rawSend(t, c, vuproto.GetFeatures, 0, nil)
	rawReply(t, c, vuproto.GetFeatures)
}

func (f *hostileFE) setDesc(q, i int, addr uint64, n uint32, flags, next uint16) {
	f.setDescAt(f.descOff(q), i, addr, n, flags, next)
}

// setDescAt writes entry i of a descriptor table at offset off.
func (f *hostileFE) setDescAt(off, i int, addr uint64, n uint32, flags, next uint16) {
	b := f.mem[off+16*i:]
	le.PutUint64(b, addr)
	le.PutUint32(b[8:], n)
	le.PutUint16(b[12:], flags)
	le.PutUint16(b[14:], next)
}

// post puts head in the avail ring and moves avail idx by step (1 for a
// well-behaved driver).
func (f *hostileFE) post(q int, head uint16, step uint16) {
	le.PutUint16(f.mem[f.availOff(q)+4+2*int(f.avail[q]%f.num):], head)
	f.avail[q] += step
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&f.mem[f.availOff(q)])), uint32(f.avail[q])<<16)
	var one = [8]byte{1}
	unix.Write(f.kick[q], one[:])
}

// goodTx writes a frame into descriptor i's buffer and posts it.
func (f *hostileFE) goodTx(i int, fr []byte) {
	off := f.bufOff(1, i)
	clear(f.mem[off : off+12])
	copy(f.mem[off+12:], fr)
	f.setDesc(1, i, f.gpaBase+uint64(off), uint32(12+len(fr)), 0, 0)
	f.post(1, uint16(i), 1)
}

func (f *hostileFE) usedIdx(q int) uint16 {
	return uint16(atomic.LoadUint32((*uint32)(unsafe.Pointer(&f.mem[f.usedOff(q)]))) >> 16)
}

func TestHostileTransmitQueue(t *testing.T) {
	p := listen(t, vhostuser.Options{MTU: 1500})
	// A front-end that negotiated indirect descriptors came before: the
	// next one, which did not, gets none.
	d := dial(t, p, vhostuserdriver.DriverOptions{TxChunk: 512, WriteTimeout: -1})
	transfer(t, d, p, [][]byte{frame(1000, 1)}, 1500)
	if _, from := vhostuser.IndirectUsed(p); from != 1 {
		t.Fatalf("the driver's frame took %d indirect tables, want 1", from)
	}
	d.Close()
	eventually(t, "the driver is gone", func() bool { return !p.Connected() })
	f := newHostileFE(t, p)
	gpa := func(q, i int) uint64 { return f.gpaBase + uint64(f.bufOff(q, i)) }
	// Each bad chain is dropped and counted; the good frame after them
	// arrives.
	bad := []func(){
		func() { f.setDesc(1, 0, gpa(1, 0), 200, vuproto.DescFNext, 0); f.post(1, 0, 1) }, // loop onto itself
		func() {
			f.setDesc(1, 0, gpa(1, 0), 200, vuproto.DescFNext, 1)
			f.setDesc(1, 1, gpa(1, 1), 200, vuproto.DescFNext, 0)
			f.post(1, 0, 1)
		}, // two-descriptor loop
		func() { f.setDesc(1, 0, 0xdead00000000, 200, 0, 0); f.post(1, 0, 1) },                // outside memory
		func() { f.setDesc(1, 0, f.gpaBase+feMemSize-100, 200, 0, 0); f.post(1, 0, 1) },       // straddles the end
		func() { f.setDesc(1, 0, gpa(1, 0), 0, 0, 0); f.post(1, 0, 1) },                       // zero length
		func() { f.setDesc(1, 0, gpa(1, 0), 20, 0, 0); f.post(1, 0, 1) },                      // shorter than header + Ethernet header
		func() { f.setDesc(1, 0, gpa(1, 0), 0xffffffff, 0, 0); f.post(1, 0, 1) },              // huge length
		func() { f.setDesc(1, 0, gpa(1, 0), 3000, 0, 0); f.post(1, 0, 1) },                    // larger than the MTU
		func() { f.post(1, 200, 1) },                                                          // head index out of range
		func() { f.setDesc(1, 0, gpa(1, 0), 200, vuproto.DescFNext, 77); f.post(1, 0, 1) },    // next out of range
		func() { f.setDesc(1, 0, gpa(1, 0), 200, vuproto.DescFWrite, 0); f.post(1, 0, 1) },    // wrong direction
		func() { f.setDesc(1, 0, gpa(1, 0), 200, vuproto.DescFIndirect, 0); f.post(1, 0, 1) }, // indirect, not negotiated
	}
	batch := frameio.NewBatch(4, 1500)
	for i, attack := range bad {
		before := p.Stats().RxDropped
		attack()
		want := frame(100, i)
		f.goodTx(2, want)
		n, err := p.ReadBatch(batch)
		for err == nil && n == 0 {
			n, err = p.ReadBatch(batch)
		}
		if err != nil || n != 1 || string(batch[0].Bytes()) != string(want) {
			t.Fatalf("attack %d: ReadBatch = %d, %v; want the good frame after it", i, n, err)
		}
		if got := p.Stats().RxDropped - before; got != 1 {
			t.Fatalf("attack %d: RxDropped grew by %d, want 1", i, got)
		}
		if used := f.usedIdx(1); used != f.avail[1] {
			t.Fatalf("attack %d: used idx %d, want %d (every chain returned)", i, used, f.avail[1])
		}
	}
	if !p.Connected() {
		t.Fatal("dropped frames cost the front-end its connection")
	}

	// An avail index that runs more than a queue ahead is beyond repair.
	pending := pendingRead(p)
	f.post(1, 0, feNum+1)
	checkServesPendingReader(t, p, pending)
}

// pendingRead reads one frame from p in the background.
func pendingRead(p *vhostuser.Port) chan [][]byte {
	ch := make(chan [][]byte, 1)
	go func() {
		got, _ := receive(p, 1, p.MTU())
		ch <- got
	}()
	return ch
}

// checkServesPendingReader is checkStillServes for a port with a reader
// pending across the attack: that reader gets the good driver's frame.
func checkServesPendingReader(t *testing.T, p *vhostuser.Port, pending chan [][]byte) {
	t.Helper()
	eventually(t, "the hostile front-end is dropped", func() bool { return !p.Connected() })
	d, err := vhostuserdriver.Dial(p.Path(), vhostuserdriver.DriverOptions{MTU: p.MTU(), WriteTimeout: -1})
	if err != nil {
		t.Fatalf("a good driver after the attack: %v", err)
	}
	defer d.Close()
	if err := send(t, d, [][]byte{frame(64, 1)}, p.MTU()); err != nil {
		t.Fatal(err)
	}
	if err := sameFrames(<-pending, [][]byte{frame(64, 1)}); err != nil {
		t.Fatal(err)
	}
	transfer(t, p, d, [][]byte{frame(64, 2)}, p.MTU())
}

func TestHostileReceiveQueue(t *testing.T) {
	p := listen(t, vhostuser.Options{MTU: 1500, WriteTimeout: -1})
	f := newHostileFE(t, p)
	gpa := f.gpaBase + uint64(f.bufOff(0, 0))
	w := frameio.NewBatch(1, 1500)
	w[0].N = copy(w[0].Buf, frame(1000, 1))
	for i, attack := range []func(){
		func() { f.setDesc(0, 0, gpa, 2000, 0, 0) },                                        // not writable
		func() { f.setDesc(0, 0, gpa, 100, vuproto.DescFWrite|vuproto.DescFNext, 0) },      // loop
		func() { f.setDesc(0, 0, gpa, 500, vuproto.DescFWrite, 0) },                        // too small for the frame
		func() { f.setDesc(0, 0, 1<<50, 2000, vuproto.DescFWrite, 0) },                     // outside memory
		func() { f.setDesc(0, 0, gpa, 2000, vuproto.DescFWrite|vuproto.DescFIndirect, 0) }, // indirect
	} {
		attack()
		f.post(0, 0, 1)
		before := p.Stats().TxDropped
		if n, _ := p.WriteBatch(w); n != 0 {
			t.Fatalf("attack %d: the frame was delivered", i)
		}
		if got := p.Stats().TxDropped - before; got != 1 {
			t.Fatalf("attack %d: TxDropped grew by %d, want 1", i, got)
		}
		if used := f.usedIdx(0); used != f.avail[0] {
			t.Fatalf("attack %d: used idx %d, want %d", i, used, f.avail[0])
		}
	}
	// A good buffer gets the frame, header first.
	f.setDesc(0, 0, gpa, 2000, vuproto.DescFWrite, 0)
	f.post(0, 0, 1)
	if n, _ := p.WriteBatch(w); n != 1 {
		t.Fatal("a good buffer was not used")
	}
	off := f.bufOff(0, 0)
	if got := f.mem[off+12 : off+12+1000]; string(got) != string(w[0].Bytes()) {
		t.Fatal("frame not written after the header")
	}
	if l := le.Uint32(f.mem[f.usedOff(0)+4+8*int((f.avail[0]-1)%feNum)+4:]); l != 1012 {
		t.Fatalf("used len %d, want 1012", l)
	}
	// No buffers and no wait: dropped at once.
	if n, _ := p.WriteBatchNoWait(w); n != 0 {
		t.Fatal("a frame went into a queue without buffers")
	}
	if !p.Connected() {
		t.Fatal("dropped frames cost the front-end its connection")
	}
}

// A front-end that shrinks its memory under the back-end's mapping makes
// the back-end's access fault: the fault costs that front-end its
// connection, not the plugin its life.
func TestHostileShrunkMemory(t *testing.T) {
	p := listen(t, vhostuser.Options{MTU: 1500})
	f := newHostileFE(t, p)
	pending := pendingRead(p)
	if err := unix.Ftruncate(f.fd, feMemSize/2); err != nil {
		t.Fatal(err)
	}
	f.setDesc(1, 0, f.gpaBase+feMemSize-4096, 200, 0, 0)
	f.post(1, 0, 1)
	checkServesPendingReader(t, p, pending)
}

// A front-end that reconnects with rings already in use (QEMU after a
// plugin restart) finds its used index where it was: the port resumes
// from it and never shows the guest an index going backwards, even
// before it has anything to put there.
func TestReconnectKeepsUsedIndex(t *testing.T) {
	p := listen(t, vhostuser.Options{MTU: 1500, WriteTimeout: -1})
	f := newHostileFE(t, p)
	w := frameio.NewBatch(1, 1500)
	w[0].N = copy(w[0].Buf, frame(100, 1))
	for i := range 3 {
		f.setDesc(0, i, f.gpaBase+uint64(f.bufOff(0, i)), 2000, vuproto.DescFWrite, 0)
		f.post(0, uint16(i), 1)
		if n, _ := p.WriteBatch(w); n != 1 {
			t.Fatalf("frame %d not delivered", i)
		}
	}
	if got := f.usedIdx(0); got != 3 {
		t.Fatalf("used idx %d after 3 frames", got)
	}
	// Each reconnect is one chance for the port to show a stale index:
	// take twenty.
	for round := range 20 {
		f.c.C.Close()
		eventually(t, "the port notices the front-end left", func() bool { return !p.Connected() })
		f.connect(p)
		// No buffers: nothing to deliver, but the port looks at the ring
		// and sets its flags, while the guest watches the used index.
		var wrong atomic.Int32
		wrong.Store(-1)
		done := make(chan struct{})
		watching, stopped := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(stopped)
			close(watching)
			for {
				select {
				case <-done:
					return
				default:
				}
				if got := f.usedIdx(0); got != 3 {
					wrong.Store(int32(got))
				}
			}
		}()
		<-watching
		for range 10 {
			if n, _ := p.WriteBatchNoWait(w); n != 0 {
				t.Fatal("a frame was delivered without a buffer")
			}
		}
		close(done)
		<-stopped
		if got := wrong.Load(); got >= 0 {
			t.Fatalf("reconnect %d: the guest saw used idx %d, want it kept at 3", round, got)
		}
	}
	f.setDesc(0, 3, f.gpaBase+uint64(f.bufOff(0, 3)), 2000, vuproto.DescFWrite, 0)
	f.post(0, 3, 1)
	if n, _ := p.WriteBatch(w); n != 1 {
		t.Fatal("frame not delivered after the reconnect")
	}
	if got := f.usedIdx(0); got != 4 {
		t.Fatalf("used idx %d, want 4", got)
	}
}

// Indirect tables (negotiated) from a hostile driver: each bad one costs
// its frame, counted, and nothing else; the good forms the spec allows
// carry frames.
const feTable = 0x30000 // indirect tables in the hostile front-end's memory

func TestHostileIndirectTransmit(t *testing.T) {
	p := listen(t, vhostuser.Options{MTU: 1500})
	f := newHostileFEFeatures(t, p, 1<<vuproto.FVersion1|1<<vuproto.FRingIndirectDesc)
	tbl := f.gpaBase + feTable
	buf := f.gpaBase + uint64(f.bufOff(1, 4))
	fill := func(seq int) []byte {
		fr := frame(100, seq)
		off := f.bufOff(1, 4)
		clear(f.mem[off : off+12])
		copy(f.mem[off+12:], fr)
		return fr
	}
	ring := func(i int, addr uint64, n uint32, flags, next uint16) { f.setDesc(1, i, addr, n, flags, next) }
	entry := func(i int, addr uint64, n uint32, flags, next uint16) { f.setDescAt(feTable, i, addr, n, flags, next) }
	ind := uint16(vuproto.DescFIndirect)
	bad := []struct {
		name  string
		build func()
	}{
		{"nested", func() {
			ring(0, tbl, 16, ind, 0)
			entry(0, tbl+0x100, 16, ind, 0)
			f.setDescAt(feTable+0x100, 0, buf, 112, 0, 0)
		}},
		{"length not a multiple of 16", func() { entry(0, buf, 112, 0, 0); ring(0, tbl, 24, ind, 0) }},
		{"zero length", func() { entry(0, buf, 112, 0, 0); ring(0, tbl, 0, ind, 0) }},
		{"table outside memory", func() { ring(0, 0xdead00000000, 32, ind, 0) }},
		{"table straddles the end of memory", func() { ring(0, f.gpaBase+feMemSize-16, 32, ind, 0) }},
		{"table larger than any queue", func() { entry(0, buf, 112, 0, 0); ring(0, tbl, 16*(vuproto.MaxQueueSize+1), ind, 0) }},
		{"huge table", func() { ring(0, tbl, 0xfffffff0, ind, 0) }},
		{"INDIRECT with NEXT", func() { entry(0, buf, 112, 0, 0); ring(0, tbl, 16, ind|vuproto.DescFNext, 1); ring(1, buf, 112, 0, 0) }},
		{"loop in the table", func() {
			entry(0, buf, 50, vuproto.DescFNext, 1)
			entry(1, buf, 50, vuproto.DescFNext, 0)
			ring(0, tbl, 32, ind, 0)
		}},
		{"entry chained to itself", func() { entry(0, buf, 12, vuproto.DescFNext, 0); ring(0, tbl, 16*8, ind, 0) }},
		{"next outside the table", func() { entry(0, buf, 12, vuproto.DescFNext, 5); entry(5, buf+12, 100, 0, 0); ring(0, tbl, 32, ind, 0) }},
		{"write-only entry", func() { entry(0, buf, 112, vuproto.DescFWrite, 0); ring(0, tbl, 16, ind, 0) }},
		{"entry outside memory", func() { entry(0, 0xdead00000000, 112, 0, 0); ring(0, tbl, 16, ind, 0) }},
		{"frame larger than the MTU", func() { entry(0, buf, 3000, 0, 0); ring(0, tbl, 16, ind, 0) }},
		{"direct descriptor then a nested table", func() {
			ring(0, buf, 12, vuproto.DescFNext, 1)
			ring(1, tbl, 16, ind, 0)
			entry(0, tbl, 16, ind, 0)
		}},
	}
	batch := frameio.NewBatch(4, 1500)
	var queued [][]byte
	read := func() []byte {
		for len(queued) == 0 {
			n, err := p.ReadBatch(batch)
			if err != nil {
				t.Fatal(err)
			}
			for _, fr := range batch[:n] {
				queued = append(queued, append([]byte(nil), fr.Bytes()...))
			}
		}
		fr := queued[0]
		queued = queued[1:]
		return fr
	}
	for i, tc := range bad {
		before := p.Stats().RxDropped
		clear(f.mem[feTable : feTable+0x200])
		fill(i)
		tc.build()
		f.post(1, 0, 1)
		want := frame(100, 1000+i)
		f.goodTx(2, want)
		if got := read(); string(got) != string(want) {
			t.Fatalf("%s: got %x..., want the good frame after it", tc.name, head(got))
		}
		if got := p.Stats().RxDropped - before; got != 1 {
			t.Fatalf("%s: RxDropped grew by %d, want 1", tc.name, got)
		}
		if used := f.usedIdx(1); used != f.avail[1] {
			t.Fatalf("%s: used idx %d, want %d (every chain returned)", tc.name, used, f.avail[1])
		}
	}
	good := []struct {
		name  string
		build func()
	}{
		{"table at the head", func() { entry(0, buf, 12, vuproto.DescFNext, 1); entry(1, buf+12, 100, 0, 0); ring(0, tbl, 32, ind, 0) }},
		{"WRITE on the table's descriptor is ignored", func() { entry(0, buf, 112, 0, 0); ring(0, tbl, 16, ind|vuproto.DescFWrite, 0) }},
		{"direct descriptor then a table", func() { ring(0, buf, 12, vuproto.DescFNext, 1); ring(1, tbl, 16, ind, 0); entry(0, buf+12, 100, 0, 0) }},
		{"table entries out of order, spare entries unused", func() {
			// The table starts 3 entries into the area: its entry
			// k is the area's 3+k.
			entry(3+0, buf, 12, vuproto.DescFNext, 3)
			entry(3+3, buf+12, 60, vuproto.DescFNext, 1)
			entry(3+1, buf+72, 40, 0, 7)
			ring(0, tbl+3*16, 16*5, ind, 0)
		}},
	}
	for i, tc := range good {
		clear(f.mem[feTable : feTable+0x200])
		want := fill(2000 + i)
		_, tablesBefore := vhostuser.IndirectUsed(p)
		drops := p.Stats().RxDropped
		tc.build()
		f.post(1, 0, 1)
		// A good frame after it: a wrongly dropped one shows as this
		// one coming first, not as a read that never returns.
		sentinel := frame(100, 3000+i)
		f.goodTx(2, sentinel)
		if got := read(); string(got) != string(want) {
			t.Fatalf("%s: got %x..., want %x...", tc.name, head(got), head(want))
		}
		if got := read(); string(got) != string(sentinel) {
			t.Fatalf("%s: got %x... after it, want the sentinel frame", tc.name, head(got))
		}
		if _, tables := vhostuser.IndirectUsed(p); tables != tablesBefore+1 {
			t.Fatalf("%s: %d indirect tables walked, want 1", tc.name, tables-tablesBefore)
		}
		if p.Stats().RxDropped != drops {
			t.Fatalf("%s: dropped", tc.name)
		}
	}
	if !p.Connected() {
		t.Fatal("dropped frames cost the front-end its connection")
	}
}

func TestHostileIndirectReceive(t *testing.T) {
	p := listen(t, vhostuser.Options{MTU: 1500, WriteTimeout: -1})
	f := newHostileFEFeatures(t, p, 1<<vuproto.FVersion1|1<<vuproto.FRingIndirectDesc)
	tbl := f.gpaBase + feTable
	off := f.bufOff(0, 0)
	buf := f.gpaBase + uint64(off)
	w := frameio.NewBatch(1, 1500)
	w[0].N = copy(w[0].Buf, frame(1000, 1))
	ring := func(addr uint64, n uint32, flags uint16) { f.setDesc(0, 0, addr, n, flags, 0) }
	entry := func(i int, addr uint64, n uint32, flags, next uint16) { f.setDescAt(feTable, i, addr, n, flags, next) }
	wr, nx, ind := uint16(vuproto.DescFWrite), uint16(vuproto.DescFNext), uint16(vuproto.DescFIndirect)
	for _, tc := range []struct {
		name  string
		build func()
	}{
		{"read-only entry", func() { entry(0, buf, 2000, 0, 0); ring(tbl, 16, ind) }},
		{"nested", func() {
			entry(0, tbl+0x100, 16, ind, 0)
			f.setDescAt(feTable+0x100, 0, buf, 2000, wr, 0)
			ring(tbl, 16, ind)
		}},
		{"loop in the table", func() { entry(0, buf, 100, wr|nx, 1); entry(1, buf+100, 100, wr|nx, 0); ring(tbl, 32, ind) }},
		{"too small for the frame", func() { entry(0, buf, 12, wr|nx, 1); entry(1, buf+12, 500, wr, 0); ring(tbl, 32, ind) }},
		{"zero length", func() { entry(0, buf, 2000, wr, 0); ring(tbl, 0, ind) }},
		{"length not a multiple of 16", func() { entry(0, buf, 2000, wr, 0); ring(tbl, 17, ind) }},
		{"table outside memory", func() { ring(1<<50, 16, ind) }},
		{"huge table", func() { ring(tbl, 0xfffffff0, ind) }},
		{"INDIRECT with NEXT", func() { entry(0, buf, 2000, wr, 0); ring(tbl, 16, ind|nx|wr) }},
		{"entry outside memory", func() { entry(0, 1<<50, 2000, wr, 0); ring(tbl, 16, ind) }},
	} {
		clear(f.mem[feTable : feTable+0x200])
		tc.build()
		f.post(0, 0, 1)
		before := p.Stats().TxDropped
		if n, _ := p.WriteBatch(w); n != 0 {
			t.Fatalf("%s: the frame was delivered", tc.name)
		}
		if got := p.Stats().TxDropped - before; got != 1 {
			t.Fatalf("%s: TxDropped grew by %d, want 1", tc.name, got)
		}
		if used := f.usedIdx(0); used != f.avail[0] {
			t.Fatalf("%s: used idx %d, want %d", tc.name, used, f.avail[0])
		}
	}
	// A good table (its own descriptor without WRITE, as Linux posts
	// it): header in one entry, the frame across two more.
	clear(f.mem[feTable : feTable+0x200])
	clear(f.mem[off : off+0x1000])
	entry(0, buf, 12, wr|nx, 1)
	entry(1, buf+12, 600, wr|nx, 2)
	entry(2, buf+612, 1400, wr, 0)
	ring(tbl, 48, ind)
	f.post(0, 0, 1)
	toGuest, _ := vhostuser.IndirectUsed(p)
	if n, _ := p.WriteBatch(w); n != 1 {
		t.Fatal("a good indirect buffer was not used")
	}
	if now, _ := vhostuser.IndirectUsed(p); now != toGuest+1 {
		t.Fatalf("%d indirect tables walked for the good buffer, want 1", now-toGuest)
	}
	if got := f.mem[off+12 : off+12+1000]; string(got) != string(w[0].Bytes()) {
		t.Fatal("frame not written after the header, across the table's entries")
	}
	if f.mem[off+10] != 1 {
		t.Fatal("num_buffers not set in the header")
	}
	if l := le.Uint32(f.mem[f.usedOff(0)+4+8*int((f.avail[0]-1)%feNum)+4:]); l != 1012 {
		t.Fatalf("used len %d, want 1012", l)
	}
	if !p.Connected() {
		t.Fatal("dropped frames cost the front-end its connection")
	}
}
