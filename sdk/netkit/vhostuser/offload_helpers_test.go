//go:build linux

package vhostuser_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// The frames a guest with checksum offload and TSO sends, built with
// gopacket (complete checksums), then made partial as the guest leaves
// them: the checksum field holds the pseudo-header's sum.

type l4Kind int

const (
	kindTCP l4Kind = iota
	kindUDP
	kindICMPv6
)

// pktSpec describes a test packet.
type pktSpec struct {
	v6, vlan, ipOpts bool
	kind             l4Kind
	payload          []byte
	seq              uint32
	fin              bool
}

var (
	guestMAC = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 7}
	peerMAC  = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 8}
)

// built is a test packet: the complete frame and where its headers are.
type built struct {
	frame    []byte
	l3, l4   int
	csumOff  int // offset of the checksum field in the L4 header
	hdrLen   int // all headers (TCP)
	v6, vlan bool
}

func payloadBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*13) + seed
	}
	return b
}

func buildPkt(t testing.TB, s pktSpec) built {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: guestMAC, DstMAC: peerMAC, EthernetType: layers.EthernetTypeIPv4}
	ls := []gopacket.SerializableLayer{eth}
	b := built{l3: 14, v6: s.v6, vlan: s.vlan}
	if s.vlan {
		eth.EthernetType = layers.EthernetTypeDot1Q
		et := layers.EthernetTypeIPv4
		if s.v6 {
			et = layers.EthernetTypeIPv6
		}
		ls = append(ls, &layers.Dot1Q{VLANIdentifier: 42, Type: et})
		b.l3 = 18
	} else if s.v6 {
		eth.EthernetType = layers.EthernetTypeIPv6
	}
	proto := map[l4Kind]layers.IPProtocol{kindTCP: layers.IPProtocolTCP, kindUDP: layers.IPProtocolUDP, kindICMPv6: layers.IPProtocolICMPv6}[s.kind]
	var netl gopacket.NetworkLayer
	if s.v6 {
		ip := &layers.IPv6{Version: 6, NextHeader: proto, HopLimit: 64,
			SrcIP: net.ParseIP("fd00::7"), DstIP: net.ParseIP("fd00::8")}
		ls, netl = append(ls, ip), ip
		b.l4 = b.l3 + 40
	} else {
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: proto, Flags: layers.IPv4DontFragment, Id: 0x1234,
			SrcIP: net.IPv4(10, 0, 0, 7).To4(), DstIP: net.IPv4(10, 0, 0, 8).To4()}
		b.l4 = b.l3 + 20
		if s.ipOpts {
			ip.Options = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}} // router alert
			b.l4 += 4
		}
		ls, netl = append(ls, ip), ip
	}
	switch s.kind {
	case kindTCP:
		tcp := &layers.TCP{SrcPort: 40000, DstPort: 5201, Seq: s.seq, Ack: 1, ACK: true, PSH: true, FIN: s.fin, Window: 1000,
			Options: []layers.TCPOption{{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop},
				{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: make([]byte, 8)}}}
		tcp.SetNetworkLayerForChecksum(netl)
		ls = append(ls, tcp)
		b.csumOff, b.hdrLen = 16, b.l4+32
	case kindUDP:
		udp := &layers.UDP{SrcPort: 40000, DstPort: 53}
		udp.SetNetworkLayerForChecksum(netl)
		ls = append(ls, udp)
		b.csumOff = 6
	case kindICMPv6:
		ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeEchoRequest, 0)}
		ic.SetNetworkLayerForChecksum(netl)
		ls = append(ls, ic, &layers.ICMPv6Echo{Identifier: 1, SeqNumber: 2})
		b.csumOff = 2
	}
	ls = append(ls, gopacket.Payload(s.payload))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	b.frame = append([]byte(nil), buf.Bytes()...)
	if !l4Valid(b.frame, b.l3, b.l4, b.v6) {
		t.Fatal("gopacket built a frame with a bad checksum")
	}
	return b
}

