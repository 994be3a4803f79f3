//go:build linux

package vhostuser_test

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/vhostuser"
	"github.com/anka-net/anka/sdk/netkit/vhostuser/internal/vuproto"
)

// vnetHdr is a virtio-net header (VERSION_1, 12 bytes).
type vnetHdr struct {
	flags, gsoType                         uint8
	hdrLen, gsoSize, csumStart, csumOffset uint16
}

func (h vnetHdr) bytes() []byte {
	b := []byte{h.flags, h.gsoType}
	for _, v := range []uint16{h.hdrLen, h.gsoSize, h.csumStart, h.csumOffset, 0} {
		b = binary.LittleEndian.AppendUint16(b, v)
	}
	return b
}

// feBig is where the hostile front-end puts large frames (up to 768 KiB).
const feBig = 0x40000

// offTx posts a chain of hdr and fr on descriptor i, the bytes at feBig,
// split into descriptors at the offsets in cuts (none: one descriptor).
func (f *hostileFE) offTx(i int, hdr, fr []byte, cuts ...int) {
	b := append(append([]byte(nil), hdr...), fr...)
	copy(f.mem[feBig:], b)
	cuts = append(cuts, len(b))
	start := 0
	for k, end := range cuts {
		flags := uint16(vuproto.DescFNext)
		if k == len(cuts)-1 {
			flags = 0
		}
		f.setDesc(1, i+k, f.gpaBase+feBig+uint64(start), uint32(end-start), flags, uint16(i+k+1))
		start = end
	}
	f.post(1, uint16(i), 1)
}

const feOffload = 1<<vuproto.FVersion1 | offloadBits

// hostileRead reads from p until the frame want (a sentinel), returning
// what came before it.
func hostileRead(t *testing.T, p *vhostuser.Port, want []byte) []got {
	t.Helper()
	return hostileReadInto(t, p, want, frameio.NewBatch(1, p.MTU()))
}

// hostileReadInto is hostileRead one frame at a time into fs, a batch of
// one.
func hostileReadInto(t *testing.T, p *vhostuser.Port, want []byte, fs []frameio.Frame) []got {
	t.Helper()
	var out []got
	for {
		g := readOffSize(t, p, 1, fs)[0]
		if bytes.Equal(g.b, want) {
			return out
		}
		out = append(out, g)
	}
}

// Hostile or broken virtio-net headers on the transmit queue: each costs
// its own frame, counted, never the session; the good frame after each
// arrives. Headers the spec lets a device take (hdr_len a mere hint, a
// header split across descriptors) are taken: cut into MTU buffers, and
// handed up whole into a large one (frameio.GSOReader), where every
// check is made the same, on the one copy.
func TestHostileOffloadHeaders(t *testing.T) {
	t.Run("MTU buffers", func(t *testing.T) { hostileOffloadHeaders(t, false) })
	t.Run("large buffers", func(t *testing.T) { hostileOffloadHeaders(t, true) })
}

