package vswitch

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/anka-net/anka/sdk/netkit/capture"
	"github.com/anka-net/anka/sdk/netkit/frameio"
)

// memLink is a frame port in memory: the test pushes frames in, and reads
// what the switch wrote.
type memLink struct {
	in     chan []byte
	mu     sync.Mutex
	out    [][]byte
	closed chan struct{}
	once   sync.Once
}

func newMemLink() *memLink {
	return &memLink{in: make(chan []byte, 64), closed: make(chan struct{})}
}

func (l *memLink) ReadBatch(fs []frameio.Frame) (int, error) {
	return readChan(l.in, l.closed, fs, func(f *frameio.Frame, b []byte) { f.N = copy(f.Buf, b) })
}

// readChan is ReadBatch from a channel: it waits for one item, then takes
// what else is queued, up to len(fs), put into the frames by put.
func readChan[T any](in <-chan T, closed <-chan struct{}, fs []frameio.Frame, put func(*frameio.Frame, T)) (int, error) {
	select {
	case v := <-in:
		put(&fs[0], v)
		n := 1
		for n < len(fs) {
			select {
			case v := <-in:
				put(&fs[n], v)
				n++
			default:
				return n, nil
			}
		}
		return n, nil
	case <-closed:
		return 0, frameio.ErrClosed
	}
}

func (l *memLink) WriteBatch(fs []frameio.Frame) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range fs {
		l.out = append(l.out, append([]byte(nil), fs[i].Bytes()...))
	}
	return len(fs), nil
}

func (l *memLink) Close() error         { l.once.Do(func() { close(l.closed) }); return nil }
func (l *memLink) Kind() frameio.Kind   { return frameio.KindPipe }
func (l *memLink) MTU() int             { return 1500 }
func (l *memLink) Stats() frameio.Stats { return frameio.Stats{} }
func (l *memLink) received() [][]byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([][]byte(nil), l.out...)
}
func (l *memLink) reset() { l.mu.Lock(); l.out = nil; l.mu.Unlock() }

var (
	macA  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xa}
	macB  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xb}
	macC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xc}
	macU  = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0x99} // learned behind an uplink
	bcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
)

func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func udpFrame(t testing.TB, src, dst net.HardwareAddr, sip, dip string, sport, dport int) []byte {
	eth := &layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.ParseIP(sip), DstIP: net.ParseIP(dip)}
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	udp.SetNetworkLayerForChecksum(ip)
	return serialize(t, eth, ip, udp, gopacket.Payload([]byte("hello, switch")))
}

func arpFrame(t testing.TB, src net.HardwareAddr, spa, tpa string) []byte {
	eth := &layers.Ethernet{SrcMAC: src, DstMAC: bcast, EthernetType: layers.EthernetTypeARP}
	arp := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: layers.ARPRequest, SourceHwAddress: src, SourceProtAddress: net.ParseIP(spa).To4(),
		DstHwAddress: make([]byte, 6), DstProtAddress: net.ParseIP(tpa).To4()}
	return serialize(t, eth, arp)
}

func icmp6Frame(t testing.TB, src net.HardwareAddr, sip string, typ uint8, target string) []byte {
	eth := &layers.Ethernet{SrcMAC: src, DstMAC: net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}, EthernetType: layers.EthernetTypeIPv6}
	ip := &layers.IPv6{Version: 6, HopLimit: 255, NextHeader: layers.IPProtocolICMPv6, SrcIP: net.ParseIP(sip), DstIP: net.ParseIP("ff02::1")}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
	icmp.SetNetworkLayerForChecksum(ip)
	body := make([]byte, 20)
	copy(body[4:], net.ParseIP(target).To16())
	return serialize(t, eth, ip, icmp, gopacket.Payload(body))
}

type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() int64              { return c.ns.Load() }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

type rig struct {
	t     *testing.T
	sw    *Switch
	clock *fakeClock
	links map[string]*memLink
	ports map[string]*Port
}

func newRig(t *testing.T, cfgs ...PortConfig) *rig {
	clk := &fakeClock{}
	clk.ns.Store(1)
	r := &rig{t: t, clock: clk, links: map[string]*memLink{}, ports: map[string]*Port{}}
	r.sw = New(Config{Now: clk.now, AgeTime: time.Minute})
	t.Cleanup(func() { r.sw.Close() })
	for _, c := range cfgs {
		l := newMemLink()
		p, err := r.sw.Attach(l, c)
		if err != nil {
			t.Fatal(err)
		}
		r.links[c.Name], r.ports[c.Name] = l, p
	}
	return r
}

