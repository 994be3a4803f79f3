package dhcpserver

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/insomniacslk/dhcp/dhcpv4"
	bolt "go.etcd.io/bbolt"
)

// decoded is a reply frame taken apart by gopacket, checksums verified.
type decoded struct {
	eth  *layers.Ethernet
	ip   *layers.IPv4
	udp  *layers.UDP
	dhcp *dhcpv4.DHCPv4
}

func decodeReply(t *testing.T, frame []byte) decoded {
	t.Helper()
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	if el := p.ErrorLayer(); el != nil {
		t.Fatalf("gopacket cannot decode the reply: %v", el.Error())
	}
	var d decoded
	var ok bool
	if d.eth, ok = p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet); !ok {
		t.Fatal("no Ethernet layer")
	}
	if d.ip, ok = p.Layer(layers.LayerTypeIPv4).(*layers.IPv4); !ok {
		t.Fatal("no IPv4 layer")
	}
	if d.udp, ok = p.Layer(layers.LayerTypeUDP).(*layers.UDP); !ok {
		t.Fatal("no UDP layer")
	}
	// gopacket's own DHCP decoder must accept it too.
	if p.Layer(layers.LayerTypeDHCPv4) == nil {
		t.Fatal("gopacket sees no DHCPv4 layer")
	}
	// Recompute both checksums with gopacket and compare.
	ip2, udp2 := *d.ip, *d.udp
	if err := udp2.SetNetworkLayerForChecksum(&ip2); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true},
		&ip2, &udp2, gopacket.Payload(d.udp.Payload)); err != nil {
		t.Fatal(err)
	}
	re := gopacket.NewPacket(buf.Bytes(), layers.LayerTypeIPv4, gopacket.Default)
	if got, want := d.ip.Checksum, re.Layer(layers.LayerTypeIPv4).(*layers.IPv4).Checksum; got != want {
		t.Fatalf("IP checksum %#04x, gopacket computes %#04x", got, want)
	}
	if got, want := d.udp.Checksum, re.Layer(layers.LayerTypeUDP).(*layers.UDP).Checksum; got != want {
		t.Fatalf("UDP checksum %#04x, gopacket computes %#04x", got, want)
	}
	if d.ip.TTL == 0 || d.ip.Flags&layers.IPv4MoreFragments != 0 || int(d.ip.Length) != len(frame)-14 {
		t.Fatalf("IP header: %+v", d.ip)
	}
	m, err := dhcpv4.FromBytes(d.udp.Payload)
	if err != nil {
		t.Fatal(err)
	}
	d.dhcp = m
	return d
}

func (e *env) frame(id string, f []byte) decoded {
	e.t.Helper()
	reply, handled, err := e.s.HandleFrameSync(context.Background(), id, f)
	if err != nil || !handled || reply == nil {
		e.t.Fatalf("HandleFrameSync: reply %d bytes, handled %v, %v", len(reply), handled, err)
	}
	return decodeReply(e.t.(*testing.T), reply)
}