func hostileOffloadHeaders(t *testing.T, large bool) {
	p := listen(t, vhostuser.Options{MTU: 1500})
	fs := frameio.NewBatch(1, 1500)
	if large {
		fs = frameio.NewBatchSize(1, frameio.MaxGSOLen)
	}
	f := newHostileFEFeatures(t, p, feOffload)
	tcp := buildPkt(t, pktSpec{kind: kindTCP, payload: payloadBytes(20000, 1)})
	tcpPF, _ := tcp.partial() // l4 34, all headers 66
	udp := buildPkt(t, pktSpec{kind: kindUDP, payload: payloadBytes(3000, 2)})
	udpPF, _ := udp.partial()
	small := buildPkt(t, pktSpec{kind: kindUDP, payload: payloadBytes(200, 3)})
	smallPF, _ := small.partial()
	frag := bytes.Clone(tcpPF)
	frag[14+6] |= 0x20 // more fragments
	huge := append(bytes.Clone(tcpPF), make([]byte, 70000-len(tcpPF))...)
	nc, gso4, gso6 := uint8(vuproto.NetHdrFNeedsCsum), uint8(vuproto.NetHdrGSOTCPv4), uint8(vuproto.NetHdrGSOTCPv6)
	good := vnetHdr{flags: nc, gsoType: gso4, hdrLen: 66, gsoSize: 1448, csumStart: 34, csumOffset: 16}
	with := func(mod func(h *vnetHdr)) []byte { h := good; mod(&h); return h.bytes() }
	for i, tc := range []struct {
		name  string
		hdr   []byte
		frame []byte
	}{
		{"csum_start past the end", vnetHdr{flags: nc, csumStart: 5000, csumOffset: 6}.bytes(), smallPF},
		{"csum_offset past the end", vnetHdr{flags: nc, csumStart: 34, csumOffset: 3000}.bytes(), smallPF},
		{"checksum's last byte past the end", vnetHdr{flags: nc, csumStart: 34, csumOffset: uint16(len(smallPF) - 35)}.bytes(), smallPF},
		{"csum_start in the Ethernet header", vnetHdr{flags: nc, csumStart: 4, csumOffset: 6}.bytes(), smallPF},
		{"GSO on UDP (UFO)", with(func(h *vnetHdr) { h.gsoType = vuproto.NetHdrGSOUDP; h.csumOffset = 6 }), udpPF},
		{"TCPv4 GSO on a UDP packet", with(func(h *vnetHdr) { h.csumOffset = 6 }), udpPF},
		{"TCPv6 GSO on an IPv4 packet", with(func(h *vnetHdr) { h.gsoType = gso6 }), tcpPF},
		{"unknown GSO type", with(func(h *vnetHdr) { h.gsoType = 2 }), tcpPF},
		{"ECN bit", with(func(h *vnetHdr) { h.gsoType |= vuproto.NetHdrGSOECN }), tcpPF},
		{"gso_size 0", with(func(h *vnetHdr) { h.gsoSize = 0 }), tcpPF},
		{"gso_size 47", with(func(h *vnetHdr) { h.gsoSize = 47 }), tcpPF},
		{"segments larger than the MTU", with(func(h *vnetHdr) { h.gsoSize = 1449 }), tcpPF},
		{"GSO frame over MaxGSOLen", good.bytes(), huge},
		{"hdr_len past the end", with(func(h *vnetHdr) { h.hdrLen = uint16(len(tcpPF) + 1) }), tcpPF},
		{"GSO without NEEDS_CSUM", with(func(h *vnetHdr) { h.flags = 0 }), tcpPF},
		{"GSO with csum_start off the TCP header", with(func(h *vnetHdr) { h.csumStart = 36 }), tcpPF},
		{"GSO with csum_offset not TCP's", with(func(h *vnetHdr) { h.csumOffset = 6 }), tcpPF},
		{"GSO of an IPv4 fragment", good.bytes(), frag},
		{"GSO of headers alone", good.bytes(), tcpPF[:66]},
		{"header longer than the chain", good.bytes()[:8], nil},
	} {
		before := p.Stats()
		f.offTx(0, tc.hdr, tc.frame)
		want := frame(100, i)
		f.goodTx(4, want)
		if extra := hostileReadInto(t, p, want, fs); len(extra) != 0 {
			t.Fatalf("%s: %d frames came of it", tc.name, len(extra))
		}
		if s := p.Stats(); s.RxDropped != before.RxDropped+1 || s.RxFrames != before.RxFrames+1 {
			t.Fatalf("%s: stats %+v, before %+v: want one drop", tc.name, s, before)
		}
		if used := f.usedIdx(1); used != f.avail[1] {
			t.Fatalf("%s: used idx %d, want %d", tc.name, used, f.avail[1])
		}
	}
	// Taken: hdr_len is a hint (virtio 1.x: the device must not rely on
	// it), the header may come in pieces, a GSO frame may hold a
	// single segment.
	for i, tc := range []struct {
		name  string
		hdr   []byte
		frame []byte
		cuts  []int
		segs  int
	}{
		{"hdr_len 0", with(func(h *vnetHdr) { h.hdrLen = 0 }), tcpPF, nil, 14},
		{"hdr_len short of the headers", with(func(h *vnetHdr) { h.hdrLen = 40 }), tcpPF, nil, 14},
		{"hdr_len past the headers", with(func(h *vnetHdr) { h.hdrLen = 1000 }), tcpPF, nil, 14},
		{"header in three pieces", good.bytes(), tcpPF, []int{5, 7, 12 + 40}, 14},
		{"header and frame in one piece then many", good.bytes(), tcpPF, []int{100, 3000, 3001, 9000}, 14},
		{"one segment", good.bytes(), tcpPF[:66+1000], nil, 1},
		{"partial UDP, header in pieces", vnetHdr{flags: nc, csumStart: 34, csumOffset: 6}.bytes(), smallPF, []int{1, 13}, 1},
	} {
		before := p.Stats()
		f.offTx(0, tc.hdr, tc.frame, tc.cuts...)
		want := frame(100, 100+i)
		f.goodTx(5, want)
		segs := hostileReadInto(t, p, want, fs)
		// Into a large buffer, untagged TCP/IPv4 without CWR is handed up
		// whole, as sent, with the header's offload (hdr_len is not in
		// it); "one segment" is cut all the same, its IP length being
		// the 20000-byte frame's it was cut from.
		whole := large && bytes.Equal(tc.frame, tcpPF)
		wantOff := frameio.Offload{Partial: true, CsumStart: 34, CsumOffset: 16, GSO: frameio.GSOTCPv4, GSOSize: 1448}
		switch {
		case whole && (len(segs) != 1 || segs[0].off != wantOff || !bytes.Equal(segs[0].b, tc.frame)):
			t.Fatalf("%s: %d frames, want the frame whole with %+v", tc.name, len(segs), wantOff)
		case !whole && len(segs) != tc.segs:
			t.Fatalf("%s: %d frames, want %d (stats %+v)", tc.name, len(segs), tc.segs, p.Stats())
		}
		switch {
		case whole:
		case tc.segs == 1 && bytes.Equal(tc.frame, smallPF):
			if segs[0].off != (frameio.Offload{}) || !bytes.Equal(segs[0].b, small.frame) {
				t.Fatalf("%s: not completed", tc.name)
			}
		default:
			b := tcp
			b.frame = tc.frame
			if pl := checkSegments(t, b, segs, 1448, !b.vlan); !bytes.Equal(pl, tc.frame[66:]) {
				t.Fatalf("%s: payload changed", tc.name)
			}
		}
		if s := p.Stats(); s.RxDropped != before.RxDropped {
			t.Fatalf("%s: dropped", tc.name)
		}
	}
	if !p.Connected() {
		t.Fatal("bad headers cost the front-end its session")
	}
}

