package lan_test

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"github.com/anka-net/anka/sdk/netkit/lan"
	"github.com/anka-net/anka/sdk/netkit/lan/lantest"
)

var (
	prefix  = netip.MustParsePrefix("10.64.0.0/24")
	gateway = netip.MustParseAddr("10.64.0.1")
	hostMAC = net.HardwareAddr{0x02, 0xee, 0, 0, 0, 1}
)

// testLAN is a LAN whose host link is an in-process pipe: host is the
// host's end, to see what reaches it.
type testLAN struct {
	*lan.LAN
	cfg  lan.Config
	host *frameio.PipePort
	in   chan []byte
}

func config(t *testing.T, dataDir string) lan.Config {
	return lan.Config{
		Name: "t", Prefix: prefix, Gateway: gateway, GatewayMAC: hostMAC,
		RangeStart: netip.MustParseAddr("10.64.0.10"), RangeEnd: netip.MustParseAddr("10.64.0.20"),
		LeaseTime: time.Hour, DNS: []netip.Addr{gateway}, DataDir: dataDir,
		Logger: slog.New(slog.DiscardHandler),
	}
}

func start(t *testing.T, cfg lan.Config) *testLAN {
	t.Helper()
	a, b := frameio.Pipe(cfg.MTU)
	cfg.HostLink = a
	l, err := lan.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tl := &testLAN{LAN: l, cfg: cfg, host: b, in: make(chan []byte, 1024)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		batch := frameio.NewBatch(16, frameio.MaxMTU)
		for {
			n, err := b.ReadBatch(batch)
			for i := range n {
				select {
				case tl.in <- append([]byte(nil), batch[i].Bytes()...):
				default:
				}
			}
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		l.Close()
		b.Close()
		<-done
	})
	return tl
}

func mac(n byte) net.HardwareAddr { return net.HardwareAddr{0x02, 0xa4, 0x6b, 0, 0, n} }

// guest attaches a VM and returns a DHCP client on its socket.
func (tl *testLAN) guest(t *testing.T, v lan.VM) (*lantest.Client, lan.Endpoint) {
	t.Helper()
	ep, err := tl.Attach(lan.AttachRequest{VM: v, RunDir: frameiotest.TempDir(t)})
	if err != nil {
		t.Fatalf("Attach %s: %v", v.Name, err)
	}
	port := lantest.Open(t, lantest.Plug{Kind: ep.Kind, PluginPath: ep.PluginPath, VMPath: ep.VMPath, MAC: ep.MAC, MTU: ep.MTU})
	return lantest.NewClient(t, port, ep.MAC), ep
}

// sees sends f from c until the host gets a frame with payload, or
// within passes.
func (tl *testLAN) sees(c *lantest.Client, f, payload []byte, within time.Duration) bool {
	deadline := time.After(within)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	c.Send(f)
	for {
		select {
		case got := <-tl.in:
			if bytes.Contains(got, payload) {
				return true
			}
		case <-tick.C:
			c.Send(f)
		case <-deadline:
			return false
		}
	}
}

