package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

// Faults while guests pass traffic (issue 8, item 1): a QEMU guest on the
// kernel fast path fetches a page from the host in a loop, a namespace
// guest on the plugin's user-space switch streams TCP and UDP to the host,
// and a port forward reaches the QEMU guest. Then, one at a time: kill -9
// of the plugin, of the daemon, of QEMU, and of everything at once with a
// fresh network namespace standing in for a reboot. Every recovery time is
// logged as a "faults-figure" line; docs/reliability/faults.md has them.
//
// TestFaults runs each fault once (make test); TestFaultsSoak five times
// (ANKA_SOAK=1, make soak) and prints the median and maximum of each figure.
func TestFaults(t *testing.T) { runFaults(t, 1) }

func TestFaultsSoak(t *testing.T) {
	if os.Getenv("ANKA_SOAK") != "1" {
		t.Skip("the long version runs with ANKA_SOAK=1 (make soak)")
	}
	runFaults(t, 5)
}

const (
	faultsWebPort  = "8088"  // the host's page the QEMU guest fetches
	faultsBulkPort = "5201"  // TCP stream from the namespace guest
	faultsUDPPort  = "5202"  // UDP probes from the namespace guest
	faultsFwdPort  = "18080" // host port forwarded to q1:80
	hostPage       = "host-page"
	// gapMark is the pause between arrivals counted as an outage; the
	// flows send every 10-20 ms.
	gapMark = 100 * time.Millisecond
)

// figures collects the measured recovery times: fault -> metric -> runs.
type figures struct {
	t    *testing.T
	mu   sync.Mutex
	runs map[string]map[string][]time.Duration
}

func (f *figures) add(fault, metric string, d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.runs[fault] == nil {
		f.runs[fault] = map[string][]time.Duration{}
	}
	f.runs[fault][metric] = append(f.runs[fault][metric], d)
	f.t.Logf("faults-figure fault=%s metric=%s ms=%d", fault, metric, d.Milliseconds())
}

func (f *figures) summary() {
	var keys []string
	for fault, m := range f.runs {
		for metric := range m {
			keys = append(keys, fault+" "+metric)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		fault, metric, _ := strings.Cut(k, " ")
		ds := slices.Clone(f.runs[fault][metric])
		slices.Sort(ds)
		f.t.Logf("faults-summary fault=%s metric=%s runs=%d median_ms=%d max_ms=%d", fault, metric, len(ds),
			ds[len(ds)/2].Milliseconds(), ds[len(ds)-1].Milliseconds())
	}
}

// flow records when data arrives and every pause longer than gapMark.
type flow struct {
	mu    sync.Mutex
	last  time.Time
	bytes int64
	gaps  [][2]time.Time
}

func (f *flow) arrive(n int) {
	now := time.Now()
	f.mu.Lock()
	if !f.last.IsZero() && now.Sub(f.last) > gapMark {
		f.gaps = append(f.gaps, [2]time.Time{f.last, now})
	}
	f.last = now
	f.bytes += int64(n)
	f.mu.Unlock()
}

func (f *flow) lastArrival() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

// maxGap is the longest pause overlapping [from, to], counting one still
// going on at to.
func (f *flow) maxGap(from, to time.Time) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	var worst time.Duration
	for _, g := range f.gaps {
		if g[1].After(from) && g[0].Before(to) {
			worst = max(worst, g[1].Sub(g[0]))
		}
	}
	if f.last.Before(to) {
		worst = max(worst, to.Sub(f.last))
	}
	return worst
}

// waitAfter waits for data that arrived after t and returns when it came.
func (f *flow) waitAfter(tb *testing.T, what string, t time.Time, timeout time.Duration) time.Time {
	tb.Helper()
	var at time.Time
	waitFor(tb, what, timeout, func() bool {
		at = f.lastArrival()
		return at.After(t)
	})
	return at
}

// loopLine is one "anka-guest: loop ok N UPTIME" line and when the host
// first saw it in the console file.
type loopLine struct {
	seq    int
	uptime time.Duration
	seen   time.Time
}

var loopOK = regexp.MustCompile(`anka-guest: loop ok (\d+) ([0-9.]+)\r?\n`)

// consoleWatch follows a QEMU guest's loop lines since its last boot.
type consoleWatch struct {
	path string
	mu   sync.Mutex
	boot int
	ok   []loopLine
	stop chan struct{}
	done chan struct{}
}