// sum16 adds b to a ones' complement sum, big-endian words.
func sum16(s uint32, b []byte) uint32 {
	for len(b) >= 2 {
		s += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return s
}

// pseudo is the pseudo-header's sum for the L4 segment at l4.
func pseudo(f []byte, l3, l4 int, v6 bool) uint32 {
	n := len(f) - l4
	if v6 {
		s := sum16(0, f[l3+8:l3+40])
		return sum16(s, []byte{0, 0, byte(n >> 8), byte(n), 0, 0, 0, f[l3+6]})
	}
	s := sum16(0, f[l3+12:l3+20])
	return sum16(s, []byte{0, f[l3+9], byte(n >> 8), byte(n)})
}

// l4Valid reports whether the L4 checksum of f is complete and right.
func l4Valid(f []byte, l3, l4 int, v6 bool) bool {
	return sum16(pseudo(f, l3, l4, v6), f[l4:]) == 0xffff
}

// partial is b's frame as a guest with checksum offload leaves it, with
// the Off that says so.
func (b built) partial() ([]byte, frameio.Offload) {
	f := bytes.Clone(b.frame)
	binary.BigEndian.PutUint16(f[b.l4+b.csumOff:], 0)
	binary.BigEndian.PutUint16(f[b.l4+b.csumOff:], uint16(pseudo(f, b.l3, b.l4, b.v6)))
	return f, frameio.Offload{Partial: true, CsumStart: uint16(b.l4), CsumOffset: uint16(b.csumOff)}
}

// gso is b's frame as a guest with TSO hands it over.
func (b built) gso(mss uint16) ([]byte, frameio.Offload) {
	f, off := b.partial()
	off.GSO, off.GSOSize = frameio.GSOTCPv4, mss
	if b.v6 {
		off.GSO = frameio.GSOTCPv6
	}
	return f, off
}

// got is a frame read from a port, copied, with its Off.
type got struct {
	b   []byte
	off frameio.Offload
}

// roundTrip writes all of w to from in one WriteBatch, then reads at
// least want frames from to into the batch r: one round of the
// allocation tests and benchmarks (no copies, no goroutine).
func roundTrip(tb testing.TB, from, to frameio.Port, w, r []frameio.Frame, want int) {
	if n, _ := from.WriteBatch(w); n != len(w) {
		tb.Fatalf("sent %d of %d; stats %+v", n, len(w), from.Stats())
	}
	for got := 0; got < want; {
		n, err := to.ReadBatch(r)
		if err != nil {
			tb.Fatal(err)
		}
		got += n
	}
}

// readOff reads want frames from r in batches of batch.
func readOff(t testing.TB, r frameio.Port, want, batch int) []got {
	t.Helper()
	return readOffSize(t, r, want, frameio.NewBatch(batch, r.MTU()))
}

// readOffSize reads want frames from r into the batch fs.
func readOffSize(t testing.TB, r frameio.Port, want int, fs []frameio.Frame) []got {
	t.Helper()
	var out []got
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		for len(out) < want {
			var n int
			if n, err = r.ReadBatch(fs); err != nil {
				return
			}
			for _, f := range fs[:n] {
				out = append(out, got{bytes.Clone(f.Bytes()), f.Off})
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second): // a hang guard, not a timing assertion
		t.Fatalf("gave up waiting for %d frames; stats %+v", want, r.Stats())
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != want {
		t.Fatalf("read %d frames, want %d", len(out), want)
	}
	return out
}

// mssFor is the MSS of b's connection at MTU 1500: IP and TCP headers
// (with timestamps) take the rest.
func mssFor(b built) int { return 1500 - (b.hdrLen - b.l3) }

// writeOff writes frames with their Offs through w in one batch and
// returns how many were sent.
func writeOff(t testing.TB, w frameio.Port, frames [][]byte, offs []frameio.Offload) int {
	t.Helper()
	b := make([]frameio.Frame, len(frames))
	for i := range frames {
		b[i] = frameio.Frame{Buf: bytes.Clone(frames[i]), N: len(frames[i]), Off: offs[i]}
	}
	n, err := w.WriteBatch(b)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// checkSegments checks the segments a GSO frame of b became: Off partial
// (with partial) on TCP or zero, finished to valid checksums (recomputed), lengths, sequence numbers and
// flags as a NIC would cut them, no larger than mss each; it returns the
// payload they carry.
func checkSegments(t testing.TB, b built, segs []got, mss int, partial bool) []byte {
	t.Helper()
	var out []byte
	seq0 := binary.BigEndian.Uint32(b.frame[b.l4+4:])
	for i, s := range segs {
		want := frameio.Offload{Partial: true, CsumStart: uint16(b.l4), CsumOffset: 16}
		if !partial {
			want = frameio.Offload{}
		}
		if s.off != want {
			t.Fatalf("segment %d: Off %+v, want %+v", i, s.off, want)
		}
		f := frameio.Frame{Buf: bytes.Clone(s.b), N: len(s.b), Off: s.off}
		if !f.Finish() {
			t.Fatalf("segment %d: Finish refused %+v", i, s.off)
		}
		fb := f.Bytes()
		if !l4Valid(fb, b.l3, b.l4, b.v6) {
			t.Fatalf("segment %d: TCP checksum wrong after Finish", i)
		}
		p := gopacket.NewPacket(fb, layers.LayerTypeEthernet, gopacket.Default)
		tcp, _ := p.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if tcp == nil {
			t.Fatalf("segment %d: no TCP: %v", i, p)
		}
		if ip4, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
			if int(ip4.Length) != len(fb)-b.l3 || sum16(0, fb[b.l3:b.l4]) != 0xffff {
				t.Fatalf("segment %d: IPv4 length %d of a %d-byte frame, or bad header checksum", i, ip4.Length, len(fb))
			}
		} else if ip6, ok := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6); !ok || int(ip6.Length) != len(fb)-b.l3-40 {
			t.Fatalf("segment %d: IPv6 length wrong", i)
		}
		if tcp.Seq != seq0+uint32(len(out)) {
			t.Fatalf("segment %d: seq %d, want %d", i, tcp.Seq, seq0+uint32(len(out)))
		}
		last := i == len(segs)-1
		if tcp.PSH != last || !tcp.ACK {
			t.Fatalf("segment %d of %d: PSH %v ACK %v", i, len(segs), tcp.PSH, tcp.ACK)
		}
		if len(tcp.Payload) > mss || (!last && len(tcp.Payload) != mss) {
			t.Fatalf("segment %d of %d: %d bytes of payload, MSS %d", i, len(segs), len(tcp.Payload), mss)
		}
		if !bytes.Equal(fb[:b.l3], b.frame[:b.l3]) || !bytes.Equal(fb[b.l4:b.l4+4], b.frame[b.l4:b.l4+4]) {
			t.Fatalf("segment %d: Ethernet header or ports changed", i)
		}
		out = append(out, tcp.Payload...)
	}
	return out
}

func nSegments(payload, mss int) int { return (payload + mss - 1) / mss }

func describe(b built) string {
	ip := "v4"
	if b.v6 {
		ip = "v6"
	}
	if b.vlan {
		ip += " tagged"
	}
	return fmt.Sprintf("TCP/IP%s", ip)
}
