//go:build linux

package vhostuser_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/vhostuser"
	"github.com/anka-net/anka/sdk/netkit/vhostuser/internal/vuproto"
	"github.com/anka-net/anka/sdk/netkit/vhostuser/vhostuserdriver"
)

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mtu     int
		size    int
		n       int
		rxChunk int
		txChunk int
		qsize   int
		// Indirect descriptors are on by default (the driver uses them
		// for chained buffers when the back-end offers them).
		noIndirect bool
		mix        bool
	}{
		{name: "64B", mtu: 1500, size: 64, n: 1000},
		{name: "1514B", mtu: 1500, size: 1514, n: 1000},
		{name: "1514B small queue", mtu: 1500, size: 1514, n: 300, qsize: 8},
		{name: "max MTU", mtu: frameio.MaxMTU, size: frameio.FrameSize(frameio.MaxMTU), n: 100},
		{name: "max MTU chained 4K", mtu: frameio.MaxMTU, size: frameio.FrameSize(frameio.MaxMTU), n: 100, rxChunk: 4096, txChunk: 4096, noIndirect: true},
		{name: "1514B chained 4K", mtu: 9000, size: 1514, n: 300, rxChunk: 4096, txChunk: 4096, noIndirect: true},
		{name: "9018B chained 100B", mtu: 9000, size: 9018, n: 50, rxChunk: 100, txChunk: 100, noIndirect: true},
		{name: "1514B indirect 4K", mtu: 1500, size: 1514, n: 1000, rxChunk: 4096, txChunk: 4096},
		{name: "max MTU indirect 4K", mtu: frameio.MaxMTU, size: frameio.FrameSize(frameio.MaxMTU), n: 300, rxChunk: 4096, txChunk: 4096},
		{name: "max MTU indirect 4K queue 8", mtu: frameio.MaxMTU, size: frameio.FrameSize(frameio.MaxMTU), n: 50, rxChunk: 4096, txChunk: 4096, qsize: 8},
		{name: "9018B indirect 100B", mtu: 9000, size: 9018, n: 50, rxChunk: 100, txChunk: 100},
		{name: "max MTU indirect receive only", mtu: frameio.MaxMTU, size: frameio.FrameSize(frameio.MaxMTU), n: 100, rxChunk: 4096},
		{name: "1514B mixed direct and indirect", mtu: 1500, size: 1514, n: 300, rxChunk: 512, txChunk: 512, mix: true},
		{name: "max MTU mixed direct and indirect", mtu: frameio.MaxMTU, size: frameio.FrameSize(frameio.MaxMTU), n: 100, rxChunk: 4096, txChunk: 4096, mix: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := listen(t, vhostuser.Options{MTU: tc.mtu, WriteTimeout: -1})
			d := dial(t, p, vhostuserdriver.DriverOptions{RxChunk: tc.rxChunk, TxChunk: tc.txChunk, QueueSize: tc.qsize,
				NoIndirect: tc.noIndirect, MixIndirect: tc.mix, WriteTimeout: -1})
			if !p.Connected() {
				t.Fatal("port does not report the driver as connected")
			}
			if got := d.Features()&(1<<vuproto.FRingIndirectDesc) != 0; got == tc.noIndirect {
				t.Fatalf("indirect descriptors negotiated: %v, want %v", got, !tc.noIndirect)
			}
			frames := make([][]byte, tc.n)
			for i := range frames {
				// Vary the length: the largest, then shorter ones.
				n := tc.size - (i%3)*(tc.size/4)
				frames[i] = frame(max(n, frameio.MinFrameLen), i)
			}
			t.Run("guest to port", func(t *testing.T) { transfer(t, d, p, frames, tc.mtu) })
			t.Run("port to guest", func(t *testing.T) { transfer(t, p, d, frames, tc.mtu) })
			ps, ds := p.Stats(), d.Stats()
			if ps.RxFrames != uint64(tc.n) || ds.RxFrames != uint64(tc.n) {
				t.Errorf("port got %d frames, driver %d; want %d each", ps.RxFrames, ds.RxFrames, tc.n)
			}
			if ps.RxDropped != 0 || ds.RxDropped != 0 {
				t.Errorf("drops: port %d, driver %d", ps.RxDropped, ds.RxDropped)
			}
			// Each frame through a chained buffer took one table when
			// indirect is on; half of the slots do with mix.
			toGuest, fromGuest := vhostuser.IndirectUsed(p)
			for _, c := range []struct {
				dir   string
				chunk int
				got   uint64
			}{{"to the guest", tc.rxChunk, toGuest}, {"from the guest", tc.txChunk, fromGuest}} {
				switch {
				case tc.noIndirect || c.chunk == 0:
					if c.got != 0 {
						t.Errorf("%s: %d indirect tables, want none", c.dir, c.got)
					}
				case tc.mix:
					if c.got == 0 || c.got >= uint64(tc.n) {
						t.Errorf("%s: %d of %d frames through indirect tables, want some but not all", c.dir, c.got, tc.n)
					}
				default:
					if c.got != uint64(tc.n) {
						t.Errorf("%s: %d of %d frames through indirect tables, want all", c.dir, c.got, tc.n)
					}
				}
			}
		})
	}
}

