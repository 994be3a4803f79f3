package lan_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"github.com/anka-net/anka/sdk/netkit/lan"
	"github.com/anka-net/anka/sdk/netkit/lan/lantest"
	"github.com/anka-net/anka/sdk/netkit/vswitch"
)

// rawDgram is a hostile VM on a datagram endpoint: a bare socket bound
// where QEMU binds, sending whatever bytes it likes, of any length.
type rawDgram struct {
	fd int
	to unix.SockaddrUnix
}

func openRawDgram(t *testing.T, ep lan.Endpoint) *rawDgram {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Room for a datagram past 64 KiB.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: ep.VMPath}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return &rawDgram{fd: fd, to: unix.SockaddrUnix{Name: ep.PluginPath}}
}

func (r *rawDgram) send(t *testing.T, b []byte) {
	t.Helper()
	if err := unix.Sendto(r.fd, b, 0, &r.to); err != nil {
		t.Fatalf("sending %d bytes to the plugin's socket: %v", len(b), err)
	}
}

// probe sends numbered UDP frames from one good guest to another and to
// the host, and counts what arrives, so a test can say whether good
// traffic kept flowing while a neighbour misbehaved.
type probe struct {
	tl           *testLAN
	from, to     *lantest.Client
	fromL, toL   lantest.Lease
	toMAC        net.HardwareAddr
	sent, got    atomic.Uint64
	hostGot      atomic.Uint64
	tag          []byte
	stop, done   chan struct{}
	hostWatching sync.WaitGroup
}

func startProbe(tl *testLAN, tag string, from, to *lantest.Client, fromL, toL lantest.Lease) *probe {
	p := &probe{tl: tl, from: from, to: to, fromL: fromL, toL: toL, toMAC: to.MAC, tag: []byte(tag),
		stop: make(chan struct{}), done: make(chan struct{})}
	go p.run()
	return p
}

func (p *probe) run() {
	defer close(p.done)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	var seq uint32
	for {
		select {
		case <-p.stop:
			return
		case <-tick.C:
		}
		payload := binary.BigEndian.AppendUint32(append([]byte(nil), p.tag...), seq)
		seq++
		p.from.Send(lantest.UDPFrame(p.from.MAC, p.toMAC, p.fromL.IP, p.toL.IP, 4000, 4001, payload))
		p.from.Send(lantest.UDPFrame(p.from.MAC, hostMAC, p.fromL.IP, gateway, 4000, 4002, payload))
		p.sent.Add(1)
	drain:
		for {
			select {
			case f := <-p.to.Other:
				if bytes.Contains(f, p.tag) {
					p.got.Add(1)
				}
			case f := <-p.tl.in:
				if bytes.Contains(f, p.tag) {
					p.hostGot.Add(1)
				}
			default:
				break drain
			}
		}
	}
}

// finish stops the probe, waits a moment for frames in flight, and
// returns what was sent and what reached the other guest and the host.
func (p *probe) finish() (sent, got, host uint64) {
	close(p.stop)
	<-p.done
	deadline := time.After(500 * time.Millisecond)
	for p.got.Load() < p.sent.Load() || p.hostGot.Load() < p.sent.Load() {
		select {
		case f := <-p.to.Other:
			if bytes.Contains(f, p.tag) {
				p.got.Add(1)
			}
		case f := <-p.tl.in:
			if bytes.Contains(f, p.tag) {
				p.hostGot.Add(1)
			}
		case <-deadline:
			return p.sent.Load(), p.got.Load(), p.hostGot.Load()
		}
	}
	return p.sent.Load(), p.got.Load(), p.hostGot.Load()
}

// check stops the probe and fails t unless most of the probe's frames arrived: the other
// guest and the host must see traffic, and a loss of half or more means
// the hostile neighbour starved the good ones.
func (p *probe) check(t *testing.T, phase string) {
	t.Helper()
	sent, got, host := p.finish()
	t.Logf("%s: good guest sent %d frames; %d reached the other guest, %d the host", phase, sent, got, host)
	if sent == 0 || got == 0 || host == 0 || got*2 < sent || host*2 < sent {
		t.Errorf("%s: good traffic did not flow: sent %d, the other guest got %d, the host %d", phase, sent, got, host)
	}
}

