package dhcpserver

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"net"
	"net/netip"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// benchClients is how many guests talk at once (times GOMAXPROCS). Group
// commit needs writers waiting together; a host starting many VMs, or a
// plugin restarted under many, is that case.
const benchClients = 256

// benchServer serves a /12 so b.N new leases never exhaust it.
func benchServer(b *testing.B, workers int) *Server {
	b.Helper()
	st, err := OpenStore(filepath.Join(b.TempDir(), "leases.db"))
	if err != nil {
		b.Fatal(err)
	}
	s, err := New(Config{
		ServerIP:   netip.MustParseAddr("10.0.0.1"),
		ServerMAC:  serverMAC,
		Subnet:     netip.MustParsePrefix("10.0.0.0/12"),
		Router:     netip.MustParseAddr("10.0.0.1"),
		DNS:        []netip.Addr{netip.MustParseAddr("10.0.0.1")},
		Domain:     "anka.test",
		RangeStart: netip.MustParseAddr("10.0.0.10"),
		RangeEnd:   netip.MustParseAddr("10.15.255.250"),
		MTU:        1500,
		Workers:    workers,
		QueueLen:   1 << 16,
	}, st)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close(); st.Close() })
	return s
}

// benchClient is a guest that builds its frames once and patches them, so
// the benchmark measures the server, not the client.
type benchClient struct {
	discover, request []byte
	reqIPOff          int
}

func newBenchClient(b *testing.B) *benchClient {
	hw := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1} // every guest shares it: identities keep them apart
	d, err := dhcpv4.NewDiscovery(hw)
	if err != nil {
		b.Fatal(err)
	}
	placeholder := net.IP{203, 0, 113, 77}
	r, err := dhcpv4.New(dhcpv4.WithHwAddr(hw), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(placeholder)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP{10, 0, 0, 1})))
	if err != nil {
		b.Fatal(err)
	}
	c := &benchClient{discover: clientFrame(b, d, nil, nil), request: clientFrame(b, r, nil, nil)}
	for i := 42 + 240; i+4 <= len(c.request); i++ {
		if net.IP(c.request[i:i+4]).Equal(placeholder) && c.request[i-2] == 50 && c.request[i-1] == 4 {
			c.reqIPOff = i
		}
	}
	if c.reqIPOff == 0 {
		b.Fatal("requested-IP option not found in the template")
	}
	// No UDP checksum: the server does not check it and patching would
	// spoil it.
	for _, f := range [][]byte{c.discover, c.request} {
		f[40], f[41] = 0, 0
	}
	return c
}

func identity() string {
	var u [16]byte
	rand.Read(u[:])
	return hex.EncodeToString(u[:])
}

// exchange runs DISCOVER, OFFER, REQUEST, ACK for a new identity.
func (c *benchClient) exchange(b *testing.B, s *Server) {
	id := identity()
	offer, _, err := s.HandleFrameSync(context.Background(), id, c.discover)
	if err != nil || msgType(offer) != dhcpv4.MessageTypeOffer {
		b.Errorf("no offer: %v", err)
		return
	}
	copy(c.request[c.reqIPOff:], offer[42+16:42+20]) // yiaddr
	ack, _, err := s.HandleFrameSync(context.Background(), id, c.request)
	if err != nil || msgType(ack) != dhcpv4.MessageTypeAck {
		b.Errorf("no ACK: %v", err)
	}
}

// msgType finds option 53 in a reply frame.
func msgType(f []byte) dhcpv4.MessageType {
	if len(f) < 42+240 {
		return dhcpv4.MessageTypeNone
	}
	o := f[42+240:]
	for len(o) >= 2 && o[0] != 255 {
		if o[0] == 0 {
			o = o[1:]
			continue
		}
		if o[0] == 53 && o[1] == 1 && len(o) >= 3 {
			return dhcpv4.MessageType(o[2])
		}
		o = o[min(len(o), 2+int(o[1])):]
	}
	return dhcpv4.MessageTypeNone
}

// BenchmarkDORA measures full exchanges per second by many concurrent
// guests, every ACK fsynced, through the frame path (parse, decide,
// commit, encode).
func BenchmarkDORA(b *testing.B) {
	s := benchServer(b, 1)
	b.ReportAllocs()
	b.SetParallelism(benchClients)
	b.ResetTimer()
	var worst maxDuration
	b.RunParallel(func(pb *testing.PB) {
		c := newBenchClient(b)
		for pb.Next() {
			start := time.Now()
			c.exchange(b, s)
			worst.note(time.Since(start))
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "exchanges/s")
	b.ReportMetric(worst.ms(), "max-ms")
	if st := s.Stats(); st.Acks != uint64(b.N) {
		b.Fatalf("%d ACKs for %d exchanges", st.Acks, b.N)
	}
}

// BenchmarkDORAQueued is the same through HandleFrame: the few workers
// must not cap the rate while commits wait for the disk.
func BenchmarkDORAQueued(b *testing.B) {
	s := benchServer(b, DefaultWorkers)
	b.ReportAllocs()
	b.SetParallelism(benchClients)
	b.ResetTimer()
	var lost atomic.Int64
	var worst maxDuration
	b.RunParallel(func(pb *testing.PB) {
		c := newBenchClient(b)
		replies := make(chan []byte, 1)
		send := func(f []byte) { replies <- append([]byte(nil), f...) }
		timeout := time.NewTimer(time.Hour)
		wait := func() []byte {
			timeout.Reset(30 * time.Second) // a DHCP client would have retransmitted long before
			select {
			case f := <-replies:
				return f
			case <-timeout.C:
				lost.Add(1)
				return nil
			}
		}
		for pb.Next() {
			start := time.Now()
			id := identity()
			s.HandleFrame(id, c.discover, send)
			offer := wait()
			if offer == nil {
				continue
			}
			copy(c.request[c.reqIPOff:], offer[42+16:42+20])
			s.HandleFrame(id, c.request, send)
			if msgType(wait()) != dhcpv4.MessageTypeAck {
				lost.Add(1)
			}
			worst.note(time.Since(start))
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "exchanges/s")
	b.ReportMetric(worst.ms(), "max-ms")
	if n := lost.Load(); n > 0 {
		b.Fatalf("%d replies lost; %+v", n, s.Stats())
	}
}

// BenchmarkFilter is the cost the switch pays on every non-DHCP frame.
func BenchmarkFilter(b *testing.B) {
	s := benchServer(b, 1)
	f := newBenchClient(b).discover
	f = append([]byte(nil), f...)
	binary.BigEndian.PutUint16(f[36:], 80) // to port 80
	b.ReportAllocs()
	for b.Loop() {
		s.HandleFrame("vm", f, nil)
	}
}

// maxDuration is the slowest exchange, for the latency a guest may see
// while the throughput is measured.
type maxDuration struct{ ns atomic.Int64 }

func (m *maxDuration) note(d time.Duration) {
	for {
		cur := m.ns.Load()
		if int64(d) <= cur || m.ns.CompareAndSwap(cur, int64(d)) {
			return
		}
	}
}

func (m *maxDuration) ms() float64 { return float64(m.ns.Load()) / 1e6 }
