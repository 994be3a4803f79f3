//go:build linux

package frameio

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// FuzzTAPRead hands the offloading TAP reader arbitrary reads (virtio
// header, then a packet), as a host stack or a hostile local sender can
// produce. Every frame it hands out fits the MTU and is partial exactly
// when it is untagged TCP (PartialTCP); once finished, each piece of a
// cut TCP segment has valid IP and TCP checksums, its IP length matches,
// and the pieces' payloads put together are the segment's.
func FuzzTAPRead(f *testing.F) {
	payload := make([]byte, 5000)
	for i := range payload {
		payload[i] = byte(i)
	}
	f.Add(gsoPacket(payload, 1448, 0x18))
	f.Add(gsoPacket(payload[:100], 1448, 0x10))
	f.Add(gsoPacket(payload, 1, 0x10)[:200])
	plain := gsoPacket(payload[:300], 0, 0x10)
	plain[1] = gsoNone
	f.Add(plain)
	tagged := gsoPacket(payload[:3000], 1000, 0x10)
	tagged = append(tagged[:vnetHdrLen+12], append([]byte{0x81, 0x00, 0, 5}, tagged[vnetHdrLen+12:]...)...)
	f.Add(tagged)
	v6 := gsoPacket(payload[:4000], 1000, 0x18)
	v6 = append(v6[:vnetHdrLen+14], append(make([]byte, 20), v6[vnetHdrLen+14:]...)...) // IPv6 is 20 bytes longer
	v6[1], v6[vnetHdrLen+12], v6[vnetHdrLen+13] = gsoTCPv6, 0x86, 0xdd
	v6[vnetHdrLen+14], v6[vnetHdrLen+14+6] = 0x60, 6
	binary.BigEndian.PutUint16(v6[vnetHdrLen+18:], uint16(len(v6)-vnetHdrLen-54))
	binary.NativeEndian.PutUint16(v6[6:], 54)
	f.Add(v6)
	const mtu = 1500
	s := gsoReader{buf: make([]byte, offloadBufLen)}
	frames := NewBatch(4, mtu)
	f.Fuzz(func(t *testing.T, in []byte) {
		s.pkt, s.seg = nil, Segmenter{}
		n := copy(s.buf, in)
		if !s.load(n) {
			return
		}
		tso := s.seg.Pending()
		var pkt []byte
		var hlen, l3, l4 int
		var v6 bool
		off := s.off
		if tso {
			pkt = bytes.Clone(s.seg.pkt)
			hlen, l3, l4, v6 = s.seg.hlen, s.seg.l3, s.seg.l4, s.seg.v6
		} else {
			pkt = bytes.Clone(s.pkt)
		}
		var got []byte
		all := true
		for i := 0; s.pending(); i++ {
			if i > len(pkt) {
				t.Fatalf("%d frames from a %d-byte packet", i, len(pkt))
			}
			fr := &frames[i%len(frames)]
			if !s.next(fr, FrameSize(mtu)) {
				all = false
				continue
			}
			b := fr.Bytes()
			if len(b) > FrameSize(mtu) {
				t.Fatalf("a %d-byte frame for MTU %d, offload %+v", len(b), mtu, fr.Off)
			}
			// Untagged TCP comes up with its checksum partial, as the
			// kernel left it or the Segmenter cut it; nothing else.
			kept := fr.Off != (Offload{})
			if want := (tso && l3 == EthHeaderLen) || (!tso && PartialTCP(pkt, off)); kept != want {
				t.Fatalf("handed up with offload %+v; want partial %v", fr.Off, want)
			}
			if kept {
				if !PartialTCP(b, fr.Off) {
					t.Fatalf("handed up partial, not at an untagged TCP checksum: %+v", fr.Off)
				}
				if !tso && (fr.Off != off || !bytes.Equal(b, pkt)) {
					t.Fatal("a partial frame changed on the way")
				}
				if !fr.Finish() {
					t.Fatalf("a partial frame does not finish: %+v", fr.Off)
				}
				b = fr.Bytes()
			}
			if !tso {
				if !off.Partial {
					if !bytes.Equal(b, pkt) {
						t.Fatal("a plain frame changed on the way")
					}
					continue
				}
				// Completed: equal but for the checksum, which sums
				// with the pseudo-header's (what the field held) to 0
				// (where it is a 16-bit word of the sum: at an even
				// offset).
				cs, co := int(off.CsumStart), int(off.CsumOffset)
				if !bytes.Equal(b[:cs+co], pkt[:cs+co]) || !bytes.Equal(b[cs+co+2:], pkt[cs+co+2:]) {
					t.Fatal("a frame changed on the way beyond its checksum")
				}
				pseudo := uint64(binary.BigEndian.Uint16(pkt[cs+co:]))
				if c := csumFold(csumAdd(pseudo, b[cs:])); c != 0 && co%2 == 0 {
					t.Fatalf("checksum not completed (%#x)", c)
				}
				continue
			}
			ip, tcp := b[l3:], b[l4:]
			var sum uint64
			if v6 {
				if int(binary.BigEndian.Uint16(ip[4:])) != len(b)-l4 {
					t.Fatalf("IPv6 length %d in a %d-byte frame", binary.BigEndian.Uint16(ip[4:]), len(b))
				}
				sum = csumAdd(0, ip[8:40])
			} else {
				if int(binary.BigEndian.Uint16(ip[2:])) != len(b)-l3 {
					t.Fatalf("IP length %d in a %d-byte frame", binary.BigEndian.Uint16(ip[2:]), len(b))
				}
				if c := csumFold(csumAdd(0, b[l3:l4])); c != 0 {
					t.Fatalf("IP checksum off by %#x", c)
				}
				sum = csumAdd(0, ip[12:20])
			}
			if c := csumFold(csumAdd(sum+6+uint64(len(tcp)), tcp)); c != 0 {
				t.Fatalf("TCP checksum off by %#x", c)
			}
			got = append(got, b[hlen:]...)
		}
		if tso && all && !bytes.Equal(got, pkt[hlen:]) {
			t.Fatalf("payload of %d bytes came out as %d", len(pkt)-hlen, len(got))
		}
	})
}

