//go:build linux

package frameio

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// gsoPacket is an Ethernet frame holding one TCP/IPv4 segment of payload
// behind its virtio header, as an offloading TAP hands it: gso_size mss,
// the TCP checksum left as the pseudo-header's sum.
func gsoPacket(payload []byte, mss int, tcpFlags byte) []byte {
	const l3, l4, hlen = 14, 34, 54
	b := make([]byte, vnetHdrLen+hlen+len(payload))
	h, pkt := b[:vnetHdrLen], b[vnetHdrLen:]
	h[0], h[1] = vnetNeedsCsum, gsoTCPv4
	binary.NativeEndian.PutUint16(h[2:], hlen)
	binary.NativeEndian.PutUint16(h[4:], uint16(mss))
	binary.NativeEndian.PutUint16(h[6:], l4)
	binary.NativeEndian.PutUint16(h[8:], 16)
	copy(pkt, []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0})
	ip := pkt[l3:l4]
	ip[0], ip[8], ip[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(ip[2:], uint16(len(pkt)-l3))
	binary.BigEndian.PutUint16(ip[4:], 0xfff0) // wraps while cutting
	copy(ip[12:], []byte{10, 0, 0, 1, 10, 0, 0, 2})
	tcp := pkt[l4:]
	binary.BigEndian.PutUint16(tcp[0:], 5201)
	binary.BigEndian.PutUint16(tcp[2:], 40000)
	binary.BigEndian.PutUint32(tcp[4:], 0xfffff000) // wraps too
	tcp[12], tcp[13] = 5<<4, tcpFlags
	copy(pkt[hlen:], payload)
	return b
}

func TestGSOReaderCutsTSO(t *testing.T) {
	payload := make([]byte, 10000)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	const mss = 1448
	in := gsoPacket(payload, mss, 0x80|0x18|0x01) // CWR, PSH, ACK, FIN
	s := gsoReader{buf: make([]byte, offloadBufLen)}
	n := copy(s.buf, in)
	if !s.load(n) {
		t.Fatal("segment refused")
	}
	frames := NewBatch(3, 1500) // fewer than the segment needs: it stays pending
	var got []byte
	segs := 0
	for s.pending() {
		for i := range frames {
			if !s.pending() {
				break
			}
			if !s.next(&frames[i], FrameSize(1500)) {
				t.Fatal("a segment did not fit")
			}
			// Handed up partial, for whoever sends it on to complete.
			if o := frames[i].Off; o != (Offload{Partial: true, CsumStart: 34, CsumOffset: 16}) {
				t.Fatalf("segment %d handed out with offload %+v, want partial at the TCP checksum", segs, o)
			}
			if !frames[i].Finish() {
				t.Fatalf("segment %d does not finish", segs)
			}
			f := frames[i].Bytes()
			ip, tcp := f[14:34], f[34:]
			if c := csumFold(csumAdd(0, ip)); c != 0 {
				t.Fatalf("segment %d: IP checksum wrong (%#x)", segs, c)
			}
			if int(binary.BigEndian.Uint16(ip[2:])) != len(f)-14 {
				t.Fatalf("segment %d: IP length %d, frame %d", segs, binary.BigEndian.Uint16(ip[2:]), len(f))
			}
			if id := binary.BigEndian.Uint16(ip[4:]); id != 0xfff0+uint16(segs) {
				t.Fatalf("segment %d: IP id %#x", segs, id)
			}
			sum := csumAdd(0, ip[12:20]) + 6 + uint64(len(tcp))
			if c := csumFold(csumAdd(sum, tcp)); c != 0 {
				t.Fatalf("segment %d: TCP checksum wrong", segs)
			}
			if seq := binary.BigEndian.Uint32(tcp[4:]); seq != 0xfffff000+uint32(len(got)) {
				t.Fatalf("segment %d: seq %#x", segs, seq)
			}
			last := len(got)+len(tcp)-20 == len(payload)
			wantFlags := byte(0x10)
			if segs == 0 {
				wantFlags |= 0x80
			}
			if last {
				wantFlags |= 0x09
			}
			if tcp[13] != wantFlags {
				t.Fatalf("segment %d: flags %#x, want %#x", segs, tcp[13], wantFlags)
			}
			if !last && len(tcp)-20 != mss {
				t.Fatalf("segment %d: %d bytes, want the MSS", segs, len(tcp)-20)
			}
			got = append(got, tcp[20:]...)
			segs++
		}
	}
	if segs != (len(payload)+mss-1)/mss || string(got) != string(payload) {
		t.Fatalf("%d segments, %d bytes back of %d", segs, len(got), len(payload))
	}
}

