package main

import (
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anka-net/anka/plugins/shared/routed/routedtest"
	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"github.com/anka-net/anka/sdk/netkit/lan/lantest"
)

// BenchmarkFastPath measures TCP throughput between a namespace guest and
// the host over the kernel fast path (a veth standing in for the VM's TAP:
// the same bridge, the same anti-spoofing rules, the guest's address from
// the plugin's DHCP server) against a plain veth straight to the host, in
// the same run, interleaved, both ways. The target is a ratio of
// at least 0.9 (bridge/veth); the figures are reported, never asserted.
//
//	go test -run '^$' -bench FastPath ./plugins/shared/
func BenchmarkFastPath(b *testing.B) {
	for _, mtu := range []int{1500, 65520} {
		b.Run("mtu="+strconv.Itoa(mtu), func(b *testing.B) { benchFastPath(b, mtu) })
	}
}

// stream is one TCP connection with a reader counting what arrived.
type stream struct {
	w    net.Conn
	got  atomic.Int64
	sent int64
}

// send writes n bytes and waits until the other end has read them all.
func (s *stream) send(b *testing.B, buf []byte, n int64) time.Duration {
	start := time.Now()
	for left := n; left > 0; {
		k := min(int64(len(buf)), left)
		if _, err := s.w.Write(buf[:k]); err != nil {
			b.Fatal(err)
		}
		left -= k
	}
	s.sent += n
	for s.got.Load() < s.sent {
		time.Sleep(50 * time.Microsecond)
	}
	return time.Since(start)
}

