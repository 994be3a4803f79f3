//go:build linux

package vhostuser_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/vhostuser"
	"github.com/anka-net/anka/sdk/netkit/vhostuser/internal/vuproto"
	"github.com/anka-net/anka/sdk/netkit/vhostuser/vhostuserdriver"
)

// GSO frames towards the guest (WriteBatch): whole to a front-end that
// negotiated the matching GUEST_TSO, cut for any other.

const (
	feGuestCsum = 1<<vuproto.FVersion1 | 1<<vuproto.NetFGuestCsum
	feGuestTSO4 = feGuestCsum | 1<<vuproto.NetFGuestTSO4
	feGuestTSO  = feGuestTSO4 | 1<<vuproto.NetFGuestTSO6
)

// rxUsed is the descriptor id and length of used entry k of the receive
// queue.
func (f *hostileFE) rxUsed(k uint16) (id, n uint32) {
	off := f.usedOff(0) + 4 + 8*int(k%f.num)
	return le.Uint32(f.mem[off:]), le.Uint32(f.mem[off+4:])
}

// gsoHdr is the header a GSO frame of b cut at mss goes behind.
func gsoHdr(b built, mss int) []byte {
	h := vnetHdr{flags: vuproto.NetHdrFNeedsCsum, gsoType: vuproto.NetHdrGSOTCPv4, hdrLen: uint16(b.hdrLen),
		gsoSize: uint16(mss), csumStart: uint16(b.l4), csumOffset: 16}
	if b.v6 {
		h.gsoType = vuproto.NetHdrGSOTCPv6
	}
	r := h.bytes()
	r[10] = 1 // num_buffers
	return r
}

// A front-end with GUEST_TSO4 and TSO6 gets a GSO frame whole in one
// receive buffer, behind a header whose every field is as the spec
// wants it; a buffer too small for the frame costs the frame (TxDropped),
// not the session.
func TestGSOWriteHeader(t *testing.T) {
	p := listen(t, vhostuser.Options{MTU: 1500, WriteTimeout: -1})
	f := newHostileFEFeatures(t, p, feGuestTSO)
	const room = 0x20000
	for _, spec := range []pktSpec{{kind: kindTCP, seq: 9}, {kind: kindTCP, v6: true, fin: true}, {kind: kindTCP, ipOpts: true},
		{kind: kindTCP, vlan: true}, {kind: kindTCP, v6: true, vlan: true}} {
		spec.payload = payloadBytes(60000, 3)
		b := buildPkt(t, spec)
		t.Run(describe(b), func(t *testing.T) {
			mss := mssFor(b)
			gf, goff := b.gso(uint16(mss))
			clear(f.mem[feBig : feBig+room])
			f.setDesc(0, 0, f.gpaBase+feBig, room, vuproto.DescFWrite, 0)
			f.post(0, 0, 1)
			before := p.Stats()
			if n := writeOff(t, p, [][]byte{gf}, []frameio.Offload{goff}); n != 1 {
				t.Fatalf("sent %d of 1; stats %+v", n, p.Stats())
			}
			if _, n := f.rxUsed(f.avail[0] - 1); f.usedIdx(0) != f.avail[0] || n != uint32(12+len(gf)) {
				t.Fatalf("used idx %d (avail %d), length %d; want %d", f.usedIdx(0), f.avail[0], n, 12+len(gf))
			}
			if h, want := f.mem[feBig:feBig+12], gsoHdr(b, mss); !bytes.Equal(h, want) {
				t.Fatalf("header % x, want % x", h, want)
			}
			if !bytes.Equal(f.mem[feBig+12:feBig+12+len(gf)], gf) {
				t.Fatal("the frame changed on the way")
			}
			if s := p.Stats(); s.TxFrames != before.TxFrames+1 || s.TxBytes != before.TxBytes+uint64(len(gf)) || s.TxDropped != before.TxDropped {
				t.Fatalf("stats %+v, before %+v", s, before)
			}
		})
	}
	t.Run("buffer too small", func(t *testing.T) {
		gf, goff := buildPkt(t, pktSpec{kind: kindTCP, payload: payloadBytes(60000, 4)}).gso(1448)
		for _, chain := range [][]uint32{{2000}, {12, 30000, 30000}} {
			for k, l := range chain {
				flags := uint16(vuproto.DescFWrite | vuproto.DescFNext)
				if k == len(chain)-1 {
					flags = vuproto.DescFWrite
				}
				f.setDesc(0, k, f.gpaBase+feBig+uint64(k)*0x10000, l, flags, uint16(k+1))
			}
			f.post(0, 0, 1)
			before := p.Stats()
			if n := writeOff(t, p, [][]byte{gf}, []frameio.Offload{goff}); n != 0 {
				t.Fatalf("chain %v: a %d-byte frame went", chain, len(gf))
			}
			if s := p.Stats(); s.TxDropped != before.TxDropped+1 || s.TxFrames != before.TxFrames {
				t.Fatalf("chain %v: stats %+v, before %+v; want it counted in TxDropped", chain, s, before)
			}
			if _, n := f.rxUsed(f.avail[0] - 1); f.usedIdx(0) != f.avail[0] || n != 0 {
				t.Fatalf("chain %v: the buffer was not returned empty (used %d, length %d)", chain, f.usedIdx(0), n)
			}
		}
		if !p.Connected() {
			t.Fatal("a small buffer cost the front-end its session")
		}
	})
}