// send pushes a frame into a port and waits until the switch has read it.
func (r *rig) send(port string, frame []byte) {
	r.t.Helper()
	p := r.ports[port]
	before := p.stats.rxFrames.Load()
	r.links[port].in <- frame
	deadline := time.Now().Add(5 * time.Second)
	for p.stats.rxFrames.Load() == before {
		if time.Now().After(deadline) {
			r.t.Fatalf("port %s never read the frame", port)
		}
		time.Sleep(time.Millisecond)
	}
}

func (r *rig) got(port string) int { return len(r.links[port].received()) }

func (r *rig) reset() {
	for _, l := range r.links {
		l.reset()
	}
}

func TestLearningNeverFloodsKnownUnicast(t *testing.T) {
	r := newRig(t, PortConfig{Name: "a"}, PortConfig{Name: "b"}, PortConfig{Name: "c"})
	// Unknown destination: flooded to everyone but the sender.
	r.send("a", udpFrame(t, macA, macB, "10.0.0.1", "10.0.0.2", 1000, 2000))
	if r.got("a") != 0 || r.got("b") != 1 || r.got("c") != 1 {
		t.Fatalf("unknown unicast: a=%d b=%d c=%d", r.got("a"), r.got("b"), r.got("c"))
	}
	r.reset()
	// b answers: a is known now, so only a gets it.
	r.send("b", udpFrame(t, macB, macA, "10.0.0.2", "10.0.0.1", 2000, 1000))
	if r.got("a") != 1 || r.got("c") != 0 {
		t.Fatalf("known unicast flooded: a=%d c=%d", r.got("a"), r.got("c"))
	}
	r.reset()
	for i := 0; i < 10; i++ {
		r.send("a", udpFrame(t, macA, macB, "10.0.0.1", "10.0.0.2", 1000, 2000))
	}
	if r.got("b") != 10 || r.got("c") != 0 {
		t.Fatalf("a->b: b=%d c=%d", r.got("b"), r.got("c"))
	}
	r.reset()
	r.send("c", arpFrame(t, macC, "10.0.0.3", "10.0.0.1"))
	if r.got("a") != 1 || r.got("b") != 1 || r.got("c") != 0 {
		t.Fatal("broadcast not flooded to all others")
	}
	st := r.ports["a"].Stats()
	if st.RxFrames != 11 || st.TxFrames != 2 {
		t.Fatalf("counters %+v", st)
	}
}

func TestAging(t *testing.T) {
	r := newRig(t, PortConfig{Name: "a"}, PortConfig{Name: "b"}, PortConfig{Name: "c"})
	r.send("b", udpFrame(t, macB, bcast, "10.0.0.2", "10.0.0.255", 1, 2))
	r.reset()
	r.send("a", udpFrame(t, macA, macB, "10.0.0.1", "10.0.0.2", 1, 2))
	if r.got("c") != 0 {
		t.Fatal("fresh entry flooded")
	}
	r.clock.advance(2 * time.Minute)
	r.reset()
	r.send("a", udpFrame(t, macA, macB, "10.0.0.1", "10.0.0.2", 1, 2))
	if r.got("c") != 1 || r.got("b") != 1 {
		t.Fatalf("aged entry should flood: b=%d c=%d", r.got("b"), r.got("c"))
	}
	if _, ok := r.sw.Lookup(macA); !ok {
		t.Fatal("a just sent and should be known")
	}
	if r.sw.table.expire(r.clock.now()-int64(time.Minute)) == 0 && r.sw.table.len() != 2 {
		t.Fatal("expire")
	}
}

