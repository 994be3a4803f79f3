package dnsfwd

import (
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// BenchmarkQuery measures one A query relayed through the forwarder to a
// loopback upstream, over UDP: sequential (latency) and parallel
// (throughput), and the upstream asked directly for comparison.
func BenchmarkQuery(b *testing.B) {
	up := startUpstream(b, "127.0.0.1", 0, "10.0.0.1")
	f := startForwarder(b, Config{Upstreams: []string{up.String()}})
	for _, tc := range []struct {
		name string
		addr netip.AddrPort
	}{
		{"forwarded", f.Addr()},
		{"direct", up.addr},
	} {
		b.Run(tc.name, func(b *testing.B) {
			benchQueries(b, tc.addr, false)
		})
		b.Run(tc.name+"-parallel", func(b *testing.B) {
			benchQueries(b, tc.addr, true)
		})
	}
}

func benchQueries(b *testing.B, addr netip.AddrPort, parallel bool) {
	run := func(next func() bool) {
		c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
		co, err := c.Dial(addr.String())
		if err != nil {
			b.Error(err)
			return
		}
		defer co.Close()
		m := new(dns.Msg)
		m.SetQuestion("bench.example.", dns.TypeA)
		for next() {
			m.Id = dns.Id()
			r, _, err := c.ExchangeWithConn(m, co)
			if err != nil || len(r.Answer) != 1 {
				b.Errorf("answer %v, %v", r, err)
				return
			}
		}
	}
	b.ReportAllocs()
	if parallel {
		b.RunParallel(func(pb *testing.PB) { run(pb.Next) })
		return
	}
	run(b.Loop)
}
