//go:build linux

package vhostuser_test

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/vhostuser"
	"github.com/anka-net/anka/sdk/netkit/vhostuser/internal/vuproto"
	"github.com/anka-net/anka/sdk/netkit/vhostuser/vhostuserdriver"
)

const offloadBits = 1<<vuproto.NetFCsum | 1<<vuproto.NetFHostTSO4 | 1<<vuproto.NetFHostTSO6 |
	1<<vuproto.NetFGuestCsum | 1<<vuproto.NetFGuestTSO4 | 1<<vuproto.NetFGuestTSO6

// The port offers CSUM, HOST_TSO4/TSO6, GUEST_CSUM and GUEST_TSO4/TSO6
// unless NoOffload;
// the driver takes them with Offload. A partial frame goes through only where they
// were negotiated: elsewhere the driver refuses it (a guest's driver
// could not have sent it).
func TestOffloadFeatures(t *testing.T) {
	for _, tc := range []struct {
		name               string
		noOffload, offload bool
		want               uint64
	}{
		{"offered and taken", false, true, offloadBits},
		{"offered, not taken", false, false, 0},
		{"NoOffload", true, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := listen(t, vhostuser.Options{MTU: 1500, NoOffload: tc.noOffload, WriteTimeout: -1})
			d := dial(t, p, vhostuserdriver.DriverOptions{Offload: tc.offload, WriteTimeout: -1})
			if got := d.Features() & offloadBits; got != tc.want {
				t.Fatalf("offloads negotiated %#x, want %#x", got, tc.want)
			}
			if d.TakesPartial() != (tc.want != 0) || d.TakesGSO() != (tc.want != 0) || d.ReadsOffload() != (tc.want != 0) {
				t.Fatalf("TakesPartial %v, TakesGSO %v, ReadsOffload %v with offloads %#x", d.TakesPartial(), d.TakesGSO(), d.ReadsOffload(), tc.want)
			}
			if p.TakesPartial() != !tc.noOffload || p.TakesGSO() != !tc.noOffload {
				t.Fatalf("the port's TakesPartial is %v, TakesGSO %v with NoOffload %v", p.TakesPartial(), p.TakesGSO(), tc.noOffload)
			}
			b := buildPkt(t, pktSpec{kind: kindTCP, payload: payloadBytes(500, 1)})
			pf, off := b.partial()
			gf, goff := buildPkt(t, pktSpec{kind: kindTCP, payload: payloadBytes(5000, 2)}).gso(1448)
			n := writeOff(t, d, [][]byte{pf, gf}, []frameio.Offload{off, goff})
			if tc.want == 0 {
				if n != 0 || d.Refused() != 2 || d.Stats().TxDropped != 2 {
					t.Fatalf("without offloads: sent %d, refused %d, stats %+v; want both refused", n, d.Refused(), d.Stats())
				}
			} else {
				if n != 2 {
					t.Fatalf("sent %d of 2", n)
				}
				if segs := readOff(t, p, 1+nSegments(5000, 1448), 16); segs[0].off != off {
					t.Fatalf("partial frame arrived with Off %+v", segs[0].off)
				}
			}
			transfer(t, d, p, [][]byte{frame(100, 1)}, 1500)
			if s := p.Stats(); s.RxDropped != 0 {
				t.Fatalf("port dropped %d", s.RxDropped)
			}
		})
	}
}

