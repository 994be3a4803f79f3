package main

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

// fakeLRO plays interfaces with LRO, which no virtual interface has.
type fakeLRO struct {
	mu  sync.Mutex
	on  map[string]bool
	log []string
}

func (f *fakeLRO) LRO(ifname string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.on[ifname], nil
}

func (f *fakeLRO) SetLRO(ifname string, on bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.on[ifname] = on
	f.log = append(f.log, ifname+" "+onOff(on))
	return nil
}

func (f *fakeLRO) state(ifname string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.on[ifname]
}

func flags(t *testing.T, ifname string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(run(t, "cat", "/sys/class/net/"+ifname+"/flags")), "0x"), 16, 32)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestOffloadsWhileBridged: LRO goes off with the first VM on an
// interface and on again with the last; the change is written down
// first, so a plugin killed meanwhile gives it back when it starts. The
// interface is promiscuous exactly while bridged.
func TestOffloadsWhileBridged(t *testing.T) {
	newLAN(t, false)
	dir := t.TempDir()
	lro := &fakeLRO{on: map[string]bool{uplinkIf: true}}
	p, err := newPlugin(sdk.Env{DataDir: dir, Settings: envSettings, Logger: testLogger(t)}, hostView{sysfs: "/sys", route: "/proc/thread-self/net/route"}, lro)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	noted := func() bool {
		_, err := os.Stat(filepath.Join(dir, offloadsFile))
		return err == nil
	}
	for i, name := range []string{"vm1", "vm2"} {
		if _, err := p.Attach(t.Context(), &sdk.AttachRequest{VM: vmRef(name), Card: card("", byte(i+1)), RunDir: frameiotest.TempDir(t)}); err != nil {
			t.Fatal(err)
		}
	}
	if lro.state(uplinkIf) || !noted() || flags(t, uplinkIf)&unix.IFF_PROMISC == 0 {
		t.Errorf("bridged: LRO %v, noted %v, flags %#x; want LRO off, noted, promiscuous", lro.state(uplinkIf), noted(), flags(t, uplinkIf))
	}
	if d := status(t, p, vmRef("vm1")).Details["offloads"]; !strings.Contains(d, "LRO off on uplink0") {
		t.Errorf("Details offloads %q", d)
	}
	p.Detach(t.Context(), &sdk.DetachRequest{VM: vmRef("vm1")})
	if lro.state(uplinkIf) {
		t.Error("LRO back on while vm2 is still bridged")
	}
	p.Detach(t.Context(), &sdk.DetachRequest{VM: vmRef("vm2")})
	if !lro.state(uplinkIf) || noted() || flags(t, uplinkIf)&unix.IFF_PROMISC != 0 {
		t.Errorf("after the last Detach: LRO %v, noted %v, flags %#x; want LRO on, nothing noted, not promiscuous", lro.state(uplinkIf), noted(), flags(t, uplinkIf))
	}
	if got := strings.Join(lro.log, ", "); got != "uplink0 off, uplink0 on" {
		t.Errorf("LRO switched: %s", got)
	}

	// Killed while bridged: the next start gives LRO back.
	if _, err := p.Attach(t.Context(), &sdk.AttachRequest{VM: vmRef("vm1"), Card: card("", 1), RunDir: frameiotest.TempDir(t)}); err != nil {
		t.Fatal(err)
	}
	after := &fakeLRO{on: map[string]bool{uplinkIf: false}}
	q, err := newPlugin(sdk.Env{DataDir: dir, Logger: testLogger(t)}, hostView{sysfs: "/sys", route: "/proc/thread-self/net/route"}, after)
	if err != nil {
		t.Fatal(err)
	}
	q.Close()
	if !after.state(uplinkIf) || noted() {
		t.Errorf("a plugin started after a crash left LRO %v, noted %v", after.state(uplinkIf), noted())
	}
}

// TestEthtool: the SIOCETHTOOL calls work on a real interface: GRO read,
// switched and switched back; LRO read (a veth has none to switch).
func TestEthtool(t *testing.T) {
	newLAN(t, false)
	was, err := gro(uplinkIf)
	if err != nil {
		t.Fatal(err)
	}
	if err := setGRO(uplinkIf, !was); err != nil {
		t.Fatal(err)
	}
	if now, err := gro(uplinkIf); err != nil || now == was {
		t.Errorf("GRO %v after switching it from %v: %v", now, was, err)
	}
	if err := setGRO(uplinkIf, was); err != nil {
		t.Fatal(err)
	}
	if on, err := lro(uplinkIf); err != nil || on {
		t.Errorf("LRO of a veth: %v, %v", on, err)
	}
	if err := setLRO(uplinkIf, true); !errors.Is(err, unix.EOPNOTSUPP) {
		t.Errorf("switching on LRO of a veth: %v; want EOPNOTSUPP", err)
	}
	if _, err := lro("nosuch0"); !errors.Is(err, unix.ENODEV) {
		t.Errorf("LRO of a missing interface: %v", err)
	}
}
