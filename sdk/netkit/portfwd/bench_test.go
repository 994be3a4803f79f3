package portfwd

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkTCPForward measures one connection's throughput, client to
// guest, through a forward on loopback, and without it for comparison.
// One op is 1 MiB written by the client and read by the guest.
func BenchmarkTCPForward(b *testing.B) {
	const chunk = 1 << 20
	received := make(chan int64, 1)
	g := startTCPGuest(b, "127.0.0.1", 0, func(c *net.TCPConn) {
		buf := make([]byte, 256<<10)
		var n int64
		for {
			k, err := c.Read(buf)
			n += int64(k)
			if err != nil {
				break
			}
		}
		received <- n
	})
	f := New(testLogger(b))
	defer f.Close()
	host := add(b, f, Rule{Name: "bench", Proto: "tcp", GuestPort: int(g.addr.Port())}, fixed(loopback))

	for _, tc := range []struct {
		name string
		to   netip.AddrPort
	}{
		{"forwarded", host},
		{"direct", g.addr},
	} {
		b.Run(tc.name, func(b *testing.B) {
			data := make([]byte, chunk)
			c, err := net.DialTCP("tcp4", nil, net.TCPAddrFromAddrPort(tc.to))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Minute))
			b.SetBytes(chunk)
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(data); err != nil {
					b.Fatal(err)
				}
			}
			c.CloseWrite()
			n := <-received // the clock runs until the guest has it all
			b.StopTimer()
			if n != int64(b.N)*chunk {
				b.Fatalf("guest received %d bytes, sent %d", n, int64(b.N)*chunk)
			}
		})
	}
}
