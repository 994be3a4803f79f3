package portfwd

import (
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

// TestWildcardHostIP listens on 0.0.0.0 (the zero HostIP) inside a network
// namespace of its own, so nothing is bound on the host's interfaces. The
// guests stay in the test's namespace: sessions and guest connections are
// opened by the forwarder's goroutines, outside the namespace thread.
//
// A client that writes to 127.0.0.2 must get its UDP answer from
// 127.0.0.2, not from 127.0.0.1 (the address the kernel picks towards the
// client), or its connected socket discards the answer.
func TestWildcardHostIP(t *testing.T) {
	ns := frameiotest.NewNetns(t) // skips unless root
	ns.IP(t, "link", "set", "lo", "up")
	g := startTCPGuest(t, "127.0.0.1", 0, echo)
	uguest := udpEcho(t, "127.0.0.1", 0, "re:")
	f := newForwarder(t)
	err := ns.Run(func() error {
		if err := f.Add(Rule{Name: "t", Proto: "tcp", GuestPort: int(g.addr.Port())}, fixed(loopback)); err != nil {
			return err
		}
		return f.Add(Rule{Name: "u", Proto: "udp", GuestPort: int(uguest.Port())}, fixed(loopback))
	})
	if err != nil {
		t.Fatal(err)
	}
	rules := f.Rules()
	for _, r := range rules {
		if r.HostIP != netip.IPv4Unspecified() {
			t.Errorf("rule %q listens on %v, want 0.0.0.0", r.Name, r.HostIP)
		}
	}
	tcpPort, udpPort := uint16(rules[0].HostPort), uint16(rules[1].HostPort)

	for _, dst := range []string{"127.0.0.1", "127.0.0.2"} {
		var (
			uc *net.UDPConn
			tc *net.TCPConn
		)
		err := ns.Run(func() (err error) {
			ip := netip.MustParseAddr(dst)
			uc, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, udpPort)))
			if err != nil {
				return err
			}
			tc, err = net.DialTCP("tcp4", nil, net.TCPAddrFromAddrPort(netip.AddrPortFrom(ip, tcpPort)))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if got := exchangeUDP(t, uc, dst, 5*time.Second); got != "re:"+dst {
			t.Errorf("UDP to %s: got %q, want an answer from %s", dst, got, dst)
		}
		uc.Close()
		tc.Write([]byte("ok"))
		tc.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 2)
		if _, err := io.ReadFull(tc, buf); err != nil || string(buf) != "ok" {
			t.Errorf("TCP to %s: %q, %v", dst, buf, err)
		}
		tc.Close()
	}
	if n := f.udp("u").sessionCount(); n != 2 {
		t.Errorf("%d sessions, want 2", n)
	}
}