// A partial TCP checksum stays partial through the port, as the guest
// left it; anything else partial (UDP, ICMPv6, a VLAN-tagged frame) is
// completed by the port. Either way Finish, or the frame as it comes,
// has the checksum a sender completing it would give.
func TestPartialChecksums(t *testing.T) {
	p := listen(t, vhostuser.Options{MTU: 1500, WriteTimeout: -1})
	d := dial(t, p, vhostuserdriver.DriverOptions{Offload: true, WriteTimeout: -1})
	for _, tc := range []struct {
		name        string
		spec        pktSpec
		keepPartial bool
	}{
		{"TCP/IPv4", pktSpec{kind: kindTCP}, true},
		{"TCP/IPv4 with options", pktSpec{kind: kindTCP, ipOpts: true}, true},
		{"TCP/IPv6", pktSpec{kind: kindTCP, v6: true}, true},
		{"TCP/IPv4 odd length", pktSpec{kind: kindTCP, payload: payloadBytes(333, 9)}, true},
		{"UDP/IPv4", pktSpec{kind: kindUDP}, false},
		{"UDP/IPv6", pktSpec{kind: kindUDP, v6: true}, false},
		{"ICMPv6", pktSpec{kind: kindICMPv6, v6: true}, false},
		{"TCP/IPv4 VLAN-tagged", pktSpec{kind: kindTCP, vlan: true}, false},
		{"TCP/IPv6 VLAN-tagged", pktSpec{kind: kindTCP, vlan: true, v6: true}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.spec.payload == nil {
				tc.spec.payload = payloadBytes(1000, 3)
			}
			b := buildPkt(t, tc.spec)
			pf, off := b.partial()
			if bytes.Equal(pf, b.frame) {
				t.Fatal("the partial frame is the complete one")
			}
			before := p.Stats()
			if writeOff(t, d, [][]byte{pf}, []frameio.Offload{off}) != 1 {
				t.Fatal("not sent")
			}
			g := readOff(t, p, 1, 4)[0]
			if tc.keepPartial {
				if g.off != off || !bytes.Equal(g.b, pf) {
					t.Fatalf("arrived with Off %+v (want %+v), or changed", g.off, off)
				}
				f := frameio.Frame{Buf: g.b, N: len(g.b), Off: g.off}
				if !f.Finish() {
					t.Fatal("Finish refused it")
				}
			} else if g.off != (frameio.Offload{}) {
				t.Fatalf("arrived with Off %+v, want it completed", g.off)
			}
			if !bytes.Equal(g.b, b.frame) {
				t.Fatal("the completed frame differs from the one with its checksum computed")
			}
			if s := p.Stats(); s.RxFrames != before.RxFrames+1 || s.RxDropped != before.RxDropped {
				t.Fatalf("stats %+v (before %+v)", s, before)
			}
		})
	}
}

