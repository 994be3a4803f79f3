package lan_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/anka-net/anka/sdk/netkit/dhcpserver"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"github.com/anka-net/anka/sdk/netkit/lan"
	"github.com/anka-net/anka/sdk/netkit/lan/lantest"
)

// dhcpMsg builds a client message from hw with mods, failing t on error.
func dhcpMsg(t *testing.T, hw net.HardwareAddr, typ dhcpv4.MessageType, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.New(append([]dhcpv4.Modifier{dhcpv4.WithHwAddr(hw), dhcpv4.WithMessageType(typ)}, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func frameOf(t *testing.T, src net.HardwareAddr, srcIP netip.Addr, payload []byte) []byte {
	t.Helper()
	f, err := lantest.DHCPFrame(src, net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, srcIP, netip.Addr{}, payload)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// leasesOf lists the addresses the DHCP server holds for identity id
// (offered or bound): one at most, whatever id sends.
func leasesOf(l *lan.LAN, id string) []dhcpserver.Lease {
	var out []dhcpserver.Lease
	for _, le := range l.DHCP().Leases() {
		if le.Identity == id && le.IP.IsValid() {
			out = append(out, le)
		}
	}
	return out
}

// answerWithin bounds a DHCP exchange the server must answer: not a
// measure of speed (the call returns with the answer) but of a server
// that stopped answering. An ACK waits for its lease to be fsynced, and
// on a machine with a load average of 16 on 2 CPUs a renewal once went
// unanswered for 5 s: keep this generous.
const answerWithin = 30 * time.Second

// TestHostileDHCP: DHCP requests a guest may forge reach the LAN's
// server through the switch; none of them costs another VM its address or
// its renewals, none gets one port more than one address, and replies go
// to the port that asked only.
func TestHostileDHCP(t *testing.T) {
	tl := start(t, config(t, t.TempDir())) // a pool of 11 addresses: .10 to .20
	victim, _ := tl.guest(t, lan.VM{ID: "id-victim", Name: "victim", DynamicMAC: mac(1)})
	vl, err := victim.DORA(answerWithin)
	if err != nil {
		t.Fatal(err)
	}
	hMAC := mac(2)
	hostile, _ := tl.guest(t, lan.VM{ID: "id-hostile", Name: "hostile", DynamicMAC: hMAC})
	zero := netip.IPv4Unspecified()
	// A client whose request is slow to be answered sends it again, and
	// the server answers every copy: the copies' replies come late, in
	// the cases below, and are the victim's own, not strays. (On a loaded
	// machine DORA resends its REQUEST; that made this test flaky.)
	renew := dhcpMsg(t, mac(1), dhcpv4.MessageTypeRequest, dhcpv4.WithClientIP(vl.IP.AsSlice()))
	rf, err := lantest.DHCPFrame(mac(1), net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, vl.IP, netip.Addr{}, renew.ToBytes())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := victim.Exchange(rf, renew.TransactionID, dhcpv4.MessageTypeAck, answerWithin); err != nil {
		t.Fatal(err)
	}
	if err := victim.Send(rf); err != nil {
		t.Fatal(err)
	}

	giantOptions := dhcpMsg(t, hMAC, dhcpv4.MessageTypeDiscover)
	for i := range 4 { // 4 x 257 bytes of options: far past the 312 of a plain BOOTP message
		giantOptions.UpdateOption(dhcpv4.OptGeneric(dhcpv4.GenericOptionCode(224+i), bytes.Repeat([]byte{byte(i)}, 255)))
	}
	// The fixed header and cookie, DHCP message type DISCOVER, then
	// option 224 saying 200 bytes, of which 3 follow, and no end.
	pastEnd := dhcpMsg(t, hMAC, dhcpv4.MessageTypeDiscover).ToBytes()[:240]
	pastEnd = append(pastEnd, 53, 1, 1, 224, 200, 1, 2, 3)
	badCookie := dhcpMsg(t, hMAC, dhcpv4.MessageTypeDiscover).ToBytes()
	binary.BigEndian.PutUint32(badCookie[236:], 0xdeadbeef)
	reply := dhcpMsg(t, hMAC, dhcpv4.MessageTypeOffer, dhcpv4.WithReply(dhcpMsg(t, hMAC, dhcpv4.MessageTypeDiscover)))
	reply.YourIPAddr = vl.IP.AsSlice()
	victimCID := append([]byte{1}, mac(1)...) // what dhclient would send for the victim
	var giantCID []byte
	for i := range 255 {
		giantCID = append(giantCID, byte(i))
	}

	cases := []struct {
		name   string
		frames [][]byte
		// want is the reply type the hostile port gets, None for none.
		want dhcpv4.MessageType
	}{
		{"options past 1000 bytes", [][]byte{frameOf(t, hMAC, zero, giantOptions.ToBytes())}, dhcpv4.MessageTypeOffer},
		{"an option running past the end", [][]byte{frameOf(t, hMAC, zero, pastEnd)}, dhcpv4.MessageTypeNone},
		{"a bad magic cookie", [][]byte{frameOf(t, hMAC, zero, badCookie)}, dhcpv4.MessageTypeNone},
		{"a header cut short", [][]byte{frameOf(t, hMAC, zero, dhcpMsg(t, hMAC, dhcpv4.MessageTypeDiscover).ToBytes()[:100])}, dhcpv4.MessageTypeNone},
		{"wrong op: a BOOTREPLY sent to the server", [][]byte{frameOf(t, hMAC, zero, reply.ToBytes())}, dhcpv4.MessageTypeNone},
		{"a giant client id", [][]byte{frameOf(t, hMAC, zero, dhcpMsg(t, hMAC, dhcpv4.MessageTypeDiscover, dhcpv4.WithOption(dhcpv4.OptClientIdentifier(giantCID))).ToBytes())}, dhcpv4.MessageTypeOffer},
		{"the victim's client id", [][]byte{frameOf(t, hMAC, zero, dhcpMsg(t, hMAC, dhcpv4.MessageTypeDiscover, dhcpv4.WithOption(dhcpv4.OptClientIdentifier(victimCID))).ToBytes())}, dhcpv4.MessageTypeOffer},
		{"chaddr the victim's MAC", [][]byte{frameOf(t, hMAC, zero, dhcpMsg(t, mac(1), dhcpv4.MessageTypeDiscover).ToBytes())}, dhcpv4.MessageTypeNone},
		{"chaddr of nobody", [][]byte{frameOf(t, hMAC, zero, dhcpMsg(t, mac(99), dhcpv4.MessageTypeDiscover).ToBytes())}, dhcpv4.MessageTypeNone},
		{"the victim's address asked for (INIT-REBOOT)", [][]byte{frameOf(t, hMAC, zero, dhcpMsg(t, hMAC, dhcpv4.MessageTypeRequest, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(vl.IP.AsSlice()))).ToBytes())}, dhcpv4.MessageTypeNak},
		{"the victim's address released", [][]byte{frameOf(t, hMAC, zero, dhcpMsg(t, hMAC, dhcpv4.MessageTypeRelease, dhcpv4.WithClientIP(vl.IP.AsSlice())).ToBytes())}, dhcpv4.MessageTypeNone},
		{"the victim's address declined", [][]byte{frameOf(t, hMAC, zero, dhcpMsg(t, hMAC, dhcpv4.MessageTypeDecline, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(vl.IP.AsSlice()))).ToBytes())}, dhcpv4.MessageTypeNone},
		{"a release from the victim's address", [][]byte{frameOf(t, hMAC, vl.IP, dhcpMsg(t, hMAC, dhcpv4.MessageTypeRelease, dhcpv4.WithClientIP(vl.IP.AsSlice())).ToBytes())}, dhcpv4.MessageTypeNone},
		{"a server reply from a VM (port 67 to 68)", [][]byte{func() []byte {
			f := lantest.UDPFrame(hMAC, net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, vl.IP, netip.MustParseAddr("255.255.255.255"), 67, 68, reply.ToBytes())
			return f
		}()}, dhcpv4.MessageTypeNone},
	}
	victimStrays := 0 // replies for others the victim read in earlier cases
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var xids []dhcpv4.TransactionID
			for _, f := range c.frames {
				xids = append(xids, xidOf(t, f))
				if err := hostile.Send(f); err != nil {
					t.Fatal(err)
				}
			}
			// No reply due here waits for the disk: each one the frames
			// earned is in before the fence's.
			got, err := hostile.Fence(answerWithin)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case c.want == dhcpv4.MessageTypeNone && len(got) > 0:
				t.Errorf("the hostile port got a %s; want no reply", got[0].MessageType())
			case c.want != dhcpv4.MessageTypeNone && (len(got) != 1 || got[0].MessageType() != c.want || !slices.Contains(xids, got[0].TransactionID)):
				t.Errorf("the hostile port got %d replies (%v); want a %s for %v", len(got), got, c.want, xids)
			}
			for _, r := range got {
				if r.MessageType() == dhcpv4.MessageTypeOffer && addrOf(r.YourIPAddr) == vl.IP {
					t.Errorf("the hostile port was offered the victim's address %v", vl.IP)
				}
			}
			if ls := leasesOf(tl.LAN, "id-hostile"); len(ls) > 1 {
				t.Errorf("the hostile port holds %d addresses", len(ls))
			}
			// The victim's renewal is answered after anything the
			// hostile frames earned, so a reply that went to the
			// victim's port instead is read by then. Copies of the
			// victim's own replies (it resends a request that is slow
			// to be answered, and each copy is answered) are not strays.
			checkVictim(t, tl, victim, vl)
			if vr := victim.Unasked(); len(vr) > victimStrays {
				t.Errorf("the victim got a reply it never asked for: %v", vr[victimStrays])
				victimStrays = len(vr)
			}
		})
	}
	if st := tl.DHCP().Stats(); st.Ignored == 0 {
		t.Errorf("no hostile request counted as ignored: %+v", st)
	}
}

