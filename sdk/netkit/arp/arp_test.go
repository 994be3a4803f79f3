package arp

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

var (
	gwIP   = netip.MustParseAddr("192.168.64.1")
	gwMAC  = net.HardwareAddr{0x02, 0xa0, 0, 0, 0, 1}
	vipIP  = netip.MustParseAddr("192.168.64.250")
	vipMAC = net.HardwareAddr{0x02, 0xa0, 0, 0, 0, 2}
	vmMAC  = net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	vmIP   = netip.MustParseAddr("192.168.64.7")
)

type req struct {
	ethDst, sha net.HardwareAddr
	spa, tpa    netip.Addr
	op          uint16
	etherType   layers.EthernetType
	tha         net.HardwareAddr
}

func request(sha net.HardwareAddr, spa, tpa netip.Addr) req {
	return req{ethDst: layers.EthernetBroadcast, sha: sha, spa: spa, tpa: tpa, op: layers.ARPRequest, etherType: layers.EthernetTypeARP}
}

func (q req) frame(t testing.TB) []byte {
	t.Helper()
	tha := q.tha
	if tha == nil {
		tha = make(net.HardwareAddr, 6)
	}
	eth := &layers.Ethernet{SrcMAC: q.sha, DstMAC: q.ethDst, EthernetType: q.etherType}
	a := &layers.ARP{
		AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4,
		HwAddressSize: 6, ProtAddressSize: 4, Operation: q.op,
		SourceHwAddress: q.sha, SourceProtAddress: q.spa.AsSlice(),
		DstHwAddress: tha, DstProtAddress: q.tpa.AsSlice(),
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{}, eth, a); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func responder(t testing.TB) *Responder {
	t.Helper()
	var r Responder
	for ip, mac := range map[netip.Addr]net.HardwareAddr{gwIP: gwMAC, vipIP: vipMAC} {
		if err := r.Add(ip, mac); err != nil {
			t.Fatal(err)
		}
	}
	return &r
}

func TestReply(t *testing.T) {
	r := responder(t)
	for _, c := range []struct {
		name     string
		q        req
		mac      net.HardwareAddr
		replyTPA netip.Addr
	}{
		{"gateway", request(vmMAC, vmIP, gwIP), gwMAC, vmIP},
		{"virtual address", request(vmMAC, vmIP, vipIP), vipMAC, vmIP},
		{"unicast refresh", func() req { q := request(vmMAC, vmIP, gwIP); q.ethDst = gwMAC; return q }(), gwMAC, vmIP},
		{"probe", request(vmMAC, netip.IPv4Unspecified(), gwIP), gwMAC, netip.IPv4Unspecified()},
		{"gratuitous claim", request(vmMAC, gwIP, gwIP), gwMAC, gwIP},
	} {
		t.Run(c.name, func(t *testing.T) {
			reply := make([]byte, 64)
			n, ok := r.HandleFrame(c.q.frame(t), reply)
			if !ok || n != ReplyLen {
				t.Fatalf("HandleFrame = %d, %v", n, ok)
			}
			p := gopacket.NewPacket(reply[:n], layers.LayerTypeEthernet, gopacket.Default)
			if el := p.ErrorLayer(); el != nil {
				t.Fatal(el.Error())
			}
			eth := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
			a := p.Layer(layers.LayerTypeARP).(*layers.ARP)
			if !bytes.Equal(eth.DstMAC, vmMAC) || !bytes.Equal(eth.SrcMAC, c.mac) || eth.EthernetType != layers.EthernetTypeARP {
				t.Errorf("ethernet %v -> %v type %v", eth.SrcMAC, eth.DstMAC, eth.EthernetType)
			}
			if a.Operation != layers.ARPReply || a.AddrType != layers.LinkTypeEthernet || a.Protocol != layers.EthernetTypeIPv4 {
				t.Errorf("ARP header %+v", a)
			}
			if !bytes.Equal(a.SourceHwAddress, c.mac) || !bytes.Equal(a.SourceProtAddress, c.q.tpa.AsSlice()) ||
				!bytes.Equal(a.DstHwAddress, vmMAC) || !bytes.Equal(a.DstProtAddress, c.replyTPA.AsSlice()) {
				t.Errorf("ARP %v is-at %v, to %v at %v", net.IP(a.SourceProtAddress), net.HardwareAddr(a.SourceHwAddress),
					net.IP(a.DstProtAddress), net.HardwareAddr(a.DstHwAddress))
			}
		})
	}
}

func TestNoReply(t *testing.T) {
	r := responder(t)
	bcastSender := request(vmMAC, vmIP, gwIP)
	bcastSender.sha = layers.EthernetBroadcast
	notARP := request(vmMAC, vmIP, gwIP)
	notARP.etherType = layers.EthernetTypeIPv4
	isReply := request(vmMAC, vmIP, gwIP)
	isReply.op = layers.ARPReply
	otherDst := request(vmMAC, vmIP, gwIP)
	otherDst.ethDst = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 9}
	ours := request(gwMAC, gwIP, gwIP)
	good := request(vmMAC, vmIP, gwIP).frame(t)
	badHType := append([]byte(nil), good...)
	badHType[15] = 6
	badPLen := append([]byte(nil), good...)
	badPLen[19] = 16
	for name, f := range map[string][]byte{
		"not owned":        request(vmMAC, vmIP, netip.MustParseAddr("192.168.64.9")).frame(t),
		"broadcast sender": bcastSender.frame(t),
		"not ARP":          notARP.frame(t),
		"reply":            isReply.frame(t),
		"to another MAC":   otherDst.frame(t),
		"our own":          ours.frame(t),
		"hardware type":    badHType,
		"address length":   badPLen,
		"short":            good[:41],
		"empty":            nil,
	} {
		reply := make([]byte, 64)
		if n, ok := r.HandleFrame(f, reply); ok || n != 0 {
			t.Errorf("%s: answered %d bytes", name, n)
		}
		if !bytes.Equal(reply, make([]byte, 64)) {
			t.Errorf("%s: reply buffer written", name)
		}
	}
	if _, ok := r.HandleFrame(good, make([]byte, ReplyLen-1)); ok {
		t.Error("wrote into a short buffer")
	}
	var zero Responder
	if _, ok := zero.HandleFrame(good, make([]byte, 64)); ok {
		t.Error("zero Responder answered")
	}
}