// A TSO frame of about 60 KiB (and one of the largest an IPv6 packet
// carries) arrives as the segments a NIC would cut: in order with the
// frames around it, across ReadBatch calls when a batch holds fewer,
// whether the guest's chain is one descriptor, pieces in the ring or
// pieces in an indirect table.
func TestGSO(t *testing.T) {
	for _, layout := range []struct {
		name       string
		chunk      int
		noIndirect bool
		mix        bool
	}{
		{"one descriptor", 0, false, false},
		{"4K pieces in the ring", 4096, true, false},
		{"4K pieces in an indirect table", 4096, false, false},
		{"1000-byte pieces, tables and ring mixed", 1000, false, true},
	} {
		t.Run(layout.name, func(t *testing.T) {
			p := listen(t, vhostuser.Options{MTU: 1500, WriteTimeout: -1})
			d := dial(t, p, vhostuserdriver.DriverOptions{Offload: true, TxChunk: layout.chunk, NoIndirect: layout.noIndirect,
				MixIndirect: layout.mix, QueueSize: 512, WriteTimeout: -1})
			for _, tc := range []struct {
				name    string
				spec    pktSpec
				payload int
				batch   int
			}{
				{"IPv4 60000 bytes, batch 64", pktSpec{kind: kindTCP, seq: 0xffff0000}, 60000, 64},
				{"IPv6 60000 bytes, batch 7", pktSpec{kind: kindTCP, v6: true, seq: 77}, 60000, 7},
				{"IPv4 60000 bytes, batch 1", pktSpec{kind: kindTCP, seq: 5}, 60000, 1},
				{"IPv6 largest, batch 16", pktSpec{kind: kindTCP, v6: true, fin: true}, 65535 - 32, 16},
				{"IPv4 largest, batch 5", pktSpec{kind: kindTCP}, 65535 - 20 - 32, 5},
				{"IPv4 VLAN-tagged, batch 8", pktSpec{kind: kindTCP, vlan: true}, 20000, 8},
				{"IPv4 one segment", pktSpec{kind: kindTCP}, 1000, 8},
			} {
				t.Run(tc.name, func(t *testing.T) {
					tc.spec.payload = payloadBytes(tc.payload, byte(tc.batch))
					b := buildPkt(t, tc.spec)
					mss := mssFor(b)
					gf, goff := b.gso(uint16(mss))
					before, gsoBefore := p.Stats(), vhostuser.GSOFrames(p)
					// Plain frames before, between and after two GSO
					// frames: order is kept.
					frames := [][]byte{frame(100, 1), gf, frame(200, 2), gf, frame(300, 3)}
					offs := []frameio.Offload{{}, goff, {}, goff, {}}
					if n := writeOff(t, d, frames, offs); n != len(frames) {
						t.Fatalf("sent %d of %d", n, len(frames))
					}
					segs := nSegments(tc.payload, mss)
					all := readOff(t, p, 3+2*segs, tc.batch)
					for i, want := range [][]byte{frame(100, 1), frame(200, 2), frame(300, 3)} {
						g := all[i*(1+segs)]
						if !bytes.Equal(g.b, want) || g.off != (frameio.Offload{}) {
							t.Fatalf("plain frame %d out of place or changed (Off %+v)", i, g.off)
						}
					}
					for k := range 2 {
						s := all[1+k*(1+segs) : 1+k*(1+segs)+segs]
						if pl := checkSegments(t, b, s, mss, !b.vlan); !bytes.Equal(pl, tc.spec.payload) {
							t.Fatalf("GSO frame %d: the segments' payload (%d bytes) is not the frame's (%d)", k, len(pl), len(tc.spec.payload))
						}
					}
					s := p.Stats()
					if s.RxFrames-before.RxFrames != uint64(len(all)) || s.RxDropped != before.RxDropped {
						t.Fatalf("stats %+v, before %+v: want %d frames, no drops", s, before, len(all))
					}
					if g := vhostuser.GSOFrames(p) - gsoBefore; g != 2 {
						t.Fatalf("%d GSO frames taken, want 2", g)
					}
				})
			}
			if layout.chunk > 0 && !layout.noIndirect {
				if _, from := vhostuser.IndirectUsed(p); from == 0 {
					t.Fatal("no frame came through an indirect table")
				}
			}
		})
	}
}

// Segments left in a batch's wake are already out of guest memory: they
// still come when the front-end has gone.
func TestGSOPendingOutlivesFrontEnd(t *testing.T) {
	p := listen(t, vhostuser.Options{MTU: 1500, WriteTimeout: -1})
	d := dial(t, p, vhostuserdriver.DriverOptions{Offload: true, WriteTimeout: -1})
	b := buildPkt(t, pktSpec{kind: kindTCP, payload: payloadBytes(30000, 4)})
	gf, goff := b.gso(1000)
	if writeOff(t, d, [][]byte{gf}, []frameio.Offload{goff}) != 1 {
		t.Fatal("not sent")
	}
	first := readOff(t, p, 4, 4)
	d.Close()
	eventually(t, "the port notices the driver left", func() bool { return !p.Connected() })
	rest := readOff(t, p, 26, 8)
	if pl := checkSegments(t, b, append(first, rest...), 1000, true); !bytes.Equal(pl, b.frame[b.hdrLen:]) {
		t.Fatal("the payload changed")
	}
}

