package dhcpserver

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

func TestDORAOptions(t *testing.T) {
	e := newEnv(t, nil)
	hw := mac(1)
	offer := e.handle("vm-1", discover(t, hw, dhcpv4.WithOption(dhcpv4.OptHostName("guest-one"))))
	wantType(t, offer, dhcpv4.MessageTypeOffer)
	ip := addr(offer.YourIPAddr)
	if ip != netip.MustParseAddr("192.168.64.2") {
		t.Fatalf("first offer is %v, want the start of the range", ip)
	}
	if l, _ := e.s.Lease("vm-1"); l.State != StateOffered {
		t.Fatalf("lease after OFFER is %s, want offered", l.State)
	}
	ack := e.handle("vm-1", requestFrom(t, offer))
	wantType(t, ack, dhcpv4.MessageTypeAck)

	for _, m := range []*dhcpv4.DHCPv4{offer, ack} {
		if m.OpCode != dhcpv4.OpcodeBootReply || m.TransactionID == [4]byte{} || !bytes.Equal(m.ClientHWAddr, hw) {
			t.Errorf("%s header: op %v xid %v chaddr %v", m.MessageType(), m.OpCode, m.TransactionID, m.ClientHWAddr)
		}
		checks := []struct {
			name      string
			got, want any
		}{
			{"server id", m.ServerIdentifier().String(), "192.168.64.1"},
			{"mask", net.IP(m.SubnetMask()).String(), "255.255.255.0"},
			{"router", fmt.Sprint(m.Router()), "[192.168.64.1]"},
			{"dns", fmt.Sprint(m.DNS()), "[192.168.64.1 1.1.1.1]"},
			{"domain", m.DomainName(), "anka.test"},
			{"lease", m.IPAddressLeaseTime(0), time.Hour},
			{"T1", m.IPAddressRenewalTime(0), 30 * time.Minute},
			{"T2", m.IPAddressRebindingTime(0), 52*time.Minute + 30*time.Second},
			{"mtu", fmt.Sprint(m.Options.Get(dhcpv4.OptionInterfaceMTU)), "[5 220]"},
			{"hostname", m.HostName(), "guest-one"},
			{"broadcast", dhcpv4.GetIP(dhcpv4.OptionBroadcastAddress, m.Options).String(), "192.168.64.255"},
		}
		for _, c := range checks {
			if c.got != c.want {
				t.Errorf("%s %s = %v, want %v", m.MessageType(), c.name, c.got, c.want)
			}
		}
	}
	l, ok := e.s.Lease("vm-1")
	if !ok || l.State != StateBound || l.IP != ip || l.Hostname != "guest-one" || !bytes.Equal(l.MAC, hw) {
		t.Fatalf("lease after ACK: %+v", l)
	}
	if want := e.clk.Now().Add(time.Hour); !l.Expiry.Equal(want) {
		t.Fatalf("expiry %v, want %v", l.Expiry, want)
	}

	// The plugin's name for the VM wins over the guest's own.
	if err := e.s.SetHostname("vm-1", "vm-one"); err != nil {
		t.Fatal(err)
	}
	ack = e.handle("vm-1", requestFrom(t, offer))
	if got := ack.HostName(); got != "vm-one" {
		t.Fatalf("hostname %q after SetHostname, want vm-one", got)
	}
}

func TestNoOptionalOptionsWhenUnset(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.Router, c.DNS, c.Domain, c.MTU = netip.Addr{}, nil, "", 0
	})
	ack := e.dora("vm-1", mac(1))
	for _, c := range []dhcpv4.OptionCode{dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer, dhcpv4.OptionDomainName, dhcpv4.OptionInterfaceMTU, dhcpv4.OptionHostName} {
		if ack.Options.Has(c) {
			t.Errorf("ACK carries %v though it is not configured", c)
		}
	}
}

