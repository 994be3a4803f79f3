package mactrans

import (
	"encoding/binary"
	"net"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// MACs of the test world. The guest knows itself as internal; the network
// knows the same VM as dynamic. other and server are hosts on the network.
var (
	internal = mustMAC("52:54:00:12:34:56")
	dynamic  = mustMAC("02:a0:00:c3:d4:e5")
	other    = mustMAC("02:00:00:00:00:99")
	server   = mustMAC("02:00:00:00:00:01")
	bcast    = layers.EthernetBroadcast

	guestIP  = net.IPv4(192, 168, 64, 5).To4()
	gwIP     = net.IPv4(192, 168, 64, 1).To4()
	guestIP6 = net.ParseIP("fe80::5054:ff:fe12:3456")
	routerIP = net.ParseIP("fe80::1")
)

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func newT(tb testing.TB) *Translator {
	tb.Helper()
	tr, err := New(internal, dynamic)
	if err != nil {
		tb.Fatal(err)
	}
	return tr
}

// serialize builds a frame the way a real stack would: lengths and
// checksums computed by gopacket, independently of the code under test.
func serialize(tb testing.TB, ls ...gopacket.SerializableLayer) []byte {
	tb.Helper()
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ls...); err != nil {
		tb.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// l2 returns the Ethernet header, with an 802.1Q tag when vlan is set.
func l2(src, dst net.HardwareAddr, et layers.EthernetType, vlan bool) []gopacket.SerializableLayer {
	if !vlan {
		return []gopacket.SerializableLayer{&layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: et}}
	}
	return []gopacket.SerializableLayer{
		&layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: layers.EthernetTypeDot1Q},
		&layers.Dot1Q{VLANIdentifier: 42, Type: et},
	}
}

type dhcpSpec struct {
	src, dst   net.HardwareAddr
	vlan       bool
	op         layers.DHCPOp
	chaddr     net.HardwareAddr
	opts       []layers.DHCPOption
	file       []byte
	ipOptions  bool
	noChecksum bool
	sport      layers.UDPPort
	dport      layers.UDPPort
}

func (s dhcpSpec) build(tb testing.TB) []byte {
	tb.Helper()
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP,
		SrcIP: net.IPv4zero.To4(), DstIP: net.IPv4bcast.To4()}
	if s.op == layers.DHCPOpReply {
		ip.SrcIP, ip.DstIP = gwIP, guestIP
	}
	if s.ipOptions {
		// Router alert: makes IHL 6, so UDP is not at the usual offset.
		ip.Options = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}}
	}
	sport, dport := s.sport, s.dport
	if sport == 0 {
		sport, dport = 68, 67
		if s.op == layers.DHCPOpReply {
			sport, dport = 67, 68
		}
	}
	udp := &layers.UDP{SrcPort: sport, DstPort: dport}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		tb.Fatal(err)
	}
	d := &layers.DHCPv4{Operation: s.op, HardwareType: layers.LinkTypeEthernet,
		HardwareLen: 6, Xid: 0x12345678, ClientHWAddr: s.chaddr, File: s.file,
		ClientIP: net.IPv4zero, YourClientIP: net.IPv4zero, NextServerIP: net.IPv4zero,
		RelayAgentIP: net.IPv4zero, Options: s.opts}
	if s.op == layers.DHCPOpReply {
		d.YourClientIP = guestIP
	}
	ls := append(l2(s.src, s.dst, layers.EthernetTypeIPv4, s.vlan), ip, udp, d)
	f := serialize(tb, ls...)
	if s.noChecksum {
		off := len(f) - int(udp.Length) + 6
		f[off], f[off+1] = 0, 0
	}
	return f
}

func optMsgType(t layers.DHCPMsgType) layers.DHCPOption {
	return layers.NewDHCPOption(layers.DHCPOptMessageType, []byte{byte(t)})
}

func cidOpt(typ byte, rest ...[]byte) layers.DHCPOption {
	b := []byte{typ}
	for _, r := range rest {
		b = append(b, r...)
	}
	return layers.NewDHCPOption(layers.DHCPOptClientID, b)
}

func duidLLOf(mac net.HardwareAddr) []byte {
	return append([]byte{0, duidLL, 0, hwEthernet}, mac...)
}

