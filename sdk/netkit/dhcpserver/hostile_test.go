package dhcpserver

import (
	"context"
	"net"
	"net/netip"
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