// feBuf is the hostile front-end's receive buffer i (of 8 KiB).
func feBuf(i int) int { return feBig + i*0x2000 }

// feSegments has receive buffers 0 to n-1 posted, has WriteBatch write
// frames, and returns what came into them with each header's Off
// (checking that none says GSO) or, with whole, the one frame and its
// header.
func feSegments(t *testing.T, p *vhostuser.Port, f *hostileFE, n int, frames [][]byte, offs []frameio.Offload, whole []byte) (int, []got) {
	t.Helper()
	from := f.usedIdx(0)
	for i := range n {
		f.setDesc(0, i, f.gpaBase+uint64(feBuf(i)), 0x2000, vuproto.DescFWrite, 0)
	}
	if f.avail[0] != from {
		t.Fatalf("%d receive buffers left from before", f.avail[0]-from)
	}
	for i := range n {
		f.post(0, uint16(i), 1)
	}
	sent := writeOff(t, p, frames, offs)
	var out []got
	for k := from; k != f.usedIdx(0); k++ {
		id, l := f.rxUsed(k)
		if id >= uint32(n) || l < 12 || l > 0x2000 {
			t.Fatalf("used entry %d: id %d, length %d", k, id, l)
		}
		b := f.mem[feBuf(int(id)):][:l]
		var h [12]byte
		copy(h[:], b)
		if whole != nil {
			if !bytes.Equal(h[:], whole) {
				t.Fatalf("used entry %d: header % x, want % x", k, h, whole)
			}
			out = append(out, got{bytes.Clone(b[12:]), frameio.Offload{}})
			continue
		}
		var o frameio.Offload
		if h[0] == vuproto.NetHdrFNeedsCsum {
			o = frameio.Offload{Partial: true, CsumStart: le.Uint16(h[6:]), CsumOffset: le.Uint16(h[8:])}
		} else if h[0] != 0 {
			t.Fatalf("used entry %d: flags %#x", k, h[0])
		}
		if h[1] != 0 || le.Uint16(h[2:]) != 0 || le.Uint16(h[4:]) != 0 || h[10] != 1 {
			t.Fatalf("used entry %d: a segment's header % x says GSO, or not num_buffers 1", k, h)
		}
		out = append(out, got{bytes.Clone(b[12:]), o})
	}
	return sent, out
}

