package dhcpserver

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// seedFrames are valid client frames of every message type.
func seedFrames(t testing.TB) [][]byte {
	hw := mac(1)
	srv := net.IP{192, 168, 64, 1}
	yi := net.IP{192, 168, 64, 2}
	must := func(m *dhcpv4.DHCPv4, err error) *dhcpv4.DHCPv4 {
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	disc := must(dhcpv4.NewDiscovery(hw, dhcpv4.WithOption(dhcpv4.OptHostName("guest")),
		dhcpv4.WithOption(dhcpv4.OptClientIdentifier([]byte{1, 0x52, 0x54, 0, 0, 0, 1}))))
	offer := must(dhcpv4.New(dhcpv4.WithReply(disc), dhcpv4.WithYourIP(yi), dhcpv4.WithMessageType(dhcpv4.MessageTypeOffer),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(srv))))
	req := must(dhcpv4.NewRequestFromOffer(offer))
	ack := must(dhcpv4.New(dhcpv4.WithReply(req), dhcpv4.WithYourIP(yi), dhcpv4.WithMessageType(dhcpv4.MessageTypeAck),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(srv))))
	renew := must(dhcpv4.NewRenewFromAck(ack))
	rebind := must(dhcpv4.NewRenewFromAck(ack, dhcpv4.WithBroadcast(true)))
	release := must(dhcpv4.NewReleaseFromACK(ack))
	decline := must(dhcpv4.New(dhcpv4.WithHwAddr(hw), dhcpv4.WithMessageType(dhcpv4.MessageTypeDecline),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(yi)), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(srv))))
	inform := must(dhcpv4.NewInform(hw, yi))
	reboot := must(dhcpv4.New(dhcpv4.WithHwAddr(hw), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(yi))))
	relayed := must(dhcpv4.NewDiscovery(hw, dhcpv4.WithRelay(net.IP{192, 168, 64, 250})))
	return [][]byte{
		clientFrame(t, disc, nil, nil),
		clientFrame(t, req, nil, nil),
		clientFrame(t, renew, yi, srv),
		clientFrame(t, rebind, yi, nil),
		clientFrame(t, release, yi, srv),
		clientFrame(t, decline, nil, nil),
		clientFrame(t, inform, yi, nil),
		clientFrame(t, reboot, nil, nil),
		clientFrame(t, relayed, net.IP{192, 168, 64, 250}, srv),
	}
}

// FuzzHandleFrame feeds arbitrary frames to the server; nothing may
// panic, and whatever it answers must be a well-formed frame. Each input
// is also tried as the DHCP payload of a valid frame, so the fuzzer
// mutates DHCP messages and not only headers.
func FuzzHandleFrame(f *testing.F) {
	for _, s := range seedFrames(f) {
		f.Add(s)
	}
	e := newEnv(f, func(c *Config) {
		c.RangeEnd = netip.AddrFrom4([4]byte{192, 168, 64, 20}) // small, so exhaustion paths run too
	})
	// Durability is not under test here; speed is.
	e.st.db.NoSync, e.st.db.MaxBatchDelay = true, 0
	template := seedFrames(f)[0]
	f.Fuzz(func(t *testing.T, frame []byte) {
		for _, in := range [][]byte{frame, withPayload(template, frame)} {
			reply, _, err := e.s.HandleFrameSync(context.Background(), "fuzz", in)
			if err != nil {
				t.Fatalf("HandleFrameSync: %v", err)
			}
			if reply != nil {
				if _, err := dhcpv4.FromBytes(reply[42:]); err != nil {
					t.Fatalf("reply does not parse: %v", err)
				}
			}
			e.s.IsDHCP(in)
		}
	})
}

// withPayload replaces the UDP payload of frame, fixing the lengths.
func withPayload(frame, payload []byte) []byte {
	f := append(append([]byte(nil), frame[:42]...), payload...)
	ipLen, udpLen := 28+len(payload), 8+len(payload)
	if ipLen > 0xffff {
		return f
	}
	f[16], f[17] = byte(ipLen>>8), byte(ipLen)
	f[38], f[39] = byte(udpLen>>8), byte(udpLen)
	return f
}

// TestWriteFuzzSeeds regenerates testdata/fuzz/FuzzHandleFrame when
// DHCPSERVER_WRITE_SEEDS is set; the files are committed.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("DHCPSERVER_WRITE_SEEDS") == "" {
		t.Skip("set DHCPSERVER_WRITE_SEEDS=1 to rewrite the seed corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzHandleFrame")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	names := []string{"discover", "request", "renew", "rebind", "release", "decline", "inform", "init-reboot", "relayed"}
	seeds := seedFrames(t)
	short := append([]byte(nil), seeds[0][:60]...)
	noEnd := append([]byte(nil), seeds[0]...)
	for i := 42 + 240; i < len(noEnd); i++ {
		if noEnd[i] == 255 {
			noEnd[i] = 0
		}
	}
	badLen := append([]byte(nil), seeds[1]...)
	badLen[42+240+1] = 250 // first option claims more bytes than there are
	seeds = append(seeds, short, noEnd, badLen)
	names = append(names, "truncated", "no-end-option", "option-overrun")
	for i, s := range seeds {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(s)))
		if err := os.WriteFile(filepath.Join(dir, names[i]), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
