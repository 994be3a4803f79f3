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

// BenchmarkGSORead is what the port spends on the guest-to-port path of a
// guest with TSO against one without: one op is 64 KiB of TCP payload
// (45 segments of MSS 1448, IPv4 with timestamps) taken from the
// transmit ring, sent as one GSO frame the port cuts ("tso"; "-indirect4K"
// with the frame in 4 KiB pieces through an indirect table, as Linux sends
// it), as 45 frames of 1514 bytes with their checksums partial
// ("1514B-partial", a guest with checksum offload only) or complete
// ("1514B"); "tso-whole" reads the GSO frame into large buffers
// (frameio.MaxGSOLen, as the switch gives a frameio.GSOReader), so the
// port hands it up whole: one frame an op instead of 45. Only ReadBatch is timed, on a ring the driver filled before
// (16 ops at a time), so the numbers are the port's own. MB/s counts the
// 45 frames of 1514 bytes the port returns either way.
//
//	go test -run XXX -bench GSORead -benchmem ./netkit/vhostuser/
func BenchmarkGSORead(b *testing.B) {
	const segs, mss, ops = 45, 1448, 16
	big := buildPkt(b, pktSpec{kind: kindTCP, payload: payloadBytes(segs*mss, 1)})
	gf, goff := big.gso(mss)
	var plain, partial [][]byte
	var poffs []frameio.Offload
	for i := range segs {
		s := buildPkt(b, pktSpec{kind: kindTCP, seq: uint32(i * mss), payload: payloadBytes(mss, byte(i))})
		if len(s.frame) != 1514 {
			b.Fatalf("segment of %d bytes", len(s.frame))
		}
		pf, off := s.partial()
		plain, partial, poffs = append(plain, s.frame), append(partial, pf), append(poffs, off)
	}
	for _, tc := range []struct {
		name   string
		frames [][]byte
		offs   []frameio.Offload
		chunk  int
		whole  bool
	}{
		{"tso", [][]byte{gf}, []frameio.Offload{goff}, 0, false},
		{"tso-indirect4K", [][]byte{gf}, []frameio.Offload{goff}, 4096, false},
		{"tso-whole", [][]byte{gf}, []frameio.Offload{goff}, 0, true},
		{"tso-whole-indirect4K", [][]byte{gf}, []frameio.Offload{goff}, 4096, true},
		{"1514B-partial", partial, poffs, 0, false},
		{"1514B", plain, make([]frameio.Offload, segs), 0, false},
	} {
		b.Run(tc.name, func(b *testing.B) {
			p := listen(b, vhostuser.Options{MTU: 1500})
			d := dial(b, p, vhostuserdriver.DriverOptions{Offload: true, TxChunk: tc.chunk, QueueSize: 1024, WriteTimeout: -1})
			var src []frameio.Frame
			for range ops {
				for i, f := range tc.frames {
					src = append(src, frameio.Frame{Buf: f, N: len(f), Off: tc.offs[i]})
				}
			}
			dst, perOp := frameio.NewBatch(64, 1500), segs
			if tc.whole {
				dst, perOp = frameio.NewBatchSize(ops, frameio.MaxGSOLen), 1
			}
			b.SetBytes(segs * 1514)
			b.ReportAllocs()
			b.ResetTimer()
			for done := 0; done < b.N; done += ops {
				b.StopTimer()
				for sent := 0; sent < len(src); {
					n, err := d.WriteBatch(src[sent:])
					if err != nil || n == 0 {
						b.Fatalf("the driver sent %d: %v", n, err)
					}
					sent += n
				}
				b.StartTimer()
				for got := 0; got < ops*perOp; {
					n, err := p.ReadBatch(dst)
					if err != nil {
						b.Fatal(err)
					}
					got += n
				}
			}
			b.StopTimer()
			if s := p.Stats(); s.RxDropped != 0 {
				b.Fatalf("the port dropped %d frames", s.RxDropped)
			}
			if w := vhostuser.WholeFrames(p); tc.whole != (w > 0) || tc.whole && w != vhostuser.GSOFrames(p) {
				b.Fatalf("%d of %d GSO frames handed up whole", w, vhostuser.GSOFrames(p))
			}
		})
	}
}