// Towards the guest: a partial checksum goes as it is, behind NEEDS_CSUM
// with its csum_start and csum_offset, to a front-end that negotiated
// GUEST_CSUM, and arrives partial (the driver's Off says where) to finish
// to the complete frame; for one that did not (it did not ask, or the
// port withholds it: NoOffload) the port completes it in its own copy.
// Either way the caller's frame is left alone, a partial checksum whose
// place lies outside the frame is dropped and counted, and a plain frame
// arrives plain. (GSO frames: gso_write_test.go.)
func TestWriteOffloadToGuest(t *testing.T) {
	for _, tc := range []struct {
		name               string
		noOffload, offload bool
		partial            bool // the guest gets partial checksums
	}{
		{"GUEST_CSUM negotiated", false, true, true},
		{"front-end without offloads", false, false, false},
		{"NoOffload", true, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := listen(t, vhostuser.Options{MTU: 1500, NoOffload: tc.noOffload, WriteTimeout: -1})
			d := dial(t, p, vhostuserdriver.DriverOptions{Offload: tc.offload, WriteTimeout: -1})
			if got := d.Features()&(1<<vuproto.NetFGuestCsum) != 0; got != tc.partial || d.ReadsOffload() != tc.partial {
				t.Fatalf("GUEST_CSUM negotiated %v, ReadsOffload %v; want %v", got, d.ReadsOffload(), tc.partial)
			}
			if p.TakesPartial() != !tc.noOffload {
				t.Fatalf("the port's TakesPartial is %v with NoOffload %v", p.TakesPartial(), tc.noOffload)
			}
			tcp := buildPkt(t, pktSpec{kind: kindTCP, v6: true, payload: payloadBytes(1200, 5)})
			tcp4 := buildPkt(t, pktSpec{kind: kindTCP, ipOpts: true, payload: payloadBytes(333, 9)})
			udp := buildPkt(t, pktSpec{kind: kindUDP, payload: payloadBytes(99, 6)})
			tp, toff := tcp.partial()
			t4p, t4off := tcp4.partial()
			up, uoff := udp.partial()
			bad := toff
			bad.CsumStart = 2000
			batch := []frameio.Frame{
				{Buf: bytes.Clone(tp), N: len(tp), Off: toff},
				{Buf: bytes.Clone(t4p), N: len(t4p), Off: t4off},
				{Buf: bytes.Clone(up), N: len(up), Off: uoff},
				{Buf: bytes.Clone(tp), N: len(tp), Off: bad},
				{Buf: frame(80, 1), N: 80},
			}
			n, err := p.WriteBatch(batch)
			if err != nil || n != 4 {
				t.Fatalf("WriteBatch = %d, %v; want 4 sent", n, err)
			}
			if s := p.Stats(); s.TxDropped != 1 || s.TxFrames != 4 {
				t.Fatalf("stats %+v: want 4 sent, the bad partial one dropped", s)
			}
			if !bytes.Equal(batch[0].Bytes(), tp) || batch[0].Off != toff {
				t.Fatal("the caller's frame was changed")
			}
			g := readOff(t, d, 4, 8)
			for i, w := range []struct {
				complete, partial []byte
				off               frameio.Offload
			}{{tcp.frame, tp, toff}, {tcp4.frame, t4p, t4off}, {udp.frame, up, uoff}, {frame(80, 1), frame(80, 1), frameio.Offload{}}} {
				if !tc.partial || w.off == (frameio.Offload{}) {
					if !bytes.Equal(g[i].b, w.complete) || g[i].off != (frameio.Offload{}) {
						t.Fatalf("frame %d: not the completed frame, or Off %+v", i, g[i].off)
					}
					continue
				}
				if g[i].off != w.off || !bytes.Equal(g[i].b, w.partial) {
					t.Fatalf("frame %d: arrived with Off %+v (want %+v), or changed", i, g[i].off, w.off)
				}
				f := frameio.Frame{Buf: g[i].b, N: len(g[i].b), Off: g[i].off}
				if !f.Finish() || !bytes.Equal(f.Bytes(), w.complete) {
					t.Fatalf("frame %d does not finish to the complete frame", i)
				}
			}
			if s := d.Stats(); s.RxDropped != 0 {
				t.Fatalf("the driver dropped %d", s.RxDropped)
			}
		})
	}
}

