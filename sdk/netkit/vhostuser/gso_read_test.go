//go:build linux

package vhostuser_test

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/vhostuser"
	"github.com/anka-net/anka/sdk/netkit/vhostuser/vhostuserdriver"
	"github.com/anka-net/anka/sdk/netkit/vswitch"
)

// mixedBatch is a batch as the switch gives a frameio.GSOReader: large
// buffers (frameio.MaxGSOLen) first, then MTU-sized ones.
func mixedBatch(large, n, mtu int) []frameio.Frame {
	fs := frameio.NewBatch(n, mtu)
	big := frameio.NewBatchSize(large, frameio.MaxGSOLen)
	copy(fs, big)
	return fs
}

// readOnce is one ReadBatch into fs, of frames the driver posted before
// (so it does not wait), copied out.
func readOnce(t *testing.T, p *vhostuser.Port, fs []frameio.Frame) []got {
	t.Helper()
	n, err := p.ReadBatch(fs)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]got, n)
	for i, f := range fs[:n] {
		out[i] = got{bytes.Clone(f.Bytes()), f.Off}
	}
	return out
}

// GSOBuffers is 4 unless NoOffload (no HOST_TSO offered), whatever the
// front-end.
func TestGSOBuffers(t *testing.T) {
	for _, no := range []bool{false, true} {
		p := listen(t, vhostuser.Options{MTU: 1500, NoOffload: no})
		want := 4
		if no {
			want = 0
		}
		if g := p.GSOBuffers(); g != want {
			t.Fatalf("NoOffload %v: GSOBuffers %d, want %d", no, g, want)
		}
	}
}

// A guest's TSO frames read into large buffers are handed up whole, as
// the guest sent them, with the Off that says how to cut them; the batch's
// MTU-sized buffers get the rest cut as before.
func TestGSOReadWhole(t *testing.T) {
	p := listen(t, vhostuser.Options{MTU: 1500, WriteTimeout: -1})
	d := dial(t, p, vhostuserdriver.DriverOptions{Offload: true, WriteTimeout: -1})
	b4 := buildPkt(t, pktSpec{kind: kindTCP, payload: payloadBytes(30000, 1)})
	b6 := buildPkt(t, pktSpec{kind: kindTCP, v6: true, payload: payloadBytes(60000, 2)})
	b4o := buildPkt(t, pktSpec{kind: kindTCP, ipOpts: true, fin: true, payload: payloadBytes(5000, 3)})
	g4, o4 := b4.gso(uint16(mssFor(b4)))
	g6, o6 := b6.gso(uint16(mssFor(b6)))
	g4o, o4o := b4o.gso(uint16(mssFor(b4o)))
	plain := frame(600, 1)
	n := writeOff(t, d, [][]byte{g4, g6, g4o, plain}, []frameio.Offload{o4, o6, o4o, {}})
	if n != 4 {
		t.Fatalf("the driver sent %d of 4", n)
	}
	before := vhostuser.GSOFrames(p)
	fs := mixedBatch(2, 32, 1500)
	r := readOnce(t, p, fs)
	segs := nSegments(5000, mssFor(b4o))
	if len(r) != 2+segs+1 {
		t.Fatalf("read %d frames, want 2 whole, %d segments and a plain frame", len(r), segs)
	}
	for i, w := range []struct {
		b   []byte
		off frameio.Offload
	}{{g4, o4}, {g6, o6}} {
		if r[i].off != w.off || !bytes.Equal(r[i].b, w.b) {
			t.Fatalf("frame %d: %d bytes with Off %+v, want the guest's %d bytes with %+v", i, len(r[i].b), r[i].off, len(w.b), w.off)
		}
		if !frameio.WholeGSO(r[i].b, r[i].off) {
			t.Fatalf("frame %d: WholeGSO refuses what the port handed up whole", i)
		}
		// Cut where it goes, it is what the port would have cut.
		var s frameio.Segmenter
		if err := s.Load(r[i].b, r[i].off); err != nil {
			t.Fatal(err)
		}
	}
	bb := b4o
	bb.frame = g4o
	if pl := checkSegments(t, bb, r[2:2+segs], mssFor(b4o), true); !bytes.Equal(pl, b4o.frame[b4o.hdrLen:]) {
		t.Fatal("the cut frame's payload changed")
	}
	if !bytes.Equal(r[2+segs].b, plain) || r[2+segs].off != (frameio.Offload{}) {
		t.Fatal("the plain frame changed")
	}
	if g, w := vhostuser.GSOFrames(p)-before, uint64(3); g != w {
		t.Fatalf("%d GSO frames taken, want %d", g, w)
	}
	if w := vhostuser.WholeFrames(p); w != 2 {
		t.Fatalf("%d frames handed up whole, want 2", w)
	}
	if s := p.Stats(); s.RxDropped != 0 || s.RxFrames != uint64(len(r)) {
		t.Fatalf("stats %+v: want %d frames, no drops", s, len(r))
	}
}

