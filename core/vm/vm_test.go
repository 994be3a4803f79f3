package vm

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/anka-net/anka/core/errs"
	"github.com/anka-net/anka/core/macpool"
	"github.com/anka-net/anka/core/runtime"
	"github.com/anka-net/anka/core/runtime/runtimetest"
)

// recHooks records hook calls in order.
type recHooks struct {
	mu    sync.Mutex
	calls []string
}

func (h *recHooks) rec(s string) {
	h.mu.Lock()
	h.calls = append(h.calls, s)
	h.mu.Unlock()
}

func (h *recHooks) take() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := strings.Join(h.calls, ",")
	h.calls = nil
	return s
}

func (h *recHooks) BeforeStart(_ context.Context, v *VM, dyn string) (*runtime.NIC, error) {
	h.rec("before-start")
	if v.NetworkCard == nil {
		return nil, nil
	}
	return &runtime.NIC{Kind: "dgram"}, nil
}
func (h *recHooks) AfterStart(context.Context, *VM) error    { h.rec("after-start"); return nil }
func (h *recHooks) BeforeSuspend(context.Context, *VM) error { h.rec("before-suspend"); return nil }
func (h *recHooks) AfterResume(context.Context, *VM) error   { h.rec("after-resume"); return nil }
func (h *recHooks) AfterStop(context.Context, *VM) error     { h.rec("after-stop"); return nil }
func (h *recHooks) BeforeDelete(context.Context, *VM) error  { h.rec("before-delete"); return nil }
func (h *recHooks) CardRemoved(context.Context, *VM, *NetworkCard) error {
	h.rec("card-removed")
	return nil
}
func (h *recHooks) ValidateCard(context.Context, *VM, *NetworkCard) error { return nil }
func (h *recHooks) PortForwardsChanged(context.Context, *VM) error {
	h.rec("forwards-changed")
	return nil
}

func newManager(t *testing.T) (*Manager, *runtimetest.Fake, *recHooks) {
	t.Helper()
	dir := t.TempDir()
	store, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	idFile := filepath.Join(dir, "machine-id")
	os.WriteFile(idFile, []byte("0123456789abcdef0123456789abcdef\n"), 0o644)
	pool, err := macpool.Open(macpool.Options{Path: filepath.Join(dir, "macpool.yaml"), StateDir: dir, MachineIDPaths: []string{idFile}})
	if err != nil {
		t.Fatal(err)
	}
	rt := runtimetest.New()
	h := &recHooks{}
	return &Manager{
		Store: store, Runtime: rt, Hooks: h, MACs: pool,
		KnownType: func(s string) error {
			switch s {
			case "shared", "host", "bridge", "static", "disconnected":
				return nil
			}
			return errs.Invalidf("unknown network type %q", s)
		},
		SharedNet: netip.MustParsePrefix("192.168.64.0/24"), Gateway: netip.MustParseAddr("192.168.64.1"),
		PortBase: 10000,
	}, rt, h
}

func mkVM(t *testing.T, m *Manager, name string) {
	t.Helper()
	v := &VM{Name: name, Runtime: RuntimeSpec{Kernel: "/k", CPU: 1, RAMMiB: 256}, NetworkCard: &NetworkCard{Type: "shared"}}
	if err := m.Create(context.Background(), v); err != nil {
		t.Fatal(err)
	}
}

