package dhcpserver

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/insomniacslk/dhcp/dhcpv4"
)

// clock is the injected time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var serverMAC = net.HardwareAddr{0x02, 0xa0, 0x00, 0x00, 0x00, 0x01}

func testConfig(clk *clock) Config {
	return Config{
		ServerIP:   netip.MustParseAddr("192.168.64.1"),
		ServerMAC:  serverMAC,
		Subnet:     netip.MustParsePrefix("192.168.64.0/24"),
		Router:     netip.MustParseAddr("192.168.64.1"),
		DNS:        []netip.Addr{netip.MustParseAddr("192.168.64.1"), netip.MustParseAddr("1.1.1.1")},
		Domain:     "anka.test",
		RangeStart: netip.MustParseAddr("192.168.64.2"),
		RangeEnd:   netip.MustParseAddr("192.168.64.254"),
		LeaseTime:  time.Hour,
		MTU:        1500,
		Quarantine: 10 * time.Minute,
		Now:        clk.Now,
	}
}

type env struct {
	t    testing.TB
	clk  *clock
	cfg  Config
	path string
	st   *Store
	s    *Server
}

// newEnv starts a server on a fresh store; mod adjusts the config.
func newEnv(t testing.TB, mod func(*Config)) *env {
	t.Helper()
	e := &env{t: t, clk: newClock(), path: filepath.Join(t.TempDir(), "leases.db")}
	e.cfg = testConfig(e.clk)
	if mod != nil {
		mod(&e.cfg)
	}
	e.start()
	t.Cleanup(e.stop)
	return e
}

func (e *env) start() {
	e.t.Helper()
	st, err := OpenStore(e.path)
	if err != nil {
		e.t.Fatal(err)
	}
	s, err := New(e.cfg, st)
	if err != nil {
		st.Close()
		e.t.Fatal(err)
	}
	e.st, e.s = st, s
}

func (e *env) stop() {
	if e.s != nil {
		e.s.Close()
		e.st.Close()
		e.s, e.st = nil, nil
	}
}

// restart closes server and store and opens both again, as a plugin
// restart does.
func (e *env) restart() {
	e.t.Helper()
	e.stop()
	e.start()
}

func (e *env) handle(id string, req *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	e.t.Helper()
	reply, err := e.s.Handle(context.Background(), id, req)
	if err != nil {
		e.t.Fatalf("Handle(%s, %s): %v", id, req.MessageType(), err)
	}
	return reply
}

func mac(n int) net.HardwareAddr {
	return net.HardwareAddr{0x52, 0x54, 0x00, byte(n >> 16), byte(n >> 8), byte(n)}
}

func discover(t testing.TB, hw net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	d, err := dhcpv4.NewDiscovery(hw, mods...)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func requestFrom(t testing.TB, offer *dhcpv4.DHCPv4, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	r, err := dhcpv4.NewRequestFromOffer(offer, mods...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func wantType(t testing.TB, m *dhcpv4.DHCPv4, want dhcpv4.MessageType) {
	t.Helper()
	if m == nil {
		t.Fatalf("no reply, want %s", want)
	}
	if got := m.MessageType(); got != want {
		t.Fatalf("reply is %s (%s), want %s", got, m.Message(), want)
	}
}

// dora runs a full exchange for id and returns the ACK.
func (e *env) dora(id string, hw net.HardwareAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	e.t.Helper()
	offer := e.handle(id, discover(e.t, hw, mods...))
	wantType(e.t, offer, dhcpv4.MessageTypeOffer)
	ack := e.handle(id, requestFrom(e.t, offer, mods...))
	wantType(e.t, ack, dhcpv4.MessageTypeAck)
	if !ack.YourIPAddr.Equal(offer.YourIPAddr) {
		e.t.Fatalf("ACK for %v after OFFER of %v", ack.YourIPAddr, offer.YourIPAddr)
	}
	return ack
}

func addr(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip.To4())
	if !ok {
		return netip.Addr{}
	}
	return a
}

// clientFrame wraps a client message the way a guest sends it: from
// 0.0.0.0 (or its address) to the broadcast address, port 68 to 67.
func clientFrame(t testing.TB, m *dhcpv4.DHCPv4, src, dst net.IP) []byte {
	t.Helper()
	if src == nil {
		src = net.IPv4zero
	}
	if dst == nil {
		dst = net.IPv4bcast
	}
	eth := &layers.Ethernet{SrcMAC: m.ClientHWAddr, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.To4(), DstIP: dst.To4()}
	udp := &layers.UDP{SrcPort: 68, DstPort: 67}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, udp, gopacket.Payload(m.ToBytes()))
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