// Front-ends with and without indirect descriptors follow each other on
// one port: what one negotiated does not carry over to the next.
func TestReconnectIndirect(t *testing.T) {
	const mtu = frameio.MaxMTU
	p := listen(t, vhostuser.Options{MTU: mtu, WriteTimeout: -1})
	big := frameio.FrameSize(mtu)
	frames := [][]byte{frame(64, 1), frame(1514, 2), frame(big, 3), frame(big/2, 4)}
	var wantTo, wantFrom uint64
	for i, noInd := range []bool{false, true, false} {
		d, err := vhostuserdriver.Dial(p.Path(), vhostuserdriver.DriverOptions{MTU: mtu, HostMTU: mtu, RxChunk: 4096, TxChunk: 4096,
			NoIndirect: noInd, WriteTimeout: -1, Log: testLog(t)})
		if err != nil {
			t.Fatal(err)
		}
		transfer(t, d, p, frames, mtu)
		transfer(t, p, d, frames, mtu)
		if !noInd {
			wantTo += uint64(len(frames))
			wantFrom += uint64(len(frames))
		}
		if to, from := vhostuser.IndirectUsed(p); to != wantTo || from != wantFrom {
			t.Fatalf("front-end %d (indirect %v): %d/%d tables to/from the guest so far, want %d/%d", i, !noInd, to, from, wantTo, wantFrom)
		}
		d.Close()
		eventually(t, "the port notices the driver left", func() bool { return !p.Connected() })
	}
	if s := p.Stats(); s.RxDropped != 0 || s.TxDropped != 0 {
		t.Fatalf("drops: %+v", s)
	}
}

// A frame larger than the port's MTU from the guest is dropped and
// counted; frames around it pass.
func TestOversizeFromGuestDropped(t *testing.T) {
	p := listen(t, vhostuser.Options{MTU: 1500, WriteTimeout: -1})
	d := dial(t, p, vhostuserdriver.DriverOptions{MTU: 9000, WriteTimeout: -1})
	if err := send(t, d, [][]byte{frame(100, 1), frame(3000, 2), frame(200, 3)}, 9000); err != nil {
		t.Fatal(err)
	}
	got, err := receive(p, 2, 1500)
	if err != nil {
		t.Fatal(err)
	}
	if err := sameFrames(got, [][]byte{frame(100, 1), frame(200, 3)}); err != nil {
		t.Fatal(err)
	}
	if s := p.Stats(); s.RxDropped != 1 {
		t.Fatalf("RxDropped = %d, want 1", s.RxDropped)
	}
}

// The port stays the same object across front-ends: a read pending while
// the first disconnects gets the second's frames; writes without a
// front-end are dropped and counted.
func TestReconnect(t *testing.T) {
	const mtu = 1500
	p := listen(t, vhostuser.Options{MTU: mtu, WriteTimeout: -1})
	d1 := dial(t, p, vhostuserdriver.DriverOptions{WriteTimeout: -1})
	transfer(t, d1, p, [][]byte{frame(64, 1)}, mtu)
	transfer(t, p, d1, [][]byte{frame(64, 2)}, mtu)

	type result struct {
		frames [][]byte
		err    error
	}
	pending := make(chan result, 1)
	go func() {
		f, err := receive(p, 1, mtu)
		pending <- result{f, err}
	}()
	d1.Close()
	eventually(t, "the port notices the driver left", func() bool { return !p.Connected() })

	batch := frameio.NewBatch(3, mtu)
	for i := range batch {
		batch[i].N = copy(batch[i].Buf, frame(64, i))
	}
	before := p.Stats().TxDropped
	if n, err := p.WriteBatch(batch); n != 0 || err != nil {
		t.Fatalf("WriteBatch without a front-end = %d, %v; want 0, nil", n, err)
	}
	if got := p.Stats().TxDropped - before; got != 3 {
		t.Fatalf("TxDropped grew by %d, want 3", got)
	}

	d2 := dial(t, p, vhostuserdriver.DriverOptions{WriteTimeout: -1})
	if err := send(t, d2, [][]byte{frame(70, 3)}, mtu); err != nil {
		t.Fatal(err)
	}
	r := <-pending
	if r.err != nil {
		t.Fatal(r.err)
	}
	if err := sameFrames(r.frames, [][]byte{frame(70, 3)}); err != nil {
		t.Fatal(err)
	}
	transfer(t, p, d2, [][]byte{frame(80, 4), frame(1514, 5)}, mtu)
}

