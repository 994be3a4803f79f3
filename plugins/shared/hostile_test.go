package main

import (
	"encoding/binary"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/anka-net/anka/plugins/shared/routed/routedtest"
	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/host"
	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"github.com/anka-net/anka/sdk/netkit/lan/lantest"
	"github.com/anka-net/anka/sdk/netkit/vswitch"
)

// TestBinaryHostileInput: the real anka-net-shared binary, in the test's
// namespaces, with two guests (network namespaces behind its sockets,
// getting leases by udhcpc and pinging) and two hostile VMs on the same
// network: one writing junk datagrams (runts, random bytes, past the MTU,
// past 64 KiB, a flood of 20,000 DHCP DISCOVERs it never reads the
// answers to), one writing impossible stream length prefixes and frames
// cut short. The plugin process stays up, counts the junk on the hostile
// ports in Status, and the guests keep reaching each other and the host
// and renewing their leases, during the attack and after it.
func TestBinaryHostileInput(t *testing.T) {
	_, launch := routedtest.BinaryLauncher(t, "shared", "info")
	pl := launch()
	defer pl.Kill()
	attach := func(name string, n byte, kinds []sdk.EndpointKind) (sdk.VMRef, sdk.Endpoint) {
		vm := vmRef(name)
		resp, err := pl.Client().Attach(t.Context(), &sdk.AttachRequest{VM: vm, Card: sdk.Card{Type: "shared", DynamicMAC: dyn(n)}, Endpoints: kinds, RunDir: frameiotest.TempDir(t)})
		if err != nil {
			t.Fatalf("Attach %s: %v", name, err)
		}
		return vm, resp.Endpoint
	}
	_, epA := attach("good-a", 1, routedtest.Sockets)
	_, epB := attach("good-b", 2, []sdk.EndpointKind{sdk.EndpointStream})
	vmH, epH := attach("hostile-dgram", 3, routedtest.Sockets)
	vmS, epS := attach("hostile-stream", 4, []sdk.EndpointKind{sdk.EndpointStream})
	a, b := routedtest.NewGuest(t, epA), routedtest.NewGuest(t, epB)
	la, lb := a.DHCP(t), b.DHCP(t)
	goodTraffic := func(phase string) {
		t.Helper()
		if !a.Reaches(lb.IP, 5*time.Second) || !b.Reaches(la.IP, 5*time.Second) {
			t.Errorf("%s: the good guests do not reach each other", phase)
		}
		if !a.Reaches(gateway, 5*time.Second) {
			t.Errorf("%s: a good guest does not reach the host", phase)
		}
	}
	goodTraffic("before")

	// The hostile datagram VM.
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 1<<20)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: epH.VMPath}); err != nil {
		t.Fatal(err)
	}
	to := &unix.SockaddrUnix{Name: epH.PluginPath}
	macH, _ := net.ParseMAC(epH.MAC)
	frameSize := frameio.FrameSize(epH.MTU)
	rng := rand.New(rand.NewPCG(7, 7))
	junk := func(n int) []byte {
		buf := make([]byte, n)
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		return buf
	}
	var linkDrops uint64
	var sendErr error
	send := func(buf []byte) {
		if err := unix.Sendto(fd, buf, 0, to); err != nil {
			if sendErr == nil {
				sendErr = err
			}
			return
		}
		if len(buf) < frameio.MinFrameLen || len(buf) > frameSize {
			linkDrops++
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for n := 0; n < frameio.MinFrameLen; n++ {
			send(junk(n))
		}
		for _, n := range []int{frameSize + 1, 9018, 65535, 100_000} {
			send(junk(n))
		}
		for i := range 2000 {
			f := junk(rng.IntN(frameSize + 64))
			if i%2 == 0 && len(f) >= 12 {
				copy(f[6:12], macH)
			}
			send(f)
		}
		disc, err := lantest.DHCPFrame(macH, net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, netip.IPv4Unspecified(), netip.Addr{}, discover(macH))
		if err != nil {
			sendErr = err
			return
		}
		for range 20_000 {
			send(disc)
		}
	}()
	// The hostile stream VM.
	var streamDrops uint64
	for _, data := range [][]byte{
		{0xff, 0xff, 0xff, 0xff},
		{0, 0, 0, 0},
		binary.BigEndian.AppendUint32(nil, uint32(frameSize+1)),
		append(binary.BigEndian.AppendUint32(nil, 100), junk(50)...), // cut short
	} {
		c, err := net.Dial("unix", epS.PluginPath)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(data)
		if len(data) == 4 {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.Copy(io.Discard, c); err != nil {
				t.Errorf("a malformed stream length: the plugin did not close the connection: %v", err)
			}
		}
		c.Close()
		streamDrops++
		waitDetail(t, pl, vmS, streamDrops)
	}
	// While the junk flows: the guests talk and renew.
	goodTraffic("during")
	if l := a.DHCP(t); l.IP != la.IP {
		t.Errorf("a good guest renewing during the attack got %v; it had %v", l.IP, la.IP)
	}
	<-done
	if sendErr != nil {
		t.Fatalf("the hostile VM could not send: %v", sendErr)
	}
	if got := waitDetail(t, pl, vmH, linkDrops); got != linkDrops {
		t.Errorf("the plugin counts %d frames from the hostile datagram VM dropped at its socket; it sent %d runts and oversize datagrams", got, linkDrops)
	}
	if err := syscall.Kill(pl.Pid(), 0); err != nil {
		t.Fatalf("the plugin process is gone: %v", err)
	}
	st, err := pl.Client().Status(t.Context(), &sdk.StatusRequest{VM: vmH, Type: "shared"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("hostile dgram VM: %d frames from it, %d dropped; %v", st.Counters["frames_from_vm"], st.Counters["frames_dropped"], st.Details)
	goodTraffic("after")
	if l := b.DHCP(t); l.IP != lb.IP {
		t.Errorf("a good guest renewing after the attack got %v; it had %v", l.IP, lb.IP)
	}
}

// waitDetail polls vm's count of frames dropped at its socket, as Status
// reports it, until it reaches want or 10 s pass, and returns it.
func waitDetail(t *testing.T, pl *host.Plugin, vm sdk.VMRef, want uint64) uint64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := pl.Client().Status(t.Context(), &sdk.StatusRequest{VM: vm, Type: "shared"})
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.ParseUint(st.Details["dropped: "+vswitch.DropLink], 10, 64)
		if n >= want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// discover is a minimal DHCPDISCOVER from hw: the BOOTP header, the
// magic cookie, option 53 and the end.
func discover(hw net.HardwareAddr) []byte {
	m := make([]byte, 240, 244)
	m[0], m[1], m[2] = 1, 1, 6 // BOOTREQUEST, Ethernet, 6-byte address
	binary.BigEndian.PutUint32(m[4:], 0x616e6b61)
	copy(m[28:], hw)
	binary.BigEndian.PutUint32(m[236:], 0x63825363)
	return append(m, 53, 1, 1, 255)
}
