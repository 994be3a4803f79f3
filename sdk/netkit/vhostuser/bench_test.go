//go:build linux

package vhostuser_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/vhostuser"
	"github.com/anka-net/anka/sdk/netkit/vhostuser/vhostuserdriver"
)

// Throughput between the back-end and the driver, both directions, in
// batches of 64 as the switch moves them. One op is one frame. The
// chained cases post receive buffers and send frames as a header
// descriptor and 4 KiB pieces (Linux's big packets), as direct chains in
// the ring ("direct") or through indirect tables ("indirect").
//
//	go test -run XXX -bench . -benchmem ./netkit/vhostuser/
func BenchmarkThroughput(b *testing.B) {
	for _, tc := range []struct {
		name       string
		mtu, size  int
		chunk      int
		noIndirect bool
		qsize      int
	}{
		{"64B", 1500, 64, 0, false, 0},
		{"1514B", 1500, 1514, 0, false, 0},
		{"65534B", frameio.MaxMTU, frameio.FrameSize(frameio.MaxMTU) - frameio.VLANTagLen, 0, false, 0},
		{"1514B-chained4K-direct", 1500, 1514, 4096, true, 0},
		{"1514B-chained4K-indirect", 1500, 1514, 4096, false, 0},
		{"65534B-chained4K-direct", frameio.MaxMTU, frameio.FrameSize(frameio.MaxMTU) - frameio.VLANTagLen, 4096, true, 0},
		{"65534B-chained4K-indirect", frameio.MaxMTU, frameio.FrameSize(frameio.MaxMTU) - frameio.VLANTagLen, 4096, false, 0},
		// As many buffers as the direct chains get from 256 entries (15
		// there, 16 here): the cost of the tables alone, without 17
		// times the buffers' memory.
		{"65534B-chained4K-indirect-q16", frameio.MaxMTU, frameio.FrameSize(frameio.MaxMTU) - frameio.VLANTagLen, 4096, false, 16},
	} {
		for _, dir := range []string{"guest-to-port", "port-to-guest"} {
			b.Run(fmt.Sprintf("%s/%s", tc.name, dir), func(b *testing.B) {
				p := listen(b, vhostuser.Options{MTU: tc.mtu})
				d := dial(b, p, vhostuserdriver.DriverOptions{RxChunk: tc.chunk, TxChunk: tc.chunk, NoIndirect: tc.noIndirect, QueueSize: tc.qsize})
				var w, r frameio.Port = d, p
				if dir == "port-to-guest" {
					w, r = p, d
				}
				benchFlow(b, w, r, tc.mtu, tc.size)
			})
		}
	}
}

func benchFlow(b *testing.B, w, r frameio.Port, mtu, size int) {
	src := frameio.NewBatch(64, mtu)
	for i := range src {
		src[i].N = copy(src[i].Buf, frame(size, i))
	}
	dst := frameio.NewBatch(64, mtu)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for sent := 0; sent < b.N; {
			n, err := w.WriteBatch(src[:min(len(src), b.N-sent)])
			if err != nil {
				return
			}
			sent += n
		}
	}()
	for got := 0; got < b.N; {
		n, err := r.ReadBatch(dst)
		if err != nil {
			b.Fatal(err)
		}
		got += n
	}
	wg.Wait()
	b.StopTimer()
	sec := b.Elapsed().Seconds()
	b.ReportMetric(float64(b.N)/sec, "frames/s")
	b.ReportMetric(float64(b.N)*float64(size)*8/sec/1e9, "Gbit/s")
}