func TestStateMachine(t *testing.T) {
	ctx := context.Background()
	m, rt, h := newManager(t)
	mkVM(t, m, "vm1")
	steps := []struct {
		op    string
		want  State
		kind  errs.Kind // 0: success
		hooks string
	}{
		{"suspend", Stopped, errs.State, ""},
		{"stop", Stopped, errs.State, ""},
		{"start", Running, 0, "before-start,after-start"},
		{"start", Running, errs.State, ""},
		{"delete", Running, errs.State, ""},
		{"suspend", Suspended, 0, "before-suspend"},
		{"suspend", Suspended, errs.State, ""},
		{"start", Running, 0, "after-resume"},
		{"stop", Stopped, 0, "after-stop"},
		{"start", Running, 0, "before-start,after-start"},
		{"crash", Stopped, 0, ""},
		{"suspend", Stopped, errs.State, "after-stop"}, // the death is noticed once
		{"start", Running, 0, "before-start,after-start"},
		{"suspend", Suspended, 0, "before-suspend"},
		{"force-delete", "", 0, "after-stop,before-delete"},
	}
	for i, s := range steps {
		var err error
		switch s.op {
		case "start":
			_, err = m.Start(ctx, "vm1")
		case "stop":
			_, err = m.Stop(ctx, "vm1", false, 0)
		case "suspend":
			_, err = m.Suspend(ctx, "vm1")
		case "delete":
			err = m.Delete(ctx, "vm1", false)
		case "force-delete":
			err = m.Delete(ctx, "vm1", true)
		case "crash":
			rt.Crash(m.Store.Dir("vm1"))
		}
		if s.kind == 0 && err != nil {
			t.Fatalf("step %d %s: %v", i, s.op, err)
		}
		if s.kind != 0 && errs.KindOf(err) != s.kind {
			t.Fatalf("step %d %s: error %v, want kind %v", i, s.op, err, s.kind)
		}
		if got := h.take(); got != s.hooks {
			t.Fatalf("step %d %s: hooks %q, want %q", i, s.op, got, s.hooks)
		}
		if s.want == "" {
			continue
		}
		st, err := m.Get(ctx, "vm1")
		if err != nil {
			t.Fatal(err)
		}
		if st.State != s.want {
			t.Fatalf("step %d %s: state %s, want %s", i, s.op, st.State, s.want)
		}
	}
	if _, err := m.Get(ctx, "vm1"); !errs.Is(err, errs.NotFound) {
		t.Fatalf("deleted VM still there: %v", err)
	}
	if rt.Live() != 0 {
		t.Fatalf("%d VM processes left", rt.Live())
	}
}

func TestStartFailureUndoesAttach(t *testing.T) {
	ctx := context.Background()
	m, rt, h := newManager(t)
	mkVM(t, m, "vm1")
	rt.FailStart = fmt.Errorf("qemu exploded")
	if _, err := m.Start(ctx, "vm1"); err == nil || !strings.Contains(err.Error(), "exploded") {
		t.Fatalf("start error %v", err)
	}
	if got := h.take(); got != "before-start,after-stop" {
		t.Fatalf("hooks %q", got)
	}
	st, _ := m.Get(ctx, "vm1")
	if st.State != Stopped {
		t.Fatalf("state %s", st.State)
	}
}