// TestHostileSocketInput: a VM that writes junk to its socket (random
// bytes, runts, truncated headers, datagrams past the MTU and past 64
// KiB; on a stream socket impossible length prefixes and frames cut
// short) costs only itself. The LAN stays up, the junk is dropped and
// counted on the offending port, and two good VMs on the same network,
// one on each socket kind, keep passing traffic to each other and to the
// host, and renew their leases, before, during and after. A stream
// connection that sent a malformed length is closed (the stream cannot
// be trusted after it) and the port takes the next connection: the VM's
// socket survives its own garbage.
func TestHostileSocketInput(t *testing.T) {
	for _, mtu := range []int{1500, frameio.MaxMTU} {
		t.Run(fmt.Sprintf("mtu%d", mtu), func(t *testing.T) { testHostileSocketInput(t, mtu) })
	}
}

func testHostileSocketInput(t *testing.T, mtu int) {
	cfg := config(t, t.TempDir())
	cfg.MTU = mtu
	tl := start(t, cfg)
	a, _ := tl.guest(t, lan.VM{ID: "id-a", Name: "good-dgram", DynamicMAC: mac(1)})
	bEp, err := tl.Attach(lan.AttachRequest{VM: lan.VM{ID: "id-b", Name: "good-stream", DynamicMAC: mac(2)}, RunDir: frameiotest.TempDir(t), Kinds: []frameio.Kind{frameio.KindStream}})
	if err != nil {
		t.Fatal(err)
	}
	b := lantest.NewClient(t, lantest.Open(t, lantest.Plug{Kind: bEp.Kind, PluginPath: bEp.PluginPath, MAC: bEp.MAC, MTU: bEp.MTU}), bEp.MAC)
	la, err := a.DORA(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := b.DORA(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}

	hMAC := mac(3)
	hEp, err := tl.Attach(lan.AttachRequest{VM: lan.VM{ID: "id-h", Name: "hostile-dgram", DynamicMAC: hMAC}, RunDir: frameiotest.TempDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	sEp, err := tl.Attach(lan.AttachRequest{VM: lan.VM{ID: "id-s", Name: "hostile-stream", DynamicMAC: mac(4)}, RunDir: frameiotest.TempDir(t), Kinds: []frameio.Kind{frameio.KindStream}})
	if err != nil {
		t.Fatal(err)
	}

	p := startProbe(tl, "before", a, b, la, lb)
	time.Sleep(200 * time.Millisecond) // a window of traffic to measure, not synchronisation
	p.check(t, "before")

	// During: the hostile VMs send their junk while the probe runs and
	// the good VMs renew.
	p = startProbe(tl, "during", a, b, la, lb)
	h := openRawDgram(t, hEp)
	frameSize := frameio.FrameSize(mtu)
	rng := rand.New(rand.NewPCG(1, uint64(mtu)))
	junk := func(n int) []byte {
		buf := make([]byte, n)
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		return buf
	}
	var linkDrops, handedUp uint64
	send := func(buf []byte) {
		h.send(t, buf)
		if len(buf) < frameio.MinFrameLen || len(buf) > frameSize {
			linkDrops++
		} else {
			handedUp++
		}
	}
	// Truncated Ethernet headers and runts, every length below a header.
	for n := 0; n < frameio.MinFrameLen; n++ {
		send(junk(n))
	}
	// Oversize: one byte past what the port takes, a jumbo frame, the
	// largest IP datagram, and past 64 KiB.
	for _, n := range []int{frameSize + 1, 9018, 65535, 65536 + 14, 100_000} {
		if n > frameSize {
			send(junk(n))
		}
	}
	// Random bytes of random length, half of them from the port's own
	// MAC so they get past the MAC check into the deeper decoders (IPv4,
	// ARP, IPv6, DHCP); and random frames with known ethertypes.
	for i := range 3000 {
		f := junk(rng.IntN(frameSize + 64))
		if i%2 == 0 && len(f) >= 12 {
			copy(f[6:12], hMAC)
		}
		if i%3 == 0 && len(f) >= 14 {
			etypes := []uint16{0x0800, 0x0806, 0x86dd, 0x8100}
			binary.BigEndian.PutUint16(f[12:], etypes[rng.IntN(len(etypes))])
		}
		send(f)
	}

	// The stream VM: every malformed start closes that connection;
	// each is followed by a fresh connect, as QEMU reconnects.
	streamCases := []struct {
		name string
		data []byte
	}{
		{"length 0xFFFFFFFF", []byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3}},
		{"length 0", []byte{0, 0, 0, 0, 1, 2, 3}},
		{"runt length 13", append([]byte{0, 0, 0, 13}, junk(13)...)},
		{"length past the MTU", binary.BigEndian.AppendUint32(nil, uint32(frameSize+1))},
		{"a good frame then 0xFFFFFFFF", append(frameio.AppendStreamFrame(nil, lantest.UDPFrame(mac(4), hostMAC, netip.MustParseAddr("10.64.0.99"), gateway, 1, 2, []byte("x"))), 0xff, 0xff, 0xff, 0xff)},
	}
	var streamDrops uint64
	for _, c := range streamCases {
		conn, err := net.Dial("unix", sEp.PluginPath)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if _, err := conn.Write(c.data); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, conn); err != nil {
			t.Errorf("%s: the plugin did not close the connection: %v", c.name, err)
		}
		conn.Close()
		streamDrops++
	}
	// Cut short: a header only, half a header, half a frame; then the
	// peer hangs up. Nothing is delivered, one frame counted lost each.
	for _, data := range [][]byte{
		{0, 0},
		binary.BigEndian.AppendUint32(nil, 100),
		append(binary.BigEndian.AppendUint32(nil, 100), junk(50)...),
	} {
		conn, err := net.Dial("unix", sEp.PluginPath)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write(data)
		conn.Close()
		streamDrops++
		// The next connection would replace this one, maybe before
		// its last bytes were read: wait until they were.
		if got := tl.waitLinkDrops(t, "id-s", streamDrops); got != streamDrops {
			t.Errorf("a stream connection cut after %d bytes: %d frames counted lost in all; want %d", len(data), got, streamDrops)
		}
	}

	// The good VMs renew while the junk is processed.
	if l, err := a.Renew(la.IP, 5*time.Second); err != nil || l.IP != la.IP {
		t.Errorf("the good dgram VM's renewal during the attack: %v %v; want %v", l.IP, err, la.IP)
	}
	if l, err := b.Renew(lb.IP, 5*time.Second); err != nil || l.IP != lb.IP {
		t.Errorf("the good stream VM's renewal during the attack: %v %v; want %v", l.IP, err, lb.IP)
	}

	// Every datagram is accounted for: dropped at the socket, or handed
	// to the switch (which forwards it or drops it by its rules).
	deadline := time.Now().Add(10 * time.Second)
	var st lan.Status
	for {
		st, _ = tl.Status("id-h")
		if st.Port.Drops[vswitch.DropLink] >= linkDrops && st.Port.RxFrames >= handedUp || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st.Port.Drops[vswitch.DropLink] != linkDrops || st.Port.RxFrames != handedUp {
		t.Errorf("hostile dgram VM: %d dropped at the socket, %d handed to the switch; want %d and %d (drops %v)",
			st.Port.Drops[vswitch.DropLink], st.Port.RxFrames, linkDrops, handedUp, st.Port.Drops)
	}
	var switchDrops uint64
	for k, n := range st.Port.Drops {
		if k != vswitch.DropLink {
			switchDrops += n
		}
	}
	t.Logf("hostile dgram VM sent %d datagrams: %d dropped at the socket (runts, oversize), %d handed to the switch, of which %d dropped by its rules: %v",
		linkDrops+handedUp, linkDrops, handedUp, switchDrops, st.Port.Drops)
	if switchDrops == 0 {
		t.Error("the switch dropped none of the junk: anti-spoofing did not see it")
	}
	if got := tl.waitLinkDrops(t, "id-s", streamDrops); got != streamDrops {
		t.Errorf("hostile stream VM: %d frames counted lost; want %d (one per malformed or cut connection)", got, streamDrops)
	}
	p.check(t, "during")

	// After: the hostile stream VM's socket still takes a well-behaved
	// connection, which gets a lease, and the good VMs carry on.
	s := lantest.NewClient(t, lantest.Open(t, lantest.Plug{Kind: frameio.KindStream, PluginPath: sEp.PluginPath, MAC: sEp.MAC, MTU: sEp.MTU}), sEp.MAC)
	if _, err := s.DORA(5 * time.Second); err != nil {
		t.Errorf("the stream VM, well-behaved again, gets no lease: %v", err)
	}
	p = startProbe(tl, "after", a, b, la, lb)
	time.Sleep(200 * time.Millisecond)
	p.check(t, "after")
	if l, err := a.Renew(la.IP, 5*time.Second); err != nil || l.IP != la.IP {
		t.Errorf("the good VM's renewal after the attack: %v %v; want %v", l.IP, err, la.IP)
	}
	if !tl.Attached("id-h") || !tl.Attached("id-s") {
		t.Error("a hostile VM's port was removed: its junk must cost frames, not the port")
	}
}

// waitLinkDrops polls VM id's count of frames dropped at its socket until
// it reaches want (or 5 s pass) and returns it.
func (tl *testLAN) waitLinkDrops(t *testing.T, id string, want uint64) uint64 {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, _ := tl.Status(id)
		if got := st.Port.Drops[vswitch.DropLink]; got >= want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}