func TestReplyInPlace(t *testing.T) {
	r := responder(t)
	f := request(vmMAC, vmIP, gwIP).frame(t)
	want := make([]byte, 64)
	n, _ := r.HandleFrame(f, want)
	if m, ok := r.HandleFrame(f, f); !ok || m != n || !bytes.Equal(f[:m], want[:n]) {
		t.Fatalf("reply written over its own request differs:\n%x\n%x", f[:m], want[:n])
	}
}

func TestAddRemove(t *testing.T) {
	var r Responder
	if err := r.Add(netip.MustParseAddr("fd00::1"), gwMAC); err == nil {
		t.Error("IPv6 accepted")
	}
	if err := r.Add(gwIP, net.HardwareAddr{1, 0, 0, 0, 0, 1}); err == nil {
		t.Error("multicast MAC accepted")
	}
	if err := r.Add(gwIP, net.HardwareAddr{1, 2, 3}); err == nil {
		t.Error("short MAC accepted")
	}
	if err := r.Add(gwIP, gwMAC); err != nil {
		t.Fatal(err)
	}
	if mac, ok := r.Lookup(gwIP); !ok || !bytes.Equal(mac, gwMAC) {
		t.Fatalf("Lookup = %v %v", mac, ok)
	}
	if err := r.Add(gwIP, vipMAC); err != nil {
		t.Fatal(err)
	}
	n, ok := r.HandleFrame(request(vmMAC, vmIP, gwIP).frame(t), make([]byte, 64))
	if !ok || n != ReplyLen {
		t.Fatal("no reply after re-Add")
	}
	if mac, _ := r.Lookup(gwIP); !bytes.Equal(mac, vipMAC) {
		t.Fatalf("re-Add kept %v", mac)
	}
	r.Remove(gwIP)
	if _, ok := r.HandleFrame(request(vmMAC, vmIP, gwIP).frame(t), make([]byte, 64)); ok {
		t.Fatal("answered after Remove")
	}
}

