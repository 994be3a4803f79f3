package lan_test

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/dhcpserver"
	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"github.com/anka-net/anka/sdk/netkit/lan"
	"github.com/anka-net/anka/sdk/netkit/lan/lantest"
)

// TestDHCPChurn is the short churn run (make test): 1,000 lease cycles
// over 64 ports and 96 VMs, the LAN restarted 4 times on its data
// folder. TestDHCPChurnSoak is the long one (make soak).
func TestDHCPChurn(t *testing.T) {
	runChurn(t, churnSpec{cycles: 1000, restarts: 4})
}

func TestDHCPChurnSoak(t *testing.T) {
	if os.Getenv("ANKA_SOAK") != "1" {
		t.Skip("the long churn run; set ANKA_SOAK=1 (make soak)")
	}
	runChurn(t, churnSpec{cycles: 10_000, restarts: 10})
}

type churnSpec struct {
	cycles   int // lease cycles (ACKs checked) in all
	restarts int // LAN restarts on the same data folder, spread evenly
}

const (
	churnPorts = 64
	churnVMs   = 96
)

// churnVM is a VM of the churn run: its VM-side socket and DHCP client
// live for the whole test; its plugin-side port comes and goes as it is
// attached to a slot and detached again.
type churnVM struct {
	vm     lan.VM
	runDir string
	c      *lantest.Client
	// held is the address it holds (bound, not released), if any.
	held netip.Addr
}

// ledger is the test's view of who holds which address, checked on every
// ACK a client gets.
type ledger struct {
	mu        sync.Mutex
	lo, hi    netip.Addr
	owner     map[netip.Addr]string // bound now, by the test's view
	lastAcked map[netip.Addr]string // the last VM ACKed on an address
	prev      map[string]netip.Addr // each VM's last address
	// gen counts the changes of hands of each address; suspects are VMs
	// that did not get their previous address back, judged once the
	// ACKs in flight are in (see settle).
	gen       map[netip.Addr]uint64
	suspects  []suspect
	acks      atomic.Uint64
	dups      atomic.Uint64
	moved     atomic.Uint64 // a VM that did not get its free previous address back
	outside   atomic.Uint64
	back      atomic.Uint64 // a VM ACKed its previous address again
	handovers atomic.Uint64 // an address ACKed to another VM than before
	errs      []string
}

func (l *ledger) fail(format string, args ...any) {
	if len(l.errs) < 20 {
		l.errs = append(l.errs, fmt.Sprintf(format, args...))
	}
}

// ack checks an ACK of ip for id and records it.
func (l *ledger) ack(id string, ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.acks.Add(1)
	if ip.Less(l.lo) || l.hi.Less(ip) {
		l.outside.Add(1)
		l.fail("%s was ACKed %v, outside the range %v-%v", id, ip, l.lo, l.hi)
	}
	if o, ok := l.owner[ip]; ok && o != id {
		l.dups.Add(1)
		l.fail("%v ACKed to %s while %s holds it", ip, id, o)
	}
	if p, ok := l.prev[id]; ok && p != ip && l.lastAcked[p] == id {
		// Unless another VM's ACK of p is on its way (the server gave
		// p away before this request), p was free and id's to have.
		l.suspects = append(l.suspects, suspect{id: id, got: ip, prev: p, gen: l.gen[p]})
	}
	if p, ok := l.prev[id]; ok && p == ip {
		l.back.Add(1)
	}
	if last, ok := l.lastAcked[ip]; ok && last != id {
		l.handovers.Add(1)
	}
	if l.lastAcked[ip] != id {
		l.gen[ip]++
	}
	l.owner[ip], l.lastAcked[ip], l.prev[id] = id, id, ip
}

type suspect struct {
	id        string
	got, prev netip.Addr
	gen       uint64
}

// settle judges the suspects once every ACK is recorded (between
// phases): one whose previous address never changed hands since was
// moved off a free address, which the server must not do.
func (l *ledger) settle() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.suspects {
		if l.gen[s.prev] == s.gen {
			l.moved.Add(1)
			l.fail("%s got %v; its previous address %v was free and nobody else had it since", s.id, s.got, s.prev)
		}
	}
	l.suspects = l.suspects[:0]
}

// release records that id gave ip up; called before the RELEASE is sent,
// so no ACK of ip to another can come before it.
func (l *ledger) release(id string, ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.owner[ip] == id {
		delete(l.owner, ip)
	}
}

func churnMAC(i int) net.HardwareAddr { return net.HardwareAddr{0x02, 0xc4, 0x00, 0x00, 0x01, byte(i)} }