func TestAntiSpoof(t *testing.T) {
	r := newRig(t,
		PortConfig{Name: "vm", MAC: macA, AntiSpoof: true},
		PortConfig{Name: "vm2", MAC: macC, AntiSpoof: true},
		PortConfig{Name: "up"})
	vm := r.ports["vm"]
	type spoofCase struct {
		name  string
		frame []byte
		pass  bool
	}
	cases := []spoofCase{
		{"own MAC, no IP yet", udpFrame(t, macA, bcast, "10.0.0.9", "10.0.0.255", 5, 6), true},
		{"foreign MAC", udpFrame(t, macB, bcast, "10.0.0.9", "10.0.0.255", 5, 6), false},
		{"DHCP server reply", udpFrame(t, macA, bcast, "10.0.0.9", "255.255.255.255", 67, 68), false},
		{"router advertisement", icmp6Frame(t, macA, "fe80::a", 134, "::"), false},
		{"ARP with foreign sender MAC", func() []byte { f := arpFrame(t, macA, "10.0.0.5", "10.0.0.1"); copy(f[22:28], macB); return f }(), false},
	}
	check := func(when string) {
		for _, c := range cases {
			before := r.got("up")
			r.send("vm", c.frame)
			if passed := r.got("up") > before; passed != c.pass {
				t.Errorf("%s, %s: passed=%v want %v", when, c.name, passed, c.pass)
			}
		}
	}
	check("before lease")
	vm.SetIP(netip.MustParseAddr("10.0.0.5"))
	cases = append(cases[1:2],
		spoofCase{"leased IP", udpFrame(t, macA, bcast, "10.0.0.5", "10.0.0.255", 5, 6), true},
		spoofCase{"other IP after lease", udpFrame(t, macA, bcast, "10.0.0.9", "10.0.0.255", 5, 6), false},
		spoofCase{"DHCP renew from 0.0.0.0", udpFrame(t, macA, bcast, "0.0.0.0", "255.255.255.255", 68, 67), true},
		spoofCase{"other UDP from 0.0.0.0", udpFrame(t, macA, bcast, "0.0.0.0", "255.255.255.255", 5, 6), false},
		spoofCase{"ARP for own IP", arpFrame(t, macA, "10.0.0.5", "10.0.0.1"), true},
		spoofCase{"ARP claiming another IP", arpFrame(t, macA, "10.0.0.1", "10.0.0.7"), false},
		spoofCase{"ARP probe", arpFrame(t, macA, "0.0.0.0", "10.0.0.5"), true},
	)
	check("after lease")
	// Neighbour advertisements: first come, first served.
	r.send("vm2", icmp6Frame(t, macC, "fe80::c", 136, "fe80::c"))
	before := r.got("up")
	r.send("vm", icmp6Frame(t, macA, "fe80::a", 136, "fe80::c"))
	if r.got("up") != before {
		t.Error("NA for another port's address passed")
	}
	r.send("vm", icmp6Frame(t, macA, "fe80::a", 136, "fe80::a"))
	if r.got("up") != before+1 {
		t.Error("NA for own address dropped")
	}
	st := vm.Stats()
	for _, reason := range []string{"source MAC not the port's", "DHCP server reply from a VM", "IPv6 router advertisement from a VM", "source IP not the port's", "ARP sender not the port's", "neighbour advertisement for another's address"} {
		if st.Drops[reason] == 0 {
			t.Errorf("no drop counted for %q: %v", reason, st.Drops)
		}
	}
}

func TestPinnedMACNotStolen(t *testing.T) {
	r := newRig(t, PortConfig{Name: "vm", MAC: macA, AntiSpoof: true}, PortConfig{Name: "up"}, PortConfig{Name: "up2"})
	// Someone on the uplink uses the VM's MAC: the table keeps the VM.
	r.send("up", udpFrame(t, macA, bcast, "10.0.0.66", "10.0.0.255", 1, 2))
	r.reset()
	r.send("up2", udpFrame(t, macU, macA, "10.0.0.8", "10.0.0.5", 1, 2))
	if r.got("vm") != 1 || r.got("up") != 0 {
		t.Fatalf("pinned MAC moved: vm=%d up=%d", r.got("vm"), r.got("up"))
	}
	if _, err := r.sw.Attach(newMemLink(), PortConfig{Name: "dup", MAC: macA}); err == nil {
		t.Fatal("two ports with one MAC")
	}
}

func TestIsolation(t *testing.T) {
	r := newRig(t, PortConfig{Name: "a", MAC: macA, Isolated: true}, PortConfig{Name: "b", MAC: macB, Isolated: true}, PortConfig{Name: "up"})
	r.send("a", udpFrame(t, macA, macB, "10.0.0.1", "10.0.0.2", 1, 2))
	r.send("a", arpFrame(t, macA, "10.0.0.1", "10.0.0.2"))
	if r.got("b") != 0 || r.got("up") != 1 {
		t.Fatalf("isolated ports met: b=%d up=%d", r.got("b"), r.got("up"))
	}
	r.send("up", udpFrame(t, macU, macB, "10.0.0.9", "10.0.0.2", 1, 2))
	if r.got("b") != 1 {
		t.Fatal("uplink cannot reach an isolated port")
	}
}

