package frameio

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// tsoFrame is a GSO frame as a guest with TSO hands it over: one TCP
// segment of payload over IPv4 or IPv6, its checksum partial.
func tsoFrame(v6 bool, payload []byte, flags byte) ([]byte, Offload) {
	eth := []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0}
	var ip []byte
	if v6 {
		eth[12], eth[13] = 0x86, 0xdd
		ip = make([]byte, 40)
		ip[0], ip[6], ip[7] = 0x60, 6, 64
		ip[8], ip[23] = 0xfd, 1
		ip[24], ip[39] = 0xfd, 2
		binary.BigEndian.PutUint16(ip[4:], uint16(20+len(payload)))
	} else {
		ip = make([]byte, 20)
		ip[0], ip[8], ip[9] = 0x45, 64, 6
		binary.BigEndian.PutUint16(ip[2:], uint16(40+len(payload)))
		binary.BigEndian.PutUint16(ip[4:], 0xfff0) // wraps while cutting
		copy(ip[12:], []byte{10, 0, 0, 1, 10, 0, 0, 2})
	}
	tcp := make([]byte, 20)
	binary.BigEndian.PutUint16(tcp[0:], 5201)
	binary.BigEndian.PutUint16(tcp[2:], 40000)
	binary.BigEndian.PutUint32(tcp[4:], 0xfffff000) // wraps too
	tcp[12], tcp[13] = 5<<4, flags
	pkt := append(append(append(eth, ip...), tcp...), payload...)
	gso, mss := GSOTCPv4, uint16(1460)
	if v6 {
		gso, mss = GSOTCPv6, 1440
	} else {
		binary.BigEndian.PutUint16(pkt[24:], csumFold(csumAdd(0, pkt[14:34])))
	}
	return pkt, Offload{Partial: true, CsumStart: uint16(14 + len(ip)), CsumOffset: 16, GSO: gso, GSOSize: mss}
}

// checkSegments decodes segments with their checksums verified and
// returns the payload they carry in order.
func checkSegments(t *testing.T, segs [][]byte, v6 bool) []byte {
	t.Helper()
	var out []byte
	for i, s := range segs {
		p := gopacket.NewPacket(s, layers.LayerTypeEthernet, gopacket.Default)
		tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if tcp == nil {
			t.Fatalf("segment %d: no TCP: %v", i, p)
		}
		if v6 {
			ip := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
			if int(ip.Length) != len(s)-54 {
				t.Fatalf("segment %d: IPv6 length %d of %d", i, ip.Length, len(s))
			}
			tcp.SetNetworkLayerForChecksum(ip)
		} else {
			ip := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			if int(ip.Length) != len(s)-14 || ip.Id != uint16(0xfff0+i) {
				t.Fatalf("segment %d: IPv4 length %d id %#x", i, ip.Length, ip.Id)
			}
			if csumFold(csumAdd(0, s[14:34])) != 0 {
				t.Fatalf("segment %d: IPv4 header checksum", i)
			}
			tcp.SetNetworkLayerForChecksum(ip)
		}
		if want := uint32(0xfffff000) + uint32(len(out)); tcp.Seq != want {
			t.Fatalf("segment %d: seq %#x, want %#x", i, tcp.Seq, want)
		}
		last := i == len(segs)-1
		if tcp.FIN != last || tcp.PSH != last || tcp.CWR != (i == 0) || !tcp.ACK {
			t.Fatalf("segment %d of %d: flags FIN %v PSH %v CWR %v", i, len(segs), tcp.FIN, tcp.PSH, tcp.CWR)
		}
		l4 := len(s) - len(tcp.Payload) - 20
		var sum uint64
		if v6 {
			sum = csumAdd(0, s[22:54])
		} else {
			sum = csumAdd(0, s[26:34])
		}
		if csumFold(csumAdd(sum+ipProtoTCP+uint64(len(s)-l4), s[l4:])) != 0 {
			t.Fatalf("segment %d: TCP checksum", i)
		}
		out = append(out, tcp.Payload...)
	}
	return out
}

func TestSegmenterPartialAndComplete(t *testing.T) {
	payload := make([]byte, 10000)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	for _, v6 := range []bool{false, true} {
		for _, partial := range []bool{false, true} {
			pkt, off := tsoFrame(v6, payload, 0x80|0x18|0x01) // CWR, PSH, ACK, FIN
			var s Segmenter
			if err := s.Load(pkt, off); err != nil {
				t.Fatalf("v6 %v: %v", v6, err)
			}
			frames := NewBatch(3, 1500) // fewer than needed: the rest stays pending
			var segs [][]byte
			for s.Pending() {
				for i := range frames {
					if !s.Pending() {
						break
					}
					want := s.SegmentLen()
					if !s.Next(&frames[i], partial) || frames[i].N != want || frames[i].N > FrameSize(1500)-VLANTagLen {
						t.Fatalf("v6 %v: segment of %d (want %d)", v6, frames[i].N, want)
					}
					if frames[i].Off.Partial != partial {
						t.Fatalf("v6 %v partial %v: Off %+v", v6, partial, frames[i].Off)
					}
					if partial && !frames[i].Finish() {
						t.Fatalf("v6 %v: Finish refused %+v", v6, frames[i].Off)
					}
					segs = append(segs, bytes.Clone(frames[i].Bytes()))
				}
			}
			if len(segs) != 7 {
				t.Fatalf("v6 %v: %d segments, want 7", v6, len(segs))
			}
			if got := checkSegments(t, segs, v6); !bytes.Equal(got, payload) {
				t.Fatalf("v6 %v partial %v: the payload changed", v6, partial)
			}
		}
	}
}