func TestRenewAndRebind(t *testing.T) {
	e := newEnv(t, nil)
	ack := e.dora("vm-1", mac(1))
	ip := addr(ack.YourIPAddr)

	e.clk.Add(31 * time.Minute) // past T1: the client renews by unicast
	renew, err := dhcpv4.NewRenewFromAck(ack)
	if err != nil {
		t.Fatal(err)
	}
	if renew.Options.Has(dhcpv4.OptionServerIdentifier) || renew.Options.Has(dhcpv4.OptionRequestedIPAddress) {
		t.Fatal("library's renew carries server id or requested IP; the test would not test RENEWING")
	}
	got := e.handle("vm-1", renew)
	wantType(t, got, dhcpv4.MessageTypeAck)
	if addr(got.YourIPAddr) != ip || addr(got.ClientIPAddr) != ip {
		t.Fatalf("renew ACK yiaddr %v ciaddr %v, want %v", got.YourIPAddr, got.ClientIPAddr, ip)
	}
	l, _ := e.s.Lease("vm-1")
	if want := e.clk.Now().Add(time.Hour); !l.Expiry.Equal(want) {
		t.Fatalf("renew did not extend the lease: expiry %v, want %v", l.Expiry, want)
	}

	e.clk.Add(53 * time.Minute) // past T2: the client rebinds by broadcast
	rebind, err := dhcpv4.NewRenewFromAck(got, dhcpv4.WithBroadcast(true))
	if err != nil {
		t.Fatal(err)
	}
	wantType(t, e.handle("vm-1", rebind), dhcpv4.MessageTypeAck)

	// Renewing after the lease ran out still works while nobody took the
	// address: the lease was the identity's.
	e.clk.Add(2 * time.Hour)
	wantType(t, e.handle("vm-1", rebind), dhcpv4.MessageTypeAck)
}

func TestReleaseThenDORAGetsSameAddress(t *testing.T) {
	e := newEnv(t, nil)
	ack := e.dora("vm-1", mac(1))
	e.dora("vm-2", mac(2))
	rel, err := dhcpv4.NewReleaseFromACK(ack)
	if err != nil {
		t.Fatal(err)
	}
	if r := e.handle("vm-1", rel); r != nil {
		t.Fatalf("RELEASE answered with %s", r.MessageType())
	}
	if l, _ := e.s.Lease("vm-1"); l.State != StateReleased || l.Active(e.clk.Now()) {
		t.Fatalf("after RELEASE: %+v", l)
	}
	// Others get fresh addresses before a released one.
	if ip := e.dora("vm-3", mac(3)).YourIPAddr; ip.Equal(ack.YourIPAddr) {
		t.Fatal("released address went to another VM while fresh ones were left")
	}
	again := e.dora("vm-1", mac(1))
	if !again.YourIPAddr.Equal(ack.YourIPAddr) {
		t.Fatalf("after release and DORA: %v, want %v", again.YourIPAddr, ack.YourIPAddr)
	}
}

func TestMACChangeKeepsAddress(t *testing.T) {
	e := newEnv(t, nil)
	a := e.dora("vm-1", mac(1))
	b := e.dora("vm-1", mac(99))
	if !a.YourIPAddr.Equal(b.YourIPAddr) {
		t.Fatalf("new MAC, new address: %v then %v", a.YourIPAddr, b.YourIPAddr)
	}
}

func TestSharedMACDistinctAddresses(t *testing.T) {
	e := newEnv(t, nil)
	hw := mac(7)
	a := e.dora("vm-a", hw)
	b := e.dora("vm-b", hw)
	if a.YourIPAddr.Equal(b.YourIPAddr) {
		t.Fatalf("two VMs with MAC %v got one address %v", hw, a.YourIPAddr)
	}
	// Each keeps its own on renewal.
	for id, ack := range map[string]*dhcpv4.DHCPv4{"vm-a": a, "vm-b": b} {
		r, _ := dhcpv4.NewRenewFromAck(ack)
		got := e.handle(id, r)
		wantType(t, got, dhcpv4.MessageTypeAck)
		if !got.YourIPAddr.Equal(ack.YourIPAddr) {
			t.Fatalf("%s renewed into %v, want %v", id, got.YourIPAddr, ack.YourIPAddr)
		}
	}
}

func TestFallbackIdentity(t *testing.T) {
	e := newEnv(t, nil)
	// Without identity: keyed by chaddr, so one MAC is one client.
	a := e.dora("", mac(1))
	b := e.dora("", mac(1))
	if !a.YourIPAddr.Equal(b.YourIPAddr) {
		t.Fatalf("same MAC, no identity: %v then %v", a.YourIPAddr, b.YourIPAddr)
	}
	if _, ok := e.s.Lease("mac:" + mac(1).String()); !ok {
		t.Fatal("no lease under the mac: key")
	}
	// A client identifier beats chaddr.
	cid := dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte{1, 2, 3}))
	c := e.dora("", mac(1), cid)
	if c.YourIPAddr.Equal(a.YourIPAddr) {
		t.Fatal("client id ignored")
	}
	if got := c.Options.Get(dhcpv4.OptionClientIdentifier); !bytes.Equal(got, []byte{1, 2, 3}) {
		t.Fatalf("client id not echoed (RFC 6842): %v", got)
	}
	if _, ok := e.s.Lease("client-id:010203"); !ok {
		t.Fatal("no lease under the client-id: key")
	}
}