func watchConsole(path string) *consoleWatch {
	w := &consoleWatch{path: path, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
			b, _ := os.ReadFile(w.path)
			boots := bytes.Count(b, []byte("anka-guest: booted"))
			if i := bytes.LastIndex(b, []byte("anka-guest: booted")); i >= 0 {
				b = b[i:]
			}
			now := time.Now()
			w.mu.Lock()
			if boots != w.boot {
				w.boot, w.ok = boots, nil
			}
			for _, m := range loopOK.FindAllSubmatch(b, -1) {
				seq, _ := strconv.Atoi(string(m[1]))
				if seq <= len(w.ok) {
					continue
				}
				up, _ := strconv.ParseFloat(string(m[2]), 64)
				w.ok = append(w.ok, loopLine{seq, time.Duration(up * float64(time.Second)), now})
			}
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *consoleWatch) close() { close(w.stop); <-w.done }

func (w *consoleWatch) lines() []loopLine {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.ok)
}

// waitAfter waits for n loop successes seen after t and returns when the
// first of them was seen.
func (w *consoleWatch) waitAfter(tb *testing.T, t time.Time, n int, timeout time.Duration) time.Time {
	tb.Helper()
	var first time.Time
	waitFor(tb, fmt.Sprintf("%d guest fetches after %s", n, t.Format("15:04:05.000")), timeout, func() bool {
		k := 0
		for _, l := range w.lines() {
			if l.seen.After(t) {
				if k == 0 {
					first = l.seen
				}
				k++
			}
		}
		return k >= n
	})
	return first
}

// maxGap is the longest pause on the guest's clock between two successes,
// from the last one seen before from to the first one seen after to.
func (w *consoleWatch) maxGap(from, to time.Time) time.Duration {
	ls := w.lines()
	var worst time.Duration
	for i := 1; i < len(ls); i++ {
		if ls[i].seen.Before(from) || ls[i-1].seen.After(to) {
			continue
		}
		worst = max(worst, ls[i].uptime-ls[i-1].uptime)
	}
	return worst
}

// sockGuest is a VM of the external runtime played by a network namespace
// whose eth0 is relayed to the VM's datagram endpoint: its traffic crosses
// the plugin's user-space switch.
type sockGuest struct {
	vm, network, gw, plugin string
	bulk                    bool // also streams TCP to the gateway
	ns                      *frameiotest.Netns
	udp, tcp                *flow
}

// faultWorld is the running setup in one "host" namespace.
type faultWorld struct {
	l      *lab
	fig    *figures
	wg     sync.WaitGroup
	q1     *consoleWatch
	guests []*sockGuest
	ips    map[string]string // VM -> address from its first start
	close  []func()
}

func newFaultWorld(l *lab, fig *figures) *faultWorld {
	return &faultWorld{l: l, fig: fig, guests: []*sockGuest{
		{vm: "x1", network: "shared", gw: "192.168.64.1", plugin: "anka-net-shared", bulk: true},
		{vm: "x2", network: "host", gw: "192.168.128.1", plugin: "anka-net-host"},
	}}
}