// A front-end with GUEST_TSO4 only gets a TCP/IPv4 GSO frame whole and
// a TCP/IPv6 one cut to its MTU, checksums partial (it has GUEST_CSUM);
// one with GUEST_CSUM and no GUEST_TSO gets both cut.
func TestGSOWriteCutForFrontEnd(t *testing.T) {
	for _, tc := range []struct {
		name        string
		feats       uint64
		whole4      bool
		partialSegs bool
	}{
		{"GUEST_TSO4 only", feGuestTSO4, true, true},
		{"GUEST_CSUM, no GUEST_TSO", feGuestCsum, false, true},
		{"no offloads", 1 << vuproto.FVersion1, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := listen(t, vhostuser.Options{MTU: 1500, WriteTimeout: -1})
			f := newHostileFEFeatures(t, p, tc.feats)
			for _, spec := range []pktSpec{{kind: kindTCP, v6: true, seq: 0xfffffff0, fin: true}, {kind: kindTCP, seq: 3}, {kind: kindTCP, vlan: true}} {
				spec.payload = payloadBytes(7*1000-300, 6)
				b := buildPkt(t, spec)
				gf, goff := b.gso(1000)
				before := p.Stats()
				var whole []byte
				bufs := 7
				if tc.whole4 && !b.v6 {
					whole, bufs = gsoHdr(b, 1000), 1
				}
				sent, segs := feSegments(t, p, f, bufs, [][]byte{gf}, []frameio.Offload{goff}, whole)
				if sent != 1 {
					t.Fatalf("%s: sent %d of 1; stats %+v", describe(b), sent, p.Stats())
				}
				if whole != nil {
					if len(segs) != 1 || !bytes.Equal(segs[0].b, gf) {
						t.Fatalf("%s: %d frames, want it whole", describe(b), len(segs))
					}
					continue
				}
				if len(segs) != 7 {
					t.Fatalf("%s: %d segments, want 7", describe(b), len(segs))
				}
				if pl := checkSegments(t, b, segs, 1000, tc.partialSegs); !bytes.Equal(pl, spec.payload) {
					t.Fatalf("%s: the segments' payload is not the frame's", describe(b))
				}
				if s := p.Stats(); s.TxFrames != before.TxFrames+7 || s.TxDropped != before.TxDropped {
					t.Fatalf("%s: stats %+v, before %+v; want 7 frames given", describe(b), s, before)
				}
			}
			// Buffers for part of a frame: what fits goes, the frame
			// counts as dropped, and the next one starts afresh.
			b := buildPkt(t, pktSpec{kind: kindTCP, v6: true, payload: payloadBytes(7000, 2)})
			gf, goff := b.gso(1000)
			before := p.Stats()
			sent, segs := feSegments(t, p, f, 3, [][]byte{gf}, []frameio.Offload{goff}, nil)
			if sent != 0 || len(segs) != 3 {
				t.Fatalf("3 buffers for 7 segments: sent %d, %d segments", sent, len(segs))
			}
			if s := p.Stats(); s.TxFrames != before.TxFrames+3 || s.TxDropped != before.TxDropped+1 {
				t.Fatalf("stats %+v, before %+v", s, before)
			}
			sent, segs = feSegments(t, p, f, 7, [][]byte{gf}, []frameio.Offload{goff}, nil)
			if sent != 1 || len(segs) != 7 {
				t.Fatalf("after: sent %d, %d segments", sent, len(segs))
			}
			checkSegments(t, b, segs, 1000, tc.partialSegs)
		})
	}
}