func TestRequestForAnotherVMsAddressIsNAKed(t *testing.T) {
	e := newEnv(t, nil)
	ack := e.dora("vm-1", mac(1))
	taken := ack.YourIPAddr

	// INIT-REBOOT for someone else's address.
	req, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(2)), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(taken)))
	nak := e.handle("vm-2", req)
	wantType(t, nak, dhcpv4.MessageTypeNak)
	if !nak.YourIPAddr.Equal(net.IPv4zero) || nak.Options.Has(dhcpv4.OptionIPAddressLeaseTime) {
		t.Fatalf("NAK with yiaddr %v or a lease time", nak.YourIPAddr)
	}
	// RENEWING with someone else's address.
	renew, _ := dhcpv4.NewRenewFromAck(ack, dhcpv4.WithHwAddr(mac(2)))
	wantType(t, e.handle("vm-2", renew), dhcpv4.MessageTypeNak)
	// SELECTING someone else's address with our server id.
	sel, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(2)), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(taken)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP{192, 168, 64, 1})))
	wantType(t, e.handle("vm-2", sel), dhcpv4.MessageTypeNak)
	// Outside the subnet.
	out, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(2)), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP{10, 0, 0, 5})))
	wantType(t, e.handle("vm-2", out), dhcpv4.MessageTypeNak)
	// The owner still holds it.
	if l, _ := e.s.Lease("vm-1"); addr(taken) != l.IP || l.State != StateBound {
		t.Fatalf("owner's lease changed: %+v", l)
	}
	// An identity asking for another address than its own is sent back
	// to DISCOVER, which returns its own.
	other, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(1)), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP{192, 168, 64, 77})))
	wantType(t, e.handle("vm-1", other), dhcpv4.MessageTypeNak)
}

func TestRequestSelectingAnotherServerIsSilent(t *testing.T) {
	e := newEnv(t, nil)
	offer := e.handle("vm-1", discover(t, mac(1)))
	req := requestFrom(t, offer, dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP{192, 168, 64, 200})))
	if r := e.handle("vm-1", req); r != nil {
		t.Fatalf("answered a REQUEST for another server with %s", r.MessageType())
	}
}

func TestInform(t *testing.T) {
	e := newEnv(t, nil)
	inf, err := dhcpv4.NewInform(mac(1), net.IP{192, 168, 64, 40})
	if err != nil {
		t.Fatal(err)
	}
	ack := e.handle("vm-1", inf)
	wantType(t, ack, dhcpv4.MessageTypeAck)
	if !ack.YourIPAddr.Equal(net.IPv4zero) || !ack.ClientIPAddr.Equal(net.IP{192, 168, 64, 40}) {
		t.Fatalf("INFORM ACK yiaddr %v ciaddr %v", ack.YourIPAddr, ack.ClientIPAddr)
	}
	if ack.Options.Has(dhcpv4.OptionIPAddressLeaseTime) || ack.Options.Has(dhcpv4.OptionRenewTimeValue) {
		t.Fatal("INFORM ACK carries lease times (RFC 2131 3.4 forbids)")
	}
	if ack.DomainName() != "anka.test" || len(ack.Router()) != 1 || ack.SubnetMask() == nil {
		t.Fatalf("INFORM ACK lacks configuration: %s", ack.Summary())
	}
	if _, ok := e.s.Lease("vm-1"); ok {
		t.Fatal("INFORM created a lease")
	}
}

func TestDeclineQuarantines(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.RangeEnd = netip.MustParseAddr("192.168.64.4") // .2 .3 .4
	})
	ack := e.dora("vm-1", mac(1))
	bad := ack.YourIPAddr
	dec, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(1)), dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(bad)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP{192, 168, 64, 1})))
	if r := e.handle("vm-1", dec); r != nil {
		t.Fatalf("DECLINE answered with %s", r.MessageType())
	}
	if _, ok := e.s.Lease("vm-1"); ok {
		t.Fatal("declining VM still holds a lease")
	}
	// Restart: the quarantine is on disk too.
	e.restart()
	// The declining VM gets another address; so do others, until the pool
	// (two addresses left) is empty. Nobody gets the declined one.
	got := map[string]bool{}
	for i, id := range []string{"vm-1", "vm-2"} {
		ip := e.dora(id, mac(i+1)).YourIPAddr
		if ip.Equal(bad) {
			t.Fatalf("%s got quarantined %v", id, bad)
		}
		got[ip.String()] = true
	}
	if len(got) != 2 {
		t.Fatalf("duplicate address: %v", got)
	}
	if r := e.handle("vm-3", discover(t, mac(3))); r != nil {
		t.Fatalf("offered %v while the only free address is quarantined", r.YourIPAddr)
	}
	req, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(3)), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(bad)))
	wantType(t, e.handle("vm-3", req), dhcpv4.MessageTypeNak)

	e.clk.Add(10*time.Minute + time.Second)
	if ip := e.dora("vm-3", mac(3)).YourIPAddr; !ip.Equal(bad) {
		t.Fatalf("after quarantine vm-3 got %v, want %v", ip, bad)
	}
}