func TestGSOReaderCompletesChecksum(t *testing.T) {
	// A UDP datagram with its checksum left partial: the pseudo-header's
	// sum, folded, not complemented.
	in := gsoPacket([]byte("hello, world"), 0, 0)
	in[vnetHdrLen+14+9] = 17
	in[1] = gsoNone
	pkt := in[vnetHdrLen:]
	binary.NativeEndian.PutUint16(in[8:], 6)
	udp := pkt[34:]
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	pseudo := csumAdd(0, pkt[26:34]) + 17 + uint64(len(udp))
	binary.BigEndian.PutUint16(udp[6:], ^csumFold(pseudo))
	s := gsoReader{buf: make([]byte, offloadBufLen)}
	if !s.load(copy(s.buf, in)) {
		t.Fatal("frame refused")
	}
	f := NewBatch(1, 1500)
	if !s.next(&f[0], FrameSize(1500)) || s.pending() || f[0].Off != (Offload{}) {
		t.Fatal("frame not passed on, or passed on partial")
	}
	out := f[0].Bytes()
	if c := csumFold(csumAdd(csumAdd(0, out[26:34])+17+uint64(len(udp)), out[34:])); c != 0 {
		t.Fatalf("UDP checksum not completed: %#x", c)
	}
}

// A single TCP frame the kernel left partial (NEEDS_CSUM) is handed up
// partial, as it came; behind a VLAN tag it is completed, as are the
// segments cut from a tagged GSO frame.
func TestGSOReaderKeepsTCPPartial(t *testing.T) {
	withPseudo := func(in []byte, l4 int) {
		pkt := in[vnetHdrLen:]
		tcp := pkt[l4:]
		pseudo := csumAdd(0, pkt[l4-8:l4]) + 6 + uint64(len(tcp))
		binary.BigEndian.PutUint16(tcp[16:], ^csumFold(pseudo))
	}
	validTCP := func(b []byte, l4 int) bool {
		return csumFold(csumAdd(csumAdd(0, b[l4-8:l4])+6+uint64(len(b)-l4), b[l4:])) == 0
	}
	s := gsoReader{buf: make([]byte, offloadBufLen)}
	f := NewBatch(1, 1500)

	in := gsoPacket([]byte("partial, as the host's TCP left it"), 0, 0x18)
	in[1] = gsoNone
	withPseudo(in, 34)
	if !s.load(copy(s.buf, in)) || !s.next(&f[0], FrameSize(1500)) {
		t.Fatal("frame refused")
	}
	if want := (Offload{Partial: true, CsumStart: 34, CsumOffset: 16}); f[0].Off != want || !bytes.Equal(f[0].Bytes(), in[vnetHdrLen:]) {
		t.Fatalf("handed up with %+v (want %+v), or changed", f[0].Off, want)
	}
	if !f[0].Finish() || !validTCP(f[0].Bytes(), 34) {
		t.Fatal("does not finish to a valid checksum")
	}

	// Tagged: completed, Off zero.
	tagged := append(bytes.Clone(in[:vnetHdrLen+12]), append([]byte{0x81, 0x00, 0, 5}, in[vnetHdrLen+12:]...)...)
	binary.NativeEndian.PutUint16(tagged[6:], 38)
	if !s.load(copy(s.buf, tagged)) || !s.next(&f[0], FrameSize(1500)) {
		t.Fatal("tagged frame refused")
	}
	if f[0].Off != (Offload{}) || !validTCP(f[0].Bytes(), 38) {
		t.Fatalf("a tagged frame handed up with %+v, or not completed", f[0].Off)
	}

	// A complete TCP frame stays as it is, Off zero even in a frame
	// that held a partial one.
	plain := bytes.Clone(in)
	plain[0] = 0
	f[0].Off = Offload{Partial: true, CsumStart: 34, CsumOffset: 16}
	if !s.load(copy(s.buf, plain)) || !s.next(&f[0], FrameSize(1500)) || f[0].Off != (Offload{}) {
		t.Fatalf("a complete frame handed up with %+v", f[0].Off)
	}

	// The segments of a tagged GSO frame come complete.
	gt := gsoPacket(make([]byte, 3000), 1000, 0x10)
	gt = append(gt[:vnetHdrLen+12], append([]byte{0x81, 0x00, 0, 5}, gt[vnetHdrLen+12:]...)...)
	binary.NativeEndian.PutUint16(gt[6:], 38)
	if !s.load(copy(s.buf, gt)) {
		t.Fatal("tagged GSO frame refused")
	}
	for n := 0; s.pending(); n++ {
		if !s.next(&f[0], FrameSize(1500)) {
			t.Fatalf("segment %d refused", n)
		}
		if f[0].Off != (Offload{}) || !validTCP(f[0].Bytes(), 38) {
			t.Fatalf("tagged segment %d handed up with %+v, or not completed", n, f[0].Off)
		}
	}
}

