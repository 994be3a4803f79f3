package mactrans

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/insomniacslk/dhcp/dhcpv4"
)

// A case builds one frame as it looks on one side: vm is the VM's MAC on
// that side (internal inside the guest, dynamic on the network). The
// translator must turn build(internal) into build(dynamic) and back.
type frameCase struct {
	name  string
	build func(tb testing.TB, vm net.HardwareAddr) []byte
}

func cases() []frameCase {
	discover := func(vlan, ipOpts, noSum bool, opts ...func(vm net.HardwareAddr) layers.DHCPOption) func(testing.TB, net.HardwareAddr) []byte {
		return func(tb testing.TB, vm net.HardwareAddr) []byte {
			s := dhcpSpec{src: vm, dst: bcast, op: layers.DHCPOpRequest, chaddr: vm,
				vlan: vlan, ipOptions: ipOpts, noChecksum: noSum}
			for _, o := range opts {
				s.opts = append(s.opts, o(vm))
			}
			return s.build(tb)
		}
	}
	msgType := func(t layers.DHCPMsgType) func(net.HardwareAddr) layers.DHCPOption {
		return func(net.HardwareAddr) layers.DHCPOption { return optMsgType(t) }
	}
	cid := func(vm net.HardwareAddr) layers.DHCPOption { return cidOpt(1, vm) }
	hostname := func(net.HardwareAddr) layers.DHCPOption {
		return layers.NewDHCPOption(layers.DHCPOptHostname, []byte("vm1"))
	}
	return []frameCase{
		// DHCP from the guest: the MAC sits at an odd offset (cid first)
		// and at an even one (after the 3-byte message type option).
		{"dhcp discover cid odd", discover(false, false, false, cid, msgType(layers.DHCPMsgTypeDiscover))},
		{"dhcp discover cid even", discover(false, false, false, msgType(layers.DHCPMsgTypeDiscover), cid)},
		{"dhcp request hostname cid", discover(false, false, false, msgType(layers.DHCPMsgTypeRequest), hostname, cid)},
		{"dhcp discover no cid", discover(false, false, false, msgType(layers.DHCPMsgTypeDiscover))},
		{"dhcp discover vlan", discover(true, false, false, msgType(layers.DHCPMsgTypeDiscover), cid)},
		{"dhcp discover ip options", discover(false, true, false, msgType(layers.DHCPMsgTypeDiscover), cid)},
		{"dhcp discover no udp checksum", discover(false, false, true, msgType(layers.DHCPMsgTypeDiscover), cid)},
		{"dhcp discover duid-ll", discover(false, false, false, msgType(layers.DHCPMsgTypeDiscover),
			func(vm net.HardwareAddr) layers.DHCPOption {
				return cidOpt(clientIDDUID, []byte{0, 0, 0, 7}, duidLLOf(vm))
			})},
		{"dhcp discover duid-llt", discover(false, false, false, msgType(layers.DHCPMsgTypeDiscover),
			func(vm net.HardwareAddr) layers.DHCPOption {
				return cidOpt(clientIDDUID, []byte{0, 0, 0, 7}, duidLLTOf(vm))
			})},
		{"dhcp discover cid in file (overload)", func(tb testing.TB, vm net.HardwareAddr) []byte {
			file := append([]byte{optClientID, 7, 1}, vm...)
			file = append(file, optEnd)
			return dhcpSpec{src: vm, dst: bcast, op: layers.DHCPOpRequest, chaddr: vm, file: file,
				opts: []layers.DHCPOption{optMsgType(layers.DHCPMsgTypeDiscover),
					layers.NewDHCPOption(optOverload, []byte{1})}}.build(tb)
		}},
		// DHCP to the guest: chaddr and an echoed client identifier.
		{"dhcp offer unicast", func(tb testing.TB, vm net.HardwareAddr) []byte {
			return dhcpSpec{src: server, dst: vm, op: layers.DHCPOpReply, chaddr: vm,
				opts: []layers.DHCPOption{optMsgType(layers.DHCPMsgTypeOffer), cidOpt(1, vm)}}.build(tb)
		}},
		{"dhcp ack broadcast", func(tb testing.TB, vm net.HardwareAddr) []byte {
			return dhcpSpec{src: server, dst: bcast, op: layers.DHCPOpReply, chaddr: vm,
				opts: []layers.DHCPOption{optMsgType(layers.DHCPMsgTypeAck)}}.build(tb)
		}},
		// ARP both ways, with and without a VLAN tag.
		{"arp request from guest", func(tb testing.TB, vm net.HardwareAddr) []byte {
			return arpFrame(tb, vm, bcast, layers.ARPRequest, vm, make(net.HardwareAddr, 6), false)
		}},
		{"arp reply to guest", func(tb testing.TB, vm net.HardwareAddr) []byte {
			return arpFrame(tb, server, vm, layers.ARPReply, server, vm, false)
		}},
		{"arp reply from guest vlan", func(tb testing.TB, vm net.HardwareAddr) []byte {
			return arpFrame(tb, vm, other, layers.ARPReply, vm, other, true)
		}},
		{"arp unicast probe to guest", func(tb testing.TB, vm net.HardwareAddr) []byte {
			return arpFrame(tb, other, vm, layers.ARPRequest, other, vm, false)
		}},
		// IPv6 Neighbor Discovery.
		{"nd rs", func(tb testing.TB, vm net.HardwareAddr) []byte {
			return ndFrame(tb, vm, mustMAC("33:33:00:00:00:02"), 133,
				&layers.ICMPv6RouterSolicitation{Options: layers.ICMPv6Options{ll(layers.ICMPv6OptSourceAddress, vm)}}, false)
		}},
		{"nd ra to guest", func(tb testing.TB, vm net.HardwareAddr) []byte {
			return ndFrame(tb, server, vm, 134, &layers.ICMPv6RouterAdvertisement{HopLimit: 64, RouterLifetime: 1800,
				Options: layers.ICMPv6Options{ll(layers.ICMPv6OptSourceAddress, server),
					{Type: layers.ICMPv6OptMTU, Data: []byte{0, 0, 0, 0, 5, 0xdc}}}}, false)
		}},
		{"nd ns", func(tb testing.TB, vm net.HardwareAddr) []byte {
			return ndFrame(tb, vm, mustMAC("33:33:ff:00:00:01"), 135, &layers.ICMPv6NeighborSolicitation{
				TargetAddress: routerIP, Options: layers.ICMPv6Options{ll(layers.ICMPv6OptSourceAddress, vm)}}, false)
		}},
		{"nd na vlan", func(tb testing.TB, vm net.HardwareAddr) []byte {
			return ndFrame(tb, vm, server, 136, &layers.ICMPv6NeighborAdvertisement{Flags: 0x60,
				TargetAddress: guestIP6, Options: layers.ICMPv6Options{ll(layers.ICMPv6OptTargetAddress, vm)}}, true)
		}},
		{"nd redirect to guest", func(tb testing.TB, vm net.HardwareAddr) []byte {
			return ndFrame(tb, server, vm, 137, &layers.ICMPv6Redirect{TargetAddress: routerIP,
				DestinationAddress: net.ParseIP("2001:db8::1"),
				Options:            layers.ICMPv6Options{ll(layers.ICMPv6OptTargetAddress, other)}}, false)
		}},
		// Data: only the Ethernet header names the VM.
		{"tcp from guest", func(tb testing.TB, vm net.HardwareAddr) []byte { return tcpFrame(tb, vm, server, 1514) }},
		{"tcp to guest", func(tb testing.TB, vm net.HardwareAddr) []byte { return tcpFrame(tb, server, vm, 200) }},
		{"llc to guest", func(tb testing.TB, vm net.HardwareAddr) []byte {
			return serialize(tb, &layers.Ethernet{SrcMAC: other, DstMAC: vm, EthernetType: layers.EthernetTypeLLC, Length: 8},
				&layers.LLC{DSAP: 0x42, SSAP: 0x42, Control: 3}, gopacket.Payload(append([]byte{0, 0}, internal...)))
		}},
		// Frames that do not concern the VM stay as they are.
		{"other client's dhcp", func(tb testing.TB, vm net.HardwareAddr) []byte {
			return dhcpSpec{src: other, dst: bcast, op: layers.DHCPOpRequest, chaddr: other,
				opts: []layers.DHCPOption{optMsgType(layers.DHCPMsgTypeDiscover), cidOpt(1, other)}}.build(tb)
		}},
		{"other's arp", func(tb testing.TB, vm net.HardwareAddr) []byte {
			return arpFrame(tb, other, bcast, layers.ARPRequest, other, make(net.HardwareAddr, 6), false)
		}},
	}
}