// A TSO frame the switch may not carry whole (frameio.WholeGSO refuses
// it, or its IP length lies) is cut even into a large buffer: the first
// segment takes it, the rest the next buffers.
func TestGSOReadCutNotWhole(t *testing.T) {
	p := listen(t, vhostuser.Options{MTU: 1500, WriteTimeout: -1})
	d := dial(t, p, vhostuserdriver.DriverOptions{Offload: true, WriteTimeout: -1})
	for _, tc := range []struct {
		name string
		spec pktSpec
		mod  func(b built, f []byte)
	}{
		{"CWR", pktSpec{kind: kindTCP}, func(b built, f []byte) { f[b.l4+13] |= 0x80 }},
		{"VLAN-tagged IPv4", pktSpec{kind: kindTCP, vlan: true}, nil},
		{"VLAN-tagged IPv6", pktSpec{kind: kindTCP, vlan: true, v6: true}, nil},
		{"IPv4 length short", pktSpec{kind: kindTCP}, func(b built, f []byte) {
			binary.BigEndian.PutUint16(f[b.l3+2:], binary.BigEndian.Uint16(f[b.l3+2:])-1)
		}},
		{"IPv6 length long", pktSpec{kind: kindTCP, v6: true}, func(b built, f []byte) {
			binary.BigEndian.PutUint16(f[b.l3+4:], binary.BigEndian.Uint16(f[b.l3+4:])+100)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.spec.payload = payloadBytes(8000, 5)
			b := buildPkt(t, tc.spec)
			mss := mssFor(b)
			gf, goff := b.gso(uint16(mss))
			if tc.mod != nil {
				tc.mod(b, gf)
			}
			if frameio.WholeGSO(gf, goff) && tc.mod == nil {
				t.Fatal("WholeGSO takes the frame: the case tests nothing")
			}
			if writeOff(t, d, [][]byte{gf}, []frameio.Offload{goff}) != 1 {
				t.Fatal("not sent")
			}
			wholeBefore, statsBefore := vhostuser.WholeFrames(p), p.Stats()
			r := readOnce(t, p, mixedBatch(4, 16, 1500))
			if len(r) != nSegments(8000, mss) {
				t.Fatalf("%d frames, want %d segments", len(r), nSegments(8000, mss))
			}
			bb := b
			bb.frame = gf
			if pl := checkSegments(t, bb, r, mss, !b.vlan); !bytes.Equal(pl, b.frame[b.hdrLen:]) {
				t.Fatal("payload changed")
			}
			if tc.name == "CWR" {
				for i, s := range r {
					if cwr := s.b[b.l4+13]&0x80 != 0; cwr != (i == 0) {
						t.Fatalf("segment %d: CWR %v", i, cwr)
					}
				}
			}
			if vhostuser.WholeFrames(p) != wholeBefore {
				t.Fatal("handed up whole")
			}
			if s := p.Stats(); s.RxDropped != statsBefore.RxDropped {
				t.Fatalf("dropped: %+v", s)
			}
		})
	}
}

// Without large buffers (a caller that is not the switch, or the switch's
// MTU buffers), TSO frames are cut as before.
func TestGSOReadSmallBuffers(t *testing.T) {
	p := listen(t, vhostuser.Options{MTU: 1500, WriteTimeout: -1})
	d := dial(t, p, vhostuserdriver.DriverOptions{Offload: true, WriteTimeout: -1})
	b := buildPkt(t, pktSpec{kind: kindTCP, payload: payloadBytes(10000, 6)})
	gf, goff := b.gso(uint16(mssFor(b)))
	if writeOff(t, d, [][]byte{gf}, []frameio.Offload{goff}) != 1 {
		t.Fatal("not sent")
	}
	// Buffers a byte short of MaxGSOLen are small ones.
	fs := frameio.NewBatchSize(16, frameio.MaxGSOLen-1)
	r := readOnce(t, p, fs)
	if pl := checkSegments(t, b, r, mssFor(b), true); !bytes.Equal(pl, b.frame[b.hdrLen:]) || len(r) != nSegments(10000, mssFor(b)) {
		t.Fatalf("%d segments, or payload changed", len(r))
	}
	if vhostuser.WholeFrames(p) != 0 {
		t.Fatal("handed up whole into a small buffer")
	}
}