func TestExhaustionNeverDuplicates(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.Subnet = netip.MustParsePrefix("10.9.0.0/29")
		c.ServerIP = netip.MustParseAddr("10.9.0.1")
		c.Router = c.ServerIP
		c.RangeStart = netip.MustParseAddr("10.9.0.2")
		c.RangeEnd = netip.MustParseAddr("10.9.0.6")
	})
	// Many VMs race for five addresses.
	const clients = 40
	var (
		mu    sync.Mutex
		owner = map[string]string{}
		wg    sync.WaitGroup
	)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("vm-%d", i)
			offer, err := e.s.Handle(context.Background(), id, discover(t, mac(i)))
			if err != nil || offer == nil {
				return
			}
			ack, err := e.s.Handle(context.Background(), id, requestFrom(t, offer))
			if err != nil {
				t.Error(err)
				return
			}
			if ack.MessageType() != dhcpv4.MessageTypeAck {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if o, dup := owner[ack.YourIPAddr.String()]; dup {
				t.Errorf("%v ACKed to %s and %s", ack.YourIPAddr, o, id)
			}
			owner[ack.YourIPAddr.String()] = id
		}()
	}
	wg.Wait()
	if len(owner) != 5 {
		t.Fatalf("%d addresses handed out from a pool of 5: %v", len(owner), owner)
	}
	if r := e.handle("vm-late", discover(t, mac(1000))); r != nil {
		t.Fatalf("offered %v from an exhausted pool", r.YourIPAddr)
	}
	if e.s.Stats().NoAddress == 0 {
		t.Fatal("NoAddress not counted")
	}
	// Expired leases are reused, oldest first, once the pool is empty.
	e.clk.Add(2 * time.Hour)
	ack := e.dora("vm-late", mac(1000))
	if o := owner[ack.YourIPAddr.String()]; o == "" {
		t.Fatalf("late VM got %v, not one of the expired addresses", ack.YourIPAddr)
	}
	// Its former holder is told so when it renews.
	prev := owner[ack.YourIPAddr.String()]
	renew, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(1)), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithClientIP(ack.YourIPAddr))
	wantType(t, e.handle(prev, renew), dhcpv4.MessageTypeNak)
}

