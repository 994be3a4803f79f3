//go:build linux

package frameio_test

import (
	"fmt"
	"os"
	"testing"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

var frameSizes = []int{64, 1514}

// BenchmarkDgramRelay is the raw relay the switch is compared against:
// guest → plugin port → Relay → plugin port → guest, with
// net.unix.max_dgram_qlen as found and, as root, raised in a private
// network namespace (a socket takes the limit of the namespace it is
// created in). Guests behave as QEMU (never connect: the plugin's sends
// to them are capped by the limit) or as vfkit (connect: no cap).
func BenchmarkDgramRelay(b *testing.B) {
	found, err := frameio.MaxDgramQlen()
	if err != nil {
		b.Fatal(err)
	}
	type setting struct {
		name string
		ns   *frameiotest.Netns
	}
	settings := []setting{{fmt.Sprintf("qlen=%d", found), nil}}
	if os.Geteuid() == 0 {
		ns := frameiotest.NewNetns(b)
		if err := ns.Run(func() error { return frameio.SetMaxDgramQlen(frameio.RecommendedMaxDgramQlen) }); err != nil {
			b.Fatal(err)
		}
		settings = append(settings, setting{fmt.Sprintf("qlen=%d", frameio.RecommendedMaxDgramQlen), ns})
	}
	for _, s := range settings {
		for _, guest := range []frameiotest.GuestMode{frameiotest.GuestQEMU, frameiotest.GuestConnected} {
			for _, size := range frameSizes {
				b.Run(fmt.Sprintf("%s/guest=%s/%dB", s.name, guest, size), func(b *testing.B) {
					frameiotest.BenchDgramRelay(b, frameiotest.RelayOptions{FrameLen: size, Guest: guest, Netns: s.ns})
				})
			}
		}
	}
}

// BenchmarkStreamRelay is the raw relay over stream sockets.
func BenchmarkStreamRelay(b *testing.B) {
	for _, size := range frameSizes {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			frameiotest.BenchStreamRelay(b, frameiotest.RelayOptions{FrameLen: size})
		})
	}
}

// BenchmarkHop is one socket hop, no relay: what a port costs alone.
func BenchmarkHop(b *testing.B) {
	for _, size := range frameSizes {
		b.Run(fmt.Sprintf("dgram/%dB", size), func(b *testing.B) {
			plugin, guest := frameiotest.DgramPair(b, frameiotest.DgramPairOptions{Guest: frameiotest.GuestConnected})
			frameiotest.Throughput(b, guest, plugin, size, 64)
		})
		b.Run(fmt.Sprintf("stream/%dB", size), func(b *testing.B) {
			server, client := frameiotest.StreamPair(b, frameiotest.StreamPairOptions{})
			frameiotest.Throughput(b, client, server, size, 64)
		})
		b.Run(fmt.Sprintf("pipe/%dB", size), func(b *testing.B) {
			x, y := frameio.Pipe(frameio.DefaultMTU)
			defer x.Close()
			frameiotest.Throughput(b, x, y, size, 64)
		})
	}
}