// Offloads a front-end did not negotiate (or a port with NoOffload did not
// offer) are refused frame by frame.
func TestHostileOffloadNotNegotiated(t *testing.T) {
	tcp := buildPkt(t, pktSpec{kind: kindTCP, payload: payloadBytes(5000, 1)})
	tcpPF, _ := tcp.partial()
	tcp6 := buildPkt(t, pktSpec{kind: kindTCP, v6: true, payload: payloadBytes(5000, 1)})
	tcp6PF, _ := tcp6.partial()
	nc := uint8(vuproto.NetHdrFNeedsCsum)
	partial := vnetHdr{flags: nc, csumStart: 34, csumOffset: 16}.bytes()
	gso4 := vnetHdr{flags: nc, gsoType: vuproto.NetHdrGSOTCPv4, gsoSize: 1448, csumStart: 34, csumOffset: 16}.bytes()
	gso6 := vnetHdr{flags: nc, gsoType: vuproto.NetHdrGSOTCPv6, gsoSize: 1428, csumStart: 54, csumOffset: 16}.bytes()
	for _, tc := range []struct {
		name      string
		noOffload bool
		feats     uint64
		refused   [][2][]byte // header, frame
		taken     [][2][]byte
	}{
		{"NoOffload port", true, 1 << vuproto.FVersion1,
			[][2][]byte{{partial, tcpPF[:1000]}, {gso4, tcpPF}, {gso6, tcp6PF}}, nil},
		{"no offloads acknowledged", false, 1 << vuproto.FVersion1,
			[][2][]byte{{partial, tcpPF[:1000]}, {gso4, tcpPF}, {gso6, tcp6PF}}, nil},
		{"CSUM only", false, 1<<vuproto.FVersion1 | 1<<vuproto.NetFCsum,
			[][2][]byte{{gso4, tcpPF}, {gso6, tcp6PF}}, [][2][]byte{{partial, tcpPF[:1000]}}},
		{"CSUM and TSO4", false, 1<<vuproto.FVersion1 | 1<<vuproto.NetFCsum | 1<<vuproto.NetFHostTSO4,
			[][2][]byte{{gso6, tcp6PF}}, [][2][]byte{{gso4, tcpPF}}},
		{"CSUM and TSO6", false, 1<<vuproto.FVersion1 | 1<<vuproto.NetFCsum | 1<<vuproto.NetFHostTSO6,
			[][2][]byte{{gso4, tcpPF}}, [][2][]byte{{gso6, tcp6PF}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := listen(t, vhostuser.Options{MTU: 1500, NoOffload: tc.noOffload})
			f := newHostileFEFeatures(t, p, tc.feats)
			for i, c := range tc.refused {
				before := p.Stats()
				f.offTx(0, c[0], c[1])
				want := frame(100, i)
				f.goodTx(4, want)
				if extra := hostileRead(t, p, want); len(extra) != 0 || p.Stats().RxDropped != before.RxDropped+1 {
					t.Fatalf("header %d: %d frames came of it, stats %+v", i, len(extra), p.Stats())
				}
			}
			for i, c := range tc.taken {
				f.offTx(0, c[0], c[1])
				want := frame(100, 50+i)
				f.goodTx(4, want)
				if got := hostileRead(t, p, want); len(got) == 0 || got[0].off.CsumStart != binary.LittleEndian.Uint16(c[0][6:]) {
					t.Fatalf("taken header %d: %d frames", i, len(got))
				}
			}
			if !p.Connected() {
				t.Fatal("refused frames cost the session")
			}
		})
	}
	t.Run("NoOffload port does not offer", func(t *testing.T) {
		p := listen(t, vhostuser.Options{NoOffload: true})
		c := rawDial(t, p)
		rawSend(t, c, vuproto.GetFeatures, 0, nil)
		if v, _ := vuproto.U64(0, rawReply(t, c, vuproto.GetFeatures)); v&offloadBits != 0 || v&(1<<vuproto.FVersion1) == 0 {
			t.Fatalf("features %#x offered", v)
		}
		// Acknowledging what was not offered ends the session.
		rawSend(t, c, vuproto.SetFeatures, 0, le.AppendUint64(nil, 1<<vuproto.FVersion1|1<<vuproto.NetFCsum))
		expectClosed(t, c)
		checkStillServes(t, p)
	})
	t.Run("TSO without CSUM is refused", func(t *testing.T) {
		p := listen(t, vhostuser.Options{})
		c := rawDial(t, p)
		rawSend(t, c, vuproto.GetFeatures, 0, nil)
		if v, _ := vuproto.U64(0, rawReply(t, c, vuproto.GetFeatures)); v&offloadBits != offloadBits {
			t.Fatalf("features %#x offered, want CSUM, HOST_TSO4 and HOST_TSO6", v)
		}
		rawSend(t, c, vuproto.SetFeatures, 0, le.AppendUint64(nil, 1<<vuproto.FVersion1|1<<vuproto.NetFHostTSO4))
		expectClosed(t, c)
		checkStillServes(t, p)
	})
}
