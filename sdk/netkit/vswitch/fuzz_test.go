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
	fw := sw.newForwarder(0)
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

// FuzzForwardGSO feeds arbitrary frames with arbitrary offloads (GSO type
// and size, checksum start and offset) from a port that hands GSO frames
// up whole, to a port that takes them whole, one that takes partial
// checksums, a plain one, and floods: cutting and completing must never
// panic, and what the switch cuts of a GSO frame for a port that takes
// none is never longer than the MTU allows. (A plain frame's length is
// its reader's to check: ports hand up none longer than the MTU.)
func FuzzForwardGSO(f *testing.F) {
	g := gsoFrame(f, macA, macB)
	f.Add(g.Bytes(), uint8(frameio.GSOTCPv4), uint16(1448), g.Off.CsumStart, g.Off.CsumOffset, true)
	f.Add(g.Bytes(), uint8(frameio.GSOTCPv6), uint16(1), uint16(34), uint16(16), true)
	f.Add(g.Bytes(), uint8(frameio.GSOTCPv4), uint16(0), uint16(0), uint16(0), false)
	tg := tagged(g)
	f.Add(tg.Bytes(), uint8(frameio.GSOTCPv4), uint16(536), uint16(38), uint16(16), true)
	sw := New(Config{})
	defer sw.Close()
	a, _ := sw.AttachService(PortConfig{Name: "a", MAC: macA}, func([]frameio.Frame) {})
	var max int
	check := &lenLink{memLink: newMemLink(), max: &max}
	sw.Attach(check, PortConfig{Name: "b", MAC: macB})
	sw.Attach(&lenLink{memLink: newMemLink(), max: &max, partial: true}, PortConfig{Name: "c", MAC: macC})
	var whole int
	sw.Attach(&lenLink{memLink: newMemLink(), max: &whole, partial: true, gso: true}, PortConfig{Name: "g", MAC: macU})
	fw := sw.newForwarder(1)
	f.Fuzz(func(t *testing.T, data []byte, typ uint8, size, start, off uint16, partial bool) {
		if len(data) > len(fw.in[0].Buf) {
			data = data[:len(fw.in[0].Buf)]
		}
		fw.in[0].N = copy(fw.in[0].Buf, data)
		fw.in[0].Off = frameio.Offload{Partial: partial, CsumStart: start, CsumOffset: off, GSO: frameio.GSOType(typ), GSOSize: size}
		max = 0
		gso := fw.in[0].Off.GSO != frameio.GSONone
		sw.forward(a, fw, fw.in[:1])
		if gso && max > frameio.FrameSize(frameio.DefaultMTU) {
			t.Fatalf("a plain port got a frame of %d bytes", max)
		}
	})
}

// lenLink records the longest frame written to it; partial makes it a
// frameio.PartialWriter, gso a frameio.GSOWriter.
type lenLink struct {
	*memLink
	max          *int
	partial, gso bool
}

func (l *lenLink) TakesPartial() bool { return l.partial }
func (l *lenLink) TakesGSO() bool     { return l.gso }

func (l *lenLink) WriteBatch(fs []frameio.Frame) (int, error) {
	for i := range fs {
		*l.max = max(*l.max, fs[i].N)
	}
	return len(fs), nil
}