// The driver with Offload (GUEST_TSO4 and TSO6 negotiated, receive
// buffers of frameio.MaxGSOLen in pages, through indirect tables or
// chained in the ring) reads a GSO frame the port wrote whole, with Off
// saying so, between plain frames; written back through the port it
// comes out as the segments a NIC would cut.
func TestGSOWriteToDriver(t *testing.T) {
	for _, layout := range []struct {
		name       string
		chunk      int
		noIndirect bool
		mix        bool
	}{
		{"pages in indirect tables", 0, false, false},
		{"pages chained in the ring", 0, true, false},
		{"1000-byte pieces, tables and ring mixed", 1000, false, true},
	} {
		t.Run(layout.name, func(t *testing.T) {
			p := listen(t, vhostuser.Options{MTU: 1500, WriteTimeout: -1})
			d := dial(t, p, vhostuserdriver.DriverOptions{Offload: true, RxChunk: layout.chunk, NoIndirect: layout.noIndirect,
				MixIndirect: layout.mix, WriteTimeout: -1})
			if want := uint64(1<<vuproto.NetFGuestTSO4 | 1<<vuproto.NetFGuestTSO6); d.Features()&want != want || !d.ReadsOffload() {
				t.Fatalf("features %#x: GUEST_TSO4/TSO6 not negotiated", d.Features())
			}
			r := frameio.NewBatchSize(4, frameio.MaxGSOLen)
			for _, tc := range []struct {
				spec    pktSpec
				payload int
			}{
				{pktSpec{kind: kindTCP, seq: 0xffff0000}, 60000},
				{pktSpec{kind: kindTCP, v6: true, fin: true}, 60000},
				{pktSpec{kind: kindTCP, ipOpts: true}, 30001},
				{pktSpec{kind: kindTCP}, 65535 - 20 - 32},
				{pktSpec{kind: kindTCP, v6: true}, 65535 - 32},
			} {
				tc.spec.payload = payloadBytes(tc.payload, 5)
				b := buildPkt(t, tc.spec)
				t.Run(fmt.Sprintf("%s %d bytes", describe(b), tc.payload), func(t *testing.T) {
					mss := mssFor(b)
					gf, goff := b.gso(uint16(mss))
					frames := [][]byte{frame(100, 1), gf, frame(1514, 2)}
					offs := []frameio.Offload{{}, goff, {}}
					if n := writeOff(t, p, frames, offs); n != 3 {
						t.Fatalf("sent %d of 3; stats %+v", n, p.Stats())
					}
					all := readOffSize(t, d, 3, r)
					for i, w := range frames {
						if !bytes.Equal(all[i].b, w) || all[i].off != offs[i] {
							t.Fatalf("frame %d: Off %+v (want %+v), or changed", i, all[i].off, offs[i])
						}
					}
					// Back through the port (HOST_TSO): the segments.
					if n := writeOff(t, d, [][]byte{all[1].b}, []frameio.Offload{all[1].off}); n != 1 {
						t.Fatal("the driver did not send it back")
					}
					segs := readOff(t, p, nSegments(tc.payload, mss), 16)
					if pl := checkSegments(t, b, segs, mss, true); !bytes.Equal(pl, tc.spec.payload) {
						t.Fatal("the payload changed on the round trip")
					}
				})
			}
			if s := d.Stats(); s.RxDropped != 0 {
				t.Fatalf("the driver dropped %d", s.RxDropped)
			}
			if to, _ := vhostuser.IndirectUsed(p); to == 0 && !layout.noIndirect {
				t.Fatal("no frame went through an indirect table")
			}
		})
	}
}

// A driver without offloads, or any on a NoOffload port, gets GSO frames
// cut into frames of the MTU with complete checksums.
func TestGSOWriteCutToDriver(t *testing.T) {
	for _, tc := range []struct {
		name               string
		noOffload, offload bool
	}{
		{"driver without offloads", false, false},
		{"NoOffload port", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := listen(t, vhostuser.Options{MTU: 1500, NoOffload: tc.noOffload, WriteTimeout: -1})
			d := dial(t, p, vhostuserdriver.DriverOptions{Offload: tc.offload, WriteTimeout: -1})
			if p.TakesGSO() == tc.noOffload || d.ReadsOffload() {
				t.Fatalf("TakesGSO %v, the driver's ReadsOffload %v", p.TakesGSO(), d.ReadsOffload())
			}
			for _, spec := range []pktSpec{{kind: kindTCP, seq: 1}, {kind: kindTCP, v6: true}, {kind: kindTCP, vlan: true, v6: true}} {
				spec.payload = payloadBytes(45*1400+17, 8)
				b := buildPkt(t, spec)
				mss := mssFor(b)
				gf, goff := b.gso(uint16(mss))
				before := p.Stats()
				if n := writeOff(t, p, [][]byte{frame(100, 1), gf, frame(200, 2)}, []frameio.Offload{{}, goff, {}}); n != 3 {
					t.Fatalf("%s: sent %d of 3", describe(b), n)
				}
				segs := nSegments(len(spec.payload), mss)
				all := readOff(t, d, 2+segs, 16)
				if !bytes.Equal(all[0].b, frame(100, 1)) || !bytes.Equal(all[1+segs].b, frame(200, 2)) {
					t.Fatalf("%s: plain frames out of place", describe(b))
				}
				if pl := checkSegments(t, b, all[1:1+segs], mss, false); !bytes.Equal(pl, spec.payload) {
					t.Fatalf("%s: payload changed", describe(b))
				}
				if s := p.Stats(); s.TxFrames != before.TxFrames+uint64(2+segs) || s.TxDropped != before.TxDropped {
					t.Fatalf("%s: stats %+v, before %+v", describe(b), s, before)
				}
			}
		})
	}
}

