package mactrans

import "testing"

// Each iteration translates one frame, alternating directions so every
// frame really is rewritten (a frame already translated would only be
// compared).
func BenchmarkTranslate(b *testing.B) {
	for _, c := range []struct {
		name  string
		frame []byte
	}{
		{"tcp1514", tcpFrame(b, internal, server, 1514)},
		{"arp", arpFrame(b, internal, bcast, 1, internal, make([]byte, 6), false)},
		{"dhcp", cases()[0].build(b, internal)},
		{"nd-ns", cases()[19].build(b, internal)},
	} {
		b.Run(c.name, func(b *testing.B) {
			tr := newT(b)
			f := c.frame
			b.ReportAllocs()
			b.SetBytes(int64(len(f)))
			for i := 0; b.Loop(); i++ {
				if i&1 == 0 {
					tr.ToNetwork(f)
				} else {
					tr.ToGuest(f)
				}
			}
		})
	}
}