// connect opens a stream from dial's side to a listener at ln's side:
// listen and dial run where their sockets must live.
func connect(b *testing.B, listen func() (net.Listener, error), dial func(addr string) (net.Conn, error), at netip.Addr) *stream {
	b.Helper()
	ln, err := listen()
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	s := &stream{}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
		buf := make([]byte, 1<<20)
		for {
			n, err := c.Read(buf)
			s.got.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	var w net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; {
		if w, err = dial(net.JoinHostPort(at.String(), strconv.Itoa(port))); err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("dialing %v: %v", at, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	r, ok := <-accepted
	if !ok {
		b.Fatal("accept failed")
	}
	b.Cleanup(func() { w.Close(); r.Close() })
	s.w = w
	return s
}

// pair is a guest namespace and the host, one stream each way.
type pair struct {
	up, down *stream // guest -> host, host -> guest
}

func streams(b *testing.B, g *frameiotest.Netns, guestIP, hostIP netip.Addr) pair {
	inGuest := func(f func() error) error { return g.Run(f) }
	hostListen := func() (net.Listener, error) { return net.Listen("tcp4", hostIP.String()+":0") }
	guestDial := func(addr string) (c net.Conn, err error) {
		err = inGuest(func() error { c, err = net.DialTimeout("tcp4", addr, time.Second); return err })
		return c, err
	}
	guestListen := func() (ln net.Listener, err error) {
		err = inGuest(func() error { ln, err = net.Listen("tcp4", guestIP.String()+":0"); return err })
		return ln, err
	}
	hostDial := func(addr string) (net.Conn, error) { return net.DialTimeout("tcp4", addr, time.Second) }
	return pair{up: connect(b, hostListen, guestDial, hostIP), down: connect(b, guestListen, hostDial, guestIP)}
}

func ip(b *testing.B, args ...string) {
	b.Helper()
	if out, err := exec("ip", args...); err != nil {
		b.Fatalf("ip %v: %v: %s", args, err, out)
	}
}

func benchFastPath(b *testing.B, mtu int) {
	routedtest.Skip(b)
	mtuS := strconv.Itoa(mtu)

	// The kernel limit: a veth straight to the host.
	gv := frameiotest.NewNetns(b)
	ip(b, "link", "add", "bv0", "mtu", mtuS, "type", "veth", "peer", "name", "eth0", "mtu", mtuS, "netns", gv.Name)
	b.Cleanup(func() { exec("ip", "link", "del", "bv0") })
	ip(b, "addr", "add", "10.200.0.1/24", "dev", "bv0")
	ip(b, "link", "set", "bv0", "up")
	gv.IP(b, "addr", "add", "10.200.0.2/24", "dev", "eth0")
	gv.IP(b, "link", "set", "eth0", "up")
	gv.IP(b, "link", "set", "lo", "up")
	veth := streams(b, gv, netip.MustParseAddr("10.200.0.2"), netip.MustParseAddr("10.200.0.1"))

	// The fast path: the VM's TAP, replaced by a veth of the same name on
	// the plugin's bridge, so the guest is a kernel stack with no relay
	// (as a VM with vhost-net has none), behind the same rules.
	p, err := New(sdk.Env{DataDir: b.TempDir(), Settings: map[string]string{"mtu": mtuS}, Logger: routedtest.Quiet})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	resp, err := p.Attach(b.Context(), &sdk.AttachRequest{VM: vmRef("bench"), Card: sdk.Card{Type: "shared", DynamicMAC: dyn(1)},
		Endpoints: routedtest.QEMU, RunDir: frameiotest.TempDir(b)})
	if err != nil || resp.Endpoint.Kind != sdk.EndpointTAP {
		b.Fatalf("Attach: %+v %v", resp, err)
	}
	tap := resp.Endpoint.TAP
	gb := frameiotest.NewNetns(b)
	ip(b, "link", "del", tap)
	ip(b, "link", "add", tap, "mtu", mtuS, "type", "veth", "peer", "name", "eth0", "mtu", mtuS, "netns", gb.Name)
	b.Cleanup(func() { exec("ip", "link", "del", tap) }) // a veth: the plugin removes only TAPs
	ip(b, "link", "set", tap, "master", bridgeName, "up")
	gb.IP(b, "link", "set", "eth0", "address", dyn(1))
	gb.IP(b, "link", "set", "eth0", "up")
	gb.IP(b, "link", "set", "lo", "up")
	mac, _ := net.ParseMAC(dyn(1))
	lease := lantest.GuestIn(b, gb, mac).DHCP(b)
	fast := streams(b, gb, lease.IP, gateway)

	buf := make([]byte, 256<<10)
	const chunk = 64 << 20
	// Warm up both (TCP windows, ARP, the bridge's tables).
	for _, s := range []*stream{veth.up, veth.down, fast.up, fast.down} {
		s.send(b, buf, 8<<20)
	}
	// Each iteration times both paths back to back, in alternating
	// order; the ratio reported is the median of the iterations', which
	// a burst of other load on the machine moves least.
	var tv, tf [2]time.Duration
	var ratios [2][]float64
	b.SetBytes(4 * chunk)
	b.ResetTimer()
	for i := range b.N {
		for dir, pv := range [2]*stream{veth.up, veth.down} {
			pf := [2]*stream{fast.up, fast.down}[dir]
			var v, f time.Duration
			if i%2 == 0 {
				v, f = pv.send(b, buf, chunk), pf.send(b, buf, chunk)
			} else {
				f, v = pf.send(b, buf, chunk), pv.send(b, buf, chunk)
			}
			tv[dir], tf[dir] = tv[dir]+v, tf[dir]+f
			ratios[dir] = append(ratios[dir], v.Seconds()/f.Seconds())
		}
	}
	b.StopTimer()
	gbps := func(d time.Duration) float64 { return float64(b.N) * chunk * 8 / d.Seconds() / 1e9 }
	b.ReportMetric(gbps(tv[0]), "veth-up-Gbit/s")
	b.ReportMetric(gbps(tf[0]), "bridge-up-Gbit/s")
	b.ReportMetric(gbps(tv[1]), "veth-down-Gbit/s")
	b.ReportMetric(gbps(tf[1]), "bridge-down-Gbit/s")
	b.ReportMetric(median(ratios[0]), "ratio-up")
	b.ReportMetric(median(ratios[1]), "ratio-down")
	if st, err := p.Status(b.Context(), &sdk.StatusRequest{VM: vmRef("bench")}); err == nil {
		b.Logf("fast path %s: %s; drops %d", lease.IP, st.Path, st.Counters["frames_dropped"])
	}
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if n := len(s); n%2 == 1 {
		return s[n/2]
	} else {
		return (s[n/2-1] + s[n/2]) / 2
	}
}
