//go:build linux

package frameio

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// FuzzTAPRead hands the offloading TAP reader arbitrary reads (virtio
// header, then a packet), as a host stack or a hostile local sender can
// produce. Every frame it hands out fits the MTU; each piece of a cut TCP
// segment has valid IP and TCP checksums, its IP length matches, and the
// pieces' payloads put together are the segment's.
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
	const mtu = 1500
	s := segmenter{buf: make([]byte, offloadBufLen)}
	frames := NewBatch(4, mtu)
	f.Fuzz(func(t *testing.T, in []byte) {
		n := copy(s.buf, in)
		s.pkt = nil
		if !s.load(n) {
			return
		}
		pkt := append([]byte(nil), s.pkt...)
		tso, hlen, l3 := s.hlen > 0, s.hlen, s.l3
		var got []byte
		all := true
		for i := 0; s.pkt != nil; i++ {
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
				t.Fatalf("a %d-byte frame for MTU %d", len(b), mtu)
			}
			if !tso {
				if !bytes.Equal(b, pkt) {
					t.Fatal("a plain frame changed on the way")
				}
				continue
			}
			l4 := l3 + int(pkt[l3]&0x0f)*4
			ip, tcp := b[l3:], b[l4:]
			if int(binary.BigEndian.Uint16(ip[2:])) != len(b)-l3 {
				t.Fatalf("IP length %d in a %d-byte frame", binary.BigEndian.Uint16(ip[2:]), len(b))
			}
			if c := csumFold(csumAdd(0, b[l3:l4])); c != 0 {
				t.Fatalf("IP checksum off by %#x", c)
			}
			if c := csumFold(csumAdd(csumAdd(0, b[l3+12:l3+20])+6+uint64(len(tcp)), tcp)); c != 0 {
				t.Fatalf("TCP checksum off by %#x", c)
			}
			got = append(got, b[hlen:]...)
		}
		if tso && all && !bytes.Equal(got, pkt[hlen:]) {
			t.Fatalf("payload of %d bytes came out as %d", len(pkt)-hlen, len(got))
		}
	})
}

// FuzzTAPCoalesce hands the TAP writer's merge arbitrary runs of frames
// (each behind a length byte). A merge it finds is what Linux's GRO would
// make: frames of one flow, contiguous, of one size but the last, with
// valid checksums, within 64 KiB.
func FuzzTAPCoalesce(f *testing.F) {
	full := make([]byte, 1448)
	join := func(fs ...Frame) []byte {
		var out []byte
		for _, fr := range fs {
			out = binary.BigEndian.AppendUint16(out, uint16(fr.N))
			out = append(out, fr.Bytes()...)
		}
		return out
	}
	f.Add(join(tcpFrame(1, full, 0x10), tcpFrame(1449, full, 0x10), tcpFrame(2897, full[:100], 0x18)))
	f.Add(join(tcpFrame(1, full, 0x10), tcpFrame(1450, full, 0x10)))
	f.Add(join(tcpFrame(1, full[:10], 0x10), tcpFrame(11, full[:10], 0x10), tcpFrame(21, full[:10], 0x10)))
	const mtu = 1500
	fsize := FrameSize(mtu)
	f.Fuzz(func(t *testing.T, data []byte) {
		var frames []Frame
		for len(data) >= 2 && len(frames) < 100 {
			n := min(int(binary.BigEndian.Uint16(data)), len(data)-2, fsize)
			buf := make([]byte, fsize)
			frames = append(frames, Frame{Buf: buf, N: copy(buf, data[2:2+n])})
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
		s0, _ := parseTCP4(frames[0].Bytes())
		total, next := 20+s0.thl, s0.seq
		for i := 0; i < n; i++ {
			b := frames[i].Bytes()
			s, ok := parseTCP4(b)
			if !ok || !validSums(b) || s.thl != s0.thl || s.seq != next || !sameFlow(frames[0].Bytes(), b, s0) || len(b) <= 34+s.thl {
				t.Fatalf("frame %d of a run of %d does not belong: %+v", i, n, s)
			}
			if i < n-1 && (s.plen != mss || s.flags != 0x10) {
				t.Fatalf("frame %d: %d bytes, flags %#x, mss %d", i, s.plen, s.flags, mss)
			}
			total += s.plen
			next += uint32(s.plen)
		}
		if total > 65535 {
			t.Fatalf("merged %d bytes of IP", total)
		}
	})
}