// up starts (or starts again after a "reboot") the host's web server, the
// VMs, the namespace guests and their flows in the lab's host namespace.
func (w *faultWorld) up(first bool) {
	t, e := w.l.e.t, w.l.e
	h := w.l.host
	phase := map[bool]string{true: "boot", false: "reboot"}[first]
	www := filepath.Join(e.dir, "www")
	os.MkdirAll(www, 0o755)
	os.WriteFile(filepath.Join(www, "index.html"), []byte(hostPage+"\n"), 0o644)
	httpd := exec.Command("ip", "netns", "exec", h.Name, "busybox", "httpd", "-f", "-p", "0.0.0.0:"+faultsWebPort, "-h", www)
	if err := httpd.Start(); err != nil {
		t.Fatal(err)
	}
	w.close = append(w.close, func() { httpd.Process.Kill(); httpd.Wait() })

	if first {
		// no_timer_check: a starved TCG vCPU on a busy host otherwise
		// fails the kernel's IO-APIC timer check now and then and panics.
		w.l.guest("q1", "no_timer_check anka.loop=http://192.168.64.1:"+faultsWebPort+"/")
		e.ok("modify", "q1", "set", "network-card", "-t", "shared")
		e.ok("modify", "q1", "add", "port-forwarding", "web", "-g", "80", "-p", faultsFwdPort, "-l", "127.0.0.1")
		for _, g := range w.guests {
			t.Cleanup(func() { e.run("delete", "--force", g.vm) })
			e.ok("create", g.vm, "--runtime", "external")
			e.ok("modify", g.vm, "set", "network-card", "-t", g.network)
		}
	}
	got := map[string]string{}
	start := time.Now()
	got["q1"] = w.l.start("q1")
	w.fig.add(phase, "q1_start_to_ip", time.Since(start))
	w.q1 = watchConsole(filepath.Join(e.dir, "state", "vms", "q1", "console.log"))
	w.close = append(w.close, w.q1.close)

	for _, g := range w.guests {
		start = time.Now()
		var st struct{ Status string }
		json.Unmarshal(e.jsonOK("show", g.vm), &st)
		if first || st.Status != "running" {
			e.ok("start", g.vm)
		} else {
			// anka cannot see an external hypervisor's process, so the VM
			// stays running across the reboot; the new plugin attached its
			// port again at the same path, and the hypervisor binds to it.
			t.Logf("%s (external runtime) is still %s after the reboot: its hypervisor attaches again", g.vm, st.Status)
		}
		got[g.vm] = w.attachNSGuest(g)
		w.fig.add(phase, g.vm+"_start_to_lease", time.Since(start))
	}
	if first {
		w.ips = got
	} else {
		for vm, ip := range got {
			if ip != w.ips[vm] {
				t.Fatalf("after the reboot %s got %s, before %s", vm, ip, w.ips[vm])
			}
		}
	}
	w.checkAddresses("start")
	w.startFlows()
	// Every flow and the forward work before any fault.
	w.q1.waitAfter(t, time.Now(), 3, 90*time.Second)
	now := time.Now()
	for _, g := range w.guests {
		g.udp.waitAfter(t, g.vm+"'s UDP probes", now, 20*time.Second)
		if g.bulk {
			g.tcp.waitAfter(t, g.vm+"'s TCP stream", now, 20*time.Second)
		}
	}
	if !w.forwardWorks() {
		t.Fatal("the port forward does not reach q1 before any fault")
	}
}

// attachNSGuest relays a fresh namespace's eth0 to the VM's endpoint and
// runs a DHCP client there; it returns the leased address.
func (w *faultWorld) attachNSGuest(g *sockGuest) string {
	t, e := w.l.e.t, w.l.e
	var shown struct{ Endpoint endpoint }
	json.Unmarshal(e.jsonOK("show", g.vm), &shown)
	ep := shown.Endpoint
	if ep.Kind != "dgram" {
		t.Fatalf("%s's endpoint: %+v", g.vm, ep)
	}
	ns := frameiotest.NewNetns(t)
	// Registered after the namespace's own cleanup, so it runs first: the
	// flows stop before the namespace goes.
	t.Cleanup(w.down)
	ns.IP(t, "link", "set", "lo", "up")
	w.close = append(w.close, relayGuest(t, ns, ep))
	g.ns = ns
	return w.dhcp(g)
}

// dhcp runs one DHCP exchange in the namespace guest and returns the
// address it holds.
func (w *faultWorld) dhcp(g *sockGuest) string {
	t := w.l.e.t
	f := udhcpc(t, w.l.e, g.ns)
	if len(f) < 4 {
		t.Fatalf("%s has no address after DHCP: %v", g.vm, f)
	}
	return strings.Split(f[3], "/")[0]
}

