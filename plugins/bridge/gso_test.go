package main

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/anka-net/anka/sdk/netkit/frameio"
)

var (
	macA = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xa}
	macB = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xb}
)

// segSpec is a TCP or UDP packet, as gopacket builds it with correct
// lengths and checksums.
type segSpec struct {
	v6      bool
	udp     bool
	id      uint16
	seq     uint32
	fin     bool
	psh     bool
	cwr     bool
	payload []byte
}

func (s segSpec) frame(t testing.TB) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: macA, DstMAC: macB, EthernetType: layers.EthernetTypeIPv4}
	var ipl gopacket.NetworkLayer
	var ls []gopacket.SerializableLayer
	proto := layers.IPProtocolTCP
	if s.udp {
		proto = layers.IPProtocolUDP
	}
	if s.v6 {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto, SrcIP: net.ParseIP("fd00::a"), DstIP: net.ParseIP("fd00::b")}
		ipl, ls = ip, []gopacket.SerializableLayer{eth, ip}
	} else {
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Id: s.id, Flags: layers.IPv4DontFragment, Protocol: proto,
			SrcIP: net.IPv4(10, 77, 0, 1).To4(), DstIP: net.IPv4(10, 77, 0, 120).To4()}
		ipl, ls = ip, []gopacket.SerializableLayer{eth, ip}
	}
	if s.udp {
		u := &layers.UDP{SrcPort: 4000, DstPort: 5000}
		u.SetNetworkLayerForChecksum(ipl)
		ls = append(ls, u)
	} else {
		tcp := &layers.TCP{SrcPort: 80, DstPort: 40000, Seq: s.seq, Ack: 7, ACK: true, FIN: s.fin, PSH: s.psh, CWR: s.cwr, Window: 500,
			Options: []layers.TCPOption{{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop},
				{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: []byte{0, 0, 0, 1, 0, 0, 0, 2}}}}
		tcp.SetNetworkLayerForChecksum(ipl)
		ls = append(ls, tcp)
	}
	ls = append(ls, gopacket.Payload(s.payload))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func payloadOf(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*13 + i>>8)
	}
	return b
}

// TestGSOCuts: merged TCP (v4, v6) and UDP packets are cut into exactly
// the frames their sender would have sent: gopacket builds the expected
// frames, with their checksums, and they must match byte for byte, with
// a VLAN tag put back when the kernel stripped one.
func TestGSOCuts(t *testing.T) {
	for _, c := range []struct {
		name    string
		spec    segSpec
		gsoType uint8
		tagged  bool
		mss     int
	}{
		{"tcp4", segSpec{id: 100, seq: 1000, fin: true, psh: true, cwr: true, payload: payloadOf(3*1448 + 100)}, gsoTCPv4, false, 1448},
		{"tcp4 exact", segSpec{id: 65534, seq: 0xffffff00, psh: true, payload: payloadOf(2 * 1448)}, gsoTCPv4 | gsoECN, false, 1448},
		{"tcp6 tagged", segSpec{v6: true, seq: 5, payload: payloadOf(5*1428 - 1)}, gsoTCPv6, true, 1428},
		{"udp4", segSpec{udp: true, id: 9, payload: payloadOf(3*1472 + 1)}, gsoUDPL4, false, 1472},
		{"udp6", segSpec{v6: true, udp: true, payload: payloadOf(2*1000 + 7)}, gsoUDPL4, true, 1000},
	} {
		mss := c.mss
		t.Run(c.name, func(t *testing.T) {
			big := c.spec.frame(t)
			l4 := 14 + 20
			if c.spec.v6 {
				l4 = 14 + 40
			}
			// As the kernel hands it: the transport checksum is only the
			// pseudo-header's, which the cut must not trust.
			csumOff := 16
			if c.spec.udp {
				csumOff = 6
			}
			big[l4+csumOff], big[l4+csumOff+1] = 0xde, 0xad
			vh := vnetHdr{flags: vnetNeedsCsum, gsoType: c.gsoType, gsoSize: uint16(mss), csumStart: uint16(l4), csumOffset: uint16(csumOff)}
			tag := vlan{tci: 42, tpid: 0x8100}
			var g gso
			if err := g.start(big, vh, tag, c.tagged, 1500); err != nil {
				t.Fatal(err)
			}
			var got [][]byte
			for g.active {
				dst := make([]byte, frameio.FrameSize(1500))
				n := g.next(dst)
				if n == 0 {
					t.Fatal("a frame of no bytes")
				}
				got = append(got, dst[:n])
			}
			pay := c.spec.payload
			var want [][]byte
			for k, off := 0, 0; off < len(pay); k, off = k+1, off+mss {
				end := min(off+mss, len(pay))
				s := c.spec
				s.payload = pay[off:end]
				s.id = c.spec.id + uint16(k)
				s.seq = c.spec.seq + uint32(off)
				s.cwr = c.spec.cwr && k == 0
				s.fin = c.spec.fin && end == len(pay)
				s.psh = c.spec.psh && end == len(pay)
				f := s.frame(t)
				// gopacket pads to Ethernet's 60 bytes; the cut does not.
				if s.v6 {
					f = f[:54+int(binary.BigEndian.Uint16(f[18:]))]
				} else {
					f = f[:14+int(binary.BigEndian.Uint16(f[16:]))]
				}
				if c.tagged {
					f = append(append(append([]byte(nil), f[:12]...), 0x81, 0x00, 0, 42), f[12:]...)
				}
				want = append(want, f)
			}
			if len(got) != len(want) {
				t.Fatalf("%d frames; want %d", len(got), len(want))
			}
			for i := range want {
				if !bytes.Equal(got[i], want[i]) {
					t.Errorf("frame %d:\n got %x\nwant %x", i, got[i], want[i])
				}
			}
		})
	}
}

