package vswitch

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

// offLink is a link whose frames carry their offloads both ways, as the
// vhost-user port's and an offloading TAP's do; takes says whether it is
// a frameio.PartialWriter that takes partial checksums.
type offLink struct {
	memLink
	takes bool
	inF   chan frameio.Frame
	outF  []frameio.Frame
}

func newOffLink(takes bool) *offLink {
	return &offLink{memLink: *newMemLink(), takes: takes, inF: make(chan frameio.Frame, 64)}
}

func (l *offLink) TakesPartial() bool { return l.takes }

func (l *offLink) ReadBatch(fs []frameio.Frame) (int, error) {
	return readChan(l.inF, l.closed, fs, func(f *frameio.Frame, g frameio.Frame) { f.N, f.Off = copy(f.Buf, g.Bytes()), g.Off })
}

func (l *offLink) WriteBatch(fs []frameio.Frame) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range fs {
		l.outF = append(l.outF, frameio.Frame{Buf: bytes.Clone(fs[i].Bytes()), N: fs[i].N, Off: fs[i].Off})
	}
	return len(fs), nil
}

func (l *offLink) got() []frameio.Frame {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]frameio.Frame(nil), l.outF...)
}

var _ frameio.PartialWriter = (*offLink)(nil)

// tcpFrames is a TCP/IPv4 frame from src to dst, complete, and the same
// frame as a guest with checksum offload hands it over: the TCP checksum
// left as the pseudo-header's sum, Off saying where to complete it.
func tcpFrames(t testing.TB, src, dst net.HardwareAddr, payload string) (complete []byte, partial frameio.Frame) {
	return tcpSegment(t, src, dst, "10.0.0.1", "10.0.0.2", 40000, 5201, 7, 9, false, []byte(payload))
}

// tcpSegment is tcpFrames with the addresses, ports and sequence numbers
// given: a SYN, or an ACK with PSH when it carries a payload.
func tcpSegment(t testing.TB, src, dst net.HardwareAddr, sip, dip string, sport, dport int, seq, ack uint32, syn bool, payload []byte) (complete []byte, partial frameio.Frame) {
	eth := &layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Flags: layers.IPv4DontFragment, Protocol: layers.IPProtocolTCP, SrcIP: net.ParseIP(sip), DstIP: net.ParseIP(dip)}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), Seq: seq, Ack: ack, SYN: syn, ACK: !syn, PSH: len(payload) > 0, Window: 65535}
	tcp.SetNetworkLayerForChecksum(ip)
	complete = serialize(t, eth, ip, tcp, gopacket.Payload(payload))
	return complete, partialOf(complete, frameio.FrameSize(frameio.DefaultMTU))
}

// partialOf is complete (a TCP/IPv4 frame without IP options), copied
// into a buffer of size bytes, as a stack with checksum offload hands it
// over: the TCP checksum left as the pseudo-header's sum, Off saying
// where to complete it.
func partialOf(complete []byte, size int) frameio.Frame {
	p := bytes.Clone(complete)
	sum := uint32(binary.BigEndian.Uint16(p[26:])) + uint32(binary.BigEndian.Uint16(p[28:])) +
		uint32(binary.BigEndian.Uint16(p[30:])) + uint32(binary.BigEndian.Uint16(p[32:])) + 6 + uint32(len(p)-34)
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(p[50:], uint16(sum))
	buf := make([]byte, size)
	return frameio.Frame{Buf: buf, N: copy(buf, p), Off: frameio.Offload{Partial: true, CsumStart: 34, CsumOffset: 16}}
}