func TestTranslateBothWays(t *testing.T) {
	tr := newT(t)
	for _, c := range cases() {
		t.Run(c.name, func(t *testing.T) {
			guest, network := c.build(t, internal), c.build(t, dynamic)
			verifyChecksums(t, guest)
			verifyChecksums(t, network)

			got := bytes.Clone(guest)
			tr.ToNetwork(got)
			diff(t, "ToNetwork", got, network)
			verifyChecksums(t, got)

			tr.ToGuest(got) // round trip
			diff(t, "ToGuest(ToNetwork)", got, guest)

			got = bytes.Clone(network)
			tr.ToGuest(got)
			diff(t, "ToGuest", got, guest)
			verifyChecksums(t, got)

			// Frames already in the other side's terms pass unchanged.
			got = bytes.Clone(network)
			tr.ToNetwork(got)
			diff(t, "ToNetwork(network frame)", got, network)
			got = bytes.Clone(guest)
			tr.ToGuest(got)
			diff(t, "ToGuest(guest frame)", got, guest)
		})
	}
}

func diff(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	var b strings.Builder
	for i := range got {
		if i < len(want) && got[i] != want[i] {
			fmt.Fprintf(&b, " [%d] %#02x want %#02x", i, got[i], want[i])
		}
	}
	t.Errorf("%s: frames differ (len %d, want %d):%s", what, len(got), len(want), b.String())
}

