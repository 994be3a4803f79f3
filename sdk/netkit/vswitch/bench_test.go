package vswitch_test

import (
	"fmt"
	"net"
	"os"
	"testing"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"github.com/anka-net/anka/sdk/netkit/vswitch"
)

// benchNetns makes a namespace whose net.unix.max_dgram_qlen is qlen (0:
// the kernel default), so both settings are measured side by side. Not
// root: no namespace, the host's setting applies.
func benchNetns(b *testing.B, qlen int) *frameiotest.Netns {
	if os.Geteuid() != 0 {
		if qlen != 0 {
			b.Skip("raising max_dgram_qlen needs root (a private network namespace)")
		}
		return nil
	}
	ns := frameiotest.NewNetns(b)
	if qlen != 0 {
		if err := ns.Run(func() error { return frameio.SetMaxDgramQlen(qlen) }); err != nil {
			b.Fatal(err)
		}
	}
	return ns
}

// BenchmarkSwitch compares, in one run and with the same socket hops, the
// raw relay (read a batch from one datagram port, write it to another)
// with the switch between two VM ports (anti-spoofing on, as for VMs), and
// with 16 idle VM ports attached besides.
func BenchmarkSwitch(b *testing.B) {
	for _, qlen := range []int{0, 512} {
		name := "qlen=default"
		if qlen != 0 {
			name = fmt.Sprintf("qlen=%d", qlen)
		}
		b.Run(name, func(b *testing.B) {
			ns := benchNetns(b, qlen)
			for _, size := range []int{64, 1514} {
				o := frameiotest.RelayOptions{FrameLen: size, Netns: ns}
				b.Run(fmt.Sprintf("size=%d/relay", size), func(b *testing.B) { frameiotest.BenchDgramRelay(b, o) })
				b.Run(fmt.Sprintf("size=%d/switch", size), func(b *testing.B) { benchSwitch(b, size, 0, ns) })
				b.Run(fmt.Sprintf("size=%d/switch+16idle", size), func(b *testing.B) { benchSwitch(b, size, 16, ns) })
			}
		})
	}
}

func benchSwitch(b *testing.B, size, idle int, ns *frameiotest.Netns) {
	sw := vswitch.New(vswitch.Config{})
	defer sw.Close()
	po := frameiotest.DgramPairOptions{Netns: ns}
	attach := func(mac [6]byte, name string) frameio.Port {
		plugin, guest := frameiotest.DgramPair(b, po)
		if _, err := sw.Attach(plugin, vswitch.PortConfig{Name: name, MAC: net.HardwareAddr(mac[:]), AntiSpoof: true}); err != nil {
			b.Fatal(err)
		}
		return guest
	}
	ga := attach(frameiotest.SrcMAC, "a")
	gb := attach(frameiotest.DstMAC, "b")
	for i := 0; i < idle; i++ {
		attach([6]byte{0x02, 0xa4, 0x6b, 1, 0, byte(i)}, fmt.Sprintf("idle%d", i))
	}
	frameiotest.Throughput(b, ga, gb, size, 64)
}
