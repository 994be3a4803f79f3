package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/anka-net/anka/plugins/shared/routed/routedtest"
	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/host"
	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"github.com/anka-net/anka/sdk/netkit/lan/lantest"
)

// TestBinaryChurnKill9: DHCP lease cycles through the real binary, which
// is killed with SIGKILL between phases and started again on the same
// data folder, as anka restarts a crashed plugin. 16 VMs on socket
// endpoints cycle (DISCOVER to ACK, then RELEASE or keep); after each
// kill the VMs are attached again and those holding a lease renew it and
// must get the same address. No address is ever ACKed to two VMs.
// TestBinaryChurnKill9Soak is the long run (make soak).
func TestBinaryChurnKill9(t *testing.T) {
	runBinaryChurn(t, 16, 20, 3)
}

func TestBinaryChurnKill9Soak(t *testing.T) {
	if os.Getenv("ANKA_SOAK") != "1" {
		t.Skip("the long run; set ANKA_SOAK=1 (make soak)")
	}
	runBinaryChurn(t, 16, 60, 10)
}

func runBinaryChurn(t *testing.T, nVMs, cyclesPerPhase, kills int) {
	_, launch := routedtest.BinaryLauncher(t, "shared", "info")
	type vm struct {
		ref    sdk.VMRef
		card   sdk.Card
		runDir string
		c      *lantest.Client
		held   netip.Addr
	}
	vms := make([]*vm, nVMs)
	for i := range vms {
		vms[i] = &vm{ref: vmRef(fmt.Sprintf("churn%02d", i)), card: sdk.Card{Type: "shared", DynamicMAC: dyn(byte(0x40 + i))}, runDir: frameiotest.TempDir(t)}
	}
	attachAll := func(pl *host.Plugin) {
		for _, v := range vms {
			resp, err := pl.Client().Attach(t.Context(), &sdk.AttachRequest{VM: v.ref, Card: v.card, Endpoints: routedtest.Sockets, RunDir: v.runDir})
			if err != nil {
				t.Fatal(err)
			}
			if v.c == nil {
				ep := resp.Endpoint
				mac, _ := net.ParseMAC(ep.MAC)
				v.c = lantest.NewClient(t, lantest.Open(t, lantest.Plug{Kind: frameio.Kind(ep.Kind), PluginPath: ep.PluginPath, VMPath: ep.VMPath, MAC: mac, MTU: ep.MTU}), mac)
			}
		}
	}

	var mu sync.Mutex
	owner := map[netip.Addr]string{}
	var acks, dups atomic.Uint64
	ack := func(id string, ip netip.Addr) {
		mu.Lock()
		defer mu.Unlock()
		acks.Add(1)
		if !inRange(ip) {
			t.Errorf("%s ACKed %v, outside the range", id, ip)
		}
		if o, ok := owner[ip]; ok && o != id {
			dups.Add(1)
			t.Errorf("%v ACKed to %s while %s holds it", ip, id, o)
		}
		owner[ip] = id
	}
	release := func(id string, ip netip.Addr) {
		mu.Lock()
		defer mu.Unlock()
		if owner[ip] == id {
			delete(owner, ip)
		}
	}

	pl := launch()
	attachAll(pl)
	var recoveries []time.Duration
	for phase := 0; phase <= kills; phase++ {
		var wg sync.WaitGroup
		for i, v := range vms {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := range cyclesPerPhase {
					var l lantest.Lease
					var err error
					if v.held.IsValid() {
						if l, err = v.c.Renew(v.held, 10*time.Second); err == nil && l.IP != v.held {
							err = fmt.Errorf("renewed %v, ACKed %v", v.held, l.IP)
						}
					} else {
						l, err = v.c.DORA(10 * time.Second)
					}
					if err != nil {
						t.Errorf("%s, phase %d, cycle %d: %v", v.ref.Name, phase, n, err)
						return
					}
					ack(v.ref.ID, l.IP)
					v.held = l.IP
					if (i+n)%3 != 0 {
						release(v.ref.ID, l.IP)
						v.held = netip.Addr{}
						v.c.Release(l)
					}
				}
			}()
		}
		wg.Wait()
		if t.Failed() || phase == kills {
			break
		}
		// kill -9, and anka starts it again and attaches the running VMs.
		t0 := time.Now()
		if err := syscall.Kill(pl.Pid(), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		pl.Kill()
		pl = launch()
		attachAll(pl)
		var first sync.Once
		var wg2 sync.WaitGroup
		for _, v := range vms {
			if !v.held.IsValid() {
				continue
			}
			wg2.Add(1)
			go func() {
				defer wg2.Done()
				l, err := v.c.Renew(v.held, 10*time.Second)
				if err != nil || l.IP != v.held {
					t.Errorf("%s renewing %v after the kill: %v %v", v.ref.Name, v.held, l.IP, err)
					return
				}
				first.Do(func() { recoveries = append(recoveries, time.Since(t0)) })
				ack(v.ref.ID, l.IP)
			}()
		}
		wg2.Wait()
	}
	pl.Kill()
	t.Logf("binary churn: %d lease cycles over %d VMs, %d kill -9 of the plugin; duplicates %d; kill to first ACK (start, attach %d VMs, renew) %v",
		acks.Load(), nVMs, kills, dups.Load(), nVMs, recoveries)
	if len(recoveries) != kills {
		t.Errorf("%d kills were followed by a renewal; want %d", len(recoveries), kills)
	}
}