// A real DHCP library built the message and reads it back after the
// translation: chaddr and the client identifier are what dnsmasq will see.
func TestInsomniacslkDiscover(t *testing.T) {
	d, err := dhcpv4.NewDiscovery(internal,
		dhcpv4.WithOption(dhcpv4.OptClientIdentifier(append([]byte{1}, internal...))),
		dhcpv4.WithOption(dhcpv4.OptHostName("vm1")))
	if err != nil {
		t.Fatal(err)
	}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP,
		SrcIP: net.IPv4zero.To4(), DstIP: net.IPv4bcast.To4()}
	udp := &layers.UDP{SrcPort: 68, DstPort: 67}
	_ = udp.SetNetworkLayerForChecksum(ip)
	f := serialize(t, &layers.Ethernet{SrcMAC: internal, DstMAC: bcast, EthernetType: layers.EthernetTypeIPv4},
		ip, udp, gopacket.Payload(d.ToBytes()))

	newT(t).ToNetwork(f)
	verifyChecksums(t, f)
	p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
	eth := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	if !bytes.Equal(eth.SrcMAC, dynamic) {
		t.Errorf("eth src %s, want %s", eth.SrcMAC, dynamic)
	}
	got, err := dhcpv4.FromBytes(p.Layer(layers.LayerTypeUDP).LayerPayload())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.ClientHWAddr, dynamic) {
		t.Errorf("chaddr %s, want %s", got.ClientHWAddr, dynamic)
	}
	if cid := got.Options.Get(dhcpv4.OptionClientIdentifier); !bytes.Equal(cid, append([]byte{1}, dynamic...)) {
		t.Errorf("client id %x, want 01%x", cid, []byte(dynamic))
	}
	if got.HostName() != "vm1" || got.TransactionID != d.TransactionID {
		t.Errorf("other fields changed: host %q xid %v", got.HostName(), got.TransactionID)
	}
}

func TestNew(t *testing.T) {
	for _, c := range []struct {
		name          string
		in, dyn       net.HardwareAddr
		wantErrSubstr string
	}{
		{"ok", internal, dynamic, ""},
		{"equal is a no-op", internal, internal, ""},
		{"short", internal[:5], dynamic, "6-byte"},
		{"eui64", internal, append(bytes.Clone(dynamic), 1, 2), "6-byte"},
		{"nil", nil, dynamic, "6-byte"},
		{"multicast", mustMAC("33:33:00:00:00:01"), dynamic, "group"},
		{"broadcast", internal, bcast, "group"},
		{"zero", internal, make(net.HardwareAddr, 6), "zeros"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := New(c.in, c.dyn)
			if c.wantErrSubstr == "" && err != nil {
				t.Fatalf("New: %v", err)
			}
			if c.wantErrSubstr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErrSubstr)) {
				t.Fatalf("New: error %v, want one mentioning %q", err, c.wantErrSubstr)
			}
		})
	}
}