// TestGSORefuses: what cannot be cut is refused, never cut wrong.
func TestGSORefuses(t *testing.T) {
	tcp := segSpec{payload: payloadOf(3000)}.frame(t)
	for _, c := range []struct {
		name string
		pkt  []byte
		vh   vnetHdr
		mtu  int
	}{
		{"UFO", tcp, vnetHdr{gsoType: gsoUDP, gsoSize: 1448}, 1500},
		{"no segment size", tcp, vnetHdr{gsoType: gsoTCPv4}, 1500},
		{"segments over the MTU", tcp, vnetHdr{gsoType: gsoTCPv4, gsoSize: 1460}, 1400},
		{"TCP type on UDP", segSpec{udp: true, payload: payloadOf(3000)}.frame(t), vnetHdr{gsoType: gsoTCPv4, gsoSize: 1448}, 1500},
		{"truncated", tcp[:40], vnetHdr{gsoType: gsoTCPv4, gsoSize: 1448}, 1500},
		{"ARP", append(append([]byte(nil), tcp[:12]...), 0x08, 0x06, 0, 0), vnetHdr{gsoType: gsoTCPv4, gsoSize: 1448}, 1500},
	} {
		var g gso
		if err := g.start(c.pkt, c.vh, vlan{}, false, c.mtu); err == nil || g.active {
			t.Errorf("%s: cut", c.name)
		}
	}
}

// TestCompleteChecksum: a checksum left to the hardware (the field holds
// the pseudo-header's sum) comes out as the sender's stack would make it.
func TestCompleteChecksum(t *testing.T) {
	for _, s := range []segSpec{{payload: payloadOf(301)}, {udp: true, payload: payloadOf(77)}, {v6: true, payload: payloadOf(1000)}, {v6: true, udp: true, payload: payloadOf(1)}} {
		want := s.frame(t)
		f := append([]byte(nil), want...)
		l4, off := 34, 16
		if s.v6 {
			l4 = 54
		}
		if s.udp {
			off = 6
		}
		// The pseudo-header's sum, not complemented, as CHECKSUM_PARTIAL.
		var sum uint64
		if s.v6 {
			sum = csum(0, f[22:54])
		} else {
			sum = csum(0, f[26:34])
		}
		proto := uint64(6)
		if s.udp {
			proto = 17
		}
		sum += proto + uint64(len(f)-l4)
		binary.BigEndian.PutUint16(f[l4+off:], fold(sum))
		if !completeChecksum(f, l4, off) || !bytes.Equal(f, want) {
			t.Errorf("%+v: got %x\nwant %x", s, f[l4+off:l4+off+2], want[l4+off:l4+off+2])
		}
	}
	if completeChecksum(make([]byte, 40), 30, 16) {
		t.Error("offsets outside the packet accepted")
	}
}

// FuzzGSO: no packet and header make the cut read or write out of
// bounds, or hand out a frame longer than the buffer.
func FuzzGSO(f *testing.F) {
	f.Add(segSpec{payload: payloadOf(3000)}.frame(f), byte(gsoTCPv4), uint16(1448), uint16(34), true)
	f.Add(segSpec{v6: true, udp: true, payload: payloadOf(3000)}.frame(f), byte(gsoUDPL4), uint16(1000), uint16(54), false)
	f.Fuzz(func(t *testing.T, pkt []byte, typ byte, size, start uint16, tagged bool) {
		var g gso
		if g.start(pkt, vnetHdr{flags: vnetNeedsCsum, gsoType: typ, gsoSize: size, csumStart: start}, vlan{tci: 1, tpid: 0x8100}, tagged, 1500) != nil {
			return
		}
		dst := make([]byte, frameio.FrameSize(1500))
		for i := 0; g.active; i++ {
			if n := g.next(dst); n > len(dst) || i > 70000 {
				t.Fatalf("frame %d: %d bytes", i, n)
			}
		}
		completeChecksum(pkt, int(start), int(size))
	})
}

// FuzzFrames: the parsers the data path runs on every frame never read
// out of bounds.
func FuzzFrames(f *testing.F) {
	f.Add(segSpec{udp: true, payload: payloadOf(300)}.frame(f))
	f.Fuzz(func(t *testing.T, fr []byte) {
		sourceIPv4(fr)
		if isDHCPReply(fr) || isDHCPRequest(fr) {
			dhcpChaddr(fr)
			dhcpType(fr)
		}
		if len(fr) > 0 {
			dhcpOption(fr, fr[0])
		}
	})
}
