package lan_test

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"github.com/anka-net/anka/sdk/netkit/lan"
	"github.com/anka-net/anka/sdk/netkit/lan/lantest"
	"github.com/anka-net/anka/sdk/netkit/vswitch"
)

// fakeBridge records what the LAN asks of the kernel bridge.
type fakeBridge struct {
	mu      sync.Mutex
	ports   map[string]net.HardwareAddr
	pins    map[string]netip.Addr
	removed []string
	seen    bool
	keep    map[string]bool // TAPs "left by an earlier run"
}

var svcMAC = net.HardwareAddr{0x02, 0x5e, 0, 0, 0, 1}

func newFakeBridge() *fakeBridge {
	return &fakeBridge{ports: map[string]net.HardwareAddr{}, pins: map[string]netip.Addr{}, keep: map[string]bool{}}
}

func (b *fakeBridge) ServiceMAC() net.HardwareAddr { return svcMAC }
func (b *fakeBridge) PortName(id string) string    { return "akt-" + id }

func (b *fakeBridge) AddPort(id string, mac net.HardwareAddr) (string, bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	name := b.PortName(id)
	b.ports[name] = mac
	b.pins[name] = netip.Addr{}
	return name, b.keep[name], nil
}

func (b *fakeBridge) PinPort(name string, ip netip.Addr) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.ports[name]; !ok {
		return errors.New("no such port")
	}
	b.pins[name] = ip
	return nil
}

func (b *fakeBridge) pin(name string) netip.Addr {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.pins[name]
}

func (b *fakeBridge) PortStats(name string) (vswitch.Stats, bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return vswitch.Stats{RxFrames: 7, TxFrames: 9, Drops: map[string]uint64{"source IP not the port's": 2}}, b.seen, nil
}

func (b *fakeBridge) RemovePort(name string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.ports, name)
	b.removed = append(b.removed, name)
	return nil
}

func (b *fakeBridge) CapturePort(name string, sink func([]byte)) (func(), error) {
	return nil, errors.New("no capture in the fake")
}

var _ lan.Bridge = (*fakeBridge)(nil)