func TestHooksAndFloodCopies(t *testing.T) {
	internal := net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	toNet := func(f []byte) bool {
		if string(f[6:12]) == string(internal) {
			copy(f[6:12], macA)
		}
		return true
	}
	toGuest := func(f []byte) {
		if string(f[0:6]) == string(macA) {
			copy(f[0:6], internal)
		}
		copy(f[6:12], []byte{9, 9, 9, 9, 9, 9}) // a rewrite only this port may see
	}
	r := newRig(t, PortConfig{Name: "vm", MAC: macA, AntiSpoof: true, FromLink: toNet, ToLink: toGuest}, PortConfig{Name: "b"}, PortConfig{Name: "c"})
	r.send("vm", udpFrame(t, internal, bcast, "10.0.0.5", "10.0.0.255", 1, 2))
	if b := r.links["b"].received(); len(b) != 1 || string(b[0][6:12]) != string(macA) {
		t.Fatalf("FromLink did not translate: %x", b)
	}
	r.send("b", udpFrame(t, macB, bcast, "10.0.0.2", "10.0.0.255", 1, 2))
	if c := r.links["c"].received(); len(c) != 2 || string(c[1][6:12]) != string(macB) {
		t.Fatalf("a flooded frame leaked another port's rewrite: %x", c)
	}
	r.send("b", udpFrame(t, macB, macA, "10.0.0.2", "10.0.0.5", 1, 2))
	got := r.links["vm"].received()
	if len(got) != 2 || string(got[1][0:6]) != string(internal) {
		t.Fatalf("ToLink did not translate: %x", got)
	}
}

func TestInterceptorAndService(t *testing.T) {
	r := newRig(t, PortConfig{Name: "vm", MAC: macA, AntiSpoof: true, Identity: "uuid-1"}, PortConfig{Name: "b"})
	gw := net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	var delivered atomic.Int32
	svc, err := r.sw.AttachService(PortConfig{Name: "svc", MAC: gw}, func(fs []frameio.Frame) { delivered.Add(int32(len(fs))) })
	if err != nil {
		t.Fatal(err)
	}
	var seenIdentity atomic.Value
	r.sw.Intercept(func(from *Port, fr []byte) bool {
		if len(fr) > 37 && fr[12] == 0x08 && fr[13] == 0 && fr[23] == 17 && fr[36] == 0 && fr[37] == 67 {
			seenIdentity.Store(from.Identity())
			svc.Send(udpFrame(t, gw, from.MAC(), "10.0.0.1", "10.0.0.5", 67, 68))
			return true
		}
		return false
	})
	r.send("vm", udpFrame(t, macA, bcast, "0.0.0.0", "255.255.255.255", 68, 67))
	if r.got("b") != 0 {
		t.Fatal("an intercepted frame was forwarded too")
	}
	if seenIdentity.Load() != "uuid-1" {
		t.Fatalf("interceptor saw identity %v", seenIdentity.Load())
	}
	if got := r.links["vm"].received(); len(got) != 1 || got[0][37] != 68 {
		t.Fatalf("service reply not delivered to the VM: %x", got)
	}
	r.send("b", udpFrame(t, macB, gw, "10.0.0.2", "10.0.0.1", 1, 2))
	if delivered.Load() != 1 {
		t.Fatal("frame for the service's MAC not delivered")
	}
}

func TestDetachForgets(t *testing.T) {
	r := newRig(t, PortConfig{Name: "a", MAC: macA}, PortConfig{Name: "b"}, PortConfig{Name: "c"})
	r.send("b", udpFrame(t, macB, bcast, "10.0.0.2", "10.0.0.255", 1, 2))
	if err := r.ports["b"].Detach(); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.sw.Lookup(macB); ok {
		t.Fatal("detached port's MAC still in the table")
	}
	r.reset()
	r.send("a", udpFrame(t, macA, macB, "10.0.0.1", "10.0.0.2", 1, 2))
	if r.got("c") != 1 || r.got("b") != 0 {
		t.Fatal("frame for a detached port's MAC should flood to the rest")
	}
	if err := r.ports["b"].Detach(); err != nil {
		t.Fatal("second detach:", err)
	}
}

// discard is a link that drops what it is given, for allocation checks.
type discard struct{ memLink }