func TestFrameRoundTrip(t *testing.T) {
	e := newEnv(t, nil)
	hw := mac(1)
	srv := net.IP{192, 168, 64, 1}

	// DISCOVER without the broadcast flag: OFFER unicast to yiaddr/chaddr.
	disc := discover(t, hw)
	offer := e.frame("vm-1", clientFrame(t, disc, nil, nil))
	if offer.dhcp.MessageType() != dhcpv4.MessageTypeOffer || offer.dhcp.TransactionID != disc.TransactionID {
		t.Fatalf("reply %s xid %v", offer.dhcp.MessageType(), offer.dhcp.TransactionID)
	}
	yi := offer.dhcp.YourIPAddr
	check := func(d decoded, dstMAC net.HardwareAddr, dstIP net.IP, dstPort layers.UDPPort) {
		t.Helper()
		if !bytes.Equal(d.eth.DstMAC, dstMAC) || !bytes.Equal(d.eth.SrcMAC, serverMAC) {
			t.Errorf("%s: ethernet %v -> %v, want %v -> %v", d.dhcp.MessageType(), d.eth.SrcMAC, d.eth.DstMAC, serverMAC, dstMAC)
		}
		if !d.ip.DstIP.Equal(dstIP) || !d.ip.SrcIP.Equal(srv) {
			t.Errorf("%s: IP %v -> %v, want %v -> %v", d.dhcp.MessageType(), d.ip.SrcIP, d.ip.DstIP, srv, dstIP)
		}
		if d.udp.SrcPort != 67 || d.udp.DstPort != dstPort {
			t.Errorf("%s: UDP %d -> %d", d.dhcp.MessageType(), d.udp.SrcPort, d.udp.DstPort)
		}
	}
	check(offer, hw, yi, 68)

	// Broadcast flag set: broadcast reply.
	req := requestFrom(t, offer.dhcp, dhcpv4.WithBroadcast(true))
	ack := e.frame("vm-1", clientFrame(t, req, nil, nil))
	if ack.dhcp.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("got %s", ack.dhcp.MessageType())
	}
	check(ack, layers.EthernetBroadcast, net.IPv4bcast, 68)

	// Renew, unicast from the client's address to the server: reply to ciaddr.
	renew, _ := dhcpv4.NewRenewFromAck(ack.dhcp)
	got := e.frame("vm-1", clientFrame(t, renew, yi, srv))
	if got.dhcp.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("renew got %s", got.dhcp.MessageType())
	}
	check(got, hw, yi, 68)

	// NAK: always broadcast.
	bad, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(2)), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(yi)))
	nak := e.frame("vm-2", clientFrame(t, bad, nil, nil))
	if nak.dhcp.MessageType() != dhcpv4.MessageTypeNak {
		t.Fatalf("got %s", nak.dhcp.MessageType())
	}
	check(nak, layers.EthernetBroadcast, net.IPv4bcast, 68)

	// Through a relay: to giaddr, port 67, at the relay's MAC.
	relayed := discover(t, mac(3), dhcpv4.WithGatewayIP(net.IP{192, 168, 64, 250}))
	rf := clientFrame(t, relayed, net.IP{192, 168, 64, 250}, srv)
	relayMAC := net.HardwareAddr{0x02, 0, 0, 0, 0, 0xfa}
	copy(rf[6:12], relayMAC)
	check(e.frame("vm-3", rf), relayMAC, net.IP{192, 168, 64, 250}, 67)

	// RELEASE: handled, no reply.
	rel, _ := dhcpv4.NewReleaseFromACK(ack.dhcp)
	if r, handled, err := e.s.HandleFrameSync(context.Background(), "vm-1", clientFrame(t, rel, yi, srv)); r != nil || !handled || err != nil {
		t.Fatalf("RELEASE: %v %v %v", r, handled, err)
	}
}

func TestFrameFilter(t *testing.T) {
	e := newEnv(t, nil)
	valid := clientFrame(t, discover(t, mac(1)), nil, nil)
	mutate := func(f func([]byte) []byte) []byte { return f(append([]byte(nil), valid...)) }
	arp := mutate(func(b []byte) []byte { b[12], b[13] = 0x08, 0x06; return b })
	vlan := mutate(func(b []byte) []byte { b[12], b[13] = 0x81, 0x00; return b })
	tcp := mutate(func(b []byte) []byte { b[14+9] = 6; return b })
	port := mutate(func(b []byte) []byte { b[14+20+3] = 53; return b })
	frag := mutate(func(b []byte) []byte { b[14+6] = 0x20; return b })
	other := mutate(func(b []byte) []byte { copy(b[14+16:], []byte{192, 168, 64, 9}); return b })
	short := valid[:40]
	for name, f := range map[string][]byte{"arp": arp, "vlan": vlan, "tcp": tcp, "port": port, "frag": frag, "other dst": other, "short": short, "empty": nil} {
		if e.s.IsDHCP(f) {
			t.Errorf("%s frame taken as DHCP", name)
		}
		if e.s.HandleFrame("vm-1", f, func([]byte) { t.Error("reply to", name) }) {
			t.Errorf("HandleFrame took the %s frame", name)
		}
	}
	if !e.s.IsDHCP(valid) {
		t.Fatal("valid DISCOVER not recognised")
	}
	allocs := testing.AllocsPerRun(100, func() { e.s.HandleFrame("vm-1", tcp, nil) })
	if allocs != 0 {
		t.Fatalf("HandleFrame allocates %v times per non-DHCP frame", allocs)
	}
}

