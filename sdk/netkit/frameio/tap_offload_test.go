//go:build linux

package frameio_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

var (
	guestIP6 = net.ParseIP("fd99::2")
	hostIP6  = net.ParseIP("fd99::1")
)

// guestSeg is a TCP segment from the guest (port 40000) to the host's
// port 7777, over IPv4 or IPv6. partial leaves the TCP checksum as a
// guest with checksum offload does (the pseudo-header's sum, Off saying
// where to complete it); otherwise it is complete.
func guestSeg(v6 bool, dst net.HardwareAddr, seq, ack uint32, flags byte, payload []byte, partial bool) frameio.Frame {
	return tcpSeg(v6, dst, 40000, 7777, seq, ack, flags, payload, partial)
}

// tcpSeg is guestSeg between any two ports.
func tcpSeg(v6 bool, dst net.HardwareAddr, sport, dport uint16, seq, ack uint32, flags byte, payload []byte, partial bool) frameio.Frame {
	l4 := 34
	if v6 {
		l4 = 54
	}
	n := l4 + 20 + len(payload)
	f := make([]byte, max(frameio.FrameSize(1500), n))
	copy(f[0:], dst)
	copy(f[6:], guestMAC)
	var pseudo []byte
	if v6 {
		f[12], f[13] = 0x86, 0xdd
		ip := f[14:54]
		ip[0], ip[6], ip[7] = 0x60, 6, 64
		binary.BigEndian.PutUint16(ip[4:], uint16(n-54))
		copy(ip[8:], guestIP6)
		copy(ip[24:], hostIP6)
		pseudo = append(append([]byte{}, ip[8:40]...), 0, 0, byte((n-54)>>8), byte(n-54), 0, 0, 0, 6)
	} else {
		f[12], f[13] = 0x08, 0x00
		ip := f[14:34]
		ip[0], ip[6], ip[8], ip[9] = 0x45, 0x40, 64, 6
		binary.BigEndian.PutUint16(ip[2:], uint16(n-14))
		binary.BigEndian.PutUint16(ip[4:], uint16(seq))
		copy(ip[12:], guestIP)
		copy(ip[16:], hostIP)
		binary.BigEndian.PutUint16(ip[10:], checksum(ip))
		pseudo = append(append([]byte{}, ip[12:20]...), 0, 6, byte((n-34)>>8), byte(n-34))
	}
	tcp := f[l4:n]
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], ack)
	tcp[12], tcp[13] = 5<<4, flags
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	copy(tcp[20:], payload)
	fr := frameio.Frame{Buf: f, N: n}
	if partial {
		binary.BigEndian.PutUint16(tcp[16:], ^checksum(pseudo))
		fr.Off = frameio.Offload{Partial: true, CsumStart: uint16(l4), CsumOffset: 16}
	} else {
		binary.BigEndian.PutUint16(tcp[16:], checksum(append(pseudo, tcp...)))
	}
	return fr
}