// runChurn drives spec.cycles lease cycles: 64 workers, one per port slot,
// each in a loop: now and then swap its VM for one of the 32 not
// attached (the old one releases its lease first, as a guest shutting
// down does), then DISCOVER/OFFER/REQUEST/ACK, or a renewal when the VM
// kept its lease, then RELEASE three times in four. 96 VMs share a pool
// of 80 addresses, so released addresses pass from VM to VM. Between
// phases the LAN is closed and made again on the same data folder, the
// VMs attached again, and those holding leases renew them: the address a
// guest holds survives the restart. Every ACK is checked: in the range,
// no address held by two VMs, a VM gets its previous address back when
// nobody took it since.
func runChurn(t *testing.T, spec churnSpec) {
	dir := t.TempDir()
	cfg := config(t, dir)
	cfg.RangeStart, cfg.RangeEnd = netip.MustParseAddr("10.64.0.10"), netip.MustParseAddr("10.64.0.89")
	led := &ledger{lo: cfg.RangeStart, hi: cfg.RangeEnd, owner: map[netip.Addr]string{},
		lastAcked: map[netip.Addr]string{}, prev: map[string]netip.Addr{}, gen: map[netip.Addr]uint64{}}

	vms := make([]*churnVM, churnVMs)
	for i := range vms {
		v := &churnVM{vm: lan.VM{ID: fmt.Sprintf("churn-%02d", i), Name: fmt.Sprintf("vm%02d", i), DynamicMAC: churnMAC(i)}, runDir: frameiotest.TempDir(t)}
		// The VM side exists before and between attachments, as a
		// QEMU that keeps running while its port comes and goes.
		port := lantest.Open(t, lantest.Plug{Kind: frameio.KindDgram, PluginPath: filepath.Join(v.runDir, "t.sock"), VMPath: filepath.Join(v.runDir, "t-vm.sock"), MAC: v.vm.DynamicMAC})
		v.c = lantest.NewClient(t, port, v.vm.DynamicMAC)
		vms[i] = v
	}
	slots := make([]*churnVM, churnPorts)
	free := append([]*churnVM(nil), vms[churnPorts:]...)
	copy(slots, vms[:churnPorts])
	var freeMu sync.Mutex

	attach := func(l *testLAN, v *churnVM) error {
		ep, err := l.Attach(lan.AttachRequest{VM: v.vm, RunDir: v.runDir})
		if err == nil && ep.PluginPath != filepath.Join(v.runDir, "t.sock") {
			err = fmt.Errorf("endpoint %s, not where the VM side sends", ep.PluginPath)
		}
		return err
	}

	var restartFirstAck, restartSetup []time.Duration
	var tl *testLAN
	perPhase := spec.cycles / (spec.restarts + 1)
	start0 := time.Now()
	var busy time.Duration // time spent cycling, restarts excluded
	for phase := 0; phase <= spec.restarts; phase++ {
		t0 := time.Now()
		tl = start(t, cfg)
		for _, v := range slots {
			if err := attach(tl, v); err != nil {
				t.Fatal(err)
			}
		}
		if phase > 0 {
			restartSetup = append(restartSetup, time.Since(t0))
			// The guests kept their leases through the restart: each
			// renews and must get the same address back.
			var first atomic.Int64
			var wg sync.WaitGroup
			for _, v := range slots {
				if !v.held.IsValid() {
					continue
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					l, err := v.c.Renew(v.held, 10*time.Second)
					if err != nil || l.IP != v.held {
						led.mu.Lock()
						led.fail("%s renewing %v after restart %d: %v %v", v.vm.ID, v.held, phase, l.IP, err)
						led.mu.Unlock()
						return
					}
					first.CompareAndSwap(0, int64(time.Since(t0)))
					led.ack(v.vm.ID, l.IP)
				}()
			}
			wg.Wait()
			if d := first.Load(); d > 0 {
				restartFirstAck = append(restartFirstAck, time.Duration(d))
			}
		}
		target := uint64(perPhase * (phase + 1))
		if phase == spec.restarts {
			target = uint64(spec.cycles)
		}
		p0 := time.Now()
		var wg sync.WaitGroup
		for s := range slots {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(s), uint64(phase)))
				for led.acks.Load() < target {
					if err := churnCycle(tl, led, slots, s, &free, &freeMu, rng, attach); err != nil {
						led.mu.Lock()
						led.fail("slot %d: %v", s, err)
						led.mu.Unlock()
						return
					}
				}
			}()
		}
		wg.Wait()
		busy += time.Since(p0)
		led.settle()
		checkServerTable(t, tl.DHCP(), cfg)
		led.mu.Lock()
		errs := len(led.errs)
		led.mu.Unlock()
		if errs > 0 {
			break
		}
		if phase < spec.restarts {
			tl.Close()
		}
	}
	total := time.Since(start0)
	for _, e := range led.errs {
		t.Error(e)
	}
	acks := led.acks.Load()
	var renewAfter []time.Duration // first ACK after the VMs were attached again
	for i := range min(len(restartFirstAck), len(restartSetup)) {
		renewAfter = append(renewAfter, restartFirstAck[i]-restartSetup[i])
	}
	t.Logf("DHCP churn: %d lease cycles (ACKs checked) over %d ports, %d VMs, %d addresses, %d restarts in %v (%.0f cycles/s while cycling); duplicates %d, moved %d, outside the range %d; %d ACKs gave a VM its previous address again, %d handed an address to another VM; restart to first ACK %v (New and 64 attachments %v, then the first renewal %v); last server's stats %+v",
		acks, churnPorts, churnVMs, 80, spec.restarts, total.Round(time.Millisecond), float64(acks)/busy.Seconds(),
		led.dups.Load(), led.moved.Load(), led.outside.Load(), led.back.Load(), led.handovers.Load(), restartFirstAck, restartSetup, renewAfter, tl.DHCP().Stats())
	if acks < uint64(spec.cycles) {
		t.Errorf("%d lease cycles; want %d", acks, spec.cycles)
	}
	if spec.restarts > 0 && len(restartFirstAck) != spec.restarts {
		t.Errorf("%d restarts were followed by a renewal; want %d", len(restartFirstAck), spec.restarts)
	}
}