func TestHandleFrameAsync(t *testing.T) {
	e := newEnv(t, nil)
	replies := make(chan []byte, 4)
	send := func(f []byte) { replies <- append([]byte(nil), f...) }
	if !e.s.HandleFrame("vm-1", clientFrame(t, discover(t, mac(1)), nil, nil), send) {
		t.Fatal("DISCOVER not taken")
	}
	offer := decodeReply(t, recv(t, replies))
	if !e.s.HandleFrame("vm-1", clientFrame(t, requestFrom(t, offer.dhcp), nil, nil), send) {
		t.Fatal("REQUEST not taken")
	}
	ack := decodeReply(t, recv(t, replies))
	if ack.dhcp.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("got %s", ack.dhcp.MessageType())
	}
	// The ACK left after the commit: the lease is on disk now.
	e.s.Close()
	d, err := e.st.load()
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := d.leases["vm-1"]; !ok || r.state != StateBound || u32Addr(r.ip) != addr(ack.dhcp.YourIPAddr) {
		t.Fatalf("ACK sent but the lease on disk is %+v", r)
	}
	if e.s.HandleFrame("vm-1", clientFrame(t, discover(t, mac(1)), nil, nil), send) && e.s.Stats().Dropped != 1 {
		t.Fatal("frame after Close not dropped")
	}
}

func recv(t *testing.T, c chan []byte) []byte {
	t.Helper()
	select {
	case f := <-c:
		return f
	case <-time.After(10 * time.Second):
		t.Fatal("no reply")
		return nil
	}
}

// A port that floods DISCOVERs fills its own share of the queue and loses
// the rest; a quiet port still gets its answer.
func TestFloodDrops(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Workers, c.QueueLen = 1, 16 }) // a port may queue 2
	block := make(chan struct{})
	started := make(chan struct{}, 1)
	slow := func([]byte) {
		select {
		case started <- struct{}{}:
		default:
		}
		<-block
	}
	flood := clientFrame(t, discover(t, mac(1)), nil, nil)
	e.s.HandleFrame("flooder", flood, slow)
	<-started // the only worker is stuck in the flooder's send
	for range 1000 {
		e.s.HandleFrame("flooder", flood, slow)
	}
	if d := e.s.Stats().Dropped; d != 998 {
		t.Fatalf("dropped %d of the flood, want 998", d)
	}
	quiet := make(chan []byte, 1)
	if !e.s.HandleFrame("quiet", clientFrame(t, discover(t, mac(2)), nil, nil), func(f []byte) { quiet <- append([]byte(nil), f...) }) {
		t.Fatal("quiet port's DISCOVER not taken")
	}
	close(block)
	if m := decodeReply(t, recv(t, quiet)); m.dhcp.MessageType() != dhcpv4.MessageTypeOffer {
		t.Fatalf("quiet port got %s", m.dhcp.MessageType())
	}
}

func TestStoreOpen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "leases.db")
	st, err := OpenStore(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("lease file mode %v, %v; want 0600", fi.Mode(), err)
	}

	// A second opener fails fast instead of hanging.
	start := time.Now()
	_, err = OpenStore(path)
	if err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second OpenStore: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("second OpenStore took %v", d)
	}

	// One store, one server.
	cfg := testConfig(newClock())
	s, err := New(cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(cfg, st); err == nil {
		t.Fatal("two servers on one store")
	}
	s.Close()

	// A newer schema is refused.
	err = st.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchemaVersion, []byte{0, 0, 0, 2})
	})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	if _, err := OpenStore(path); err == nil || !strings.Contains(err.Error(), "schema version 2") {
		t.Fatalf("newer schema: %v", err)
	}
}