func (d *discard) WriteBatch(fs []frameio.Frame) (int, error) { return len(fs), nil }

func TestForwardingAllocatesNothing(t *testing.T) {
	sw := New(Config{})
	defer sw.Close()
	a, _ := sw.AttachService(PortConfig{Name: "a", MAC: macA, AntiSpoof: true}, func([]frameio.Frame) {})
	dst := &discard{*newMemLink()}
	if _, err := sw.Attach(dst, PortConfig{Name: "b", MAC: macB}); err != nil {
		t.Fatal(err)
	}
	a.SetIP(netip.MustParseAddr("10.0.0.1"))
	f := sw.newForwarder(0)
	frame := udpFrame(t, macA, macB, "10.0.0.1", "10.0.0.2", 1, 2)
	batch := f.in[:32]
	for i := range batch {
		batch[i].N = copy(batch[i].Buf, frame)
	}
	allocs := testing.AllocsPerRun(100, func() { sw.forward(a, f, batch) })
	if allocs != 0 {
		t.Fatalf("%v allocations per batch", allocs)
	}
	bc := udpFrame(t, macA, bcast, "10.0.0.1", "10.0.0.255", 1, 2)
	for i := range batch {
		batch[i].N = copy(batch[i].Buf, bc)
	}
	if allocs := testing.AllocsPerRun(100, func() { sw.forward(a, f, batch) }); allocs != 0 {
		t.Fatalf("%v allocations per flooded batch", allocs)
	}
}

func TestCaptureOnAndOffWhileAttached(t *testing.T) {
	var capt capture.Capture
	r := newRig(t, PortConfig{Name: "vm", MAC: macA, Capture: &capt}, PortConfig{Name: "b"})
	r.send("vm", udpFrame(t, macA, bcast, "10.0.0.1", "10.0.0.255", 1, 2)) // before: not captured
	path := filepath.Join(t.TempDir(), "vm.pcap")
	if err := capt.Start(path, 0); err != nil {
		t.Fatal(err)
	}
	r.send("vm", udpFrame(t, macA, macB, "10.0.0.1", "10.0.0.2", 1, 2)) // rx
	r.send("b", udpFrame(t, macB, macA, "10.0.0.2", "10.0.0.1", 2, 1))  // tx
	if err := capt.Stop(); err != nil {
		t.Fatal(err)
	}
	r.send("vm", udpFrame(t, macA, macB, "10.0.0.1", "10.0.0.2", 1, 2)) // after: not captured
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rd, err := pcapgo.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var srcs []string
	for {
		data, _, err := rd.ReadPacketData()
		if err != nil {
			break
		}
		srcs = append(srcs, net.HardwareAddr(data[6:12]).String())
	}
	if len(srcs) != 2 || srcs[0] != macA.String() || srcs[1] != macB.String() {
		t.Fatalf("captured %v, want the frame received and the frame sent while on", srcs)
	}
}

// fullLink is a link whose peer never reads: WriteBatch would wait,
// WriteBatchNoWait drops.
type fullLink struct {
	memLink
	waited, noWait atomic.Int64
}

func (l *fullLink) WriteBatch(fs []frameio.Frame) (int, error) {
	l.waited.Add(int64(len(fs)))
	return 0, nil
}

func (l *fullLink) WriteBatchNoWait(fs []frameio.Frame) (int, error) {
	l.noWait.Add(int64(len(fs)))
	return 0, nil
}

// A flood never waits for room on a port (idle VMs' full sockets); known
// unicast still does.
func TestFloodDoesNotWait(t *testing.T) {
	sw := New(Config{})
	defer sw.Close()
	a, _ := sw.AttachService(PortConfig{Name: "a", MAC: macA}, func([]frameio.Frame) {})
	idle := &fullLink{memLink: *newMemLink()}
	if _, err := sw.Attach(idle, PortConfig{Name: "idle", MAC: macB}); err != nil {
		t.Fatal(err)
	}
	a.Send(udpFrame(t, macA, bcast, "10.0.0.1", "10.0.0.255", 1, 2))
	a.Send(udpFrame(t, macA, macB, "10.0.0.1", "10.0.0.2", 1, 2))
	if w, nw := idle.waited.Load(), idle.noWait.Load(); w != 1 || nw != 1 {
		t.Fatalf("unicast writes %d (want 1), flood writes without waiting %d (want 1)", w, nw)
	}
}