// A GSO frame whose headers do not say what its Off says, or that could
// not be cut into frames of the MTU, is dropped and counted, whether the
// guest would have taken it whole or cut; the caller's frame is left as
// it was and the frames around it go.
func TestGSOWriteHostile(t *testing.T) {
	tcp := buildPkt(t, pktSpec{kind: kindTCP, payload: payloadBytes(20000, 1)})
	tcp6 := buildPkt(t, pktSpec{kind: kindTCP, v6: true, payload: payloadBytes(20000, 1)})
	udp := buildPkt(t, pktSpec{kind: kindUDP, payload: payloadBytes(3000, 1)})
	g4, o4 := tcp.gso(1448)
	g6, o6 := tcp6.gso(1428)
	gu, ou := udp.gso(1448)
	ou.CsumOffset = 16
	type bad struct {
		name  string
		frame []byte
		off   frameio.Offload
	}
	mod := func(b []byte, f func(b []byte)) []byte { b = bytes.Clone(b); f(b); return b }
	with := func(o frameio.Offload, f func(o *frameio.Offload)) frameio.Offload { f(&o); return o }
	cases := []bad{
		{"TCP/IPv4 typed TCPv6", g4, with(o4, func(o *frameio.Offload) { o.GSO = frameio.GSOTCPv6 })},
		{"TCP/IPv6 typed TCPv4", g6, with(o6, func(o *frameio.Offload) { o.GSO = frameio.GSOTCPv4 })},
		{"GSO type UDP", g4, with(o4, func(o *frameio.Offload) { o.GSO = 3 })},
		{"not partial", g4, with(o4, func(o *frameio.Offload) { o.Partial = false })},
		{"csum_start at the IP header", g4, with(o4, func(o *frameio.Offload) { o.CsumStart = 14 })},
		{"csum_offset 6", g4, with(o4, func(o *frameio.Offload) { o.CsumOffset = 6 })},
		{"gso_size 0", g4, with(o4, func(o *frameio.Offload) { o.GSOSize = 0 })},
		{"gso_size 47", g4, with(o4, func(o *frameio.Offload) { o.GSOSize = 47 })},
		{"segments larger than the MTU", g4, with(o4, func(o *frameio.Offload) { o.GSOSize = 1500 - 52 + 1 })},
		{"IPv4 length short", mod(g4, func(b []byte) { binary.BigEndian.PutUint16(b[16:], 1500) }), o4},
		{"IPv4 length long", mod(g4, func(b []byte) { binary.BigEndian.PutUint16(b[16:], uint16(len(g4)-14+1)) }), o4},
		{"IPv6 length short", mod(g6, func(b []byte) { binary.BigEndian.PutUint16(b[18:], 100) }), o6},
		{"IPv4 fragment", mod(g4, func(b []byte) { b[20] |= 0x20 }), o4},
		{"IPv6 extension header", mod(g6, func(b []byte) { b[20] = 0 }), o6},
		{"TCP data offset 4", mod(g4, func(b []byte) { b[46] = 4 << 4 }), o4},
		{"TCP data offset past the frame", g4[:60], o4},
		{"headers only", mod(g4[:66], func(b []byte) { binary.BigEndian.PutUint16(b[16:], 52) }), o4},
		{"UDP", gu, ou},
		{"ARP", mod(g4, func(b []byte) { b[12], b[13] = 0x08, 0x06 }), o4},
		{"larger than MaxGSOLen", append(bytes.Clone(g4), make([]byte, frameio.MaxGSOLen)...), o4},
	}
	for _, offload := range []bool{true, false} {
		t.Run(fmt.Sprintf("GUEST_TSO=%v", offload), func(t *testing.T) {
			p := listen(t, vhostuser.Options{MTU: 1500, WriteTimeout: -1})
			d := dial(t, p, vhostuserdriver.DriverOptions{Offload: offload, WriteTimeout: -1})
			for i, c := range cases {
				before := p.Stats()
				w := []frameio.Frame{{Buf: bytes.Clone(c.frame), N: len(c.frame), Off: c.off}, {Buf: frame(90, i), N: 90}}
				if n, err := p.WriteBatch(w); n != 1 || err != nil {
					t.Fatalf("%s: WriteBatch = %d, %v; want the plain frame only", c.name, n, err)
				}
				if !bytes.Equal(w[0].Bytes(), c.frame) || w[0].Off != c.off {
					t.Fatalf("%s: the caller's frame changed", c.name)
				}
				if s := p.Stats(); s.TxDropped != before.TxDropped+1 || s.TxFrames != before.TxFrames+1 {
					t.Fatalf("%s: stats %+v, before %+v", c.name, s, before)
				}
				if g := readOffSize(t, d, 1, frameio.NewBatchSize(2, frameio.MaxGSOLen)); !bytes.Equal(g[0].b, frame(90, i)) {
					t.Fatalf("%s: the guest got something else", c.name)
				}
			}
			if d.Stats().RxDropped != 0 || !p.Connected() {
				t.Fatal("the driver dropped frames, or the session ended")
			}
		})
	}
}