func TestCorruptRecordSkipped(t *testing.T) {
	e := newEnv(t, nil)
	e.dora("vm-1", mac(1))
	e.stop()
	st, err := OpenStore(e.path)
	if err != nil {
		t.Fatal(err)
	}
	err = st.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketLeases).Put([]byte("vm-bad"), []byte{9, 9})
	})
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	e.start()
	if _, ok := e.s.Lease("vm-1"); !ok {
		t.Fatal("good lease lost next to a corrupt one")
	}
	if n := e.s.Stats().CorruptRecords; n != 1 {
		t.Fatalf("CorruptRecords = %d", n)
	}
}

func TestJournalCompaction(t *testing.T) {
	e := newEnv(t, nil)
	want := map[string]net.IP{}
	for i := range 10 {
		id := fmt.Sprintf("vm-%d", i)
		want[id] = e.dora(id, mac(i)).YourIPAddr
	}
	if err := e.s.Release("vm-3"); err != nil {
		t.Fatal(err)
	}
	delete(want, "vm-3")
	check := func(when string) {
		t.Helper()
		d, err := e.st.load()
		if err != nil {
			t.Fatal(err)
		}
		if len(d.leases) != len(want) {
			t.Fatalf("%s: %d leases on disk, want %d", when, len(d.leases), len(want))
		}
		for id, ip := range want {
			if r := d.leases[id]; u32Addr(r.ip) != addr(ip) {
				t.Fatalf("%s: %s at %v on disk, want %v", when, id, u32Addr(r.ip), ip)
			}
		}
	}
	check("journal only")
	var journal int
	e.st.db.View(func(tx *bolt.Tx) error { journal = tx.Bucket(bucketJournal).Stats().KeyN; return nil })
	if journal == 0 {
		t.Fatal("lease writes bypassed the journal")
	}

	// A long journal is folded into leases after a commit.
	e.st.journalLen.Store(compactAt)
	e.dora("vm-3", mac(3))
	want["vm-3"] = net.IP{192, 168, 64, 12} // fresh addresses come before released ones
	e.st.bg.Wait()
	e.st.db.View(func(tx *bolt.Tx) error { journal = tx.Bucket(bucketJournal).Stats().KeyN; return nil })
	if journal != 0 || e.st.journalLen.Load() != 0 {
		t.Fatalf("after compaction the journal holds %d (counted %d)", journal, e.st.journalLen.Load())
	}
	check("compacted")
	e.restart()
	check("restarted")
}

// The frame path encodes replies itself; it must match what dhcpv4 makes
// of the reply Handle returns.
func TestAppendReplyMatchesLibrary(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Domain = strings.Repeat("d", 255) })
	long := make([]byte, 300) // a client id longer than one option (RFC 3396)
	for i := range long {
		long[i] = byte(i)
	}
	reqs := []*dhcpv4.DHCPv4{
		discover(t, mac(1)),
		discover(t, mac(1), dhcpv4.WithBroadcast(true), dhcpv4.WithOption(dhcpv4.OptClientIdentifier(long))),
		discover(t, mac(1), dhcpv4.WithRelay(net.IP{192, 168, 64, 250}),
			dhcpv4.WithOption(dhcpv4.OptRelayAgentInfo(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(1), []byte("port7"))))),
		discover(t, net.HardwareAddr{1, 2, 3, 4, 5, 6, 7, 8}),
	}
	for _, req := range reqs {
		for _, d := range []decision{
			{kind: dhcpv4.MessageTypeOffer, yiaddr: 0xc0a84005, hostname: "h", lease: true},
			{kind: dhcpv4.MessageTypeAck, yiaddr: 0xc0a84005, lease: true},
			{kind: dhcpv4.MessageTypeAck},
			{kind: dhcpv4.MessageTypeNak, message: "no"},
		} {
			want := e.s.buildReply(req, d).ToBytes()
			got := e.s.appendReply(nil, req, d)
			if !bytes.Equal(got, want) {
				t.Fatalf("%s for %s:\n got %x\nwant %x", d.kind, req.MessageType(), got, want)
			}
		}
	}
}