func TestDynamicMACKeptAcrossRestartAndReleased(t *testing.T) {
	ctx := context.Background()
	m, rt, _ := newManager(t)
	mkVM(t, m, "a")
	mkVM(t, m, "b")
	st, err := m.Start(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	mac := st.DynamicMAC
	hw, _ := net.ParseMAC(mac)
	if hw == nil || hw[0]&2 == 0 || hw[0]&1 != 0 {
		t.Fatalf("dynamic MAC %q is not locally administered unicast", mac)
	}
	if got := rt.Starts[0].NIC.MAC.String(); got != mac {
		t.Fatalf("guest NIC MAC %s, want the dynamic %s", got, mac)
	}
	m.Stop(ctx, "a", true, 0)
	st, _ = m.Start(ctx, "a")
	if st.DynamicMAC != mac {
		t.Fatalf("MAC changed across restart: %s -> %s", mac, st.DynamicMAC)
	}
	if err := m.Delete(ctx, "a", true); err != nil {
		t.Fatal(err)
	}
	st, _ = m.Start(ctx, "b")
	if st.DynamicMAC != mac {
		t.Fatalf("released MAC %s not reused, got %s", mac, st.DynamicMAC)
	}
}

func TestStaticInternalMACGoesToGuest(t *testing.T) {
	ctx := context.Background()
	m, rt, _ := newManager(t)
	mkVM(t, m, "a")
	mac := "52:54:00:12:34:56"
	if _, err := m.SetCard(ctx, "a", CardChange{MAC: &mac}, false); err != nil {
		t.Fatal(err)
	}
	st, err := m.Start(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if got := rt.Starts[0].NIC.MAC.String(); got != mac || st.DynamicMAC == mac || st.DynamicMAC == "" {
		t.Fatalf("guest MAC %s (want %s), dynamic %s", got, mac, st.DynamicMAC)
	}
}

func strp(s string) *string { return &s }

func TestSetCardValidation(t *testing.T) {
	ctx := context.Background()
	m, _, _ := newManager(t)
	mkVM(t, m, "a")
	mkVM(t, m, "b")
	if _, err := m.SetCard(ctx, "b", CardChange{Type: strp("static"), IP: strp("192.168.64.50")}, false); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		ch   CardChange
		add  bool
		kind errs.Kind
		msg  string
	}{
		{"unknown type", CardChange{Type: strp("wifi")}, false, errs.Invalid, "wifi"},
		{"bad mac", CardChange{MAC: strp("zz:00")}, false, errs.Invalid, "zz:00"},
		{"multicast mac", CardChange{MAC: strp("01:00:5e:00:00:01")}, false, errs.Invalid, "01:00:5e"},
		{"ip without static", CardChange{IP: strp("192.168.64.9")}, false, errs.Invalid, "static"},
		{"static without ip", CardChange{Type: strp("static")}, false, errs.Invalid, "--ip"},
		{"outside subnet", CardChange{Type: strp("static"), IP: strp("10.0.0.5")}, false, errs.Invalid, "outside"},
		{"gateway", CardChange{Type: strp("static"), IP: strp("192.168.64.1")}, false, errs.Invalid, "gateway"},
		{"broadcast", CardChange{Type: strp("static"), IP: strp("192.168.64.255")}, false, errs.Invalid, "broadcast"},
		{"taken", CardChange{Type: strp("static"), IP: strp("192.168.64.50")}, false, errs.Conflict, "VM b"},
		{"bridge on shared", CardChange{Bridge: strp("eth0")}, false, errs.Invalid, "-t bridge"},
		{"bad ifname", CardChange{Type: strp("bridge"), Bridge: strp("../x")}, false, errs.Invalid, "interface"},
		{"second card", CardChange{}, true, errs.Conflict, "already has"},
	} {
		before, _ := os.ReadFile(filepath.Join(m.Store.Dir("a"), FileName))
		_, err := m.SetCard(ctx, "a", tc.ch, tc.add)
		if errs.KindOf(err) != tc.kind || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: got %v, want kind %v mentioning %q", tc.name, err, tc.kind, tc.msg)
		}
		after, _ := os.ReadFile(filepath.Join(m.Store.Dir("a"), FileName))
		if string(before) != string(after) {
			t.Errorf("%s: vm.yaml changed on a refused change", tc.name)
		}
	}
	// Running VMs keep their card.
	m.Start(ctx, "a")
	if _, err := m.SetCard(ctx, "a", CardChange{Type: strp("host")}, false); !errs.Is(err, errs.State) || !strings.Contains(err.Error(), "stopped") {
		t.Fatalf("card change on running VM: %v", err)
	}
}