// FuzzTAPCoalesce hands the TAP writer's merge arbitrary runs of frames,
// each behind a 16-bit length whose top bits give it an offload: bit 15
// a partial TCP checksum (at the TCP checksum's place, or with bit 14 one
// byte off), bit 13 a GSO type. A merge it finds is what Linux's GRO
// would make: frames of one flow, contiguous, of one size but the last,
// with valid checksums where they are complete, within 64 KiB. What the
// kernel gets (mergeHeader, then the payloads) cut at the segment size
// is the frames again: the same headers (but the IPv4 id), payloads and
// flags, every checksum valid.
func FuzzTAPCoalesce(f *testing.F) {
	full := make([]byte, 1448)
	for i := range full {
		full[i] = byte(i * 3)
	}
	join := func(fs ...Frame) []byte {
		var out []byte
		for _, fr := range fs {
			n := uint16(fr.N)
			if fr.Off.Partial {
				n |= 0x8000
			}
			out = binary.BigEndian.AppendUint16(out, n)
			out = append(out, fr.Bytes()...)
		}
		return out
	}
	f.Add(join(tcpFrame(1, full, 0x10), tcpFrame(1449, full, 0x10), tcpFrame(2897, full[:100], 0x18)))
	f.Add(join(tcpFrame(1, full, 0x10), tcpFrame(1450, full, 0x10)))
	f.Add(join(tcpFrame(1, full[:10], 0x10), tcpFrame(11, full[:10], 0x10), tcpFrame(21, full[:10], 0x10)))
	f.Add(join(segFrame(false, 1, full, 0x10, true), segFrame(false, 1449, full, 0x10, false), segFrame(false, 2897, full[:7], 0x18, true)))
	f.Add(join(segFrame(true, 1, full[:1440], 0x10, false), segFrame(true, 1441, full[:1440], 0x10, true), segFrame(true, 2881, full[:99], 0x18, false)))
	const mtu = 1500
	fsize := FrameSize(mtu)
	hdr := make([]byte, vnetHdrLen+EthHeaderLen+40+60)
	cut := NewBatch(1, mtu)[0]
	f.Fuzz(func(t *testing.T, data []byte) {
		var frames []Frame
		for len(data) >= 2 && len(frames) < 100 {
			v := binary.BigEndian.Uint16(data)
			n := min(int(v&0x1fff), len(data)-2, fsize)
			buf := make([]byte, fsize)
			fr := Frame{Buf: buf, N: copy(buf, data[2:2+n])}
			if v&0x8000 != 0 {
				fr.Off = Offload{Partial: true, CsumStart: 34, CsumOffset: 16}
				if n > 13 && buf[12] == 0x86 {
					fr.Off.CsumStart = 54
				}
				if v&0x4000 != 0 {
					fr.Off.CsumStart++
				}
			}
			if v&0x2000 != 0 {
				fr.Off.GSO, fr.Off.GSOSize = GSOTCPv4, 1000
			}
			frames = append(frames, fr)
			data = data[2+n:]
		}
		if len(frames) == 0 {
			return
		}
		n, mss := coalesceRun(frames, fsize)
		if n < 1 || n > len(frames) || n > maxCoalesce {
			t.Fatalf("run of %d from %d frames", n, len(frames))
		}
		if n == 1 {
			return
		}
		run := frames[:n]
		s0, _ := parseTCP(&run[0])
		total, next := s0.thl, s0.seq
		if s0.l4 == 34 {
			total += 20
		}
		var payload []byte
		for i := range run {
			b := run[i].Bytes()
			s, ok := parseTCP(&run[i])
			if !ok || !validSums(b, s) || s.l4 != s0.l4 || s.thl != s0.thl || s.seq != next || !sameFlow(run[0].Bytes(), b, s0) || len(b) <= s.l4+s.thl {
				t.Fatalf("frame %d of a run of %d does not belong: %+v", i, n, s)
			}
			if o := run[i].Off; o != (Offload{}) && o != (Offload{Partial: true, CsumStart: uint16(s.l4), CsumOffset: 16}) {
				t.Fatalf("frame %d of a run of %d has offload %+v", i, n, o)
			}
			if i < n-1 && (s.plen != mss || s.flags != 0x10) {
				t.Fatalf("frame %d: %d bytes, flags %#x, mss %d", i, s.plen, s.flags, mss)
			}
			total += s.plen
			next += uint32(s.plen)
			payload = append(payload, b[s.l4+s.thl:]...)
		}
		if total > 65535 {
			t.Fatalf("merged %d bytes of IP", total)
		}

		// What the kernel gets.
		hn := mergeHeader(hdr, run, mss)
		merged := append(bytes.Clone(hdr[vnetHdrLen:hn]), payload...)
		o, ok := parseVnetHdr(hdr).offload(len(merged))
		wantGSO := GSOTCPv4
		if s0.l4 == 54 {
			wantGSO = GSOTCPv6
		}
		if !ok || o.GSO != wantGSO || int(o.GSOSize) != mss || int(o.CsumStart) != s0.l4 || o.CsumOffset != 16 ||
			int(binary.NativeEndian.Uint16(hdr[2:])) != hn-vnetHdrLen {
			t.Fatalf("virtio header %x for a run of %d", hdr[:vnetHdrLen], n)
		}
		// Its checksum, completed, is valid.
		whole := Frame{Buf: bytes.Clone(merged), N: len(merged), Off: Offload{Partial: true, CsumStart: o.CsumStart, CsumOffset: 16}}
		if !whole.Finish() || !validSums(whole.Bytes(), tcpSeg{l4: s0.l4}) {
			t.Fatal("the merged segment's checksum does not complete to a valid one")
		}
		var sg Segmenter
		if err := sg.Load(merged, o); err != nil {
			t.Fatalf("the merged segment cannot be cut: %v", err)
		}
		for i := range run {
			if !sg.Pending() || !sg.Next(&cut, false) {
				t.Fatalf("the merged segment cut into %d pieces, want %d", i, n)
			}
			b, c := run[i].Bytes(), cut.Bytes()
			if len(b) != len(c) {
				t.Fatalf("piece %d: %d bytes, frame %d", i, len(c), len(b))
			}
			same := func(lo, hi int) bool { return bytes.Equal(b[lo:hi], c[lo:hi]) }
			l4 := s0.l4
			ipOK := same(0, l4+16) // IPv6: all of it
			if l4 == 34 {
				ipOK = same(0, 18) && same(20, 24) && same(26, l4+16) // but the IPv4 id and its header checksum
			}
			if !ipOK || !same(l4+18, len(b)) {
				t.Fatalf("piece %d differs from its frame:\n%x\n%x", i, c, b)
			}
			if run[i].Off == (Offload{}) && !same(l4+16, l4+18) {
				t.Fatalf("piece %d: TCP checksum %x, the frame had %x", i, c[l4+16:l4+18], b[l4+16:l4+18])
			}
			if !validSums(c, tcpSeg{l4: l4}) {
				t.Fatalf("piece %d: a checksum is wrong", i)
			}
		}
		if sg.Pending() {
			t.Fatalf("the merged segment cut into more than %d pieces", n)
		}
	})
}

