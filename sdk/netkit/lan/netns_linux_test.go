package lan_test

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"github.com/anka-net/anka/sdk/netkit/hostnet"
	"github.com/anka-net/anka/sdk/netkit/lan"
	"github.com/anka-net/anka/sdk/netkit/lan/lantest"
)

// hostSide is a namespace playing the host: a TAP holding the gateway
// address, joined to the LAN as its host link, as hostnet sets it up.
func hostSide(t *testing.T, cfg *lan.Config) *frameiotest.Netns {
	ns := frameiotest.NewNetns(t)
	var tap *frameio.TAPPort
	if err := ns.Run(func() (err error) {
		tap, err = frameio.OpenTAP("lan0", frameio.TAPOptions{MTU: cfg.MTU, Up: true, Logger: frameiotest.Quiet})
		if err != nil {
			return err
		}
		ifc, err := net.InterfaceByName("lan0")
		if err == nil {
			cfg.GatewayMAC = ifc.HardwareAddr
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ns.IP(t, "addr", "add", netip.PrefixFrom(cfg.Gateway, cfg.Prefix.Bits()).String(), "dev", "lan0")
	cfg.HostLink = tap
	return ns
}

// TestGuestsBehindTheHost: real guests (namespaces behind TAPs relayed to
// their sockets) get leases by udhcpc with the LAN's MTU, the host reaches
// them through its TAP and they reach the host and each other. Two of them
// are clones sharing one internal MAC.
func TestGuestsBehindTheHost(t *testing.T) {
	lantest.Skip(t)
	cfg := config(t, t.TempDir())
	cfg.MTU = 4000 // the LAN's MTU reaches the guests by DHCP
	host := hostSide(t, &cfg)
	l, err := lan.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	internal := net.HardwareAddr{0x52, 0x54, 0, 0xab, 0xcd, 0xef}
	vms := []lan.VM{
		{ID: "id-plain", Name: "plain", DynamicMAC: mac(1)},
		{ID: "id-clone1", Name: "clone1", DynamicMAC: mac(2), InternalMAC: internal},
		{ID: "id-clone2", Name: "clone2", DynamicMAC: mac(3), InternalMAC: internal},
		{ID: "id-fixed", Name: "fixed", DynamicMAC: mac(4), StaticIP: netip.MustParseAddr("10.64.0.77")},
	}
	guests := make([]*lantest.Guest, len(vms))
	ips := map[netip.Addr]string{}
	for i, v := range vms {
		ep, err := l.Attach(lan.AttachRequest{VM: v, RunDir: frameiotest.TempDir(t), MTU: 9000})
		if err != nil {
			t.Fatal(err)
		}
		g := lantest.NewGuest(t, lantest.Plug{Kind: ep.Kind, PluginPath: ep.PluginPath, VMPath: ep.VMPath, MAC: ep.MAC, MTU: ep.MTU})
		le := g.DHCP(t)
		if le.MTU != 4000 || le.Router != cfg.Gateway || le.LeaseTime != time.Hour {
			t.Errorf("%s: lease %+v; want MTU 4000, router %v, 1h", v.Name, le, cfg.Gateway)
		}
		if v.StaticIP.IsValid() && le.IP != v.StaticIP {
			t.Errorf("%s got %v; want its fixed address %v", v.Name, le.IP, v.StaticIP)
		}
		if other, dup := ips[le.IP]; dup {
			t.Fatalf("%s and %s both got %v", other, v.Name, le.IP)
		}
		ips[le.IP] = v.Name
		if mtu, _ := g.Run("cat", "/sys/class/net/eth0/mtu"); mtu != strconv.Itoa(4000)+"\n" {
			t.Errorf("%s: eth0 MTU %q after DHCP", v.Name, mtu)
		}
		if st, _ := l.Status(v.ID); st.IP != le.IP {
			t.Errorf("%s: Status IP %v; the guest got %v", v.Name, st.IP, le.IP)
		}
		guests[i] = g
	}
	for ip, name := range ips {
		if !lantest.Ping(5*time.Second, "ip", "netns", "exec", host.Name, "busybox", "ping", "-c", "1", "-W", "1", ip.String()) {
			t.Errorf("the host cannot ping %s at %v", name, ip)
		}
	}
	for i, g := range guests {
		if !g.Reaches(cfg.Gateway, 5*time.Second) {
			t.Errorf("%s cannot ping the gateway", vms[i].Name)
		}
	}
	clone2, _ := l.Status("id-clone2")
	if !guests[1].Reaches(clone2.IP, 5*time.Second) {
		t.Error("clone1 cannot ping clone2")
	}
	// A big datagram crosses in one frame at the LAN's MTU.
	if out, err := guests[0].Run("busybox", "ping", "-c", "1", "-W", "2", "-s", "3900", cfg.Gateway.String()); err != nil {
		t.Errorf("ping with 3900 bytes: %v\n%s", err, out)
	}

	// Anti-spoofing: a guest that takes another address is cut off.
	g := guests[0]
	g.NS.IP(t, "addr", "flush", "dev", "eth0")
	g.NS.IP(t, "addr", "add", "10.64.0.99/24", "dev", "eth0")
	if g.Reaches(cfg.Gateway, 2*time.Second) {
		t.Error("a guest with a forged address still reaches the gateway")
	}
}

// TestFastPathGuests: a LAN over hostnet in bridge mode, in a namespace
// playing the host. A VM offered a TAP gets one on the bridge and a real
// guest behind it (relayed as QEMU relays it) gets its lease from the
// LAN's DHCP server; a socket VM and a VM with an internal MAC stay on the
// switch; all reach each other and the host; Status reports the fast-path
// guest's address; a forged address cuts it off; Detach removes its TAP.
func TestFastPathGuests(t *testing.T) {
	lantest.Skip(t)
	cfg := config(t, t.TempDir())
	host := frameiotest.NewNetns(t)
	host.IP(t, "link", "set", "lo", "up")
	var hn *hostnet.Network
	if err := host.Run(func() (err error) {
		hn, err = hostnet.Setup(hostnet.Config{Name: "lt", Prefix: cfg.Prefix, Gateway: cfg.Gateway, Mode: hostnet.Isolated, Bridge: true, Logger: frameiotest.Quiet})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer hn.Close()
	gw, err := hn.GatewayMAC()
	if err != nil {
		t.Fatal(err)
	}
	cfg.GatewayMAC, cfg.HostLink, cfg.Bridge = gw, hn.Link(), hn
	l, err := lan.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	offered := []frameio.Kind{frameio.KindDgram, frameio.KindTAP}
	vms := []lan.VM{
		{ID: "id-fast", Name: "fast", DynamicMAC: mac(1)},
		{ID: "id-sock", Name: "sock", DynamicMAC: mac(2)},
		{ID: "id-clone", Name: "clone", DynamicMAC: mac(3), InternalMAC: net.HardwareAddr{0x52, 0x54, 0, 1, 2, 3}},
	}
	wantKind := []frameio.Kind{frameio.KindTAP, frameio.KindDgram, frameio.KindDgram}
	kinds := [][]frameio.Kind{offered, {frameio.KindDgram}, offered}
	guests := make([]*lantest.Guest, len(vms))
	ips := make([]netip.Addr, len(vms))
	var fastTAP string
	for i, v := range vms {
		ep, err := l.Attach(lan.AttachRequest{VM: v, Kinds: kinds[i], RunDir: frameiotest.TempDir(t)})
		if err != nil {
			t.Fatal(err)
		}
		if ep.Kind != wantKind[i] {
			t.Fatalf("%s got a %s endpoint; want %s", v.Name, ep.Kind, wantKind[i])
		}
		if ep.Kind == frameio.KindTAP {
			fastTAP = ep.TAP
		}
		guests[i] = lantest.NewGuest(t, lantest.Plug{Kind: ep.Kind, PluginPath: ep.PluginPath, VMPath: ep.VMPath, TAP: ep.TAP, NS: host, MAC: ep.MAC, MTU: ep.MTU})
		ips[i] = guests[i].DHCP(t).IP
		if st, _ := l.Status(v.ID); st.IP != ips[i] || st.Endpoint.Kind != ep.Kind {
			t.Errorf("%s: Status IP %v kind %s; the guest got %v", v.Name, st.IP, st.Endpoint.Kind, ips[i])
		}
	}
	for i, g := range guests {
		for j, ip := range ips {
			if i != j && !g.Reaches(ip, 5*time.Second) {
				t.Errorf("%s cannot ping %s at %v", vms[i].Name, vms[j].Name, ip)
			}
		}
		if !lantest.Ping(5*time.Second, "ip", "netns", "exec", host.Name, "busybox", "ping", "-c", "1", "-W", "1", ips[i].String()) {
			t.Errorf("the host cannot ping %s", vms[i].Name)
		}
	}
	if a, ok := l.Addr("id-fast"); !ok || a != ips[0] {
		t.Errorf("Addr of the fast-path VM: %v %v", a, ok)
	}

	g := guests[0]
	g.NS.IP(t, "addr", "flush", "dev", "eth0")
	g.NS.IP(t, "addr", "add", "10.64.0.99/24", "dev", "eth0")
	if g.Reaches(cfg.Gateway, 2*time.Second) || g.Reaches(ips[1], time.Second) {
		t.Error("a fast-path guest with a forged address still gets through")
	}
	// Its ARP for the gateway, from the forged address, is the first
	// thing dropped.
	if st, _ := l.Status("id-fast"); st.Port.Drops["ARP sender not the port's"]+st.Port.Drops["source IP not the port's"] == 0 {
		t.Errorf("no drops counted for the forged address: %+v", st.Port)
	}

	g.Close()
	l.Detach("id-fast")
	if out := host.IP(t, "link", "show"); strings.Contains(out, fastTAP) {
		t.Errorf("Detach left the TAP %s:\n%s", fastTAP, out)
	}
}