// GUEST_CSUM is the current front-end's: after one that negotiated it
// goes, the next one, without it, gets partial checksums completed (the
// switch asked TakesPartial once, when the port was attached).
func TestGuestCsumAcrossReconnect(t *testing.T) {
	p := listen(t, vhostuser.Options{MTU: 1500, WriteTimeout: -1})
	b := buildPkt(t, pktSpec{kind: kindTCP, payload: payloadBytes(700, 3)})
	pf, off := b.partial()
	for i, offload := range []bool{true, false, true} {
		d := dial(t, p, vhostuserdriver.DriverOptions{Offload: offload, WriteTimeout: -1})
		if writeOff(t, p, [][]byte{pf}, []frameio.Offload{off}) != 1 {
			t.Fatalf("session %d: not sent", i)
		}
		g := readOff(t, d, 1, 4)[0]
		if offload && (g.off != off || !bytes.Equal(g.b, pf)) || !offload && (g.off != (frameio.Offload{}) || !bytes.Equal(g.b, b.frame)) {
			t.Fatalf("session %d (GUEST_CSUM %v): arrived with Off %+v, or not as it should", i, offload, g.off)
		}
		d.Close()
		eventually(t, "the port notices the driver left", func() bool { return !p.Connected() })
	}
}

// The write path allocates nothing per frame: partial checksums handed
// to a guest with GUEST_CSUM or completed for one without, plain frames,
// and the driver's reads of them.
func TestWriteAllocs(t *testing.T) {
	for _, offload := range []bool{true, false} {
		t.Run(fmt.Sprintf("GUEST_CSUM=%v", offload), func(t *testing.T) {
			p := listen(t, vhostuser.Options{MTU: 1500, WriteTimeout: -1})
			d := dial(t, p, vhostuserdriver.DriverOptions{Offload: offload, WriteTimeout: -1})
			pf, poff := buildPkt(t, pktSpec{kind: kindTCP, payload: payloadBytes(1400, 8)}).partial()
			w := make([]frameio.Frame, 0, 32)
			for i := range 16 {
				w = append(w, frameio.Frame{Buf: pf, N: len(pf), Off: poff}, frameio.Frame{Buf: frame(1514, i), N: 1514})
			}
			r := frameio.NewBatch(32, 1500)
			allocs := testing.AllocsPerRun(50, func() { roundTrip(t, p, d, w, r, len(w)) })
			if allocs != 0 {
				t.Fatalf("%.1f allocations per round of %d frames", allocs, len(w))
			}
		})
	}
}

// The read path allocates nothing per frame, GSO frames included.
func TestReadAllocs(t *testing.T) {
	p := listen(t, vhostuser.Options{MTU: 1500, WriteTimeout: -1})
	d := dial(t, p, vhostuserdriver.DriverOptions{Offload: true, WriteTimeout: -1})
	b := buildPkt(t, pktSpec{kind: kindTCP, payload: payloadBytes(45*1448, 8)})
	gf, goff := b.gso(1448)
	pf, poff := buildPkt(t, pktSpec{kind: kindTCP, payload: payloadBytes(1000, 8)}).partial()
	w := []frameio.Frame{{Buf: gf, N: len(gf), Off: goff}, {Buf: pf, N: len(pf), Off: poff}, {Buf: frame(1514, 1), N: 1514}}
	r := frameio.NewBatch(16, 1500)
	allocs := testing.AllocsPerRun(50, func() { roundTrip(t, d, p, w, r, 47) })
	if allocs != 0 {
		t.Fatalf("%.1f allocations per round (a GSO frame, a partial and a plain one)", allocs)
	}
}