// xidOf is the transaction id of f, an Ethernet frame carrying a DHCP
// message (maybe malformed past its first 8 bytes).
func xidOf(t *testing.T, f []byte) dhcpv4.TransactionID {
	t.Helper()
	if len(f) < 15 {
		t.Fatalf("a %d-byte frame carries no DHCP message", len(f))
	}
	dhcp := 14 + int(f[14]&0x0f)*4 + 8
	if len(f) < dhcp+8 {
		t.Fatalf("a %d-byte frame carries no DHCP transaction id", len(f))
	}
	return dhcpv4.TransactionID(f[dhcp+4 : dhcp+8])
}

func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip.To4())
	return a
}

// checkVictim fails t unless the victim still holds vl and renews it.
func checkVictim(t *testing.T, tl *testLAN, victim *lantest.Client, vl lantest.Lease) {
	t.Helper()
	if le, ok := tl.DHCP().Lease("id-victim"); !ok || le.IP != vl.IP || le.State != dhcpserver.StateBound {
		t.Fatalf("the victim's lease changed: %+v %v; want %v bound", le, ok, vl.IP)
	}
	if l, err := victim.Renew(vl.IP, answerWithin); err != nil || l.IP != vl.IP {
		t.Fatalf("the victim's renewal: %v %v; want %v (server: %+v)", l.IP, err, vl.IP, tl.DHCP().Stats())
	}
}