// offloadTAP opens an offloading TAP anka0 in a new namespace, with the
// host's addresses on it and the guest's MAC known to the host (no ARP
// or neighbour discovery to answer), and returns it with the kernel's
// MAC.
func offloadTAP(t *testing.T, o frameio.TAPOptions) (*frameiotest.Netns, *frameio.TAPPort, net.HardwareAddr) {
	t.Helper()
	ns := frameiotest.NewNetns(t)
	o.MTU = 1500
	tap := openTAP(t, ns, o)
	var kmac net.HardwareAddr
	if err := ns.Run(func() error {
		ifc, err := net.InterfaceByName("anka0")
		if err == nil {
			kmac = ifc.HardwareAddr
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ns.IP(t, "addr", "add", "10.99.0.1/24", "dev", "anka0")
	ns.IP(t, "addr", "add", "fd99::1/64", "dev", "anka0", "nodad")
	ns.IP(t, "neigh", "replace", "10.99.0.2", "lladdr", guestMAC.String(), "dev", "anka0")
	ns.IP(t, "neigh", "replace", "fd99::2", "lladdr", guestMAC.String(), "dev", "anka0")
	return ns, tap, kmac
}

func TestTAPTakesPartial(t *testing.T) {
	for _, c := range []struct {
		o    frameio.TAPOptions
		want bool
	}{{frameio.TAPOptions{}, false}, {frameio.TAPOptions{Offload: true}, true}, {frameio.TAPOptions{PassOffload: true}, true}} {
		_, tap, _ := offloadTAP(t, c.o)
		if got := tap.TakesPartial(); got != c.want {
			t.Errorf("%+v: TakesPartial %v, want %v", c.o, got, c.want)
		}
	}
	ns := frameiotest.NewNetns(t)
	err := ns.Run(func() error {
		tap, err := frameio.OpenTAP("anka9", frameio.TAPOptions{Offload: true, PassOffload: true})
		if err == nil {
			tap.Close()
		}
		return err
	})
	if err == nil {
		t.Fatal("a TAP opened with both Offload and PassOffload")
	}
}

// Frames whose TCP checksum a guest left partial, written to an
// offloading TAP, reach the host's TCP intact: a SYN alone (one write
// with NEEDS_CSUM), then runs of segments, partial and complete mixed,
// merged into one write. Over IPv4 and IPv6. With HandGSO the TAP takes
// a GSO frame (a guest's TSO segment) whole as well; without, it refuses
// one.
func TestTAPOffloadPartialWrite(t *testing.T) {
	for _, c := range []struct{ v6, hand bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		v6, hand := c.v6, c.hand
		t.Run(fmt.Sprintf("v6=%v,HandGSO=%v", v6, hand), func(t *testing.T) {
			ns, tap, kmac := offloadTAP(t, frameio.TAPOptions{Offload: true, HandGSO: hand})
			if tap.TakesGSO() != hand {
				t.Fatalf("TakesGSO %v with HandGSO %v", tap.TakesGSO(), hand)
			}
			network, addr := "tcp4", "10.99.0.1:7777"
			if v6 {
				network, addr = "tcp6", "[fd99::1]:7777"
			}
			const size = 1440       // fits the MTU over IPv6 too
			const total = 44 * size // within the host's window (no window scaling)
			got := ns.Receive(t, network, addr, total, 5*time.Second)
			l4 := 34
			if v6 {
				l4 = 54
			}
			synack := func(f []byte) bool { return isTCP(f, v6) && f[l4+13] == 0x12 }
			const iss = 1000
			syn := guestSeg(v6, kmac, iss, 0, 0x02, nil, true)
			if n, err := tap.WriteBatch([]frameio.Frame{syn}); n != 1 || err != nil {
				t.Fatalf("partial SYN: wrote %d: %v", n, err)
			}
			sa := collectMatching(t, tap, 1, synack)[0]
			hostSeq := binary.BigEndian.Uint32(sa[l4+4:]) + 1
			ack := guestSeg(v6, kmac, iss+1, hostSeq, 0x10, nil, true)
			tap.WriteBatch([]frameio.Frame{ack})

			want := make([]byte, total)
			for i := range want {
				want[i] = byte(i*13 + i>>9)
			}
			var batch []frameio.Frame
			plain := total
			if hand {
				plain = total - 8*size // the last 8 go as one GSO frame
			}
			for off := 0; off < plain; off += size {
				flags := byte(0x10)
				if off+size == plain || off == 20*size {
					flags = 0x18 // a PSH ends a run
				}
				partial := (off/size)%5 != 2 // every fifth complete
				batch = append(batch, guestSeg(v6, kmac, iss+1+uint32(off), hostSeq, flags, want[off:off+size], partial))
			}
			if hand {
				g := guestSeg(v6, kmac, iss+1+uint32(plain), hostSeq, 0x18, want[plain:], true)
				g.Off.GSO, g.Off.GSOSize = frameio.GSOTCPv4, size
				if v6 {
					g.Off.GSO = frameio.GSOTCPv6
				}
				batch = append(batch, g)
			}
			if n, err := tap.WriteBatch(batch); n != len(batch) || err != nil {
				t.Fatalf("wrote %d of %d: %v", n, len(batch), err)
			}
			if b := <-got; !bytes.Equal(b, want) {
				t.Fatalf("the host read %d bytes of %d, or not the same", len(b), total)
			}
			if s := tap.Stats(); s.TxFrames != uint64(2+len(batch)) || s.TxDropped != 0 {
				t.Fatalf("stats %+v", s)
			}

			// What the kernel cannot complete is dropped and counted,
			// never written: a checksum's place outside the frame, and
			// without HandGSO a GSO segment.
			odd := guestSeg(v6, kmac, iss+1+total, hostSeq, 0x18, []byte("x"), true)
			odd.Off.CsumOffset = 2000
			bad := []frameio.Frame{odd}
			if !hand {
				gso := guestSeg(v6, kmac, iss+1+total, hostSeq, 0x18, []byte("x"), true)
				gso.Off.GSO, gso.Off.GSOSize = frameio.GSOTCPv4, 1000
				bad = append(bad, gso)
			}
			if n, _ := tap.WriteBatch(bad); n != 0 || tap.Stats().TxDropped != uint64(len(bad)) {
				t.Fatalf("wrote %d frames the kernel cannot take; stats %+v", n, tap.Stats())
			}
		})
	}
}

// tcpValid says whether the TCP checksum of frame f is valid.
func tcpValid(f []byte, v6 bool) bool {
	var pseudo []byte
	l4 := 34
	if v6 {
		l4 = 54
		n := len(f) - l4
		pseudo = append(append([]byte{}, f[22:54]...), 0, 0, byte(n>>8), byte(n), 0, 0, 0, 6)
	} else {
		n := len(f) - l4
		pseudo = append(append([]byte{}, f[26:34]...), 0, 6, byte(n>>8), byte(n))
	}
	return checksum(append(pseudo, f[l4:]...)) == 0
}

// The host's TCP sending to the guest through an offloading TAP: every
// TCP frame the port hands up (the host's SYN and ACKs, which the kernel
// leaves partial, and the pieces of its TSO segments, cut partial) comes
// with its checksum partial at the TCP header and finishes to a valid
// one; the data comes whole. Over IPv4 and IPv6. With HandGSO, into a
// batch whose first frames are large, the host's TSO segments come up
// whole (WholeGSO), and cut by a Segmenter give the same pieces; what
// lands in the small frames is cut by the port as before.
func TestTAPOffloadReadPartial(t *testing.T) {
	for _, hand := range []bool{false, true} {
		for _, v6 := range []bool{false, true} {
			t.Run(fmt.Sprintf("v6=%v,HandGSO=%v", v6, hand), func(t *testing.T) {
				testTAPOffloadRead(t, v6, hand)
			})
		}
	}
}

func testTAPOffloadRead(t *testing.T, v6, hand bool) {
	ns, tap, kmac := offloadTAP(t, frameio.TAPOptions{Offload: true, HandGSO: hand})
	if (tap.GSOBuffers() > 0) != hand {
		t.Fatalf("GSOBuffers %d with HandGSO %v", tap.GSOBuffers(), hand)
	}
	network, addr, l4 := "tcp4", "10.99.0.2:7777", 34
	if v6 {
		network, addr, l4 = "tcp6", "[fd99::2]:7777", 54
	}
	const total = 256 << 10
	want := make([]byte, total)
	for i := range want {
		want[i] = byte(i*5 + i>>8)
	}
	sent := make(chan error, 1)
	go ns.Run(func() error {
		c, err := net.DialTimeout(network, addr, 5*time.Second)
		if err == nil {
			c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			_, err = c.Write(want)
			c.Close()
		}
		sent <- err
		return nil
	})
	type result struct {
		data               []byte
		frames, big, whole int
		err                error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		defer func() { done <- r }()
		batch := frameio.NewBatch(16, 1500)
		if hand {
			copy(batch, frameio.NewBatchSize(4, frameio.MaxGSOLen))
		}
		var next uint32
		var hostPort uint16
		wantOff := frameio.Offload{Partial: true, CsumStart: uint16(l4), CsumOffset: 16}
		// take checks one TCP frame of MTU size and answers it.
		take := func(f *frameio.Frame) error {
			r.frames++
			if f.Off != wantOff {
				return fmt.Errorf("TCP frame %d handed up with Off %+v, want %+v", r.frames, f.Off, wantOff)
			}
			if !f.Finish() || !tcpValid(f.Bytes(), v6) {
				return fmt.Errorf("TCP frame %d does not finish to a valid checksum", r.frames)
			}
			tcp := f.Bytes()[l4:]
			seq := binary.BigEndian.Uint32(tcp[4:])
			var reply frameio.Frame
			if tcp[13]&0x02 != 0 {
				hostPort, next = binary.BigEndian.Uint16(tcp[0:]), seq+1
				reply = tcpSeg(v6, kmac, 7777, hostPort, 5000, next, 0x12, nil, false)
			} else {
				pl := tcp[int(tcp[12]>>4)*4:]
				if seq == next && len(pl) > 0 {
					r.data = append(r.data, pl...)
					next += uint32(len(pl))
					if len(pl) > 500 {
						r.big++
					}
				}
				reply = tcpSeg(v6, kmac, 7777, hostPort, 5001, next, 0x10, nil, false)
			}
			tap.WriteBatch([]frameio.Frame{reply})
			return nil
		}
		var seg frameio.Segmenter
		piece := frameio.NewBatch(1, 1500)[0]
		for len(r.data) < total {
			n, err := tap.ReadBatch(batch)
			if err != nil {
				r.err = err
				return
			}
			for i := range n {
				f := &batch[i]
				if !isTCP(f.Bytes(), v6) {
					continue
				}
				if f.Off.GSO == frameio.GSONone {
					if r.err = take(f); r.err != nil {
						return
					}
					continue
				}
				r.whole++
				if !hand || cap(f.Buf) < frameio.MaxGSOLen || !frameio.WholeGSO(f.Bytes(), f.Off) {
					r.err = fmt.Errorf("a GSO frame of %d bytes handed up (HandGSO %v, buffer %d, offload %+v)", f.N, hand, cap(f.Buf), f.Off)
					return
				}
				if r.err = seg.Load(f.Bytes(), f.Off); r.err != nil {
					return
				}
				for seg.Pending() {
					if !seg.Next(&piece, true) {
						r.err = fmt.Errorf("a piece of a %d-byte GSO frame does not fit the MTU", f.N)
						return
					}
					if r.err = take(&piece); r.err != nil {
						return
					}
				}
			}
		}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(20 * time.Second):
		tap.Close()
		r = <-done
		t.Fatalf("timed out: %d bytes of %d after %d TCP frames", len(r.data), total, r.frames)
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	if !bytes.Equal(r.data, want) {
		t.Fatalf("the guest got %d bytes of %d, or not the same", len(r.data), total)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if r.big == 0 {
		t.Fatal("no data segment of the host's MSS came")
	}
	if hand && r.whole == 0 {
		t.Fatal("HandGSO: no GSO frame came up whole")
	}
	if s := tap.Stats(); s.RxDropped != 0 {
		t.Fatalf("the TAP dropped %d", s.RxDropped)
	}
	t.Logf("%d TCP frames, all partial, %d with data, %d GSO frames handed up whole", r.frames, r.big, r.whole)
}

// HandGSO without Offload is refused, naming the fix.
func TestTAPHandGSOWantsOffload(t *testing.T) {
	ns := frameiotest.NewNetns(t)
	err := ns.Run(func() error {
		tap, err := frameio.OpenTAP("anka0", frameio.TAPOptions{HandGSO: true})
		if err == nil {
			tap.Close()
		}
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "set Offload too") {
		t.Fatalf("got %v, want a refusal naming Offload", err)
	}
}

// relay moves frames from one PassOffload TAP to another, Off
// untouched, counting what it saw, until from is closed.
type relay struct {
	gso, partial, frames atomic.Int64
	maxLen               atomic.Int64
}

func (r *relay) run(from, to *frameio.TAPPort, wg *sync.WaitGroup) {
	defer wg.Done()
	fs := make([]frameio.Frame, 8)
	for i := range fs {
		fs[i].Buf = make([]byte, frameio.MaxGSOLen)
	}
	for {
		n, err := from.ReadBatch(fs)
		if err != nil {
			return
		}
		for i := 0; i < n; i++ {
			r.frames.Add(1)
			if fs[i].Off.GSO != frameio.GSONone {
				r.gso.Add(1)
			}
			if fs[i].Off.Partial {
				r.partial.Add(1)
			}
			if int64(fs[i].N) > r.maxLen.Load() {
				r.maxLen.Store(int64(fs[i].N))
			}
		}
		to.WriteBatch(fs[:n])
	}
}

// Two namespaces, each with a PassOffload TAP, joined by a relay that
// passes frames with their offloads: a TCP transfer of a few MB from one
// to the other arrives intact, and what the relay carried were GSO
// segments and partial checksums, as between a guest with TSO and its
// host.
func TestTAPPassOffload(t *testing.T) {
	nsA, nsB := frameiotest.NewNetns(t), frameiotest.NewNetns(t)
	open := func(ns *frameiotest.Netns, addr string) *frameio.TAPPort {
		tap := openTAP(t, ns, frameio.TAPOptions{MTU: 1500, PassOffload: true})
		ns.IP(t, "addr", "add", addr, "dev", "anka0")
		return tap
	}
	a, b := open(nsA, "10.98.0.1/24"), open(nsB, "10.98.0.2/24")
	var ab, ba relay
	var wg sync.WaitGroup
	wg.Add(2)
	go ab.run(a, b, &wg)
	go ba.run(b, a, &wg)
	defer func() { a.Close(); b.Close(); wg.Wait() }()

	const total = 8 << 20
	want := make([]byte, total)
	for i := range want {
		want[i] = byte(i*7 + i>>11)
	}
	got := nsB.Receive(t, "tcp4", "10.98.0.2:7777", total, 20*time.Second)
	var c net.Conn
	if err := nsA.Run(func() (err error) { c, err = net.DialTimeout("tcp4", "10.98.0.2:7777", 5*time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetWriteDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write(want); err != nil {
		t.Fatal(err)
	}
	if g := <-got; !bytes.Equal(g, want) {
		t.Fatalf("read %d bytes of %d, or not the same", len(g), total)
	}
	t.Logf("A to B: %d frames, %d GSO, %d partial, largest %d bytes; B to A: %d frames, %d partial",
		ab.frames.Load(), ab.gso.Load(), ab.partial.Load(), ab.maxLen.Load(), ba.frames.Load(), ba.partial.Load())
	if ab.gso.Load() == 0 || ab.maxLen.Load() <= int64(frameio.FrameSize(1500)) {
		t.Fatal("the sender's kernel handed no TSO segments through the relay")
	}
	if ab.partial.Load() == 0 || ba.partial.Load() == 0 {
		t.Fatal("no partial checksums passed through the relay")
	}
	if sa, sb := a.Stats(), b.Stats(); sa.TxDropped != 0 || sb.TxDropped != 0 || sa.RxDropped != 0 || sb.RxDropped != 0 {
		t.Fatalf("drops: A %+v, B %+v", sa, sb)
	}
	if s := b.Stats(); s.TxBytes <= total {
		t.Fatalf("B's TAP wrote %d bytes for a %d-byte transfer", s.TxBytes, total)
	}
}

// A PassOffload TAP drops a GSO segment larger than the buffer it is
// read into, and counts it: the host's TCP, talking to the guest through
// the TAP, hands it its first flight as one TSO segment.
func TestTAPPassOffloadSmallBuffer(t *testing.T) {
	ns, tap, kmac := offloadTAP(t, frameio.TAPOptions{PassOffload: true})
	dialed := make(chan error, 1)
	go ns.Run(func() error {
		c, err := net.DialTimeout("tcp4", "10.99.0.2:7777", 5*time.Second)
		if err == nil {
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Write(make([]byte, 64<<10))
			c.Close()
		}
		dialed <- err
		return nil
	})
	syn := collectMatching(t, tap, 1, func(f []byte) bool { return isTCP(f, false) && f[47] == 0x02 })[0]
	sport := binary.BigEndian.Uint16(syn[34:])
	synack := tcpSeg(false, kmac, 7777, sport, 5000, binary.BigEndian.Uint32(syn[38:])+1, 0x12, nil, false)
	if n, _ := tap.WriteBatch([]frameio.Frame{synack}); n != 1 {
		t.Fatal("SYN-ACK not written")
	}
	if err := <-dialed; err != nil {
		t.Fatal(err)
	}
	// The host's socket now sends what it can: without an MSS option,
	// 536-byte segments, ten of them in one TSO segment of 5 KiB. A
	// buffer of one frame cannot hold it.
	type result struct {
		n, max int
	}
	done := make(chan result, 1)
	go func() {
		small := frameio.NewBatch(4, 1500)
		var r result
		for {
			n, err := tap.ReadBatch(small)
			if err != nil {
				done <- r
				return
			}
			for i := 0; i < n; i++ {
				r.n++
				r.max = max(r.max, small[i].N)
			}
		}
	}()
	waitFor(t, "a TSO segment dropped for want of room", func() bool { return tap.Stats().RxDropped > 0 })
	tap.Close()
	r := <-done
	if r.max > frameio.FrameSize(1500) {
		t.Fatalf("a %d-byte frame read into a %d-byte buffer", r.max, frameio.FrameSize(1500))
	}
}

// isTCP says whether f is a TCP segment over IPv4 or IPv6.
func isTCP(f []byte, v6 bool) bool {
	if v6 {
		return len(f) >= 74 && etherType(f) == 0x86dd && f[20] == 6
	}
	return len(f) >= 54 && etherType(f) == 0x0800 && f[23] == 6
}