func TestEqualMACsNoop(t *testing.T) {
	tr, err := New(internal, internal)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases() {
		f := c.build(t, internal)
		got := bytes.Clone(f)
		tr.ToNetwork(got)
		tr.ToGuest(got)
		diff(t, c.name, got, f)
	}
}

// The caller's MAC slices are copied: changing them later must not change
// the translation.
func TestNewCopiesMACs(t *testing.T) {
	in, dyn := bytes.Clone(internal), bytes.Clone(dynamic)
	tr, err := New(in, dyn)
	if err != nil {
		t.Fatal(err)
	}
	in[5]++
	dyn[5]++
	f := tcpFrame(t, internal, server, 100)
	tr.ToNetwork(f)
	if !bytes.Equal(f[6:12], dynamic) {
		t.Fatalf("src %x, want %x", f[6:12], []byte(dynamic))
	}
}

// Mangled copies of every case: every truncation, and every byte set to
// values that steer the parsers (lengths, types, zero, 0xff).
func TestMalformedNeverPanics(t *testing.T) {
	tr := newT(t)
	for _, c := range cases() {
		for _, vm := range []net.HardwareAddr{internal, dynamic} {
			f := c.build(t, vm)
			for n := 0; n <= len(f); n++ {
				mangle(t, tr, f[:n])
			}
			limit := len(f)
			if limit > 400 {
				limit = 400
			}
			for i := 0; i < limit; i++ {
				for _, v := range []byte{0, 1, 2, 6, 7, 0x3d, 0x34, 0x80, 0xfe, 0xff} {
					g := bytes.Clone(f)
					g[i] = v
					mangle(t, tr, g)
				}
			}
		}
	}
}

func mangle(t *testing.T, tr *Translator, f []byte) {
	t.Helper()
	g := bytes.Clone(f)
	tr.ToNetwork(g)
	tr.ToGuest(g)
	if len(g) != len(f) {
		t.Fatalf("length changed")
	}
}

func TestZeroAllocs(t *testing.T) {
	tr := newT(t)
	for _, c := range cases() {
		f := c.build(t, internal)
		short := f[:len(f)*2/3]
		n := testing.AllocsPerRun(200, func() {
			tr.ToNetwork(f)
			tr.ToGuest(f)
			tr.ToNetwork(short)
			tr.ToGuest(short)
		})
		if n != 0 {
			t.Errorf("%s: %v allocations per frame, want 0", c.name, n)
		}
	}
}

// The incremental update must agree with a full recomputation on
// arbitrary data at both alignments, including the ones' complement
// corner values.
func TestChecksumUpdate(t *testing.T) {
	from, to := [6]byte(internal), [6]byte(dynamic)
	for _, odd := range []bool{false, true} {
		for seed := 0; seed < 2000; seed++ {
			data := make([]byte, 40)
			for i := range data {
				data[i] = byte(seed*31 + i*seed*7 + i)
			}
			off := 10
			if odd {
				off = 11
			}
			copy(data[off:], from[:])
			data[0], data[1] = 0, 0
			full := ^onesSum(data)
			data[0], data[1] = byte(full>>8), byte(full)

			var c csum
			c.swap(data[off:off+6], off, &from, &to)
			c.apply(data[0:2], false)
			if s := onesSum(data); s != 0xffff {
				t.Fatalf("odd=%v seed %d: sum after update %#04x, want 0xffff", odd, seed, s)
			}
			got := uint16(data[0])<<8 | uint16(data[1])
			data[0], data[1] = 0, 0
			if full := ^onesSum(data); got != full {
				t.Fatalf("odd=%v seed %d: incremental %#04x, full %#04x", odd, seed, got, full)
			}
		}
	}
}