// TestBridgeEndpoints: with a bridge the LAN hands a TAP to a VM offered
// one without an internal MAC, and sockets otherwise; its DHCP, steered by
// the bridge through the host link, is answered from the service MAC and
// pins the TAP; Detach removes it.
func TestBridgeEndpoints(t *testing.T) {
	cfg := config(t, t.TempDir())
	a, host := frameio.Pipe(cfg.MTU)
	br := newFakeBridge()
	cfg.HostLink, cfg.Bridge = a, br
	l, err := lan.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	qemu := []frameio.Kind{frameio.KindDgram, frameio.KindTAP}
	v := lan.VM{ID: "id-1", Name: "vm1", DynamicMAC: mac(1)}

	ep, err := l.Attach(lan.AttachRequest{VM: v, Kinds: qemu, RunDir: frameiotest.TempDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	if ep.Kind != frameio.KindTAP || ep.TAP != "akt-id-1" || ep.PluginPath != "" || !bytes.Equal(ep.MAC, mac(1)) {
		t.Fatalf("endpoint %+v", ep)
	}
	if again, _ := l.Attach(lan.AttachRequest{VM: v, Kinds: qemu}); again.TAP != ep.TAP {
		t.Errorf("attached again: %+v", again)
	}
	// The bridge delivers the VM's DHCP to the switch through the host
	// link, from the VM's MAC (which it pins).
	c := lantest.NewClient(t, host, mac(1))
	le, err := c.DORA(5 * time.Second)
	if err != nil {
		t.Fatalf("DHCP through the host link: %v", err)
	}
	if got := br.pin(ep.TAP); got != le.IP {
		t.Errorf("the TAP is pinned to %v; the lease is %v", got, le.IP)
	}
	st, _ := l.Status(v.ID)
	if st.IP != le.IP || st.Endpoint.TAP != ep.TAP || st.Port.RxFrames != 7 || st.Port.Drops["source IP not the port's"] != 2 {
		t.Errorf("Status %+v", st)
	}
	if a, ok := l.Addr(v.ID); !ok || a != le.IP {
		t.Errorf("Addr %v %v", a, ok)
	}
	// A stranger's DHCP on the host link is not answered.
	stranger := lantest.NewClient(t, host, mac(9))
	if _, err := stranger.DORA(500 * time.Millisecond); err == nil {
		t.Error("DHCP from a MAC no fast-path VM has was answered")
	}
	if err := l.StartCapture(v.ID, filepath.Join(t.TempDir(), "x.pcap"), 0); err == nil || !strings.Contains(err.Error(), ep.TAP) {
		t.Errorf("a capture the bridge cannot make: %v", err)
	}

	l.Detach(v.ID)
	if len(br.removed) != 1 || br.removed[0] != ep.TAP {
		t.Errorf("Detach removed %v", br.removed)
	}
	// Detach of a VM this run never attached removes a TAP an earlier run
	// may have left for it.
	l.Detach("id-other")
	if br.removed[len(br.removed)-1] != "akt-id-other" {
		t.Errorf("removed %v", br.removed)
	}

	// Internal MAC: sockets, whatever is offered first.
	clone := lan.VM{ID: "id-2", Name: "clone", DynamicMAC: mac(2), InternalMAC: net.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}}
	ep2, err := l.Attach(lan.AttachRequest{VM: clone, Kinds: []frameio.Kind{frameio.KindTAP, frameio.KindDgram}, RunDir: frameiotest.TempDir(t)})
	if err != nil || ep2.Kind != frameio.KindDgram {
		t.Errorf("a VM with an internal MAC: %+v %v", ep2, err)
	}
	_, err = l.Attach(lan.AttachRequest{VM: lan.VM{ID: "id-3", DynamicMAC: mac(3), InternalMAC: net.HardwareAddr{0x52, 0x54, 0, 0, 0, 2}}, Kinds: []frameio.Kind{frameio.KindTAP}})
	if lan.KindOf(err) != lan.Unsupported || !strings.Contains(err.Error(), "internal MAC") {
		t.Errorf("a VM with an internal MAC offered a TAP only: %v", err)
	}

	// A VM whose datagram socket is live (running on sockets across a
	// plugin restart) keeps its socket.
	dir := frameiotest.TempDir(t)
	vmSock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "t-vm.sock"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer vmSock.Close()
	ep4, err := l.Attach(lan.AttachRequest{VM: lan.VM{ID: "id-4", DynamicMAC: mac(4)}, Kinds: qemu, RunDir: dir})
	if err != nil || ep4.Kind != frameio.KindDgram {
		t.Errorf("a running socket VM attached again: %+v %v", ep4, err)
	}
}

// TestBridgeAdopted: a TAP taken back from an earlier run keeps its VM's
// pinned lease, and Status reports the address once the bridge saw the
// guest use it (no DHCP since the restart).
func TestBridgeAdopted(t *testing.T) {
	dir := t.TempDir()
	cfg := config(t, dir)
	a, host := frameio.Pipe(cfg.MTU)
	br := newFakeBridge()
	cfg.HostLink, cfg.Bridge = a, br
	l, err := lan.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	v := lan.VM{ID: "id-1", Name: "vm1", DynamicMAC: mac(1)}
	qemu := []frameio.Kind{frameio.KindDgram, frameio.KindTAP}
	ep, err := l.Attach(lan.AttachRequest{VM: v, Kinds: qemu})
	if err != nil {
		t.Fatal(err)
	}
	le, err := lantest.NewClient(t, host, mac(1)).DORA(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if len(br.removed) != 0 {
		t.Errorf("Close removed %v: a running VM's TAP is the bridge owner's to keep", br.removed)
	}

	a2, _ := frameio.Pipe(cfg.MTU)
	cfg.HostLink = a2
	br.keep[ep.TAP] = true
	l, err = lan.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.Attach(lan.AttachRequest{VM: v, Kinds: qemu}); err != nil {
		t.Fatal(err)
	}
	if got := br.pin(ep.TAP); got != le.IP {
		t.Errorf("the TAP taken back is pinned to %v; want the lease %v", got, le.IP)
	}
	if st, _ := l.Status(v.ID); st.IP.IsValid() || st.Pinned != le.IP {
		t.Errorf("Status before the guest spoke: %+v", st)
	}
	br.mu.Lock()
	br.seen = true
	br.mu.Unlock()
	if st, _ := l.Status(v.ID); st.IP != le.IP {
		t.Errorf("Status after the bridge saw the guest: IP %v; want %v", st.IP, le.IP)
	}
}

// TestNoBridgeNoTAP: without a bridge a TAP is not handed out.
func TestNoBridgeNoTAP(t *testing.T) {
	tl := start(t, config(t, t.TempDir()))
	_, err := tl.Attach(lan.AttachRequest{VM: lan.VM{ID: "id-1", DynamicMAC: mac(1)}, Kinds: []frameio.Kind{frameio.KindTAP}, RunDir: frameiotest.TempDir(t)})
	if lan.KindOf(err) != lan.Unsupported {
		t.Errorf("a TAP without a bridge: %v", err)
	}
	ep, err := tl.Attach(lan.AttachRequest{VM: lan.VM{ID: "id-1", DynamicMAC: mac(1)}, Kinds: []frameio.Kind{frameio.KindTAP, frameio.KindDgram}, RunDir: frameiotest.TempDir(t)})
	if err != nil || ep.Kind != frameio.KindDgram {
		t.Errorf("offered a TAP and a socket without a bridge: %+v %v", ep, err)
	}
}