func TestNoAllocations(t *testing.T) {
	r := responder(t)
	hit := request(vmMAC, vmIP, gwIP).frame(t)
	miss := request(vmMAC, vmIP, netip.MustParseAddr("192.168.64.9")).frame(t)
	reply := make([]byte, 64)
	if a := testing.AllocsPerRun(1000, func() {
		r.HandleFrame(hit, reply)
		r.HandleFrame(miss, reply)
	}); a != 0 {
		t.Fatalf("%v allocations per frame", a)
	}
}

func TestConcurrentUpdates(t *testing.T) {
	r := responder(t)
	f := request(vmMAC, vmIP, gwIP).frame(t)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			reply := make([]byte, 64)
			for i := range 2000 {
				if w == 0 {
					ip := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
					r.Add(ip, vipMAC)
					r.Remove(ip)
					continue
				}
				if _, ok := r.HandleFrame(f, reply); !ok {
					t.Error("gateway lost during updates")
					return
				}
			}
		}()
	}
	wg.Wait()
}

func BenchmarkHandleFrame(b *testing.B) {
	r := responder(b)
	f := request(vmMAC, vmIP, gwIP).frame(b)
	reply := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		r.HandleFrame(f, reply)
	}
}

// FuzzARP: no input may panic, write beyond ReplyLen, or produce a reply
// that is not an ARP reply from an owned address.
func FuzzARP(f *testing.F) {
	for _, s := range seeds(f) {
		f.Add(s)
	}
	r := responder(f)
	f.Fuzz(func(t *testing.T, frame []byte) {
		reply := make([]byte, ReplyLen+8)
		n, ok := r.HandleFrame(frame, reply)
		if !ok {
			if n != 0 {
				t.Fatalf("n = %d without a reply", n)
			}
			return
		}
		if n != ReplyLen || !bytes.Equal(reply[ReplyLen:], make([]byte, 8)) {
			t.Fatalf("reply of %d bytes, tail %x", n, reply[ReplyLen:])
		}
		p := gopacket.NewPacket(reply[:n], layers.LayerTypeEthernet, gopacket.Default)
		a, isARP := p.Layer(layers.LayerTypeARP).(*layers.ARP)
		if !isARP || a.Operation != layers.ARPReply {
			t.Fatalf("reply is not an ARP reply: %v", p)
		}
		mac, owned := r.Lookup(netip.AddrFrom4([4]byte(a.SourceProtAddress)))
		if !owned || !bytes.Equal(mac, a.SourceHwAddress) {
			t.Fatalf("reply for %v at %v, which is not owned", net.IP(a.SourceProtAddress), net.HardwareAddr(a.SourceHwAddress))
		}
		// Answering the answer must not loop.
		if _, again := r.HandleFrame(reply[:n], make([]byte, 64)); again {
			t.Fatal("a reply was answered")
		}
	})
}

func seeds(t testing.TB) map[string][]byte {
	probe := request(vmMAC, netip.IPv4Unspecified(), gwIP)
	isReply := request(vmMAC, vmIP, gwIP)
	isReply.op = layers.ARPReply
	return map[string][]byte{
		"request-gateway": request(vmMAC, vmIP, gwIP).frame(t),
		"request-vip":     request(vmMAC, vmIP, vipIP).frame(t),
		"request-other":   request(vmMAC, vmIP, netip.MustParseAddr("192.168.64.9")).frame(t),
		"probe":           probe.frame(t),
		"gratuitous":      request(vmMAC, gwIP, gwIP).frame(t),
		"reply":           isReply.frame(t),
		"truncated":       request(vmMAC, vmIP, gwIP).frame(t)[:30],
	}
}

// TestWriteFuzzSeeds regenerates testdata/fuzz/FuzzARP when
// ARP_WRITE_SEEDS is set; the files are committed.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("ARP_WRITE_SEEDS") == "" {
		t.Skip("set ARP_WRITE_SEEDS=1 to rewrite the seed corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzARP")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, s := range seeds(t) {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(s)))
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