// TestDHCPDeclineExhaustion: a guest that declines every address it is
// offered (DECLINE says "someone else uses it"; the server keeps it out
// of the pool for the quarantine) would otherwise empty the pool in as
// many round trips as it has addresses. One port may keep only a few in
// quarantine; past that its DECLINEs cost it its offer but quarantine
// nothing, so other VMs still get addresses.
func TestDHCPDeclineExhaustion(t *testing.T) {
	tl := start(t, config(t, t.TempDir())) // 11 addresses
	hMAC := mac(2)
	hostile, _ := tl.guest(t, lan.VM{ID: "id-hostile", Name: "hostile", DynamicMAC: hMAC})
	declined := 0
	for range 30 {
		d := dhcpMsg(t, hMAC, dhcpv4.MessageTypeDiscover)
		offer, err := hostile.Exchange(frameOf(t, hMAC, netip.IPv4Unspecified(), d.ToBytes()), d.TransactionID, dhcpv4.MessageTypeOffer, time.Second)
		if err != nil {
			continue // the pool is out of addresses for it
		}
		dec := dhcpMsg(t, hMAC, dhcpv4.MessageTypeDecline,
			dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)),
			dhcpv4.WithOption(dhcpv4.OptServerIdentifier(gateway.AsSlice())))
		hostile.Send(frameOf(t, hMAC, netip.IPv4Unspecified(), dec.ToBytes()))
		declined++
	}
	st := tl.DHCP().Stats()
	t.Logf("the hostile port declined %d offers; server: %d declines, %d refused, %d ignored", declined, st.Declines, st.DeclinesRefused, st.Ignored)
	// What the hostile port may hold: MaxDeclined in quarantine, one
	// offer; the rest of the 11 serve good VMs.
	good := 11 - dhcpserver.MaxDeclined - 1
	for i := range good {
		id := "id-good-" + string(rune('a'+i))
		c, _ := tl.guest(t, lan.VM{ID: id, Name: id, DynamicMAC: mac(byte(10 + i))})
		if _, err := c.DORA(3 * time.Second); err != nil {
			t.Fatalf("good VM %d of %d gets no address after a port declined %d offers: %v", i+1, good, declined, err)
		}
	}
}