func TestDHCPAndAntiSpoofing(t *testing.T) {
	tl := start(t, config(t, t.TempDir()))
	v := lan.VM{ID: "id-1", Name: "vm1", DynamicMAC: mac(1)}
	c, ep := tl.guest(t, v)
	if ep.Kind != frameio.KindDgram || ep.MTU != 1500 || !bytes.Equal(ep.MAC, mac(1)) || filepath.Base(ep.PluginPath) != "t.sock" {
		t.Errorf("endpoint %+v", ep)
	}

	// Before its lease the VM sends DHCP only.
	early := lantest.UDPFrame(mac(1), hostMAC, netip.MustParseAddr("10.64.0.15"), gateway, 1000, 2000, []byte("early-frame"))
	if tl.sees(c, early, []byte("early-frame"), 300*time.Millisecond) {
		t.Error("a VM without a lease sent from an address of its choice")
	}
	if st, _ := tl.Status(v.ID); st.IP.IsValid() || st.Pinned.IsValid() || !st.Attached {
		t.Errorf("Status before the lease: %+v", st)
	}

	l, err := c.DORA(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !tl.cfg.Prefix.Contains(l.IP) || l.IP.Less(tl.cfg.RangeStart) || tl.cfg.RangeEnd.Less(l.IP) {
		t.Errorf("lease %v outside the range", l.IP)
	}
	if l.Router != gateway || len(l.DNS) != 1 || l.DNS[0] != gateway || l.MTU != 1500 || l.LeaseTime != time.Hour || l.Server != gateway {
		t.Errorf("lease options %+v", l)
	}
	if ones, _ := l.Mask.Size(); ones != 24 {
		t.Errorf("mask %v", l.Mask)
	}
	st, _ := tl.Status(v.ID)
	if st.IP != l.IP || st.LeaseState != "bound" || st.Lease.Expiry.IsZero() {
		t.Errorf("Status after the lease: IP %v state %q expiry %v; want %v bound", st.IP, st.LeaseState, st.Lease.Expiry, l.IP)
	}
	if a, ok := tl.Addr(v.ID); !ok || a != l.IP {
		t.Errorf("Addr %v %v; want %v", a, ok, l.IP)
	}

	good := lantest.UDPFrame(mac(1), hostMAC, l.IP, gateway, 1000, 2000, []byte("leased-frame"))
	if !tl.sees(c, good, []byte("leased-frame"), 5*time.Second) {
		t.Fatal("a frame from the leased address did not reach the host")
	}
	forged := lantest.UDPFrame(mac(1), hostMAC, l.IP.Next(), gateway, 1000, 2000, []byte("forged-ip"))
	if tl.sees(c, forged, []byte("forged-ip"), 300*time.Millisecond) {
		t.Error("a frame from another address reached the host")
	}
	forgedMAC := lantest.UDPFrame(mac(9), hostMAC, l.IP, gateway, 1000, 2000, []byte("forged-mac"))
	if tl.sees(c, forgedMAC, []byte("forged-mac"), 300*time.Millisecond) {
		t.Error("a frame from another MAC reached the host")
	}
	if st, _ := tl.Status(v.ID); st.Port.Drops["source IP not the port's"] == 0 || st.Port.Drops["source MAC not the port's"] == 0 {
		t.Errorf("drops not counted: %v", st.Port.Drops)
	}
}

func TestRestartKeepsLease(t *testing.T) {
	dir := t.TempDir()
	cfg := config(t, dir)
	v := lan.VM{ID: "id-1", Name: "vm1", DynamicMAC: mac(1)}
	tl := start(t, cfg)
	// Another VM first, so the address is not simply the first one.
	other, _ := tl.guest(t, lan.VM{ID: "id-0", Name: "vm0", DynamicMAC: mac(2)})
	if _, err := other.DORA(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	c, _ := tl.guest(t, v)
	first, err := c.DORA(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	tl.Close()

	tl = start(t, cfg)
	st, ok := tl.Status(v.ID)
	if !ok || st.Attached || st.Name != "vm1" || st.Lease.IP != first.IP {
		t.Fatalf("Status of a known VM after the restart: %v %+v", ok, st)
	}
	c, _ = tl.guest(t, v)
	if st, _ := tl.Status(v.ID); st.Pinned != first.IP {
		t.Errorf("attached again, the port is pinned to %v; want its lease %v", st.Pinned, first.IP)
	}
	again, err := c.DORA(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if again.IP != first.IP {
		t.Errorf("after a restart the VM got %v; before %v", again.IP, first.IP)
	}
}

func TestStaticAddress(t *testing.T) {
	cfg := config(t, t.TempDir())
	cfg.RangeStart, cfg.RangeEnd = netip.MustParseAddr("10.64.0.50"), netip.MustParseAddr("10.64.0.51")
	tl := start(t, cfg)
	static := netip.MustParseAddr("10.64.0.50") // inside the range: taken out of it
	s := lan.VM{ID: "id-s", Name: "fixed", DynamicMAC: mac(1), StaticIP: static}
	if err := tl.CheckStatic(s.ID, static); err != nil {
		t.Fatal(err)
	}
	c, _ := tl.guest(t, s)
	if st, _ := tl.Status(s.ID); st.Pinned != static || st.IP.IsValid() {
		t.Errorf("a fixed address is pinned at once and reported once used: %+v", st)
	}
	l, err := c.DORA(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if l.IP != static {
		t.Errorf("the static VM got %v; want %v", l.IP, static)
	}
	d, _ := tl.guest(t, lan.VM{ID: "id-d", Name: "dyn", DynamicMAC: mac(2)})
	if l, err := d.DORA(5 * time.Second); err != nil || l.IP != netip.MustParseAddr("10.64.0.51") {
		t.Errorf("a dynamic VM got %v (%v); want .51, as .50 is reserved", l.IP, err)
	}

	for _, c := range []struct {
		ip   string
		kind lan.Kind
		want string
	}{
		{"10.64.0.50", lan.Conflict, "taken on network t by VM fixed as its fixed address"},
		{"10.64.0.51", lan.Conflict, "taken on network t by VM dyn, leased until"},
		{"10.64.1.5", lan.Invalid, "outside the network's subnet 10.64.0.0/24"},
		{"10.64.0.1", lan.Invalid, "the gateway"},
		{"10.64.0.0", lan.Invalid, "network address"},
		{"10.64.0.255", lan.Invalid, "broadcast address"},
		{"10.64.0.99", 0, ""},
	} {
		err := tl.CheckStatic("id-other", netip.MustParseAddr(c.ip))
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.ip, err)
		case c.want == "":
		case err == nil || lan.KindOf(err) != c.kind || !strings.Contains(err.Error(), c.want):
			t.Errorf("%s: %v (%v); want %v containing %q", c.ip, err, lan.KindOf(err), c.kind, c.want)
		}
	}
	_, err = tl.Attach(lan.AttachRequest{VM: lan.VM{ID: "id-x", Name: "x", DynamicMAC: mac(3), StaticIP: static}, RunDir: frameiotest.TempDir(t)})
	if lan.KindOf(err) != lan.Conflict {
		t.Errorf("Attach of a second VM with the same fixed address: %v", err)
	}
	// Its own address stays acceptable to the VM holding it.
	if err := tl.CheckStatic(s.ID, static); err != nil {
		t.Error(err)
	}
}

func TestClonesShareAnInternalMAC(t *testing.T) {
	tl := start(t, config(t, t.TempDir()))
	internal := net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	var ips []netip.Addr
	for i, id := range []string{"clone-1", "clone-2"} {
		c, ep := tl.guest(t, lan.VM{ID: id, Name: id, DynamicMAC: mac(byte(10 + i)), InternalMAC: internal})
		if !bytes.Equal(ep.MAC, internal) {
			t.Errorf("the NIC of %s gets %v; want the internal MAC", id, ep.MAC)
		}
		l, err := c.DORA(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if le, _ := tl.DHCP().Lease(id); !bytes.Equal(le.MAC, mac(byte(10+i))) {
			t.Errorf("the DHCP server saw %v for %s; want its dynamic MAC", le.MAC, id)
		}
		ips = append(ips, l.IP)
	}
	if ips[0] == ips[1] {
		t.Fatalf("both clones got %v", ips[0])
	}
}

func TestDetachKeepsReleaseForgets(t *testing.T) {
	dir := t.TempDir()
	tl := start(t, config(t, dir))
	v := lan.VM{ID: "id-1", Name: "vm1", DynamicMAC: mac(1)}
	c, ep := tl.guest(t, v)
	l, err := c.DORA(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	tl.Detach(v.ID)
	tl.Detach(v.ID) // twice
	if _, err := os.Lstat(ep.PluginPath); err == nil {
		t.Error("the socket outlived Detach")
	}
	st, ok := tl.Status(v.ID)
	if !ok || st.Attached || st.IP.IsValid() || st.Lease.IP != l.IP || st.Port.RxFrames == 0 {
		t.Errorf("Status after Detach: %v %+v", ok, st)
	}
	if _, ok := tl.Addr(v.ID); ok {
		t.Error("Addr of a detached VM")
	}
	c, _ = tl.guest(t, v)
	if again, err := c.DORA(5 * time.Second); err != nil || again.IP != l.IP {
		t.Errorf("attached again: %v %v; want %v", again.IP, err, l.IP)
	}
	if err := tl.Release(v.ID); err != nil {
		t.Fatal(err)
	}
	if err := tl.Release(v.ID); err != nil {
		t.Fatal(err)
	}
	if _, ok := tl.Status(v.ID); ok {
		t.Error("Status after Release")
	}
	if _, ok := tl.DHCP().Lease(v.ID); ok {
		t.Error("the lease outlived Release")
	}
	b, _ := os.ReadFile(filepath.Join(dir, "t-vms.json"))
	if strings.Contains(string(b), v.ID) {
		t.Errorf("the VM list still names the released VM:\n%s", b)
	}
}

func TestAttach(t *testing.T) {
	tl := start(t, config(t, t.TempDir()))
	tl.guest(t, lan.VM{ID: "id-1", Name: "vm1", DynamicMAC: mac(1)})
	for _, c := range []struct {
		name string
		req  lan.AttachRequest
		kind lan.Kind
		want string
	}{
		{"smaller MTU", lan.AttachRequest{VM: lan.VM{ID: "a", DynamicMAC: mac(2)}, MTU: 1400}, lan.Conflict, "runs with MTU 1500"},
		{"TAP only", lan.AttachRequest{VM: lan.VM{ID: "a", DynamicMAC: mac(2)}, Kinds: []frameio.Kind{frameio.KindTAP}}, lan.Unsupported, "offered tap"},
		{"same dynamic MAC", lan.AttachRequest{VM: lan.VM{ID: "a", DynamicMAC: mac(1)}}, lan.Conflict, "already used on network t by VM vm1"},
		{"no MAC", lan.AttachRequest{VM: lan.VM{ID: "a"}}, lan.Invalid, "not a unicast"},
		{"multicast internal MAC", lan.AttachRequest{VM: lan.VM{ID: "a", DynamicMAC: mac(2), InternalMAC: net.HardwareAddr{1, 0, 0x5e, 0, 0, 1}}}, lan.Invalid, "internal MAC"},
		{"static outside", lan.AttachRequest{VM: lan.VM{ID: "a", DynamicMAC: mac(2), StaticIP: netip.MustParseAddr("10.1.1.1")}}, lan.Invalid, "outside"},
		{"no identity", lan.AttachRequest{VM: lan.VM{DynamicMAC: mac(2)}}, lan.Invalid, "identity"},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.req.RunDir = frameiotest.TempDir(t)
			_, err := tl.Attach(c.req)
			if lan.KindOf(err) != c.kind || err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%v (%v); want %v containing %q", err, lan.KindOf(err), c.kind, c.want)
			}
			if ents, _ := os.ReadDir(c.req.RunDir); len(ents) > 0 {
				t.Errorf("a refused Attach left %s", ents[0].Name())
			}
			if tl.Known("a") {
				t.Error("a refused VM is known")
			}
		})
	}
	// A larger MTU asked for gets the LAN's; a second Attach the same endpoint.
	dir := frameiotest.TempDir(t)
	req := lan.AttachRequest{VM: lan.VM{ID: "b", DynamicMAC: mac(5)}, RunDir: dir, MTU: 9000, Kinds: []frameio.Kind{frameio.KindTAP, frameio.KindStream, frameio.KindDgram}}
	ep, err := tl.Attach(req)
	if err != nil || ep.MTU != 1500 || ep.Kind != frameio.KindStream || ep.VMPath != "" {
		t.Fatalf("%+v %v", ep, err)
	}
	again, err := tl.Attach(req)
	if err != nil || again.PluginPath != ep.PluginPath {
		t.Errorf("Attach again: %+v %v", again, err)
	}
}

func TestStreamEndpoint(t *testing.T) {
	tl := start(t, config(t, t.TempDir()))
	ep, err := tl.Attach(lan.AttachRequest{VM: lan.VM{ID: "s", Name: "s", DynamicMAC: mac(1)}, RunDir: frameiotest.TempDir(t), Kinds: []frameio.Kind{frameio.KindStream}})
	if err != nil {
		t.Fatal(err)
	}
	port := lantest.Open(t, lantest.Plug{Kind: ep.Kind, PluginPath: ep.PluginPath, MAC: ep.MAC})
	if _, err := lantest.NewClient(t, port, ep.MAC).DORA(5 * time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestCapture(t *testing.T) {
	tl := start(t, config(t, t.TempDir()))
	v := lan.VM{ID: "id-1", Name: "vm1", DynamicMAC: mac(1)}
	c, _ := tl.guest(t, v)
	path := filepath.Join(t.TempDir(), "vm1.pcap")
	if err := tl.StartCapture(v.ID, path, 0); err != nil {
		t.Fatal(err)
	}
	if err := tl.StartCapture(v.ID, path+"2", 0); lan.KindOf(err) != lan.Conflict {
		t.Errorf("a second capture: %v", err)
	}
	if st, _ := tl.Status(v.ID); st.Capture != path {
		t.Errorf("Status names capture %q", st.Capture)
	}
	if _, err := c.DORA(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	n, err := tl.StopCapture(v.ID)
	if err != nil || n < 4 {
		t.Errorf("StopCapture: %d frames, %v; want DORA's 4 at least", n, err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() < 24+4*300 {
		t.Errorf("pcap file: %v %v", fi, err)
	}
	if err := tl.StartCapture("nobody", path+"3", 0); lan.KindOf(err) != lan.Conflict {
		t.Errorf("capture of an unknown VM: %v", err)
	}
}

// TestNoHostLink: without a host side, lan answers ARP for the gateway.
func TestNoHostLink(t *testing.T) {
	cfg := config(t, t.TempDir())
	cfg.GatewayMAC = nil
	l, err := lan.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	gwMAC := l.Config().GatewayMAC
	if len(gwMAC) != 6 || gwMAC[0]&2 == 0 {
		t.Fatalf("derived gateway MAC %v", gwMAC)
	}
	ep, err := l.Attach(lan.AttachRequest{VM: lan.VM{ID: "a", DynamicMAC: mac(1)}, RunDir: frameiotest.TempDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	c := lantest.NewClient(t, lantest.Open(t, lantest.Plug{PluginPath: ep.PluginPath, VMPath: ep.VMPath, MAC: ep.MAC}), ep.MAC)
	if _, err := c.DORA(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	req := arpRequest(mac(1), netip.MustParseAddr("10.64.0.10"), gateway)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		c.Send(req)
		select {
		case f := <-c.Other:
			if len(f) >= 42 && f[12] == 8 && f[13] == 6 && f[21] == 2 && bytes.Equal(f[22:28], gwMAC) {
				return
			}
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatal("no ARP reply for the gateway")
}

func arpRequest(src net.HardwareAddr, spa, tpa netip.Addr) []byte {
	f := make([]byte, 42)
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], src)
	f[12], f[13] = 8, 6
	copy(f[14:22], []byte{0, 1, 8, 0, 6, 4, 0, 1})
	copy(f[22:28], src)
	s, tp := spa.As4(), tpa.As4()
	copy(f[28:32], s[:])
	copy(f[38:42], tp[:])
	return f
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		mod  func(*lan.Config)
		want string
	}{
		{"name", func(c *lan.Config) { c.Name = "Bad Name" }, "LAN name"},
		{"IPv6", func(c *lan.Config) { c.Prefix = netip.MustParsePrefix("fd00::/64") }, "not an IPv4 subnet"},
		{"gateway outside", func(c *lan.Config) { c.Gateway = netip.MustParseAddr("10.9.0.1") }, "gateway 10.9.0.1 is not a host address"},
		{"range outside", func(c *lan.Config) { c.RangeEnd = netip.MustParseAddr("10.64.1.3") }, "must lie inside"},
		{"range reversed", func(c *lan.Config) { c.RangeStart = netip.MustParseAddr("10.64.0.30") }, "after its end"},
		{"range holds gateway", func(c *lan.Config) { c.RangeStart = netip.MustParseAddr("10.64.0.1") }, "holds the gateway"},
		{"MTU", func(c *lan.Config) { c.MTU = 70000 }, "MTU 70000 is out of range"},
		{"data dir", func(c *lan.Config) { c.DataDir = "" }, "no data folder"},
		{"host link without MAC", func(c *lan.Config) { c.GatewayMAC = nil; c.HostLink, _ = frameio.Pipe(0) }, "needs GatewayMAC"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := config(t, t.TempDir())
			c.mod(&cfg)
			l, err := lan.New(cfg)
			if err == nil {
				l.Close()
			}
			if lan.KindOf(err) != lan.Invalid || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%v; want invalid containing %q", err, c.want)
			}
		})
	}
}