func duidLLTOf(mac net.HardwareAddr) []byte {
	return append([]byte{0, duidLLT, 0, hwEthernet, 0x2a, 0x3b, 0x4c, 0x5d}, mac...)
}

func arpFrame(tb testing.TB, src, dst net.HardwareAddr, op uint16, sha, tha net.HardwareAddr, vlan bool) []byte {
	a := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
		HwAddressSize: 6, ProtAddressSize: 4, Operation: op,
		SourceHwAddress: sha, SourceProtAddress: guestIP, DstHwAddress: tha, DstProtAddress: gwIP}
	ls := append(l2(src, dst, layers.EthernetTypeARP, vlan), a)
	f := serialize(tb, ls...)
	for len(f) < 60 { // real NICs pad to the Ethernet minimum
		f = append(f, 0)
	}
	return f
}

// ndFrame builds an ICMPv6 ND message; body is one of gopacket's ND layers.
func ndFrame(tb testing.TB, src, dst net.HardwareAddr, typ uint8, body gopacket.SerializableLayer, vlan bool) []byte {
	ip := &layers.IPv6{Version: 6, NextHeader: layers.IPProtocolICMPv6, HopLimit: 255,
		SrcIP: guestIP6, DstIP: routerIP}
	ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
	if err := ic.SetNetworkLayerForChecksum(ip); err != nil {
		tb.Fatal(err)
	}
	ls := append(l2(src, dst, layers.EthernetTypeIPv6, vlan), ip, ic, body)
	return serialize(tb, ls...)
}

func ll(typ layers.ICMPv6Opt, mac net.HardwareAddr) layers.ICMPv6Option {
	return layers.ICMPv6Option{Type: typ, Data: mac}
}

func tcpFrame(tb testing.TB, src, dst net.HardwareAddr, size int) []byte {
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: guestIP, DstIP: gwIP}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 22, Seq: 1, Ack: 1, ACK: true, PSH: true, Window: 512}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		tb.Fatal(err)
	}
	payload := make([]byte, size-14-20-20)
	for i := range payload {
		payload[i] = byte(i)
	}
	// The VM's MAC inside payload bytes is data, never an address.
	copy(payload[10:], internal)
	copy(payload[20:], dynamic)
	ls := append(l2(src, dst, layers.EthernetTypeIPv4, false), ip, tcp, gopacket.Payload(payload))
	return serialize(tb, ls...)
}

// verifyChecksums recomputes the UDP and ICMPv6 checksums from scratch,
// sharing no code with the incremental update being tested.
func verifyChecksums(tb testing.TB, frame []byte) {
	tb.Helper()
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	var pseudo []byte
	if ip, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); ok {
		if ip4c := onesSum(ip.Contents); ip4c != 0xffff {
			tb.Errorf("IPv4 header checksum invalid (sum %#04x)", ip4c)
		}
		pseudo = append(append([]byte{}, ip.SrcIP.To4()...), ip.DstIP.To4()...)
		pseudo = append(pseudo, 0, byte(ip.Protocol))
	}
	if ip, ok := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6); ok {
		pseudo = append(append([]byte{}, ip.SrcIP...), ip.DstIP...)
		pseudo = append(pseudo, 0, 0, 0, 0, 0, 0, 0, byte(ip.NextHeader))
	}
	var seg []byte
	if u, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP); ok {
		if u.Checksum == 0 {
			return
		}
		seg = append(append([]byte{}, u.Contents...), u.Payload...)
	} else if ic, ok := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6); ok {
		seg = append(append([]byte{}, ic.Contents...), ic.Payload...)
	} else {
		return
	}
	if len(pseudo) == 10 { // IPv4: addresses, zero, protocol, then the length
		pseudo = append(pseudo, byte(len(seg)>>8), byte(len(seg)))
	} else {
		l := make([]byte, 4)
		binary.BigEndian.PutUint32(l, uint32(len(seg)))
		copy(pseudo[32:36], l)
	}
	if s := onesSum(append(pseudo, seg...)); s != 0xffff {
		tb.Errorf("transport checksum invalid (sum %#04x, want 0xffff)", s)
	}
}

func onesSum(b []byte) uint16 {
	var s uint64
	for i := 0; i < len(b); i += 2 {
		w := uint64(b[i]) << 8
		if i+1 < len(b) {
			w |= uint64(b[i+1])
		}
		s += w
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}
