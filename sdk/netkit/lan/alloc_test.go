package lan

import (
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/vswitch"
)

// The LAN's hook on the forwarding path (DHCP, ARP) allocates nothing for
// the frames that are neither: every frame of a VM's traffic passes it.
func TestInterceptAllocatesNothing(t *testing.T) {
	a, b := frameio.Pipe(0)
	defer b.Close()
	gw := netip.MustParseAddr("10.64.0.1")
	l, err := New(Config{
		Name: "t", Prefix: netip.MustParsePrefix("10.64.0.0/24"), Gateway: gw,
		GatewayMAC: net.HardwareAddr{0x02, 0xa4, 0x6b, 0, 0, 1},
		RangeStart: netip.MustParseAddr("10.64.0.10"), RangeEnd: netip.MustParseAddr("10.64.0.20"),
		LeaseTime: time.Hour, DataDir: t.TempDir(), HostLink: a, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	vm, err := l.sw.AttachService(vswitch.PortConfig{Name: "vm", Identity: "vm-1"}, func([]frameio.Frame) {})
	if err != nil {
		t.Fatal(err)
	}
	// A TCP/IPv4 segment from the VM to the gateway.
	f := make([]byte, 1514)
	copy(f[0:], []byte{0x02, 0xa4, 0x6b, 0, 0, 1, 0x02, 0xa4, 0x6b, 0, 0, 2, 0x08, 0x00, 0x45})
	f[14+9] = 6
	copy(f[14+12:], []byte{10, 64, 0, 10, 10, 64, 0, 1})
	if allocs := testing.AllocsPerRun(100, func() {
		if l.intercept(vm, f) {
			t.Fatal("a TCP segment was intercepted")
		}
	}); allocs != 0 {
		t.Fatalf("%v allocations per frame in the LAN's interceptor", allocs)
	}
}