// startFlows: from each namespace guest a UDP probe every 10 ms to its
// gateway, and from the bulk one a TCP stream (64 KiB every 10 ms, that is
// about 50 Mbit/s, reconnecting when it breaks) too.
func (w *faultWorld) startFlows() {
	t := w.l.e.t
	ctx, cancel := context.WithCancel(context.Background())
	var ln net.Listener
	var uc net.PacketConn
	if err := w.l.host.Run(func() (err error) {
		if ln, err = net.Listen("tcp", "0.0.0.0:"+faultsBulkPort); err != nil {
			return err
		}
		uc, err = net.ListenPacket("udp", "0.0.0.0:"+faultsUDPPort)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	w.close = append(w.close, func() { cancel(); ln.Close(); uc.Close(); w.wg.Wait() })
	byIP := map[string]*sockGuest{}
	for _, g := range w.guests {
		g.udp, g.tcp = &flow{}, &flow{}
		byIP[w.ips[g.vm]] = g
	}
	w.wg.Add(2)
	go func() {
		defer w.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g := byIP[c.RemoteAddr().(*net.TCPAddr).IP.String()]
			if g == nil {
				c.Close()
				continue
			}
			w.wg.Add(1)
			go func() {
				defer w.wg.Done()
				defer c.Close()
				go func() { <-ctx.Done(); c.Close() }()
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						g.tcp.arrive(n)
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	go func() {
		defer w.wg.Done()
		buf := make([]byte, 64)
		for {
			n, from, err := uc.ReadFrom(buf)
			if err != nil {
				return
			}
			if g := byIP[from.(*net.UDPAddr).IP.String()]; g != nil {
				g.udp.arrive(n)
			}
		}
	}()
	for _, g := range w.guests {
		var sender net.Conn
		if err := g.ns.Run(func() (err error) { sender, err = net.Dial("udp", g.gw+":"+faultsUDPPort); return err }); err != nil {
			t.Fatal(err)
		}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			defer sender.Close()
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			var seq [8]byte
			for i := uint64(0); ; i++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				binary.BigEndian.PutUint64(seq[:], i)
				sender.Write(seq[:])
			}
		}()
		if !g.bulk {
			continue
		}
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			var c net.Conn
			defer func() {
				if c != nil {
					c.Close()
				}
			}()
			chunk := make([]byte, 64<<10)
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				if c == nil {
					g.ns.Run(func() (err error) {
						c, err = net.DialTimeout("tcp", g.gw+":"+faultsBulkPort, 2*time.Second)
						if err != nil {
							c = nil
						}
						return err
					})
					continue
				}
				c.SetWriteDeadline(time.Now().Add(5 * time.Millisecond))
				if _, err := c.Write(chunk); err != nil && !os.IsTimeout(err) {
					c.Close()
					c = nil
				}
			}
		}()
	}
}

// down stops the flows, the namespace guests and the host's servers.
func (w *faultWorld) down() {
	for i := len(w.close) - 1; i >= 0; i-- {
		w.close[i]()
	}
	w.close = nil
}

func (w *faultWorld) forwardWorks() bool {
	page, err := w.l.fetch("http://127.0.0.1:" + faultsFwdPort + "/")
	return err == nil && strings.Contains(page, "anka-guest q1")
}

// checkAddresses: anka shows each VM's first address, each guest holds
// it, and no two VMs share one.
func (w *faultWorld) checkAddresses(when string) {
	t, e := w.l.e.t, w.l.e
	seen := map[string]string{}
	for vm, want := range w.ips {
		ip := w.l.card(vm).IP
		if ip != want {
			t.Fatalf("%s: anka shows %s at %s, it had %s", when, vm, ip, want)
		}
		if other, dup := seen[ip]; dup {
			t.Fatalf("%s: %s and %s both have %s", when, vm, other, ip)
		}
		seen[ip] = vm
	}
	// The guests' own view: the QEMU guest's DHCP client never bound
	// another address since its boot, each namespace holds its own.
	b, _ := os.ReadFile(filepath.Join(e.dir, "state", "vms", "q1", "console.log"))
	if i := bytes.LastIndex(b, []byte("anka-guest: booted")); i >= 0 {
		b = b[i:]
	}
	for _, m := range regexp.MustCompile(`anka-guest: ip (\S+)\r?\n`).FindAllSubmatch(b, -1) {
		if string(m[1]) != w.ips["q1"] {
			t.Fatalf("%s: q1's DHCP client bound %s, anka gave it %s", when, m[1], w.ips["q1"])
		}
	}
	for _, g := range w.guests {
		if out := g.ns.IP(t, "-4", "-o", "addr", "show", "dev", "eth0"); !strings.Contains(out, " "+w.ips[g.vm]+"/") {
			t.Fatalf("%s: %s lost %s: %s", when, g.vm, w.ips[g.vm], out)
		}
	}
}