func TestPortForwards(t *testing.T) {
	ctx := context.Background()
	m, _, h := newManager(t)
	busy := map[int]bool{10001: true}
	m.Bindable = func(_, _ string, p int) bool { return !busy[p] }
	mkVM(t, m, "a")
	mkVM(t, m, "b")
	r, err := m.AddPortForward(ctx, "a", PortForward{Name: "ssh", GuestPort: 22})
	if err != nil || r.HostPort != 10000 || r.HostIP != "0.0.0.0" || r.Protocol != "tcp" {
		t.Fatalf("auto rule %+v %v", r, err)
	}
	r, err = m.AddPortForward(ctx, "b", PortForward{Name: "ssh", GuestPort: 22})
	if err != nil || r.HostPort != 10002 {
		t.Fatalf("second auto rule should skip used 10000 and busy 10001: %+v %v", r, err)
	}
	r, err = m.AddPortForward(ctx, "b", PortForward{Name: "dns", GuestPort: 53, Protocol: "udp"})
	if err != nil || r.HostPort != 10000 {
		t.Fatalf("udp has its own port space: %+v %v", r, err)
	}
	for _, tc := range []struct {
		name string
		vm   string
		r    PortForward
		kind errs.Kind
	}{
		{"dup name", "a", PortForward{Name: "ssh", GuestPort: 2222}, errs.Conflict},
		{"dup host port", "a", PortForward{Name: "web", GuestPort: 80, HostPort: 10002}, errs.Conflict},
		{"busy port", "a", PortForward{Name: "web", GuestPort: 80, HostPort: 10001}, errs.Conflict},
		{"bad guest port", "a", PortForward{Name: "web", GuestPort: 70000}, errs.Invalid},
		{"bad proto", "a", PortForward{Name: "web", GuestPort: 80, Protocol: "sctp"}, errs.Invalid},
		{"bad host ip", "a", PortForward{Name: "web", GuestPort: 80, HostIP: "localhost"}, errs.Invalid},
		{"bad rule name", "a", PortForward{Name: "a/b", GuestPort: 80}, errs.Invalid},
		{"unknown vm", "nope", PortForward{Name: "web", GuestPort: 80}, errs.NotFound},
	} {
		if _, err := m.AddPortForward(ctx, tc.vm, tc.r); errs.KindOf(err) != tc.kind {
			t.Errorf("%s: %v, want kind %v", tc.name, err, tc.kind)
		}
	}
	// A distinct host IP may reuse a port; 0.0.0.0 overlaps everything.
	if _, err := m.AddPortForward(ctx, "a", PortForward{Name: "lo", GuestPort: 80, HostPort: 10500, HostIP: "127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.AddPortForward(ctx, "b", PortForward{Name: "lo2", GuestPort: 80, HostPort: 10500, HostIP: "127.0.0.2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.AddPortForward(ctx, "b", PortForward{Name: "all", GuestPort: 80, HostPort: 10500}); !errs.Is(err, errs.Conflict) {
		t.Fatalf("0.0.0.0 should clash with 127.0.0.1: %v", err)
	}
	h.take()
	// Rules on a running VM apply at once.
	m.Start(ctx, "a")
	h.take()
	if _, err := m.AddPortForward(ctx, "a", PortForward{Name: "http", GuestPort: 80}); err != nil {
		t.Fatal(err)
	}
	if err := m.DeletePortForward(ctx, "a", "ssh", false); err != nil {
		t.Fatal(err)
	}
	if got := h.take(); got != "forwards-changed,forwards-changed" {
		t.Fatalf("hooks %q", got)
	}
	if err := m.DeletePortForward(ctx, "a", "ssh", false); !errs.Is(err, errs.NotFound) {
		t.Fatalf("deleting a missing rule: %v", err)
	}
	if err := m.DeletePortForward(ctx, "b", "", true); err != nil {
		t.Fatal(err)
	}
	st, _ := m.Get(ctx, "b")
	if len(st.NetworkCard.PortForwards) != 0 {
		t.Fatalf("--all left %v", st.NetworkCard.PortForwards)
	}
}

func TestConcurrentModifyLosesNothing(t *testing.T) {
	ctx := context.Background()
	m, _, _ := newManager(t)
	mkVM(t, m, "a")
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			// Each goroutine opens its own store, as separate processes would.
			m2 := *m
			m2.Store, _ = OpenStore(m.Store.StateDir())
			if _, err := m2.AddPortForward(ctx, "a", PortForward{Name: fmt.Sprintf("r%d", i), GuestPort: 1000 + i}); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	st, _ := m.Get(ctx, "a")
	if n := len(st.NetworkCard.PortForwards); n != 8 {
		t.Fatalf("%d rules after 8 concurrent adds", n)
	}
	seen := map[int]bool{}
	for _, r := range st.NetworkCard.PortForwards {
		if seen[r.HostPort] {
			t.Fatalf("host port %d given twice", r.HostPort)
		}
		seen[r.HostPort] = true
	}
}

func TestNamesAndFiles(t *testing.T) {
	for _, n := range []string{"", "a/b", "..", ".hidden", "a b", strings.Repeat("x", 65), "vm\x00"} {
		if err := ValidateName("VM", n); !errs.Is(err, errs.Invalid) {
			t.Errorf("name %q accepted", n)
		}
	}
	for _, n := range []string{"vm1", "a.b-c_d", strings.Repeat("x", 64)} {
		if err := ValidateName("VM", n); err != nil {
			t.Errorf("name %q refused: %v", n, err)
		}
	}
	m, _, _ := newManager(t)
	mkVM(t, m, "a")
	if err := m.Create(context.Background(), &VM{Name: "a", Runtime: RuntimeSpec{Kernel: "/k", CPU: 1}}); !errs.Is(err, errs.Conflict) {
		t.Fatalf("duplicate create: %v", err)
	}
	os.WriteFile(filepath.Join(m.Store.Dir("a"), FileName), []byte("name: [broken"), 0o644)
	if _, err := m.Get(context.Background(), "a"); !errs.Is(err, errs.Invalid) || !strings.Contains(err.Error(), FileName) {
		t.Fatalf("corrupt vm.yaml: %v", err)
	}
	mkVM(t, m, "b")
	vms, bad, err := m.List(context.Background())
	if err != nil || len(vms) != 1 || len(bad) != 1 {
		t.Fatalf("a corrupt VM must not hide the others: %d good, %v, %v", len(vms), bad, err)
	}
}

func TestRAM(t *testing.T) {
	for in, want := range map[string]int{"512M": 512, "2G": 2048, "1024": 1024, "1g": 1024, "256MiB": 256} {
		got, err := ParseRAM(in)
		if err != nil || got != want {
			t.Errorf("ParseRAM(%q) = %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "x", "-5M", "1T", "8M"} {
		if _, err := ParseRAM(in); err == nil {
			t.Errorf("ParseRAM(%q) accepted", in)
		}
	}
	if FormatRAM(2048) != "2G" || FormatRAM(512) != "512M" {
		t.Fatal(FormatRAM(2048), FormatRAM(512))
	}
}

// A VM whose process died is reconciled by ReconcileAll: stopped, with
// its stop hook run once.
func TestReconcileAll(t *testing.T) {
	m, rt, hooks := newManager(t)
	ctx := context.Background()
	for _, name := range []string{"a", "b"} {
		if err := m.Create(ctx, &VM{Name: name, UUID: NewUUID(), Runtime: RuntimeSpec{Kernel: "/k", CPU: 1, RAMMiB: 256}}); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Start(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	rt.Crash(m.Store.Dir("a"))
	hooks.take()
	if err := m.ReconcileAll(ctx); err != nil {
		t.Fatal(err)
	}
	if got := hooks.take(); got != "after-stop" {
		t.Fatalf("hooks after one VM died: %q, want one after-stop", got)
	}
	if v, _ := m.Store.Get("a"); v.State != Stopped {
		t.Fatalf("a is %s after its process died", v.State)
	}
	if v, _ := m.Store.Get("b"); v.State != Running {
		t.Fatalf("b is %s", v.State)
	}
	m.ReconcileAll(ctx)
	if got := hooks.take(); got != "" {
		t.Fatalf("hooks ran again: %q", got)
	}
}