// FuzzPassHeader hands a PassOffload read arbitrary virtio headers and
// packets. What it accepts, a PassOffload write takes too, behind a
// header that says the same (a relay between two such TAPs drops
// nothing), and a partial checksum it accepts can be completed (the
// switch never drops it as one it cannot finish).
func FuzzPassHeader(f *testing.F) {
	payload := make([]byte, 3000)
	f.Add(gsoPacket(payload, 1448, 0x18))
	plain := gsoPacket(payload[:300], 0, 0x10)
	plain[1] = gsoNone
	f.Add(plain)
	plain = bytes.Clone(plain)
	plain[0] = 0
	f.Add(plain)
	ecn := gsoPacket(payload, 1000, 0x90)
	ecn[1] |= gsoECN
	f.Add(ecn)
	fsize := FrameSize(1500)
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < vnetHdrLen {
			return
		}
		h, pkt := in[:vnetHdrLen], in[vnetHdrLen:]
		o, ok := passRead(h, len(pkt), MaxGSOLen, fsize)
		if !ok {
			return
		}
		if len(pkt) > MaxGSOLen || (o.GSO == GSONone && len(pkt) > fsize) {
			t.Fatalf("a %d-byte packet with %+v accepted", len(pkt), o)
		}
		if !writable(o, len(pkt), fsize, true) {
			t.Fatalf("read %+v, refused to write it", o)
		}
		var h2 [vnetHdrLen]byte
		putVnetHdr(h2[:], o, pkt)
		if o2, ok := parseVnetHdr(h2[:]).offload(len(pkt)); !ok || o2 != o {
			t.Fatalf("header %x for %+v says %+v", h2, o, o2)
		}
		if hl := int(binary.NativeEndian.Uint16(h2[2:])); o.GSO != GSONone && o.Partial && (hl > len(pkt) || hl < int(o.CsumStart)+int(o.CsumOffset)+2) {
			t.Fatalf("hdr_len %d for %+v in %d bytes", hl, o, len(pkt))
		}
		if o.GSO == GSONone && o.Partial {
			fr := Frame{Buf: bytes.Clone(pkt), N: len(pkt), Off: o}
			if !fr.Finish() {
				t.Fatalf("a partial checksum read with %+v cannot be completed", o)
			}
		}
	})
}