// q1TAP is the TAP the plugin gave q1 on the kernel fast path.
func (w *faultWorld) q1TAP() string {
	var c struct{ Details map[string]string }
	json.Unmarshal(w.l.e.jsonOK("show", "q1", "network"), &c)
	return c.Details["tap"]
}

func (w *faultWorld) linkExists(name string) bool {
	return exec.Command("ip", "-n", w.l.host.Name, "link", "show", "dev", name).Run() == nil
}

func (w *faultWorld) pluginPID(binary string) int {
	return reattachPID(filepath.Join(w.l.e.dir, "state", "plugins", binary, "reattach.json"))
}

var diedLine = regexp.MustCompile(`time=(\S+) level=WARN msg="plugin died[^"]*" binary=(\S+)`)

// detected is how long after at the daemon logged the plugin's death.
func (w *faultWorld) detected(binary string, at time.Time) (time.Duration, bool) {
	b, _ := os.ReadFile(filepath.Join(w.l.e.dir, "state", "daemon.log"))
	for _, m := range diedLine.FindAllSubmatch(b, -1) {
		when, err := time.Parse(time.RFC3339Nano, string(m[1]))
		if err == nil && filepath.Base(string(m[2])) == binary && when.After(at.Add(-time.Second)) {
			return when.Sub(at), true
		}
	}
	return 0, false
}

// restarts is the daemon's restart count of a plugin.
func (w *faultWorld) restarts(binary string) int {
	for _, p := range w.l.e.daemonStatus().Plugins {
		if filepath.Base(p.Binary) == binary {
			return p.Restarts
		}
	}
	return 0
}

func (w *faultWorld) daemonPID() int {
	return readPID(filepath.Join(w.l.e.dir, "state", "daemon.pid"))
}

// qemuPID reads the pid file: asking anka would bring back a daemon the
// test killed.
func (w *faultWorld) qemuPID() int {
	return readPID(filepath.Join(w.l.e.dir, "state", "vms", "q1", "qemu.pid"))
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func kill9(t *testing.T, what string, pid int) time.Time {
	t.Helper()
	if pid <= 0 || !alive(pid) {
		t.Fatalf("%s (pid %d) is not running", what, pid)
	}
	at := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %s (pid %d): %v", what, pid, err)
	}
	waitFor(t, what+" to die", 10*time.Second, func() bool { return !alive(pid) })
	return at
}