func TestGSOReaderRefusesJunk(t *testing.T) {
	s := gsoReader{buf: make([]byte, offloadBufLen)}
	for _, c := range []struct {
		name string
		mod  func(in []byte)
	}{
		{"TSO of a UDP packet", func(in []byte) { in[vnetHdrLen+14+9] = 17 }},
		{"TSO over IPv6 of an IPv4 packet", func(in []byte) { in[1] = gsoTCPv6 }},
		{"UFO", func(in []byte) { in[1] = 3 }},
		{"TSO without a size", func(in []byte) { in[4], in[5] = 0, 0 }},
		{"a checksum's place past the end", func(in []byte) { in[8] = 0xff; in[9] = 0xff }},
		{"a checksum's place in the Ethernet header", func(in []byte) { in[1] = gsoNone; in[6], in[7] = 4, 0 }},
	} {
		in := gsoPacket(make([]byte, 3000), 1448, 0x10)
		c.mod(in)
		if s.load(copy(s.buf, in)) {
			t.Errorf("%s accepted", c.name)
		}
	}
	if s.load(5) {
		t.Fatal("a runt accepted")
	}
	// TSO without NEEDS_CSUM (the kernel's segments have it) is cut all
	// the same: the pieces' checksums are computed whole.
	in := gsoPacket(make([]byte, 3000), 1448, 0x10)
	in[0] = 0
	if !s.load(copy(s.buf, in)) || !s.seg.Pending() {
		t.Fatal("TSO without a partial checksum refused")
	}
	s.seg = Segmenter{}
	// A frame whose checksum's place lies beyond what the port hands
	// out is dropped, never handed out partial.
	in = gsoPacket(make([]byte, 100), 0, 0x10)
	in[1] = gsoNone
	if !s.load(copy(s.buf, in)) {
		t.Fatal("a plain frame with a partial checksum refused")
	}
	if f := NewBatch(1, 1500); s.next(&f[0], 60) || s.pending() {
		t.Fatal("a frame larger than the port's limit handed out")
	}
}

// tcpFrame is a plain TCP/IPv4 frame with valid checksums.
func tcpFrame(seq uint32, payload []byte, flags byte) Frame {
	b := gsoPacket(payload, 0, flags)[vnetHdrLen:]
	binary.BigEndian.PutUint16(b[14+4:], uint16(seq)) // ids differ, as a guest's do
	b[14+10], b[14+11] = 0, 0
	binary.BigEndian.PutUint16(b[14+10:], csumFold(csumAdd(0, b[14:34])))
	binary.BigEndian.PutUint32(b[34+4:], seq)
	tcp := b[34:]
	tcp[16], tcp[17] = 0, 0
	binary.BigEndian.PutUint16(tcp[16:], csumFold(csumAdd(csumAdd(0, b[26:34])+6+uint64(len(tcp)), tcp)))
	buf := make([]byte, FrameSize(1500))
	return Frame{Buf: buf, N: copy(buf, b)}
}

