//go:build linux

package frameio

import (
	"encoding/binary"
	"testing"
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

func TestSegmenterCutsTSO(t *testing.T) {
	payload := make([]byte, 10000)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	const mss = 1448
	in := gsoPacket(payload, mss, 0x80|0x18|0x01) // CWR, PSH, ACK, FIN
	s := segmenter{buf: make([]byte, offloadBufLen)}
	n := copy(s.buf, in)
	if !s.load(n) {
		t.Fatal("segment refused")
	}
	frames := NewBatch(3, 1500) // fewer than the segment needs: it stays pending
	var got []byte
	segs := 0
	for s.pkt != nil {
		for i := range frames {
			if s.pkt == nil {
				break
			}
			if !s.next(&frames[i], FrameSize(1500)) {
				t.Fatal("a segment did not fit")
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

func TestSegmenterCompletesChecksum(t *testing.T) {
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
	s := segmenter{buf: make([]byte, offloadBufLen)}
	if !s.load(copy(s.buf, in)) {
		t.Fatal("frame refused")
	}
	f := NewBatch(1, 1500)
	if !s.next(&f[0], FrameSize(1500)) || s.pkt != nil {
		t.Fatal("frame not passed on")
	}
	out := f[0].Bytes()
	if c := csumFold(csumAdd(csumAdd(0, out[26:34])+17+uint64(len(udp)), out[34:])); c != 0 {
		t.Fatalf("UDP checksum not completed: %#x", c)
	}
}

func TestSegmenterRefusesJunk(t *testing.T) {
	s := segmenter{buf: make([]byte, offloadBufLen)}
	in := gsoPacket(make([]byte, 3000), 1448, 0x10)
	in[vnetHdrLen+14+9] = 17 // TSO on UDP
	if s.load(copy(s.buf, in)) {
		t.Fatal("TSO of a UDP packet accepted")
	}
	in = gsoPacket(make([]byte, 3000), 1448, 0x10)
	in[1] = 4 // VIRTIO_NET_HDR_GSO_TCPV6, never negotiated
	if s.load(copy(s.buf, in)) {
		t.Fatal("unknown GSO type accepted")
	}
	if s.load(5) {
		t.Fatal("a runt accepted")
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
