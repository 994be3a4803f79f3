package capture

import (
	"path/filepath"
	"testing"
)

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
func (discard) Close() error                { return nil }

// on measures the capture's own cost: the writer discards, so the disk
// does not dominate (and a benchmark does not fill it).
func BenchmarkWrite(b *testing.B) {
	f := frame(b, 1, 1514)
	b.Run("off", func(b *testing.B) {
		c := &Capture{}
		b.ReportAllocs()
		for b.Loop() {
			c.Write(f)
		}
	})
	b.Run("on", func(b *testing.B) {
		c := &Capture{}
		c.mu.Lock()
		_ = c.start("/dev/null", discard{}, 0)
		c.mu.Unlock()
		b.ReportAllocs()
		b.SetBytes(int64(len(f)))
		for b.Loop() {
			c.Write(f)
		}
	})
	b.Run("on-parallel", func(b *testing.B) { // rx and tx contending
		c := &Capture{}
		c.mu.Lock()
		_ = c.start("/dev/null", discard{}, 0)
		c.mu.Unlock()
		b.ReportAllocs()
		b.SetBytes(int64(len(f)))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c.Write(f)
			}
		})
	})
	b.Run("on-file-snap128", func(b *testing.B) {
		c := &Capture{}
		if err := c.Start(filepath.Join(b.TempDir(), "bench.pcap"), 128); err != nil {
			b.Fatal(err)
		}
		defer c.Stop()
		b.ReportAllocs()
		for b.Loop() {
			c.Write(f)
		}
	})
}