// What is not a TCP segment to cut is refused, never cut wrong.
func TestSegmenterRefuses(t *testing.T) {
	good, off := tsoFrame(false, make([]byte, 3000), 0x10)
	for _, c := range []struct {
		name string
		mod  func(p []byte, o *Offload) []byte
	}{
		{"no size", func(p []byte, o *Offload) []byte { o.GSOSize = 0; return p }},
		{"udp", func(p []byte, o *Offload) []byte { p[23] = 17; return p }},
		{"v6 type on v4", func(p []byte, o *Offload) []byte { o.GSO = GSOTCPv6; return p }},
		{"unknown type", func(p []byte, o *Offload) []byte { o.GSO = 3; return p }},
		{"fragment", func(p []byte, o *Offload) []byte { p[20] = 0x20; return p }},
		{"short ip header", func(p []byte, o *Offload) []byte { p[14] = 0x44; return p }},
		{"tcp header past the end", func(p []byte, o *Offload) []byte { return p[:40] }},
		{"no payload", func(p []byte, o *Offload) []byte { return p[:54] }},
		{"tcp offset lies", func(p []byte, o *Offload) []byte { p[46] = 0x40; return p }},
		{"runt", func(p []byte, o *Offload) []byte { return p[:10] }},
		{"too long", func(p []byte, o *Offload) []byte { return append(p, make([]byte, 70000)...) }},
	} {
		p, o := bytes.Clone(good), off
		p = c.mod(p, &o)
		var s Segmenter
		if err := s.Load(p, o); err == nil || s.Pending() {
			t.Errorf("%s: cut", c.name)
		}
	}
	// A segment that does not fit gives up the rest.
	var s Segmenter
	if err := s.Load(good, off); err != nil {
		t.Fatal(err)
	}
	small := Frame{Buf: make([]byte, 100)}
	if s.Next(&small, true) || s.Pending() {
		t.Fatal("a segment larger than the buffer was written, or the rest kept")
	}
}

// WholeGSO takes what a Linux stack hands a NIC with TSO, over IPv4 and
// IPv6, and nothing the Segmenter would refuse or a receiver could not
// keep as it is.
func TestWholeGSO(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		good, off := tsoFrame(v6, make([]byte, 5000), 0x18)
		if !WholeGSO(good, off) {
			t.Fatalf("v6 %v: a plain TSO segment refused", v6)
		}
		lenAt := 16 // the IPv4 total length; IPv6's payload length at 18
		if v6 {
			lenAt = 18
		}
		for _, c := range []struct {
			name string
			mod  func(p []byte, o *Offload) []byte
		}{
			{"not GSO", func(p []byte, o *Offload) []byte { o.GSO, o.GSOSize = GSONone, 0; return p }},
			{"checksum complete", func(p []byte, o *Offload) []byte { o.Partial = false; return p }},
			{"checksum elsewhere", func(p []byte, o *Offload) []byte { o.CsumOffset = 6; return p }},
			{"CWR", func(p []byte, o *Offload) []byte { p[o.CsumStart+13] |= 0x80; return p }},
			{"IP length short", func(p []byte, o *Offload) []byte { p[lenAt+1]--; return p }},
			{"IP length long", func(p []byte, o *Offload) []byte { return p[:len(p)-1] }},
			{"size under MinGSOSize", func(p []byte, o *Offload) []byte { o.GSOSize = MinGSOSize - 1; return p }},
			{"type of the other version", func(p []byte, o *Offload) []byte {
				o.GSO = map[bool]GSOType{false: GSOTCPv6, true: GSOTCPv4}[v6]
				return p
			}},
			{"VLAN tag", func(p []byte, o *Offload) []byte {
				o.CsumStart += 4
				return append(append(bytes.Clone(p[:12]), 0x81, 0, 0, 5), p[12:]...)
			}},
		} {
			p, o := bytes.Clone(good), off
			p = c.mod(p, &o)
			if WholeGSO(p, o) {
				t.Errorf("v6 %v, %s: taken whole", v6, c.name)
			}
		}
	}
}

func TestFinish(t *testing.T) {
	pkt, off := tsoFrame(false, []byte("hello, partial"), 0x80|0x18|0x01)
	// A partial checksum holds the pseudo-header's sum.
	sum := csumAdd(0, pkt[26:34]) + ipProtoTCP + uint64(len(pkt)-34)
	binary.BigEndian.PutUint16(pkt[50:], ^csumFold(sum))
	off.GSO, off.GSOSize = GSONone, 0
	f := Frame{Buf: pkt, N: len(pkt), Off: off}
	if !f.Finish() || f.Off != (Offload{}) {
		t.Fatalf("Finish: %+v", f.Off)
	}
	checkSegments(t, [][]byte{f.Bytes()}, false)
	for _, bad := range []Offload{
		{Partial: true, CsumStart: 4, CsumOffset: 16},
		{Partial: true, CsumStart: 34, CsumOffset: uint16(len(pkt))},
		{Partial: true, CsumStart: 34, CsumOffset: 16, GSO: GSOTCPv4, GSOSize: 1460},
		{GSO: GSOTCPv4},
	} {
		f := Frame{Buf: pkt, N: len(pkt), Off: bad}
		if f.Finish() {
			t.Errorf("Finish took %+v", bad)
		}
	}
	if f := (Frame{Buf: pkt, N: len(pkt)}); !f.Finish() {
		t.Error("a complete frame is not finished")
	}
}
