package vswitch

import (
	"net/netip"
	"testing"

	"github.com/anka-net/anka/sdk/netkit/frameio"
)

// FuzzForward feeds arbitrary bytes from an anti-spoofed port through the
// whole ingress path (policy decoding, learning, forwarding): no input may
// panic or hang the switch.
func FuzzForward(f *testing.F) {
	f.Add(udpFrame(f, macA, macB, "10.0.0.1", "10.0.0.2", 1, 2))
	f.Add(arpFrame(f, macA, "10.0.0.1", "10.0.0.2"))
	f.Add(icmp6Frame(f, macA, "fe80::a", 136, "fe80::a"))
	f.Add(icmp6Frame(f, macA, "fe80::a", 134, "::"))
	f.Add([]byte{})
	sw := New(Config{})
	defer sw.Close()
	a, _ := sw.AttachService(PortConfig{Name: "a", MAC: macA, AntiSpoof: true}, func([]frameio.Frame) {})
	a.SetIP(netip.MustParseAddr("10.0.0.1"))
	sw.Attach(&discard{*newMemLink()}, PortConfig{Name: "b", MAC: macB})
	fw := sw.newForwarder()
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > len(fw.in[0].Buf) {
			data = data[:len(fw.in[0].Buf)]
		}
		if len(data) >= 12 {
			copy(data[6:12], macA) // get past the MAC check to the deeper decoders
		}
		fw.in[0].N = copy(fw.in[0].Buf, data)
		sw.forward(a, fw, fw.in[:1])
	})
}
