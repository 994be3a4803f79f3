//go:build linux

package frameio_test

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

// vethNetns makes a namespace with a veth pair v0-v1, up, with IPv6 off
// so the kernel stays quiet on it.
func vethNetns(t *testing.T) *frameiotest.Netns {
	ns := frameiotest.NewNetns(t)
	ns.Exec(t, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	ns.IP(t, "link", "add", "v0", "mtu", "9000", "type", "veth", "peer", "name", "v1", "mtu", "9000")
	ns.IP(t, "link", "set", "v0", "up")
	ns.IP(t, "link", "set", "v1", "up")
	return ns
}

func isTest(f []byte) bool {
	t := etherType(f)
	return t == frameiotest.EtherType || t == 0x8100 && len(f) >= 18 && binary.BigEndian.Uint16(f[16:]) == frameiotest.EtherType
}

func TestPacketOnVeth(t *testing.T) {
	ns := vethNetns(t)
	var p0, p1 *frameio.PacketPort
	if err := ns.Run(func() (err error) {
		if p0, err = frameio.OpenPacket("v0", frameio.PacketOptions{MTU: 1500, Logger: testLogger(t)}); err != nil {
			return err
		}
		p1, err = frameio.OpenPacket("v1", frameio.PacketOptions{Logger: testLogger(t)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer p1.Close()
	if p1.MTU() != 9000 {
		t.Fatalf("MTU from the interface = %d, want 9000", p1.MTU())
	}
	if !strings.Contains(ns.IP(t, "-d", "link", "show", "v0"), "promiscuity 1") {
		t.Fatal("v0 is not promiscuous while the port is open")
	}

	// Frames sent into v1 come out of v0, whatever their destination.
	out := frames(16, 1514, 0)
	if n, err := p1.WriteBatch(out); n != 16 || err != nil {
		t.Fatalf("write on v1 = %d, %v", n, err)
	}
	got := collectMatching(t, p0, 16, isTest)
	for i := range got {
		if !bytes.Equal(got[i], out[i].Bytes()) {
			t.Fatalf("frame %d differs", i)
		}
	}

	// And the other way. v0 does not see its own frames: the next frame it
	// reads is the marker from v1, not one of the 8 it sent.
	back := frames(8, 60, 100)
	if n, err := p0.WriteBatch(back); n != 8 || err != nil {
		t.Fatalf("write on v0 = %d, %v", n, err)
	}
	got = collectMatching(t, p1, 8, isTest)
	for i := range got {
		if !bytes.Equal(got[i], back[i].Bytes()) {
			t.Fatalf("frame %d back differs", i)
		}
	}
	marker := frames(1, 60, 999)
	p1.WriteBatch(marker)
	if got := collectMatching(t, p0, 1, isTest); frameiotest.Seq(got[0]) != 999 {
		t.Fatalf("v0 read its own frame %d", frameiotest.Seq(got[0]))
	}

	// The kernel strips a VLAN tag before a packet socket sees the frame;
	// the port puts it back.
	tagged := make([]byte, 64)
	frameiotest.FillFrame(tagged, 64, 0)
	copy(tagged[16:], tagged[12:60])
	binary.BigEndian.PutUint16(tagged[12:], 0x8100)
	binary.BigEndian.PutUint16(tagged[14:], 0x2064) // priority 1, VLAN 100
	binary.BigEndian.PutUint16(tagged[16:], frameiotest.EtherType)
	p1.WriteBatch([]frameio.Frame{{Buf: tagged, N: len(tagged)}})
	if got := collectMatching(t, p0, 1, isTest); !bytes.Equal(got[0], tagged) {
		t.Fatalf("tagged frame came up as %x, want %x", got[0], tagged)
	}

	// Larger than the port's MTU (v0's own is 9000): dropped and counted.
	before := p0.Stats().RxDropped
	big := frames(1, 3000, 0)
	p1.WriteBatch(big)
	p1.WriteBatch(marker)
	collectMatching(t, p0, 1, isTest)
	if d := p0.Stats().RxDropped - before; d != 1 {
		t.Fatalf("RxDropped grew by %d, want 1 for the 3000-byte frame", d)
	}

	if n, _ := p0.WriteBatch(big); n != 0 || p0.Stats().TxDropped != 1 {
		t.Fatalf("sent an oversize frame: %d, %+v", n, p0.Stats())
	}

	// Steady state allocates nothing.
	in := frameio.NewBatch(64, 1500)
	out = frames(64, 1514, 0)
	allocs := testing.AllocsPerRun(100, func() {
		if n, _ := p1.WriteBatch(out); n != 64 {
			t.Fatalf("wrote %d", n)
		}
		for got := 0; got < 64; {
			n, err := p0.ReadBatch(in)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per batch of 64", allocs)
	}

	p0.Close()
	if !strings.Contains(ns.IP(t, "-d", "link", "show", "v0"), "promiscuity 0") {
		t.Fatal("v0 still promiscuous after the port closed")
	}
}
