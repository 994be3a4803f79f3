package dhcpserver

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

func declineOf(t *testing.T, hw net.HardwareAddr, ip net.IP) *dhcpv4.DHCPv4 {
	t.Helper()
	d, err := dhcpv4.New(dhcpv4.WithHwAddr(hw), dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP{192, 168, 64, 1})))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestDeclineLimit: an identity that declines every offer quarantines
// MaxDeclined addresses, no more; past that its DECLINEs drop its offer
// and the address goes back to the pool, so others still get addresses.
// Once its quarantines end it may decline again.
func TestDeclineLimit(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.RangeEnd = netip.MustParseAddr("192.168.64.7") // .2 to .7: six addresses
	})
	quarantined := map[string]bool{}
	for range 20 {
		offer := e.handle("evil", discover(t, mac(66)))
		wantType(t, offer, dhcpv4.MessageTypeOffer)
		if r := e.handle("evil", declineOf(t, mac(66), offer.YourIPAddr)); r != nil {
			t.Fatalf("DECLINE answered with %s", r.MessageType())
		}
		if le, ok := e.s.Lease("evil"); ok {
			t.Fatalf("a declined offer left a lease: %+v", le)
		}
		quarantined[offer.YourIPAddr.String()] = true
	}
	st := e.s.Stats()
	if st.Declines != 20 || st.DeclinesRefused != 20-MaxDeclined {
		t.Errorf("declines %d, refused %d; want 20 and %d", st.Declines, st.DeclinesRefused, 20-MaxDeclined)
	}
	if n := len(e.s.quar); n != MaxDeclined {
		t.Errorf("%d addresses in quarantine; want %d", n, MaxDeclined)
	}
	// The other four addresses still serve four VMs.
	seen := map[string]bool{}
	for i := range 6 - MaxDeclined {
		ip := e.dora("good-"+string(rune('a'+i)), mac(i+1)).YourIPAddr.String()
		if seen[ip] {
			t.Fatalf("%s handed out twice", ip)
		}
		seen[ip] = true
	}
	// The limit holds across the pool's use: with quarantine over, the
	// identity may decline again.
	e.clk.Add(10*time.Minute + time.Second)
	offer := e.handle("evil", discover(t, mac(66)))
	wantType(t, offer, dhcpv4.MessageTypeOffer)
	e.handle("evil", declineOf(t, mac(66), offer.YourIPAddr))
	if got := e.s.Stats().DeclinesRefused; got != 20-MaxDeclined {
		t.Errorf("a DECLINE after the quarantine ended was refused (%d refused)", got)
	}
}

// TestForgedChaddr: a frame whose chaddr is not its source MAC is a guest
// asking on another's behalf; its reply would go to that other MAC. It is
// ignored. A relayed request (giaddr set) comes from the relay's MAC and
// is answered.
func TestForgedChaddr(t *testing.T) {
	e := newEnv(t, nil)
	d := discover(t, mac(1))
	f := clientFrame(t, d, nil, nil)
	copy(f[6:12], mac(2)) // sent by another MAC
	before := e.s.Stats().Ignored
	reply, handled, err := e.s.HandleFrameSync(context.Background(), "vm-2", f)
	if err != nil || !handled || reply != nil {
		t.Fatalf("forged chaddr: reply %d bytes, handled %v, %v; want taken and unanswered", len(reply), handled, err)
	}
	if e.s.Stats().Ignored != before+1 {
		t.Error("the forged request was not counted as ignored")
	}
	if _, ok := e.s.Lease("vm-2"); ok {
		t.Error("a forged request got a lease")
	}
	relayed := discover(t, mac(1), dhcpv4.WithGatewayIP(net.IP{192, 168, 64, 254}))
	f = clientFrame(t, relayed, nil, nil)
	copy(f[6:12], mac(2))
	if reply, _, err := e.s.HandleFrameSync(context.Background(), "vm-3", f); err != nil || reply == nil {
		t.Errorf("a relayed request: %d bytes, %v; want an OFFER", len(reply), err)
	}
}

// TestOnLeaseOrder: two commits may finish in either order (two in one
// bbolt batch return together). A RELEASE whose commit finishes after
// the REQUEST that followed it must not be told last: the plugin would
// unpin the guest's port from the address it was just ACKed.
func TestOnLeaseOrder(t *testing.T) {
	var told []Lease
	e := newEnv(t, func(c *Config) { c.OnLease = func(l Lease) { told = append(told, l) } })
	ack := e.dora("vm-1", mac(1))
	told = nil
	rel, _ := dhcpv4.New(dhcpv4.WithHwAddr(mac(1)), dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease),
		dhcpv4.WithClientIP(ack.YourIPAddr), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP{192, 168, 64, 1})))
	_, tRel := e.s.process("vm-1", rel)
	offer := e.handle("vm-1", discover(t, mac(1)))
	_, tReq := e.s.process("vm-1", requestFrom(t, offer))
	if tRel == nil || tReq == nil {
		t.Fatal("RELEASE or REQUEST made no change to commit")
	}
	if err := e.s.commit(tReq); err != nil {
		t.Fatal(err)
	}
	if err := e.s.commit(tRel); err != nil {
		t.Fatal(err)
	}
	if len(told) != 1 || told[0].State != StateBound || !told[0].IP.IsValid() {
		t.Fatalf("told %+v; want the binding only", told)
	}
	if le, _ := e.s.Lease("vm-1"); le.State != StateBound {
		t.Errorf("the lease is %s; want bound", le.State)
	}
}

// TestOneIdentityInOrder: the frames of one identity are answered in the
// order they came, whatever the other workers do. Out of order, a
// REQUEST the client sent before its RELEASE could be handled after it
// and bind the address again until the lease ran out.
func TestOneIdentityInOrder(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Workers = 4 })
	const n = 60 // below the port's share of the queue
	var mu sync.Mutex
	var order []dhcpv4.TransactionID
	got := make(chan struct{}, n)
	send := func(b []byte) {
		m, err := dhcpv4.FromBytes(b[42:])
		if err != nil {
			t.Error(err)
			return
		}
		mu.Lock()
		order = append(order, m.TransactionID)
		mu.Unlock()
		got <- struct{}{}
	}
	var want []dhcpv4.TransactionID
	for range n {
		d := discover(t, mac(1))
		want = append(want, d.TransactionID)
		if !e.s.HandleFrame("vm-1", clientFrame(t, d, nil, nil), send) {
			t.Fatal("a DISCOVER not taken")
		}
	}
	for range n {
		select {
		case <-got:
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of %d replies", len(order), n)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for i := range want {
		if order[i] != want[i] {
			t.Fatalf("reply %d answers request %d: the identity's requests were reordered", i, slices.Index(want, order[i]))
		}
	}
}