func TestReservation(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.RangeEnd = netip.MustParseAddr("192.168.64.5") // .2-.5
	})
	r := netip.MustParseAddr("192.168.64.3")
	static := netip.MustParseAddr("192.168.64.200") // outside the range
	if err := e.s.SetReservation("vm-r", r); err != nil {
		t.Fatal(err)
	}
	if err := e.s.SetReservation("vm-s", static); err != nil {
		t.Fatal(err)
	}
	// Others never get the reserved address, even when asking for it.
	asks := dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(r.AsSlice()))
	for i := range 3 {
		id := fmt.Sprintf("vm-%d", i)
		offer := e.handle(id, discover(t, mac(i), asks))
		wantType(t, offer, dhcpv4.MessageTypeOffer)
		if addr(offer.YourIPAddr) == r {
			t.Fatalf("%s was offered the reserved %v", id, r)
		}
		wantType(t, e.handle(id, requestFrom(t, offer)), dhcpv4.MessageTypeAck)
	}
	if got := e.handle("vm-x", discover(t, mac(50))); got != nil {
		t.Fatalf("pool of 4 with 1 reserved and 3 leased offered %v", got.YourIPAddr)
	}
	req, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(50)), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(r.AsSlice())))
	wantType(t, e.handle("vm-x", req), dhcpv4.MessageTypeNak)
	// The owners get theirs.
	if ip := addr(e.dora("vm-r", mac(60)).YourIPAddr); ip != r {
		t.Fatalf("vm-r got %v, want its reservation %v", ip, r)
	}
	if ip := addr(e.dora("vm-s", mac(61)).YourIPAddr); ip != static {
		t.Fatalf("vm-s got %v, want its reservation %v", ip, static)
	}

	// Conflicts are refused and change nothing.
	for _, c := range []struct {
		id   string
		ip   string
		want string
	}{
		{"vm-y", "192.168.64.3", "already reserved for vm-r"},
		{"vm-y", "192.168.64.2", "leased to vm-0"},
		{"vm-y", "192.168.64.1", "not a free host address"},
		{"vm-y", "192.168.64.255", "not a free host address"},
		{"vm-y", "10.0.0.1", "not a free host address"},
	} {
		err := e.s.SetReservation(c.id, netip.MustParseAddr(c.ip))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("SetReservation(%s, %s) = %v, want %q", c.id, c.ip, err, c.want)
		}
	}
	if _, ok := e.s.Reservation("vm-y"); ok {
		t.Fatal("a refused reservation was kept")
	}

	// Reservations survive a restart.
	e.restart()
	if got, _ := e.s.Reservation("vm-r"); got != r {
		t.Fatalf("after restart vm-r's reservation is %v", got)
	}
	if got := e.handle("vm-x", discover(t, mac(50))); got != nil {
		t.Fatalf("after restart the reserved address was offered: %v", got.YourIPAddr)
	}

	// Moving a reservation: the VM is NAKed at renewal and comes back for
	// the new one; the old one returns to the pool.
	if err := e.s.SetReservation("vm-r", netip.MustParseAddr("192.168.64.201")); err != nil {
		t.Fatal(err)
	}
	renew, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(60)), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithClientIP(r.AsSlice()))
	wantType(t, e.handle("vm-r", renew), dhcpv4.MessageTypeNak)
	if ip := addr(e.dora("vm-r", mac(60)).YourIPAddr); ip.String() != "192.168.64.201" {
		t.Fatalf("vm-r moved to %v", ip)
	}
	if ip := addr(e.dora("vm-x", mac(50)).YourIPAddr); ip != r {
		t.Fatalf("freed reservation not reused: got %v", ip)
	}

	// Release forgets a VM entirely.
	if err := e.s.Release("vm-s"); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.s.Reservation("vm-s"); ok {
		t.Fatal("Release kept the reservation")
	}
	if _, ok := e.s.Lease("vm-s"); ok {
		t.Fatal("Release kept the lease")
	}
	if err := e.s.RemoveReservation("vm-r"); err != nil {
		t.Fatal(err)
	}
	e.restart()
	if _, ok := e.s.Reservation("vm-r"); ok {
		t.Fatal("removed reservation came back after restart")
	}
	if _, ok := e.s.Lease("vm-s"); ok {
		t.Fatal("released VM's lease came back after restart")
	}
}

func TestReservationTakesExpiredLease(t *testing.T) {
	e := newEnv(t, nil)
	ack := e.dora("vm-1", mac(1))
	e.clk.Add(2 * time.Hour)
	if err := e.s.SetReservation("vm-r", addr(ack.YourIPAddr)); err != nil {
		t.Fatalf("reserving an expired lease's address: %v", err)
	}
	if ip := e.dora("vm-r", mac(2)).YourIPAddr; !ip.Equal(ack.YourIPAddr) {
		t.Fatalf("vm-r got %v", ip)
	}
	if ip := e.dora("vm-1", mac(1)).YourIPAddr; ip.Equal(ack.YourIPAddr) {
		t.Fatal("former holder got the reserved address back")
	}
}

func TestLeasesSurviveRestart(t *testing.T) {
	e := newEnv(t, nil)
	want := map[string]net.IP{}
	for i := range 20 {
		id := fmt.Sprintf("vm-%d", i)
		want[id] = e.dora(id, mac(i), dhcpv4.WithOption(dhcpv4.OptHostName(id))).YourIPAddr
	}
	e.restart()
	for id, ip := range want {
		l, ok := e.s.Lease(id)
		if !ok || l.IP != addr(ip) || l.State != StateBound || l.Hostname != id {
			t.Fatalf("%s after restart: %+v, want %v", id, l, ip)
		}
		offer := e.handle(id, discover(t, mac(1)))
		if !offer.YourIPAddr.Equal(ip) {
			t.Fatalf("%s offered %v after restart, want %v", id, offer.YourIPAddr, ip)
		}
	}
	// A new VM does not collide with a restored lease.
	if ip := e.dora("vm-new", mac(100)).YourIPAddr; !ip.Equal(net.IP{192, 168, 64, 22}) {
		t.Fatalf("new VM got %v", ip)
	}
	if n := len(e.s.Leases()); n != 21 {
		t.Fatalf("Leases() lists %d", n)
	}
}