// killPlugin: the daemon's supervisor starts the plugin again; every VM
// keeps its address, the flows through it and the forward come back, and
// the other network's guests never notice.
func (w *faultWorld) killPlugin(binary string) {
	t, e := w.l.e.t, w.l.e
	fault := "plugin-" + strings.TrimPrefix(binary, "anka-net-")
	shared := binary == "anka-net-shared"
	old := w.pluginPID(binary)
	restarts := w.restarts(binary)
	var tap string
	if shared {
		tap = w.q1TAP()
	}
	at := kill9(t, binary, old)
	fwdc := make(chan time.Time, 1)
	if shared {
		go func() {
			defer close(fwdc)
			for time.Since(at) < 30*time.Second {
				if w.forwardWorks() {
					fwdc <- time.Now()
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	var back time.Time
	waitFor(t, "the daemon to start "+binary+" again", 30*time.Second, func() bool {
		p := w.pluginPID(binary)
		back = time.Now()
		return p != old && alive(p)
	})
	w.fig.add(fault, "restarted", back.Sub(at))
	if d, ok := w.detected(binary, at); ok {
		w.fig.add(fault, "detected", d)
	}
	var resumed time.Time
	for _, g := range w.guests {
		if g.plugin != binary {
			continue
		}
		udp := g.udp.waitAfter(t, g.vm+"'s UDP to resume", back, 30*time.Second)
		resumed = later(resumed, udp)
		gap := g.udp.maxGap(at, udp)
		w.fig.add(fault, g.vm+"_udp_gap", gap)
		if gap > 3*time.Second {
			t.Errorf("%s's traffic stopped for %v after %s was killed; the issue asks for under 3 s", g.vm, gap, binary)
		}
		if g.bulk {
			tcp := g.tcp.waitAfter(t, g.vm+"'s TCP to resume", back, 30*time.Second)
			resumed = later(resumed, tcp)
			w.fig.add(fault, g.vm+"_tcp_gap", g.tcp.maxGap(at, tcp))
		}
	}
	if shared {
		guest := w.q1.waitAfter(t, at, 4, 30*time.Second)
		w.fig.add(fault, "q1_fetch_gap", w.q1.maxGap(at, guest))
		fwd, ok := <-fwdc
		if !ok {
			t.Fatal("the port forward did not work again within 30 s of the plugin's kill")
		}
		w.fig.add(fault, "forward_back", fwd.Sub(at))
		if now := w.q1TAP(); now != tap || !w.linkExists(tap) {
			t.Fatalf("q1's TAP was %s before the plugin's kill, now %q (exists: %v)", tap, now, w.linkExists(tap))
		}
	}
	// Guests of the other plugin: untouched.
	for _, g := range w.guests {
		if g.plugin == binary {
			continue
		}
		gap := g.udp.maxGap(at, resumed)
		w.fig.add(fault, "other_"+g.vm+"_udp_gap", gap)
		if gap > time.Second {
			t.Errorf("killing %s paused %s (another network) for %v", binary, g.vm, gap)
		}
	}
	w.checkAddresses("after kill -9 of " + binary)
	// The restarted plugin's DHCP server hands its socket guests the same
	// address again (its lease store survived).
	for _, g := range w.guests {
		if g.plugin == binary {
			if ip := w.dhcp(g); ip != w.ips[g.vm] {
				t.Fatalf("DHCP after %s's restart gave %s %s, before %s", binary, g.vm, ip, w.ips[g.vm])
			}
		}
	}
	if out := e.ok("daemon", "status"); !strings.Contains(out, "running (pid "+strconv.Itoa(w.pluginPID(binary))+")") {
		t.Fatalf("daemon status after %s's restart:\n%s", binary, out)
	}
	if n := w.restarts(binary); n != restarts+1 {
		t.Errorf("one crash of %s counted as %d restarts", binary, n-restarts)
	}
}

// killDaemon: no traffic stops while no daemon runs; the next command
// brings one back, which reattaches to the same plugin processes.
func (w *faultWorld) killDaemon() {
	t, e := w.l.e.t, w.l.e
	plugins := map[string]int{}
	for _, g := range w.guests {
		plugins[g.plugin] = w.pluginPID(g.plugin)
	}
	at := kill9(t, "the daemon", w.daemonPID())
	// Three seconds without a daemon; no anka command runs meanwhile.
	time.Sleep(3 * time.Second)
	end := time.Now()
	for binary, pid := range plugins {
		if !alive(pid) {
			t.Fatalf("%s died with the daemon", binary)
		}
	}
	if !alive(w.qemuPID()) {
		t.Fatal("QEMU died with the daemon")
	}
	for _, g := range w.guests {
		flows := map[string]*flow{"udp": g.udp}
		if g.bulk {
			flows["tcp"] = g.tcp
		}
		for name, f := range flows {
			gap := f.maxGap(at, end)
			w.fig.add("daemon", g.vm+"_"+name+"_gap", gap)
			// Traffic that stopped with the daemon would pause for the
			// whole 3 s; less is scheduling jitter on a busy machine.
			if gap > 2*time.Second {
				t.Errorf("daemon killed: %s's %s paused %v, more than jitter", g.vm, name, gap)
			}
		}
	}
	w.q1.waitAfter(t, at, 2, 10*time.Second)
	gap := w.q1.maxGap(at, end)
	w.fig.add("daemon", "q1_fetch_gap", gap)
	if gap > 2*time.Second {
		t.Errorf("daemon killed: the QEMU guest's fetches paused %v", gap)
	}
	if !w.forwardWorks() {
		t.Fatal("the port forward stopped with the daemon")
	}
	start := time.Now()
	e.ok("list")
	w.fig.add("daemon", "cli_call_with_revival", time.Since(start))
	if d := w.daemonPID(); !alive(d) {
		t.Fatal("no daemon after the next command")
	}
	st := e.daemonStatus()
	for binary, pid := range plugins {
		i := slices.IndexFunc(st.Plugins, func(p daemonPlugin) bool {
			return filepath.Base(p.Binary) == binary
		})
		if i < 0 || st.Plugins[i].PID != pid {
			t.Fatalf("the new daemon did not reattach to %s (pid %d): %+v", binary, pid, st.Plugins)
		}
	}
	w.checkAddresses("after kill -9 of the daemon")
}

// killQEMU: q1 is reported stopped, its TAP and its forward's port are
// released, the other VMs are untouched, and q1 starts again with its
// address.
func (w *faultWorld) killQEMU() {
	t, e := w.l.e.t, w.l.e
	tap := w.q1TAP()
	if tap == "" || !w.linkExists(tap) {
		t.Fatalf("q1 has no TAP on the fast path (%q)", tap)
	}
	at := kill9(t, "q1's QEMU", w.qemuPID())
	waitFor(t, "q1 to show as stopped", 30*time.Second, func() bool {
		var s struct{ Status string }
		json.Unmarshal(e.jsonOK("show", "q1"), &s)
		return s.Status == "stopped"
	})
	w.fig.add("qemu", "reported_stopped", time.Since(at))
	waitFor(t, "the forward's port to be free", 30*time.Second, func() bool {
		var ln net.Listener
		w.l.host.Run(func() (err error) { ln, err = net.Listen("tcp", "127.0.0.1:"+faultsFwdPort); return err })
		if ln != nil {
			ln.Close()
			return true
		}
		return false
	})
	w.fig.add("qemu", "forward_port_free", time.Since(at))
	waitFor(t, "q1's TAP "+tap+" to go", 30*time.Second, func() bool { return !w.linkExists(tap) })
	w.fig.add("qemu", "tap_removed", time.Since(at))
	now := time.Now()
	for _, g := range w.guests {
		gap := g.udp.maxGap(at, now)
		w.fig.add("qemu", "other_"+g.vm+"_udp_gap", gap)
		if gap > time.Second {
			t.Errorf("killing q1's QEMU paused %s's traffic for %v", g.vm, gap)
		}
	}
	start := time.Now()
	if ip := w.l.start("q1"); ip != w.ips["q1"] {
		t.Fatalf("q1 started after its QEMU was killed got %s, before %s", ip, w.ips["q1"])
	}
	w.fig.add("qemu", "restart_to_ip", time.Since(start))
	w.q1.waitAfter(t, time.Now(), 2, 90*time.Second)
	waitFor(t, "the forward to work after q1's restart", 30*time.Second, w.forwardWorks)
	w.checkAddresses("after kill -9 of QEMU")
}

// reboot kills the daemon, every plugin and QEMU at once, as a power cut
// would, keeps the state dir, and moves anka to a fresh network namespace
// (no bridge, TAP or nftables table left, as after a reboot).
func (w *faultWorld) reboot() {
	t, e := w.l.e.t, w.l.e
	pids := []int{w.daemonPID(), w.qemuPID()}
	files, _ := filepath.Glob(filepath.Join(e.dir, "state", "plugins", "*", "reattach.json"))
	for _, f := range files {
		if p := reattachPID(f); p > 0 && alive(p) {
			pids = append(pids, p)
		}
	}
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGKILL)
	}
	waitFor(t, "every process to die", 10*time.Second, func() bool {
		return !slices.ContainsFunc(pids, alive)
	})
	w.down()
	h := frameiotest.NewNetns(t)
	h.IP(t, "link", "set", "lo", "up")
	w.l.host, e.ns = h, h.Name
	w.up(false)
}

func runFaults(t *testing.T, rounds int) {
	l := newLab(t)
	fig := &figures{t: t, runs: map[string]map[string][]time.Duration{}}
	w := newFaultWorld(l, fig)
	t.Cleanup(func() {
		if t.Failed() {
			state := filepath.Join(l.e.dir, "state")
			for _, f := range []string{"vms/q1/console.log", "daemon.log", "plugins/anka-net-shared/plugin.log", "plugins/anka-net-host/plugin.log"} {
				b, _ := os.ReadFile(filepath.Join(state, f))
				lines := strings.Split(string(b), "\n")
				t.Logf("the last lines of %s:\n%s", f, strings.Join(lines[max(0, len(lines)-40):], "\n"))
			}
		}
		l.e.run("daemon", "stop", "--all")
		w.down()
		fig.summary()
	})
	w.up(true)
	for r := 1; r <= rounds; r++ {
		t.Logf("round %d of %d", r, rounds)
		w.killPlugin("anka-net-shared")
		w.killPlugin("anka-net-host")
		w.killDaemon()
		w.killQEMU()
		w.reboot()
	}
}
