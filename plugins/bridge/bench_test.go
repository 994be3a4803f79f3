package main

import (
	"net/netip"
	"testing"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/vswitch"
)

// BenchmarkGSOCut: one 64 KiB TCP packet the sender's TSO or our GRO
// merged, cut into the 45 frames it stands for, checksums and all.
func BenchmarkGSOCut(b *testing.B) {
	big := segSpec{payload: payloadOf(45 * 1448)}.frame(b)
	vh := vnetHdr{flags: vnetNeedsCsum, gsoType: gsoTCPv4, gsoSize: 1448, csumStart: 34, csumOffset: 16}
	dst := make([]byte, frameio.FrameSize(1500))
	b.SetBytes(int64(len(big)))
	b.ReportAllocs()
	for b.Loop() {
		var g gso
		if err := g.start(big, vh, vlan{}, false, 1500); err != nil {
			b.Fatal(err)
		}
		for g.active {
			g.next(dst)
		}
	}
}

// BenchmarkCompleteChecksum: a full-size frame whose checksum the
// sender left to the hardware.
func BenchmarkCompleteChecksum(b *testing.B) {
	f := segSpec{payload: payloadOf(1448)}.frame(b)
	b.SetBytes(int64(len(f)))
	b.ReportAllocs()
	for b.Loop() {
		completeChecksum(f, 34, 16)
	}
}

// BenchmarkHooks: what the plugin adds to the switch for each frame, from
// the wire to a VM and from a pinned VM to the wire.
func BenchmarkHooks(b *testing.B) {
	sw := vswitch.New(vswitch.Config{})
	defer sw.Close()
	p := &Plugin{claims: map[netip.Addr]*attachment{}, saveCh: make(chan struct{}, 1)}
	u := &uplink{name: "bench0"}
	a := &attachment{p: p, up: u, dyn: [6]byte(macB)}
	port, err := sw.AttachService(vswitch.PortConfig{Name: "vm", MAC: macB}, func([]frameio.Frame) {})
	if err != nil {
		b.Fatal(err)
	}
	a.port = port
	a.live.Store(port)
	port.SetIP(netip.MustParseAddr("10.77.0.1"))
	m := map[[6]byte]*attachment{[6]byte(macB): a}
	u.vms.Store(&m)
	in := segSpec{payload: payloadOf(1448)}.frame(b) // 10.77.0.1 -> .120, macA -> macB
	out := segSpec{payload: payloadOf(1448)}.frame(b)
	copy(out[6:12], macB)
	b.Run("from-wire", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			u.fromWire(in)
		}
	})
	b.Run("from-guest", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			a.fromGuest(out)
		}
	})
}