func TestCoalesceRun(t *testing.T) {
	full := make([]byte, 1448)
	run := func(fs ...Frame) int { n, _ := coalesceRun(fs, FrameSize(1500)); return n }
	const ack, psh = 0x10, 0x18
	if n := run(tcpFrame(1, full, ack), tcpFrame(1449, full, ack), tcpFrame(2897, full[:100], psh), tcpFrame(2997, full, ack)); n != 3 {
		t.Fatalf("merged %d, want 3 (up to the PSH)", n)
	}
	if n := run(tcpFrame(1, full, ack), tcpFrame(1450, full, ack)); n != 1 {
		t.Fatal("a gap in the sequence merged")
	}
	if n := run(tcpFrame(1, full[:1000], ack), tcpFrame(1001, full, ack)); n != 1 {
		t.Fatal("a short segment merged before a longer one")
	}
	if n := run(tcpFrame(1, full, psh), tcpFrame(1449, full, ack)); n != 1 {
		t.Fatal("merged past a PSH")
	}
	bad := tcpFrame(1449, full, ack)
	bad.Buf[100] ^= 1
	if n := run(tcpFrame(1, full, ack), bad); n != 1 {
		t.Fatal("a segment with a bad checksum merged")
	}
	other := tcpFrame(1449, full, ack)
	other.Buf[34+1] ^= 1 // another port
	binary.BigEndian.PutUint16(other.Buf[34+16:], 0)
	tcp := other.Buf[34:other.N]
	binary.BigEndian.PutUint16(tcp[16:], csumFold(csumAdd(csumAdd(0, other.Buf[26:34])+6+uint64(len(tcp)), tcp)))
	if n := run(tcpFrame(1, full, ack), other); n != 1 {
		t.Fatal("two flows merged")
	}
	fs := make([]Frame, 60)
	for i := range fs {
		fs[i] = tcpFrame(uint32(1+i*1448), full, ack)
	}
	if n := run(fs...); n*1448+54 > 65535+14 || n < 40 {
		t.Fatalf("merged %d full segments: beyond 64 KiB, or too few", n)
	}
}

func TestCsumAddMatchesWordSum(t *testing.T) {
	b := make([]byte, 70000)
	for i := range b {
		b[i] = byte(i*31 + i>>8)
	}
	for i := 0; i < 200; i++ {
		b[i] = 0xff // all ones: the end-around carries
	}
	for _, n := range []int{0, 1, 2, 7, 8, 9, 31, 32, 33, 63, 1500, 1501, 65535, 70000} {
		for _, off := range []int{0, 1, 3} {
			if off+n > len(b) {
				continue
			}
			p := b[off : off+n]
			var want uint64 = 12345
			for j := 0; j+1 < len(p); j += 2 {
				want += uint64(binary.BigEndian.Uint16(p[j:]))
			}
			if len(p)%2 == 1 {
				want += uint64(p[len(p)-1]) << 8
			}
			if got := csumFold(csumAdd(12345, p)); got != csumFold(want) {
				t.Fatalf("%d bytes at %d: %#x, want %#x", n, off, got, csumFold(want))
			}
		}
	}
}

func BenchmarkCsumAdd(b *testing.B) {
	p := make([]byte, 65535)
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		csumAdd(0, p)
	}
}

// segFrame is a plain TCP frame over IPv4 or IPv6 with valid checksums,
// or with partial its TCP checksum left partial (the pseudo-header's
// sum) and Off saying so.
func segFrame(v6 bool, seq uint32, payload []byte, flags byte, partial bool) Frame {
	pkt, off := tsoFrame(v6, payload, flags)
	l4 := int(off.CsumStart)
	binary.BigEndian.PutUint32(pkt[l4+4:], seq)
	var sum uint64
	if v6 {
		sum = csumAdd(0, pkt[22:54])
	} else {
		binary.BigEndian.PutUint16(pkt[18:], uint16(seq)) // ids differ, as a guest's do
		pkt[24], pkt[25] = 0, 0
		binary.BigEndian.PutUint16(pkt[24:], csumFold(csumAdd(0, pkt[14:34])))
		sum = csumAdd(0, pkt[26:34])
	}
	tcp := pkt[l4:]
	sum += ipProtoTCP + uint64(len(tcp))
	buf := make([]byte, FrameSize(1500))
	f := Frame{Buf: buf}
	if partial {
		binary.BigEndian.PutUint16(tcp[16:], ^csumFold(sum))
		f.Off = Offload{Partial: true, CsumStart: uint16(l4), CsumOffset: 16}
	} else {
		binary.BigEndian.PutUint16(tcp[16:], csumFold(csumAdd(sum, tcp)))
	}
	f.N = copy(buf, pkt)
	return f
}