// attach joins link to sw as port name with mac, failing t if it cannot.
func attach(t testing.TB, sw *Switch, link frameio.Port, name string, mac net.HardwareAddr) *Port {
	t.Helper()
	p, err := sw.Attach(link, PortConfig{Name: name, MAC: mac})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

const dropOffloadName = "offload the switch cannot complete"

// offRig is a switch with a guest port that hands over offloaded frames
// (vm), an uplink that takes partial checksums (up), one whose link says
// it does not (off), and a plain port (plain).
type offRig struct {
	sw              *Switch
	vm, up, off     *offLink
	plain           *memLink
	vmPort, upPort  *Port
	offPort, plainP *Port
}

func newOffRig(t *testing.T) *offRig {
	r := &offRig{sw: New(Config{}), vm: newOffLink(false), up: newOffLink(true), off: newOffLink(false), plain: newMemLink()}
	t.Cleanup(func() { r.sw.Close() })
	r.vmPort = attach(t, r.sw, r.vm, "vm", macA)
	r.upPort = attach(t, r.sw, r.up, "up", macU)
	r.offPort = attach(t, r.sw, r.off, "off", macB)
	r.plainP = attach(t, r.sw, r.plain, "plain", macC)
	return r
}

// send hands frames to the vm port in one batch and waits until the
// switch has read them all.
func (r *offRig) send(t *testing.T, fs ...frameio.Frame) {
	t.Helper()
	before := r.vmPort.stats.rxFrames.Load()
	for _, f := range fs {
		r.vm.inF <- f
	}
	deadline := time.Now().Add(5 * time.Second)
	for r.vmPort.stats.rxFrames.Load() < before+uint64(len(fs)) {
		if time.Now().After(deadline) {
			t.Fatal("the switch never read the frames")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestPartialChecksums(t *testing.T) {
	r := newOffRig(t)
	complete, partial := tcpFrames(t, macA, macU, "to the uplink")

	// To a port that takes them: partial frames stay partial, a batch of
	// them in one run, bytes and offload untouched.
	r.send(t, partial, partial, partial)
	got := r.up.got()
	if len(got) != 3 {
		t.Fatalf("the uplink got %d frames, want 3", len(got))
	}
	for _, f := range got {
		if f.Off != partial.Off || !bytes.Equal(f.Bytes(), partial.Bytes()) {
			t.Fatalf("the uplink got %+v %x, want the partial frame as sent", f.Off, f.Bytes())
		}
	}

	// To a port that does not take them, or a plain one: completed.
	for _, c := range []struct {
		name string
		dst  net.HardwareAddr
		got  func() [][]byte
	}{
		{"off", macB, func() [][]byte {
			var out [][]byte
			for _, f := range r.off.got() {
				if f.Off != (frameio.Offload{}) {
					t.Fatalf("port off got a frame with offload %+v", f.Off)
				}
				out = append(out, f.Bytes())
			}
			return out
		}},
		{"plain", macC, r.plain.received},
	} {
		complete, partial := tcpFrames(t, macA, c.dst, "to "+c.name)
		r.send(t, partial, partial)
		got := c.got()
		if len(got) != 2 || !bytes.Equal(got[0], complete) || !bytes.Equal(got[1], complete) {
			t.Fatalf("port %s got %x, want the frame completed: %x", c.name, got, complete)
		}
	}
	if n := len(r.up.got()); n != 3 {
		t.Fatalf("unicast leaked to the uplink: %d frames", n)
	}

	// Flooded (unknown destination): completed once, for every port,
	// the uplink too.
	flood := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x77}
	complete, partial = tcpFrames(t, macA, flood, "to everyone")
	r.send(t, partial)
	if up := r.up.got(); len(up) != 4 || up[3].Off != (frameio.Offload{}) || !bytes.Equal(up[3].Bytes(), complete) {
		t.Fatalf("the uplink got a flooded partial frame not completed: %+v", up[len(up)-1])
	}
	if off := r.off.got(); len(off) != 3 || off[2].Off != (frameio.Offload{}) || !bytes.Equal(off[2].Bytes(), complete) {
		t.Fatal("port off got a flooded frame not completed")
	}
	if plain := r.plain.received(); len(plain) != 3 || !bytes.Equal(plain[2], complete) {
		t.Fatal("the plain port got a flooded frame not completed")
	}
	if d := r.vmPort.Stats().Drops[dropOffloadName]; d != 0 {
		t.Fatalf("%d frames dropped", d)
	}
}

// A GSO segment the switch cannot cut (its type says IPv6, its frame is
// IPv4) and a partial checksum whose place lies outside the frame are
// dropped and counted on the port that sent them, whatever their
// destination.
func TestOffloadsTheSwitchCannotComplete(t *testing.T) {
	r := newOffRig(t)
	flood := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x77}
	var frames []frameio.Frame
	for _, dst := range []net.HardwareAddr{macU, macB, macC, flood} {
		_, gso := tcpFrames(t, macA, dst, "a segment to cut")
		gso.Off.GSO, gso.Off.GSOSize = frameio.GSOTCPv6, 1000
		frames = append(frames, gso)
		_, bad := tcpFrames(t, macA, dst, "checksum's place outside")
		bad.Off.CsumOffset = 1000
		if dst.String() != macU.String() { // the uplink's link judges that one
			frames = append(frames, bad)
		}
	}
	r.send(t, frames...)
	if d := r.vmPort.Stats().Drops[dropOffloadName]; d != uint64(len(frames)) {
		t.Fatalf("%d drops counted, want %d: %v", d, len(frames), r.vmPort.Stats().Drops)
	}
	if len(r.up.got())+len(r.off.got())+len(r.plain.received()) != 0 {
		t.Fatal("a frame the switch cannot complete was forwarded")
	}
}

// Service ports (and in-process pipes) get completed frames.
func TestPartialToServiceAndPipe(t *testing.T) {
	r := newOffRig(t)
	var mu sync.Mutex
	var delivered [][]byte
	gw := net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	if _, err := r.sw.AttachService(PortConfig{Name: "svc", MAC: gw}, func(fs []frameio.Frame) {
		mu.Lock()
		defer mu.Unlock()
		for i := range fs {
			if fs[i].Off != (frameio.Offload{}) {
				t.Errorf("the service got a frame with offload %+v", fs[i].Off)
			}
			delivered = append(delivered, bytes.Clone(fs[i].Bytes()))
		}
	}); err != nil {
		t.Fatal(err)
	}
	pipeMAC := net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
	x, y := frameio.Pipe(frameio.DefaultMTU)
	defer y.Close()
	if _, err := r.sw.Attach(x, PortConfig{Name: "pipe", MAC: pipeMAC}); err != nil {
		t.Fatal(err)
	}
	toSvc, p1 := tcpFrames(t, macA, gw, "to the service")
	toPipe, p2 := tcpFrames(t, macA, pipeMAC, "to the pipe")
	r.send(t, p1, p2)
	mu.Lock()
	if len(delivered) != 1 || !bytes.Equal(delivered[0], toSvc) {
		t.Fatalf("the service got %x, want %x", delivered, toSvc)
	}
	mu.Unlock()
	in := frameio.NewBatch(4, frameio.DefaultMTU)
	n, err := y.ReadBatch(in)
	if err != nil || n != 1 || !bytes.Equal(in[0].Bytes(), toPipe) {
		t.Fatalf("the pipe got %d frames (%v), want the completed one", n, err)
	}
}

// Completing partial checksums allocates nothing.
func TestPartialForwardingAllocatesNothing(t *testing.T) {
	_, partial := tcpFrames(t, macA, macB, "partial")
	forwardsWithoutAllocs(t, partial, 32, 0, 1)
}

// forwardsWithoutAllocs forwards batches of n copies of fr (from macA,
// 10.0.0.1, to macB) from an anti-spoofed service port to a discarding
// one, 100 times, with a forwarder of large GSO buffers: no batch may
// allocate, nothing may be dropped, and the discarding port must get
// pieces frames for each copy.
func forwardsWithoutAllocs(t *testing.T, fr frameio.Frame, n, large, pieces int) {
	t.Helper()
	sw := New(Config{})
	defer sw.Close()
	a, _ := sw.AttachService(PortConfig{Name: "a", MAC: macA, AntiSpoof: true}, func([]frameio.Frame) {})
	a.SetIP(netip.MustParseAddr("10.0.0.1"))
	attach(t, sw, &discard{*newMemLink()}, "b", macB)
	f := sw.newForwarder(large)
	batch := f.in[:n]
	allocs := testing.AllocsPerRun(100, func() {
		for i := range batch {
			batch[i].N, batch[i].Off = copy(batch[i].Buf, fr.Bytes()), fr.Off
		}
		sw.forward(a, f, batch)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per batch", allocs)
	}
	if st := sw.Ports()[1].Stats(); st.TxFrames < uint64(n*100*pieces) || len(st.Drops) != 0 {
		t.Fatalf("port b: %+v", st)
	}
}

// The whole way: a guest's frames with partial checksums go through the
// switch, as they are, to an uplink TAP with offloads, and the host's
// TCP takes them: a connection is made and its data read intact.
func TestPartialThroughOffloadTAP(t *testing.T) {
	ns := frameiotest.NewNetns(t)
	var tap *frameio.TAPPort
	if err := ns.Run(func() (err error) {
		tap, err = frameio.OpenTAP("up0", frameio.TAPOptions{MTU: 1500, Up: true, Offload: true})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ns.IP(t, "addr", "add", "10.99.0.1/24", "dev", "up0")
	ns.IP(t, "neigh", "replace", "10.99.0.2", "lladdr", macA.String(), "dev", "up0")
	sw := New(Config{})
	defer sw.Close()
	vm := newOffLink(false)
	vmPort, err := sw.Attach(vm, PortConfig{Name: "vm", MAC: macA})
	if err != nil {
		t.Fatal(err)
	}
	upPort, err := sw.Attach(tap, PortConfig{Name: "up"})
	if err != nil {
		t.Fatal(err)
	}
	const size, segs = 1448, 40
	got := ns.Receive(t, "tcp4", "10.99.0.1:7777", size*segs, 5*time.Second)
	// waitFrom waits for the guest to get a frame for which match holds.
	waitFrom := func(what string, match func([]byte) bool) []byte {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			for _, f := range vm.got() {
				if f.Off != (frameio.Offload{}) {
					t.Fatalf("the guest got a frame with offload %+v", f.Off)
				}
				if match(f.Bytes()) {
					return f.Bytes()
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("the guest never got %s", what)
			}
			time.Sleep(time.Millisecond)
		}
	}
	// The host speaks first, so the switch learns its MAC on the uplink
	// and sends it the guest's frames as they are.
	if err := ns.Run(func() error {
		c, err := net.Dial("udp4", "10.99.0.2:9")
		if err == nil {
			_, err = c.Write([]byte("hello"))
			c.Close()
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	kmac := net.HardwareAddr(waitFrom("the host's datagram", func(f []byte) bool { return len(f) > 34 && f[23] == 17 })[6:12])
	if p, ok := sw.Lookup(kmac); !ok || p != upPort {
		t.Fatal("the host's MAC was not learned on the uplink")
	}
	seg := func(seq, ack uint32, syn bool, payload []byte) frameio.Frame {
		_, f := tcpSegment(t, macA, kmac, "10.99.0.2", "10.99.0.1", 40000, 7777, seq, ack, syn, payload)
		return f
	}
	const iss = 1000
	vm.inF <- seg(iss, 0, true, nil)
	synack := waitFrom("a SYN-ACK", func(f []byte) bool { return len(f) >= 54 && f[23] == 6 && f[47] == 0x12 })
	hostSeq := binary.BigEndian.Uint32(synack[38:]) + 1
	want := make([]byte, size*segs)
	for i := range want {
		want[i] = byte(i*11 + i>>10)
	}
	frames := []frameio.Frame{seg(iss+1, hostSeq, false, nil)}
	for i := 0; i < segs; i++ {
		f := seg(iss+1+uint32(i*size), hostSeq, false, want[i*size:(i+1)*size])
		if i < segs-1 {
			f.Buf[47] = 0x10 // ACK; PSH on the last only, so the run merges
		}
		frames = append(frames, f)
	}
	for _, f := range frames {
		vm.inF <- f
	}
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("the host read %d bytes of %d, or not the same", len(b), len(want))
	}
	if d := vmPort.Stats().Drops; len(d) != 0 {
		t.Fatalf("the guest's port dropped: %v", d)
	}
	// The TAP counts a batch once it is written: the host may read first.
	deadline := time.Now().Add(5 * time.Second)
	for s := tap.Stats(); s.TxFrames < uint64(1+len(frames)); s = tap.Stats() {
		if time.Now().After(deadline) {
			t.Fatalf("the uplink TAP: %+v", s)
		}
		time.Sleep(time.Millisecond)
	}
	if s := tap.Stats(); s.TxDropped != 0 {
		t.Fatalf("the uplink TAP: %+v", s)
	}
}