// churnCycle runs one lease cycle on slot s.
func churnCycle(tl *testLAN, led *ledger, slots []*churnVM, s int, free *[]*churnVM, freeMu *sync.Mutex, rng *rand.Rand, attach func(*testLAN, *churnVM) error) error {
	v := slots[s]
	if rng.IntN(4) == 0 {
		// Swap: the VM shuts down (releasing its lease) and another,
		// attached before or never, takes the slot.
		if v.held.IsValid() {
			led.release(v.vm.ID, v.held)
			if err := v.c.Release(lantest.Lease{IP: v.held, Server: gateway}); err != nil {
				return err
			}
			if err := released(tl, v.vm.ID); err != nil {
				return err
			}
			v.held = netip.Addr{}
		}
		tl.Detach(v.vm.ID)
		freeMu.Lock()
		i := rng.IntN(len(*free))
		next := (*free)[i]
		(*free)[i] = v
		freeMu.Unlock()
		v = next
		slots[s] = v
		if err := attach(tl, v); err != nil {
			return err
		}
	}
	var l lantest.Lease
	var err error
	if v.held.IsValid() {
		l, err = v.c.Renew(v.held, 10*time.Second)
		if err == nil && l.IP != v.held {
			err = fmt.Errorf("%s renewed %v and was ACKed %v", v.vm.ID, v.held, l.IP)
		}
	} else {
		l, err = v.c.DORA(10 * time.Second)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", v.vm.ID, err)
	}
	led.ack(v.vm.ID, l.IP)
	v.held = l.IP
	if rng.IntN(4) != 0 {
		led.release(v.vm.ID, l.IP)
		v.held = netip.Addr{}
		if err := v.c.Release(l); err != nil {
			return err
		}
		return released(tl, v.vm.ID)
	}
	return nil
}

// released waits until the server has taken id's RELEASE (it sends no
// reply): a port detached or a LAN closed with the RELEASE still queued
// would drop it, and the address would stay bound for the lease time.
func released(tl *testLAN, id string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		le, ok := tl.DHCP().Lease(id)
		if !ok || le.State != dhcpserver.StateBound {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the RELEASE of %s (%v) was not taken in 5s", id, le.IP)
		}
		time.Sleep(time.Millisecond)
	}
}

// checkServerTable checks the server's own view: no address bound to two
// identities, every lease in the range.
func checkServerTable(t *testing.T, srv *dhcpserver.Server, cfg lan.Config) {
	t.Helper()
	seen := map[netip.Addr]string{}
	now := time.Now()
	for _, le := range srv.Leases() {
		if !le.IP.IsValid() {
			continue
		}
		if le.IP.Less(cfg.RangeStart) || cfg.RangeEnd.Less(le.IP) {
			t.Errorf("the server holds %v for %s, outside the range", le.IP, le.Identity)
		}
		if !le.Active(now) {
			continue
		}
		if o, ok := seen[le.IP]; ok {
			t.Errorf("the server has %v bound to %s and %s", le.IP, o, le.Identity)
		}
		seen[le.IP] = le.Identity
	}
}