// Frames whose TCP checksum is partial join runs: nothing to verify in
// the TCP checksum, but the IPv4 header checksum is, and the checksum
// must be partial where a TCP checksum is.
func TestCoalesceRunPartial(t *testing.T) {
	run := func(fs ...Frame) int { n, _ := coalesceRun(fs, FrameSize(1500)); return n }
	const ack, psh = 0x10, 0x18
	for _, v6 := range []bool{false, true} {
		mss := uint32(1448)
		if v6 {
			mss = 1440 // the MTU's room after 40 bytes of IPv6
		}
		full := make([]byte, mss)
		seg := func(i uint32, p []byte, flags byte, partial bool) Frame {
			return segFrame(v6, 1+i*mss, p, flags, partial)
		}
		if n := run(seg(0, full, ack, true), seg(1, full, ack, true), seg(2, full[:100], psh, true), seg(3, full, ack, true)); n != 3 {
			t.Fatalf("v6 %v: merged %d partial frames, want 3 (up to the PSH)", v6, n)
		}
		if n := run(seg(0, full, ack, false), seg(1, full, ack, true), seg(2, full, ack, false), seg(3, full, ack, true)); n != 4 {
			t.Fatalf("v6 %v: merged %d of complete and partial frames mixed, want 4", v6, n)
		}
		// A partial frame's TCP checksum field holds anything: the
		// kernel computes it.
		junk := seg(1, full, ack, true)
		junk.Buf[junk.Off.CsumStart+16] ^= 0x5a
		if n := run(seg(0, full, ack, true), junk); n != 2 {
			t.Fatalf("v6 %v: a partial frame's checksum field was checked", v6)
		}
		// ... but a complete frame's checksum is.
		bad := seg(1, full, ack, false)
		bad.Buf[200] ^= 1
		if n := run(seg(0, full, ack, true), bad); n != 1 {
			t.Fatalf("v6 %v: a complete frame with a bad checksum merged after a partial one", v6)
		}
		l4 := 34 + 20*b2i(v6)
		for _, o := range []Offload{
			{Partial: true, CsumStart: 14, CsumOffset: 16},
			{Partial: true, CsumStart: l4, CsumOffset: 6},
			{Partial: true, CsumStart: l4, CsumOffset: 16, GSO: GSOTCPv4, GSOSize: 1448},
			{CsumStart: l4, CsumOffset: 16},
		} {
			odd := seg(1, full, ack, true)
			odd.Off = o
			if n := run(seg(0, full, ack, true), odd); n != 1 {
				t.Fatalf("v6 %v: a frame with offload %+v merged", v6, o)
			}
			first := seg(0, full, ack, true)
			first.Off = o
			if n := run(first, seg(1, full, ack, true)); n != 1 {
				t.Fatalf("v6 %v: a run started with offload %+v", v6, o)
			}
		}
		// Beyond 64 KiB of IP payload, the run stops.
		fs := make([]Frame, 60)
		for i := range fs {
			fs[i] = seg(uint32(i), full, ack, i%2 == 0)
		}
		if n := run(fs...); n*int(mss)+40 > 65535 || n < 40 {
			t.Fatalf("v6 %v: merged %d full segments: beyond 64 KiB, or too few", v6, n)
		}
	}
	full := make([]byte, 1448)
	// The IPv4 header checksum of a partial frame is verified.
	bad := segFrame(false, 1449, full, ack, true)
	bad.Buf[14+8]-- // TTL
	if n := run(segFrame(false, 1, full, ack, true), bad); n != 1 {
		t.Fatal("a partial frame with a bad IPv4 header checksum merged")
	}
	// IPv4 and IPv6 never merge.
	if n := run(segFrame(false, 1, full, ack, true), segFrame(true, 1449, full[:1000], ack, true)); n != 1 {
		t.Fatal("IPv4 and IPv6 merged")
	}
}

func b2i(b bool) uint16 {
	if b {
		return 1
	}
	return 0
}