func TestFailedCommitSendsNoACK(t *testing.T) {
	e := newEnv(t, nil)
	offer := e.handle("vm-1", discover(t, mac(1)))
	e.st.Close() // the disk goes away
	_, err := e.s.Handle(context.Background(), "vm-1", requestFrom(t, offer))
	if err == nil {
		t.Fatal("ACK without a durable lease")
	}
	if l, _ := e.s.Lease("vm-1"); l.State == StateBound {
		t.Fatalf("index kept a lease the disk refused: %+v", l)
	}
	if e.s.Stats().CommitErrors != 1 {
		t.Fatalf("stats: %+v", e.s.Stats())
	}
	e.s.Close()
	e.s = nil
}

func TestOnLease(t *testing.T) {
	var mu sync.Mutex
	var seen []Lease
	e := newEnv(t, func(c *Config) {
		c.OnLease = func(l Lease) { mu.Lock(); seen = append(seen, l); mu.Unlock() }
	})
	ack := e.dora("vm-1", mac(1))
	rel, _ := dhcpv4.NewReleaseFromACK(ack)
	e.handle("vm-1", rel)
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 || seen[0].State != StateBound || seen[1].State != StateReleased || seen[0].IP != addr(ack.YourIPAddr) {
		t.Fatalf("OnLease saw %+v", seen)
	}
}

func TestIgnored(t *testing.T) {
	e := newEnv(t, nil)
	reply := dhcpv4.DHCPv4{OpCode: dhcpv4.OpcodeBootReply, Options: dhcpv4.Options{}}
	noType, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(1)))
	for _, m := range []*dhcpv4.DHCPv4{nil, &reply, noType} {
		if r, err := e.s.Handle(context.Background(), "vm-1", m); r != nil || err != nil {
			t.Fatalf("answered %v: %v %v", m, r, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.s.Handle(ctx, "vm-1", discover(t, mac(1))); err == nil {
		t.Fatal("cancelled context ignored")
	}
}

func TestConfigValidate(t *testing.T) {
	clk := newClock()
	for _, c := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"ok", func(*Config) {}, ""},
		{"v6 subnet", func(c *Config) { c.Subnet = netip.MustParsePrefix("fd00::/64") }, "not an IPv4 prefix"},
		{"host bits", func(c *Config) { c.Subnet = netip.MustParsePrefix("192.168.64.7/24") }, "host bits"},
		{"/31", func(c *Config) { c.Subnet = netip.MustParsePrefix("192.168.64.0/31") }, "between /8 and /30"},
		{"server outside", func(c *Config) { c.ServerIP = netip.MustParseAddr("10.0.0.1") }, "server address"},
		{"server is network", func(c *Config) { c.ServerIP = netip.MustParseAddr("192.168.64.0") }, "server address"},
		{"mac", func(c *Config) { c.ServerMAC = nil }, "server MAC"},
		{"router outside", func(c *Config) { c.Router = netip.MustParseAddr("10.0.0.1") }, "router"},
		{"dns v6", func(c *Config) { c.DNS = []netip.Addr{netip.MustParseAddr("::1")} }, "DNS server"},
		{"range outside", func(c *Config) { c.RangeEnd = netip.MustParseAddr("192.168.65.9") }, "must lie within"},
		{"range has broadcast", func(c *Config) { c.RangeEnd = netip.MustParseAddr("192.168.64.255") }, "must lie within"},
		{"range reversed", func(c *Config) {
			c.RangeStart = netip.MustParseAddr("192.168.64.200")
			c.RangeEnd = netip.MustParseAddr("192.168.64.100")
		}, "after range end"},
		{"range has server", func(c *Config) { c.RangeStart = netip.MustParseAddr("192.168.64.1") }, "contains the server"},
		{"mtu", func(c *Config) { c.MTU = 20 }, "MTU"},
		{"lease", func(c *Config) { c.LeaseTime = time.Millisecond }, "lease time"},
		{"quarantine", func(c *Config) { c.Quarantine = -time.Second }, "quarantine"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := testConfig(clk)
			c.mod(&cfg)
			err := cfg.Validate()
			if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
				t.Fatalf("Validate() = %v, want %q", err, c.want)
			}
		})
	}
}