// Handing up whole allocates nothing per frame either; a large buffer
// holding a plain frame or a segment of one cut is just a buffer.
func TestGSOReadWholeAllocs(t *testing.T) {
	p := listen(t, vhostuser.Options{MTU: 1500, WriteTimeout: -1})
	d := dial(t, p, vhostuserdriver.DriverOptions{Offload: true, WriteTimeout: -1})
	b := buildPkt(t, pktSpec{kind: kindTCP, payload: payloadBytes(45*1448, 8)})
	gf, goff := b.gso(1448)
	cwr := bytes.Clone(gf)
	cwr[b.l4+13] |= 0x80
	w := []frameio.Frame{{Buf: gf, N: len(gf), Off: goff}, {Buf: frame(1514, 1), N: 1514}, {Buf: gf, N: len(gf), Off: goff},
		{Buf: cwr, N: len(cwr), Off: goff}, {Buf: gf, N: len(gf), Off: goff}}
	r := mixedBatch(4, 64, 1500)
	// Whole, plain, whole, 45 cut (into the fourth large buffer and MTU
	// ones), 45 cut.
	allocs := testing.AllocsPerRun(50, func() { roundTrip(t, d, p, w, r, 3+90) })
	if allocs != 0 {
		t.Fatalf("%.1f allocations per round", allocs)
	}
	if vhostuser.WholeFrames(p) < 2*50 {
		t.Fatalf("%d frames handed up whole in 50 rounds", vhostuser.WholeFrames(p))
	}
	if s := p.Stats(); s.RxDropped != 0 {
		t.Fatalf("dropped %d", s.RxDropped)
	}
}

// Through the switch: a guest's TSO frame reaches a guest with GUEST_TSO
// as it was sent, never cut (the switch gave the port large buffers and
// passes a whole frame to a frameio.GSOWriter); one with CWR is cut where
// it is read and arrives in segments.
func TestGSOReadThroughSwitch(t *testing.T) {
	sw := vswitch.New(vswitch.Config{MTU: 1500, Logger: testLog(t)})
	t.Cleanup(func() { sw.Close() })
	pa := listen(t, vhostuser.Options{MTU: 1500, WriteTimeout: -1})
	pb := listen(t, vhostuser.Options{MTU: 1500, WriteTimeout: -1})
	for _, a := range []struct {
		p   *vhostuser.Port
		mac []byte
	}{{pa, guestMAC}, {pb, peerMAC}} {
		if _, err := sw.Attach(a.p, vswitch.PortConfig{Name: a.p.Path(), MAC: a.mac}); err != nil {
			t.Fatal(err)
		}
	}
	da := dial(t, pa, vhostuserdriver.DriverOptions{Offload: true, WriteTimeout: -1})
	db := dial(t, pb, vhostuserdriver.DriverOptions{Offload: true, WriteTimeout: -1})
	for _, v6 := range []bool{false, true} {
		b := buildPkt(t, pktSpec{kind: kindTCP, v6: v6, payload: payloadBytes(40000, 7)})
		gf, goff := b.gso(uint16(mssFor(b)))
		cwr := bytes.Clone(gf)
		cwr[b.l4+13] |= 0x80
		if writeOff(t, da, [][]byte{gf}, []frameio.Offload{goff}) != 1 {
			t.Fatal("not sent")
		}
		r := readOffSize(t, db, 1, frameio.NewBatchSize(4, frameio.MaxGSOLen))
		if r[0].off != goff || !bytes.Equal(r[0].b, gf) {
			t.Fatalf("v6 %v: %d bytes with Off %+v arrived, want the guest's %d bytes with %+v", v6, len(r[0].b), r[0].off, len(gf), goff)
		}
		if writeOff(t, da, [][]byte{cwr}, []frameio.Offload{goff}) != 1 {
			t.Fatal("not sent")
		}
		segs := readOffSize(t, db, nSegments(40000, mssFor(b)), frameio.NewBatchSize(4, frameio.MaxGSOLen))
		bb := b
		bb.frame = cwr
		if pl := checkSegments(t, bb, segs, mssFor(b), true); !bytes.Equal(pl, b.frame[b.hdrLen:]) {
			t.Fatalf("v6 %v: the CWR frame's payload changed", v6)
		}
	}
	if w := vhostuser.WholeFrames(pa); w != 2 {
		t.Fatalf("%d frames handed up whole, want 2", w)
	}
	if s := pa.Stats(); s.RxDropped != 0 {
		t.Fatalf("dropped %d", s.RxDropped)
	}
}