// GET_VRING_BASE stops a queue and reports exactly how far the back-end
// got; a stopped receive queue drops what the port writes; a restarted
// queue resumes where it stopped, nothing lost or repeated.
func TestStopQueue(t *testing.T) {
	const mtu = 1500
	p := listen(t, vhostuser.Options{MTU: mtu, WriteTimeout: -1})
	d := dial(t, p, vhostuserdriver.DriverOptions{WriteTimeout: -1, QueueSize: 16})
	var first [][]byte
	for i := range 21 {
		first = append(first, frame(100, i))
	}
	transfer(t, d, p, first, mtu)
	base, err := d.StopQueue(1)
	if err != nil {
		t.Fatal(err)
	}
	if base != 21 {
		t.Fatalf("GET_VRING_BASE of the transmit queue = %d, want 21", base)
	}
	// Frames queued while stopped wait in the ring.
	queued := [][]byte{frame(60, 100), frame(61, 101), frame(62, 102)}
	if err := send(t, d, queued, mtu); err != nil {
		t.Fatal(err)
	}
	if err := d.StartQueue(1); err != nil {
		t.Fatal(err)
	}
	got, err := receive(p, 3, mtu)
	if err != nil {
		t.Fatal(err)
	}
	if err := sameFrames(got, queued); err != nil {
		t.Fatal(err)
	}

	rxBase, err := d.StopQueue(0)
	if err != nil {
		t.Fatal(err)
	}
	if rxBase != 0 {
		t.Fatalf("GET_VRING_BASE of the receive queue = %d, want 0 (nothing delivered yet)", rxBase)
	}
	b := frameio.NewBatch(1, mtu)
	b[0].N = copy(b[0].Buf, frame(64, 7))
	before := p.Stats().TxDropped
	if n, _ := p.WriteBatchNoWait(b); n != 0 || p.Stats().TxDropped != before+1 {
		t.Fatalf("write to a stopped queue: sent %d, TxDropped %d→%d; want 0 sent, one drop", n, before, p.Stats().TxDropped)
	}
	if err := d.StartQueue(0); err != nil {
		t.Fatal(err)
	}
	transfer(t, p, d, [][]byte{frame(64, 8), frame(65, 9)}, mtu)
}

func TestConfigAdvertisesMACAndMTU(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	p := listen(t, vhostuser.Options{MTU: 9000, MAC: mac})
	d := dial(t, p, vhostuserdriver.DriverOptions{})
	gotMAC, gotMTU, err := d.Config()
	if err != nil {
		t.Fatal(err)
	}
	if gotMAC.String() != mac.String() || gotMTU != 9000 {
		t.Fatalf("config: MAC %s MTU %d, want %s 9000", gotMAC, gotMTU, mac)
	}
}

// A driver whose MTU (host_mtu) exceeds the port's is refused at
// NET_SET_MTU, with a reason.
func TestDriverMTUTooLarge(t *testing.T) {
	p := listen(t, vhostuser.Options{MTU: 1500})
	_, err := vhostuserdriver.Dial(p.Path(), vhostuserdriver.DriverOptions{MTU: 9000, HostMTU: 9000})
	if err == nil || !strings.Contains(err.Error(), "NET_SET_MTU") {
		t.Fatalf("Dial with MTU 9000 to a 1500 port: %v, want a refused NET_SET_MTU", err)
	}
}