// The header of a merged segment is the first frame's with the whole
// length, the last frame's flags and the pseudo-header's sum in the TCP
// checksum; the virtio header asks the kernel to cut at the run's size.
func TestMergeHeader(t *testing.T) {
	payload := make([]byte, 3*1448+500)
	for i := range payload {
		payload[i] = byte(i*7 + 1)
	}
	for _, v6 := range []bool{false, true} {
		size := 1448
		if v6 {
			size = 1440
		}
		var run []Frame
		for off := 0; off < len(payload); off += size {
			end, flags := min(off+size, len(payload)), byte(0x10)
			if end == len(payload) {
				flags = 0x18
			}
			run = append(run, segFrame(v6, 0xfffffa00+uint32(off), payload[off:end], flags, off == size))
		}
		if n, mss := coalesceRun(run, FrameSize(1500)); n != len(run) || mss != size {
			t.Fatalf("v6 %v: run of %d at %d, want %d at %d", v6, n, mss, len(run), size)
		}
		h := make([]byte, vnetHdrLen+EthHeaderLen+40+60)
		hn := mergeHeader(h, run, size)
		pkt := append(bytes.Clone(h[vnetHdrLen:hn]), payload...)
		vh := parseVnetHdr(h)
		l4 := 34 + 20*int(b2i(v6))
		wantGSO := byte(gsoTCPv4)
		if v6 {
			wantGSO = gsoTCPv6
		}
		if vh != (vnetHdr{flags: vnetNeedsCsum, gsoType: wantGSO, hdrLen: uint16(l4 + 20), gsoSize: uint16(size), csumStart: uint16(l4), csumOffset: 16}) {
			t.Fatalf("v6 %v: virtio header %+v", v6, vh)
		}
		// Completed by hand, the checksum is what gopacket computes.
		f := Frame{Buf: pkt, N: len(pkt), Off: Offload{Partial: true, CsumStart: uint16(l4), CsumOffset: 16}}
		if !f.Finish() {
			t.Fatal("Finish refused")
		}
		p := gopacket.NewPacket(pkt, layers.LayerTypeEthernet, gopacket.Default)
		tcp := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if v6 {
			ip := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
			if int(ip.Length) != len(pkt)-54 {
				t.Fatalf("IPv6 length %d of %d", ip.Length, len(pkt))
			}
			tcp.SetNetworkLayerForChecksum(ip)
		} else {
			ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			if int(ip.Length) != len(pkt)-14 || csumFold(csumAdd(0, pkt[14:34])) != 0 || ip.Id != 0xfa00 {
				t.Fatalf("IPv4 length %d of %d, id %#x, or header checksum wrong", ip.Length, len(pkt), ip.Id)
			}
			tcp.SetNetworkLayerForChecksum(ip)
		}
		want := tcp.Checksum
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true}, tcp, gopacket.Payload(tcp.Payload)); err != nil {
			t.Fatal(err)
		}
		if got := binary.BigEndian.Uint16(buf.Bytes()[16:]); got != want || tcp.Seq != 0xfffffa00 || !tcp.PSH || !tcp.ACK || !bytes.Equal(tcp.Payload, payload) {
			t.Fatalf("v6 %v: checksum %#x (gopacket %#x), seq %#x, PSH %v, or payload differ", v6, want, got, tcp.Seq, tcp.PSH)
		}
	}
}

// BenchmarkCoalesceRun is the CPU cost of writing a run of 44 full-size
// segments of one flow through an offloading TAP, less the system call:
// finding the run (which verifies complete frames' checksums, and skips
// the TCP checksum of partial ones) and building the merged header.
func BenchmarkCoalesceRun(b *testing.B) {
	for _, v6 := range []bool{false, true} {
		for _, partial := range []bool{false, true} {
			name := fmt.Sprintf("v6=%v/partial=%v", v6, partial)
			b.Run(name, func(b *testing.B) {
				size := 1448
				if v6 {
					size = 1440
				}
				payload := make([]byte, size)
				run := make([]Frame, 44)
				bytes := 0
				for i := range run {
					run[i] = segFrame(v6, uint32(1+i*size), payload, 0x10, partial)
					bytes += run[i].N
				}
				h := make([]byte, vnetHdrLen+EthHeaderLen+40+60)
				b.SetBytes(int64(bytes))
				for b.Loop() {
					n, mss := coalesceRun(run, FrameSize(1500))
					if n != len(run) {
						b.Fatalf("merged %d of %d", n, len(run))
					}
					mergeHeader(h, run, mss)
				}
			})
		}
	}
}