// GUEST_TSO4 or TSO6 without GUEST_CSUM is refused (virtio 1.x,
// 5.1.3.1), with the reason in the log; the port serves the next
// front-end.
func TestGuestTSOWithoutGuestCsum(t *testing.T) {
	var log lockedBuf
	p := listen(t, vhostuser.Options{Log: slog.New(slog.NewTextHandler(&log, nil))})
	for _, feats := range []uint64{1 << vuproto.NetFGuestTSO4, 1 << vuproto.NetFGuestTSO6, 1<<vuproto.NetFGuestTSO4 | 1<<vuproto.NetFCsum} {
		c := rawDial(t, p)
		rawSend(t, c, vuproto.GetFeatures, 0, nil)
		if v, _ := vuproto.U64(0, rawReply(t, c, vuproto.GetFeatures)); v&feGuestTSO != feGuestTSO {
			t.Fatalf("features %#x offered, want GUEST_CSUM, GUEST_TSO4 and GUEST_TSO6", v)
		}
		rawSend(t, c, vuproto.SetFeatures, 0, le.AppendUint64(nil, 1<<vuproto.FVersion1|feats))
		expectClosed(t, c)
		checkStillServes(t, p)
	}
	eventually(t, "the reason is logged", func() bool {
		return strings.Count(log.String(), "GUEST_TSO4 and GUEST_TSO6 need VIRTIO_NET_F_GUEST_CSUM") == 3
	})
}

// Writing GSO frames allocates nothing per frame, whole or cut.
func TestGSOWriteAllocs(t *testing.T) {
	for _, offload := range []bool{true, false} {
		t.Run(fmt.Sprintf("GUEST_TSO=%v", offload), func(t *testing.T) {
			p, d, w, r, want := gsoWriteSetup(t, offload)
			allocs := testing.AllocsPerRun(50, func() { roundTrip(t, p, d, w, r, want) })
			if allocs != 0 {
				t.Fatalf("%.1f allocations per GSO frame", allocs)
			}
		})
	}
}

// gsoWriteSetup is a port and a driver with (offload) or without
// GUEST_TSO, a batch of one 64 KiB TCP/IPv4 GSO frame (45 segments of
// 1448), a batch to read it into and how many frames it becomes.
func gsoWriteSetup(tb testing.TB, offload bool) (*vhostuser.Port, *vhostuserdriver.Driver, []frameio.Frame, []frameio.Frame, int) {
	p := listen(tb, vhostuser.Options{MTU: 1500, WriteTimeout: -1})
	d := dial(tb, p, vhostuserdriver.DriverOptions{Offload: offload, WriteTimeout: -1})
	gf, goff := buildPkt(tb, pktSpec{kind: kindTCP, payload: payloadBytes(45*1448, 8)}).gso(1448)
	w := []frameio.Frame{{Buf: gf, N: len(gf), Off: goff}}
	if offload {
		return p, d, w, frameio.NewBatchSize(4, frameio.MaxGSOLen), 1
	}
	return p, d, w, frameio.NewBatch(64, 1500), 45
}

// BenchmarkGSOWrite: a 64 KiB TCP segment to the guest, written whole
// (GUEST_TSO) or cut into 45 frames (without), and read by the driver.
func BenchmarkGSOWrite(b *testing.B) {
	for _, tc := range []struct {
		name    string
		offload bool
	}{{"whole", true}, {"cut45", false}} {
		b.Run(tc.name, func(b *testing.B) {
			p, d, w, r, want := gsoWriteSetup(b, tc.offload)
			b.SetBytes(int64(w[0].N))
			b.ReportAllocs()
			for b.Loop() {
				roundTrip(b, p, d, w, r, want)
			}
		})
	}
}