// TestDHCPFlood: one port sends 50,000 DISCOVERs as fast as it can and
// reads none of the offers (its socket fills up) while another VM renews
// and a third joins. The flood costs the flooding port its own requests:
// it holds one address at most, the pool is not exhausted, and the
// others' exchanges complete.
func TestDHCPFlood(t *testing.T) {
	tl := start(t, config(t, t.TempDir()))
	victim, _ := tl.guest(t, lan.VM{ID: "id-victim", Name: "victim", DynamicMAC: mac(1)})
	vl, err := victim.DORA(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	hMAC := mac(2)
	hEp, err := tl.Attach(lan.AttachRequest{VM: lan.VM{ID: "id-hostile", Name: "hostile", DynamicMAC: hMAC}, RunDir: frameiotest.TempDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	h := openRawDgram(t, hEp) // never reads
	const flood = 50_000
	frames := make([][]byte, 64)
	for i := range frames {
		frames[i] = frameOf(t, hMAC, netip.IPv4Unspecified(), dhcpMsg(t, hMAC, dhcpv4.MessageTypeDiscover).ToBytes())
	}
	before := tl.DHCP().Stats()
	done := make(chan time.Duration)
	go func() {
		start := time.Now()
		for i := range flood {
			h.send(t, frames[i%len(frames)])
		}
		done <- time.Since(start)
	}()
	// While it floods: the victim renews, a newcomer gets an address.
	var renewals []time.Duration
	newcomer, _ := tl.guest(t, lan.VM{ID: "id-new", Name: "newcomer", DynamicMAC: mac(3)})
	var floodTook time.Duration
	joined := false
loop:
	for {
		select {
		case floodTook = <-done:
			break loop
		default:
		}
		t0 := time.Now()
		if l, err := victim.Renew(vl.IP, 10*time.Second); err != nil || l.IP != vl.IP {
			t.Fatalf("the victim's renewal during the flood: %v %v", l.IP, err)
		}
		renewals = append(renewals, time.Since(t0))
		if !joined {
			if _, err := newcomer.DORA(10 * time.Second); err != nil {
				t.Fatalf("a VM joining during the flood gets no address: %v", err)
			}
			joined = true
		}
	}
	after := tl.DHCP().Stats()
	sorted := slices.Clone(renewals)
	slices.Sort(sorted)
	var median, slowest time.Duration
	if len(sorted) > 0 {
		median, slowest = sorted[len(sorted)/2], sorted[len(sorted)-1]
	}
	t.Logf("flood of %d DISCOVERs took %v (%.0f/s); server: %d discovers answered, %d offers, %d dropped at the port's queue share; victim renewed %d times during it, median %v, slowest %v",
		flood, floodTook, flood/floodTook.Seconds(), after.Discovers-before.Discovers, after.Offers-before.Offers, after.Dropped-before.Dropped, len(renewals), median, slowest)
	if len(renewals) == 0 || !joined {
		t.Fatal("the flood ended before the victim renewed: nothing tested")
	}
	if ls := leasesOf(tl.LAN, "id-hostile"); len(ls) > 1 {
		t.Errorf("the flooding port holds %d addresses", len(ls))
	}
	checkVictim(t, tl, victim, vl)
}

// TestReleaseThenRebind: a guest that releases its lease and takes it
// again at once (dhclient -r; dhclient, a reboot) keeps its port pinned
// to the address it was ACKed. The RELEASE's notice used to arrive after
// the binding's now and then, unpinning the port: every frame from the
// guest was dropped until its next renewal, hours later.
func TestReleaseThenRebind(t *testing.T) {
	tl := start(t, config(t, t.TempDir()))
	c, _ := tl.guest(t, lan.VM{ID: "id-x", Name: "x", DynamicMAC: mac(2)})
	for i := range 30 {
		l, err := c.DORA(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(2 * time.Second)
		for {
			if st, _ := tl.Status("id-x"); st.Pinned == l.IP {
				break
			}
			if time.Now().After(deadline) {
				st, _ := tl.Status("id-x")
				t.Fatalf("cycle %d: ACKed %v, the port is pinned to %v (lease %s)", i, l.IP, st.Pinned, st.LeaseState)
			}
			time.Sleep(time.Millisecond)
		}
		if err := c.Release(l); err != nil {
			t.Fatal(err)
		}
		if err := released(tl, "id-x"); err != nil {
			t.Fatal(err)
		}
	}
}