func TestListenPath(t *testing.T) {
	dir := sockDir(t)
	file := filepath.Join(dir, "plain")
	if err := os.WriteFile(file, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := vhostuser.Listen(file, vhostuser.Options{}); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen on a regular file: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Fatal("the regular file was changed")
	}
	// A stale socket (its listener gone) is replaced.
	sock := filepath.Join(dir, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	p, err := vhostuser.Listen(sock, vhostuser.Options{})
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	p.Close()
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file left after Close: %v", err)
	}
	if _, err := vhostuser.Listen(sock, vhostuser.Options{MTU: 10}); err == nil {
		t.Fatal("MTU 10 accepted")
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	p := listen(t, vhostuser.Options{})
	dial(t, p, vhostuserdriver.DriverOptions{})
	done := make(chan error, 1)
	go func() {
		_, err := p.ReadBatch(frameio.NewBatch(4, 1500))
		done <- err
	}()
	p.Close()
	if err := <-done; !errors.Is(err, frameio.ErrClosed) {
		t.Fatalf("ReadBatch after Close: %v, want ErrClosed", err)
	}
	if _, err := p.WriteBatch(frameio.NewBatch(1, 1500)); !errors.Is(err, frameio.ErrClosed) {
		t.Fatalf("WriteBatch after Close: %v", err)
	}
	if p.Kind() != frameio.KindVhostUser {
		t.Fatalf("Kind = %q", p.Kind())
	}
}

func openFDs(t *testing.T) int {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// Front-ends coming and going, and ports opening and closing, leave no
// file descriptors behind (eventfds, memfds, sockets, epoll).
func TestNoFDLeak(t *testing.T) {
	before := openFDs(t)
	for range 5 {
		p, err := vhostuser.Listen(filepath.Join(sockDir(t), "s"), vhostuser.Options{WriteTimeout: -1})
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			d, err := vhostuserdriver.Dial(p.Path(), vhostuserdriver.DriverOptions{WriteTimeout: -1})
			if err != nil {
				t.Fatal(err)
			}
			transfer(t, d, p, [][]byte{frame(64, 1)}, 1500)
			transfer(t, p, d, [][]byte{frame(64, 2)}, 1500)
			d.Close()
			eventually(t, "the port notices the driver left", func() bool { return !p.Connected() })
		}
		p.Close()
	}
	if after := openFDs(t); after > before {
		t.Fatalf("%d file descriptors open before, %d after", before, after)
	}
}

// A disabled transmit queue is drained and its frames discarded (counted);
// a disabled receive queue takes nothing. Enabled again, both carry.
func TestDisabledQueues(t *testing.T) {
	const mtu = 1500
	p := listen(t, vhostuser.Options{MTU: mtu, WriteTimeout: -1})
	d := dial(t, p, vhostuserdriver.DriverOptions{WriteTimeout: -1})
	pending := make(chan [][]byte, 1)
	go func() {
		got, _ := receive(p, 1, mtu)
		pending <- got
	}()
	if err := d.EnableQueue(1, false); err != nil {
		t.Fatal(err)
	}
	if err := send(t, d, [][]byte{frame(64, 1), frame(64, 2), frame(64, 3)}, mtu); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the disabled queue is drained", func() bool { return p.Stats().RxDropped == 3 })
	if err := d.EnableQueue(1, true); err != nil {
		t.Fatal(err)
	}
	if err := send(t, d, [][]byte{frame(64, 4)}, mtu); err != nil {
		t.Fatal(err)
	}
	if err := sameFrames(<-pending, [][]byte{frame(64, 4)}); err != nil {
		t.Fatal(err)
	}
	if s := p.Stats(); s.RxDropped != 3 || s.RxFrames != 1 {
		t.Fatalf("RxDropped %d RxFrames %d, want 3 discarded and 1 delivered", s.RxDropped, s.RxFrames)
	}

	if err := d.EnableQueue(0, false); err != nil {
		t.Fatal(err)
	}
	b := frameio.NewBatch(1, mtu)
	b[0].N = copy(b[0].Buf, frame(64, 5))
	if n, _ := p.WriteBatch(b); n != 0 {
		t.Fatal("a frame went into a disabled receive queue")
	}
	if err := d.EnableQueue(0, true); err != nil {
		t.Fatal(err)
	}
	transfer(t, p, d, [][]byte{frame(64, 6)}, mtu)
}

// A guest that stops taking frames costs WriteBatch at most WriteTimeout
// per batch: what fits in its posted buffers is delivered, the rest is
// dropped and counted, nothing blocks.
func TestGuestThatStopsReading(t *testing.T) {
	const mtu = 1500
	p := listen(t, vhostuser.Options{MTU: mtu})
	dial(t, p, vhostuserdriver.DriverOptions{QueueSize: 64})
	b := frameio.NewBatch(16, mtu)
	for i := range b {
		b[i].N = copy(b[i].Buf, frame(100, i))
	}
	sent := 0
	for range 10 {
		n, err := p.WriteBatch(b)
		if err != nil {
			t.Fatal(err)
		}
		sent += n
	}
	if s := p.Stats(); sent != 64 || s.TxFrames != 64 || s.TxDropped != 160-64 {
		t.Fatalf("sent %d, stats %+v; want the 64 posted buffers filled and 96 frames dropped", sent, s)
	}
}
