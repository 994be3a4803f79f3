package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

// lab is a daemon namespace (the "host" anka runs on) joined by a veth
// to an "outside" namespace that plays the internet: a web server at
// 10.99.0.2 and a DNS server there that the daemon's resolv.conf names.
type lab struct {
	e       *env
	host    *frameiotest.Netns
	outside *frameiotest.Netns
}

const (
	outsideIP   = "10.99.0.2"
	outsidePage = "outside-page"
	dnsName     = "web.anka.test"
	dnsAnswer   = "10.99.0.7"
)

func newLab(t *testing.T) *lab {
	t.Helper()
	guestDir(t)
	h, o := frameiotest.NewNetns(t), frameiotest.NewNetns(t)
	h.IP(t, "link", "add", "vh", "type", "veth", "peer", "name", "vo", "netns", o.Name)
	h.IP(t, "link", "set", "lo", "up")
	h.IP(t, "addr", "add", "10.99.0.1/24", "dev", "vh")
	h.IP(t, "link", "set", "vh", "up")
	h.IP(t, "route", "add", "default", "via", outsideIP)
	o.IP(t, "link", "set", "lo", "up")
	o.IP(t, "addr", "add", outsideIP+"/24", "dev", "vo")
	o.IP(t, "link", "set", "vo", "up")

	www := t.TempDir()
	os.WriteFile(filepath.Join(www, "index.html"), []byte(outsidePage+"\n"), 0o644)
	httpd := exec.Command("ip", "netns", "exec", o.Name, "busybox", "httpd", "-f", "-p", outsideIP+":80", "-h", www)
	if err := httpd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { httpd.Process.Kill(); httpd.Wait() })
	var dns net.PacketConn
	if err := o.Run(func() (err error) { dns, err = net.ListenPacket("udp", outsideIP+":53"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dns.Close() })
	go serveDNS(dns)

	// `ip netns exec` bind-mounts /etc/netns/NAME/resolv.conf over
	// /etc/resolv.conf for what runs in the namespace: the daemon and its
	// plugins see the outside's DNS server as the host's resolver.
	etc := filepath.Join("/etc/netns", h.Name)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(etc) })
	os.WriteFile(filepath.Join(etc, "resolv.conf"), []byte("nameserver "+outsideIP+"\n"), 0o644)

	e := newEnv(t)
	e.ns = h.Name
	return &lab{e: e, host: h, outside: o}
}

// serveDNS answers A queries for dnsName with dnsAnswer, NXDOMAIN else.
func serveDNS(c net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		var p dnsmessage.Parser
		h, err := p.Start(buf[:n])
		if err != nil {
			continue
		}
		q, err := p.Question()
		if err != nil {
			continue
		}
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true})
		b.EnableCompression()
		b.StartQuestions()
		b.Question(q)
		b.StartAnswers()
		if strings.EqualFold(q.Name.String(), dnsName+".") && q.Type == dnsmessage.TypeA {
			b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60},
				dnsmessage.AResource{A: netip.MustParseAddr(dnsAnswer).As4()})
		}
		msg, err := b.Finish()
		if err == nil {
			c.WriteTo(msg, from)
		}
	}
}

// guest creates a VM from the test guest with kernel parameters.
func (l *lab) guest(name, params string) {
	g := guestDir(l.e.t)
	l.e.t.Cleanup(func() { l.e.run("delete", "--force", name) })
	l.e.ok("create", name, "--kernel", filepath.Join(g, "vmlinuz"), "--initrd", filepath.Join(g, "initrd.img"),
		"--ram", "256M", "--append", "anka.hostname="+name+" anka.ipv6=0 "+params)
}

// consoleLine waits for a whole console line starting with prefix and
// returns the rest of it.
func consoleLine(e *env, vmName, prefix string, timeout time.Duration) string {
	e.t.Helper()
	re := regexp.MustCompile(regexp.QuoteMeta(prefix) + `([^\r\n]*)\r?\n`)
	var got string
	waitFor(e.t, vmName+"'s console to say "+prefix, timeout, func() bool {
		b, _ := os.ReadFile(filepath.Join(e.dir, "state", "vms", vmName, "console.log"))
		if m := re.FindSubmatch(b); m != nil {
			got = string(m[1])
			return true
		}
		return false
	})
	return got
}

var startIP = regexp.MustCompile(`(?m)^ip (\S+)$`)

// start runs `anka start`, which waits for the lease, and returns the IP
// it printed.
func (l *lab) start(name string) string {
	l.e.t.Helper()
	r := l.e.run("start", name)
	if r.code != 0 {
		qlog, _ := os.ReadFile(filepath.Join(l.e.dir, "state", "vms", name, "qemu.log"))
		console, _ := os.ReadFile(filepath.Join(l.e.dir, "state", "vms", name, "console.log"))
		if len(console) > 3000 {
			console = console[len(console)-3000:]
		}
		var plog []byte
		logs, _ := filepath.Glob(filepath.Join(l.e.dir, "state", "plugins", "*", "plugin.log"))
		for _, f := range logs {
			b, _ := os.ReadFile(f)
			if len(b) > 3000 {
				b = b[len(b)-3000:]
			}
			plog = append(plog, "--- "+f+"\n"...)
			plog = append(plog, b...)
		}
		l.e.t.Fatalf("anka start %s: exit %d\nstdout: %s\nstderr: %s\nqemu.log: %s\nconsole.log (end): %s\nplugin logs (end):\n%s", name, r.code, r.stdout, r.stderr, qlog, console, plog)
	}
	out := r.stdout
	m := startIP.FindStringSubmatch(out)
	if m == nil {
		l.e.t.Fatalf("anka start %s printed no IP:\n%s", name, out)
	}
	return m[1]
}

// fetch gets a URL from inside the daemon's namespace.
func (l *lab) fetch(url string) (string, error) {
	out, err := exec.Command("ip", "netns", "exec", l.host.Name, "timeout", "10", "busybox", "wget", "-q", "-O", "-", url).CombinedOutput()
	return string(out), err
}

type shownCard struct {
	Mode         string
	IP           string
	MAC          string
	InternalMAC  string     `json:"internal_mac"`
	DynamicMAC   string     `json:"dynamic_mac"`
	LeaseExpiry  *time.Time `json:"lease_expiry"`
	PortForwards []struct {
		Name     string
		HostPort int `json:"host_port"`
	} `json:"port_forwarding_rules"`
}

func (l *lab) card(name string) shownCard {
	var c shownCard
	if err := json.Unmarshal(l.e.jsonOK("show", name, "network"), &c); err != nil {
		l.e.t.Fatal(err)
	}
	return c
}

func inRange(ip, first, last string) bool {
	a, err := netip.ParseAddr(ip)
	return err == nil && a.Compare(netip.MustParseAddr(first)) >= 0 && a.Compare(netip.MustParseAddr(last)) <= 0
}

// The shared network end to end: lease, host->guest, NAT, DNS, port
// forwards, static addresses, suspend/resume, crash leftovers, cleanup.
func TestSharedNetwork(t *testing.T) {
	l := newLab(t)
	e := l.e
	l.guest("s1", "anka.fetch=http://"+outsideIP+"/ anka.resolve="+dnsName)
	e.ok("modify", "s1", "set", "network-card", "-t", "shared")
	e.ok("modify", "s1", "add", "port-forwarding", "web", "-g", "80", "-p", "18080", "-l", "127.0.0.1")
	e.ok("modify", "s1", "add", "port-forwarding", "echo", "-g", "7", "-p", "18007", "-l", "127.0.0.1", "-P", "udp")
	ip := l.start("s1")
	if !inRange(ip, "192.168.64.2", "192.168.64.254") {
		t.Fatalf("s1's address %s is outside 192.168.64.2-254", ip)
	}
	if got := consoleLine(e, "s1", "anka-guest: ip ", 30*time.Second); got != ip {
		t.Fatalf("anka start said %s, the guest's DHCP client %s", ip, got)
	}
	c := l.card("s1")
	if c.IP != ip || c.Mode != "shared" || c.LeaseExpiry == nil || c.DynamicMAC == "" || len(c.PortForwards) != 2 {
		t.Fatalf("show s1 network: %+v", c)
	}
	// The host reaches the guest by its address.
	if page, err := l.fetch("http://" + ip + "/"); err != nil || !strings.Contains(page, "anka-guest s1") {
		t.Fatalf("host -> guest %s: %v %s", ip, err, page)
	}
	// The guest reaches the outside through NAT, and resolves through the
	// gateway's forwarder to the outside's DNS server.
	if got := consoleLine(e, "s1", "anka-guest: fetch http://"+outsideIP+"/ ", 90*time.Second); got != "ok: "+outsidePage {
		t.Fatalf("guest -> outside through NAT: %q", got)
	}
	if got := consoleLine(e, "s1", "anka-guest: resolve "+dnsName+" ", 90*time.Second); got != dnsAnswer {
		t.Fatalf("guest DNS through the gateway: %q", got)
	}
	// Port forwards from the host's loopback, TCP and UDP.
	if page, err := l.fetch("http://127.0.0.1:18080/"); err != nil || !strings.Contains(page, "anka-guest s1") {
		t.Fatalf("TCP forward 127.0.0.1:18080 -> s1:80: %v %s", err, page)
	}
	var udp net.Conn
	if err := l.host.Run(func() (err error) { udp, err = net.Dial("udp", "127.0.0.1:18007"); return err }); err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	udp.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	var n int
	for try := 0; try < 5 && n == 0; try++ {
		udp.Write([]byte("ping-udp"))
		udp.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _ = udp.Read(buf)
	}
	if string(buf[:n]) != "ping-udp" {
		t.Fatalf("UDP forward 127.0.0.1:18007 -> s1:7 echoed %q", buf[:n])
	}
	// A forward added to a running VM applies at once.
	e.ok("modify", "s1", "add", "port-forwarding", "late", "-g", "80", "-p", "18081", "-l", "127.0.0.1")
	if page, err := l.fetch("http://127.0.0.1:18081/"); err != nil || !strings.Contains(page, "anka-guest s1") {
		t.Fatalf("forward added while running: %v %s", err, page)
	}

	// Capture: the guest's traffic while the host fetches its page.
	pcap := filepath.Join(e.dir, "s1.pcap")
	done := make(chan result, 1)
	go func() { done <- e.run("capture", "s1", "-w", pcap, "--duration", "3s") }()
	time.Sleep(time.Second)
	l.fetch("http://" + ip + "/")
	if r := <-done; r.code != 0 || !strings.Contains(r.stdout, "frames") {
		t.Fatalf("capture: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if b, err := os.ReadFile(pcap); err != nil || len(b) < 24+16+54 || !bytes.Equal(b[:4], []byte{0xd4, 0xc3, 0xb2, 0xa1}) {
		t.Fatalf("capture file: %v, %d bytes", err, len(b))
	}
	if r := e.run("capture", "s1", "-w", filepath.Join(e.dir, "no", "such", "x.pcap")); r.code != 2 || !strings.Contains(r.stderr, "does not exist") {
		t.Fatalf("capture into a missing folder: exit %d %s", r.code, r.stderr)
	}

	// Suspend and resume keep the address and the connectivity.
	e.ok("suspend", "s1")
	if again := l.start("s1"); again != ip {
		t.Fatalf("after resume s1 has %s, before %s", again, ip)
	}
	if page, err := l.fetch("http://" + ip + "/"); err != nil || !strings.Contains(page, "anka-guest s1") {
		t.Fatalf("host -> guest after resume: %v %s", err, page)
	}

	// Static: the exact address; a second VM asking for it is refused.
	l.guest("s2", "")
	e.ok("modify", "s2", "set", "network-card", "-t", "static", "--ip", "192.168.64.50")
	if got := l.start("s2"); got != "192.168.64.50" {
		t.Fatalf("static VM got %s", got)
	}
	if got := consoleLine(e, "s2", "anka-guest: ip ", 30*time.Second); got != "192.168.64.50" {
		t.Fatalf("static VM's DHCP client got %s", got)
	}
	l.guest("s3", "")
	if r := e.run("modify", "s3", "set", "network-card", "-t", "static", "--ip", "192.168.64.50"); r.code == 0 || !strings.Contains(r.stderr, "192.168.64.50") {
		t.Fatalf("a second VM took a held static address: exit %d %s", r.code, r.stderr)
	}

	// Crash leftovers: kill -9 the daemon, then the plugin. The next
	// command brings both back; the new plugin cleans the stale nftables
	// table and the network works again with the same addresses.
	daemonPID := readPID(filepath.Join(e.dir, "state", "daemon.pid"))
	pluginPID := reattachPID(filepath.Join(e.dir, "state", "plugins", "anka-net-shared", "reattach.json"))
	syscall.Kill(daemonPID, syscall.SIGKILL)
	waitFor(t, "the daemon to die", 10*time.Second, func() bool { return !alive(daemonPID) })
	syscall.Kill(pluginPID, syscall.SIGKILL)
	waitFor(t, "the plugin to die", 10*time.Second, func() bool { return !alive(pluginPID) })
	if out := l.host.Exec(t, "nft", "list", "tables"); !strings.Contains(out, "anka-shared") {
		t.Logf("no nftables table was left by the kill (fine): %s", out)
	}
	e.ok("list") // brings the daemon back, which brings the plugin back
	waitFor(t, "the plugin to come back", 20*time.Second, func() bool {
		p := reattachPID(filepath.Join(e.dir, "state", "plugins", "anka-net-shared", "reattach.json"))
		return p != pluginPID && alive(p)
	})
	waitFor(t, "the host to reach s1 again", 30*time.Second, func() bool {
		page, err := l.fetch("http://" + ip + "/")
		return err == nil && strings.Contains(page, "anka-guest s1")
	})
	if got := l.card("s1").IP; got != ip {
		t.Fatalf("after the crash s1 shows %s, before %s", got, ip)
	}
	if out := l.host.Exec(t, "nft", "list", "tables"); strings.Count(out, "anka-shared") != 1 {
		t.Fatalf("nftables tables after the restart:\n%s", out)
	}

	// kill -9 of QEMU: the daemon reports the VM stopped and releases its
	// port and forwards on its own; its address stays reserved for it.
	var s1 struct{ PID int }
	json.Unmarshal(e.jsonOK("show", "s1"), &s1)
	syscall.Kill(s1.PID, syscall.SIGKILL)
	waitFor(t, "the forward of the killed VM to close", 15*time.Second, func() bool {
		var err error
		l.host.Run(func() error {
			var c net.Conn
			if c, err = net.DialTimeout("tcp", "127.0.0.1:18080", time.Second); err == nil {
				c.Close()
			}
			return nil
		})
		return err != nil
	})
	if out := e.ok("list"); !strings.Contains(out, "stopped") {
		t.Fatalf("list after QEMU was killed:\n%s", out)
	}
	if again := l.start("s1"); again != ip {
		t.Fatalf("after its QEMU was killed s1 got %s, before %s", again, ip)
	}

	// Everything stopped: no TAP, no table, no QEMU, no socket left.
	e.ok("daemon", "stop", "--all")
	if out := l.host.IP(t, "link", "show"); strings.Contains(out, "anka-shared0") {
		t.Fatalf("TAP left after daemon stop --all:\n%s", out)
	}
	if out := l.host.Exec(t, "nft", "list", "tables"); strings.Contains(out, "anka") {
		t.Fatalf("nftables table left after daemon stop --all:\n%s", out)
	}
	if socks, _ := filepath.Glob(filepath.Join(e.dir, "state", "plugins", "sock", "*")); len(socks) > 0 {
		t.Fatalf("plugin sockets left: %v", socks)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "state", "anka.sock")); err == nil {
		t.Fatal("daemon socket left")
	}
	for _, name := range []string{"s1", "s2"} {
		var st struct{ PID int }
		json.Unmarshal(e.jsonOK("show", name), &st)
		if st.PID != 0 {
			t.Fatalf("%s still has a QEMU process %d", name, st.PID)
		}
	}
}

// The host network: guests reach the host (.1), never the outside.
func TestHostNetwork(t *testing.T) {
	l := newLab(t)
	e := l.e
	l.guest("h1", "anka.ping=192.168.128.1 anka.tries=8 anka.fetch=http://"+outsideIP+"/")
	e.ok("modify", "h1", "set", "network-card", "-t", "host")
	ip := l.start("h1")
	if !inRange(ip, "192.168.128.2", "192.168.128.254") {
		t.Fatalf("h1's address %s is outside 192.168.128.2-254", ip)
	}
	if got := consoleLine(e, "h1", "anka-guest: ping 192.168.128.1 ", 60*time.Second); got != "ok" {
		t.Fatalf("guest -> host .1: %q", got)
	}
	if page, err := l.fetch("http://" + ip + "/"); err != nil || !strings.Contains(page, "anka-guest h1") {
		t.Fatalf("host -> guest: %v %s", err, page)
	}
	if got := consoleLine(e, "h1", "anka-guest: fetch http://"+outsideIP+"/ ", 90*time.Second); got != "failed" {
		t.Fatalf("a host-only guest reached the outside: %q", got)
	}
}

// Two clones with the same internal MAC (-m) run at once: distinct
// dynamic MACs, distinct addresses, both reachable.
func TestClonesWithOneMAC(t *testing.T) {
	l := newLab(t)
	e := l.e
	ips := map[string]string{}
	for _, name := range []string{"c1", "c2"} {
		l.guest(name, "")
		e.ok("modify", name, "set", "network-card", "-t", "shared", "-m", "52:54:00:12:34:56")
	}
	for _, name := range []string{"c1", "c2"} {
		ips[name] = l.start(name)
	}
	if ips["c1"] == ips["c2"] {
		t.Fatalf("both clones got %s", ips["c1"])
	}
	c1, c2 := l.card("c1"), l.card("c2")
	if c1.InternalMAC != "52:54:00:12:34:56" || c1.DynamicMAC == c2.DynamicMAC {
		t.Fatalf("clone MACs: %+v %+v", c1, c2)
	}
	for name, ip := range ips {
		if page, err := l.fetch("http://" + ip + "/"); err != nil || !strings.Contains(page, "anka-guest "+name) {
			t.Fatalf("host -> %s at %s: %v %s", name, ip, err, page)
		}
	}
}

func readPID(path string) int {
	b, _ := os.ReadFile(path)
	var pid int
	fmt.Sscan(strings.TrimSpace(string(b)), &pid)
	return pid
}

func reattachPID(path string) int {
	var ri struct {
		Pid int `json:"pid"`
	}
	b, _ := os.ReadFile(path)
	json.Unmarshal(b, &ri)
	return ri.Pid
}

// A QEMU guest on the kernel fast path (a TAP on the network's bridge), a
// socket guest (an external VM: a namespace relayed to its datagram
// endpoint) and a QEMU guest on vhost-user (with -m) share one shared
// network: one DHCP server, and they reach each other and the host; the
// vhost-user guest comes back after a kill -9 of the plugin.
func TestFastPathAndSocketGuests(t *testing.T) {
	l := newLab(t)
	e := l.e
	l.guest("q1", "")
	e.ok("modify", "q1", "set", "network-card", "-t", "shared")
	qip := l.start("q1")
	var q struct {
		Path string
	}
	json.Unmarshal(e.jsonOK("show", "q1", "network"), &q)
	if !strings.Contains(q.Path, "kernel bridge") {
		t.Fatalf("a QEMU guest without -m is not on the fast path: %q", q.Path)
	}

	e.ok("create", "x1", "--runtime", "external")
	e.ok("modify", "x1", "set", "network-card", "-t", "shared")
	e.ok("start", "x1")
	var shown struct{ Endpoint endpoint }
	json.Unmarshal(e.jsonOK("show", "x1"), &shown)
	ep := shown.Endpoint
	if ep.Kind != "dgram" {
		t.Fatalf("external VM endpoint: %+v", ep)
	}
	ns := frameiotest.NewNetns(t)
	ns.IP(t, "link", "set", "lo", "up")
	t.Cleanup(relayGuest(t, ns, ep))

	xip := udhcpc(t, e, ns)
	if len(xip) < 4 || !inRange(strings.Split(xip[3], "/")[0], "192.168.64.2", "192.168.64.254") || strings.HasPrefix(xip[3], qip+"/") {
		t.Fatalf("the socket guest's lease: %v (the fast-path guest has %s)", xip, qip)
	}
	waitFor(t, "x1 to show its address", 15*time.Second, func() bool { return l.card("x1").IP != "" })
	for _, target := range []string{qip, "192.168.64.1"} {
		if out := ns.Exec(t, "busybox", "ping", "-c", "3", "-W", "2", target); strings.Contains(out, " 0 packets received") {
			t.Fatalf("socket guest -> %s:\n%s", target, out)
		}
	}
	if page, err := l.fetch("http://" + qip + "/"); err != nil || !strings.Contains(page, "anka-guest q1") {
		t.Fatalf("host -> fast-path guest: %v %s", err, page)
	}

	// A QEMU guest with an internal MAC (-m) needs the switch to translate
	// its frames: it gets vhost-user, the plugin reading its virtqueues in
	// its shared memory, on the same network.
	l.guest("v1", "anka.ping="+qip)
	e.ok("modify", "v1", "set", "network-card", "-t", "shared", "-m", "52:54:00:aa:bb:01")
	vip := l.start("v1")
	json.Unmarshal(e.jsonOK("show", "v1", "network"), &q)
	if !strings.Contains(q.Path, "vhost-user") {
		t.Fatalf("a QEMU guest with -m is not on vhost-user: %q", q.Path)
	}
	waitFor(t, "v1 to ping the fast-path guest", 90*time.Second, pingDone(e, "v1", qip))
	if !consoleHas(e, "v1", "ping "+qip+" ok")() {
		t.Fatalf("vhost-user guest -> fast-path guest %s failed", qip)
	}
	if out := ns.Exec(t, "busybox", "ping", "-c", "3", "-W", "2", vip); strings.Contains(out, " 0 packets received") {
		t.Fatalf("socket guest -> vhost-user guest %s:\n%s", vip, out)
	}
	if page, err := l.fetch("http://" + vip + "/"); err != nil || !strings.Contains(page, "anka-guest v1") {
		t.Fatalf("host -> vhost-user guest: %v %s", err, page)
	}

	// The guest took checksum offload and TSO from the back-end: its bulk
	// TCP leaves partial checksums and 64 KiB segments for the plugin to
	// cut, and the host's stack to finish, and the host's TCP reaches it
	// with partial checksums (GUEST_CSUM) and in 64 KiB segments
	// (GUEST_TSO4/TSO6); 4 MiB through the guest's TCP echo come back
	// intact.
	tcpEcho(t, l.host, vip, 4<<20)
	if f := nicFeatures(t, e, "v1"); len(f) < 13 || f[0] != '1' || f[1] != '1' || f[7] != '1' || f[8] != '1' || f[11] != '1' || f[12] != '1' {
		t.Fatalf("the vhost-user guest's NIC features (bit 0 first): %q, want CSUM (0), GUEST_CSUM (1), GUEST_TSO4 (7), GUEST_TSO6 (8), HOST_TSO4 (11) and HOST_TSO6 (12)", f)
	}

	// Suspend and resume stop and start the plugin's rings (QEMU asks for
	// their state and hands it back); the guest carries on.
	e.ok("suspend", "v1")
	e.ok("start", "v1")
	waitFor(t, "the vhost-user guest to answer after suspend and resume", 30*time.Second, func() bool {
		page, err := l.fetch("http://" + vip + "/")
		return err == nil && strings.Contains(page, "anka-guest v1")
	})

	// kill -9 of the plugin: QEMU connects again to the restarted plugin's
	// socket and the guest answers at the same address.
	reattach := filepath.Join(e.dir, "state", "plugins", "anka-net-shared", "reattach.json")
	old := reattachPID(reattach)
	kill9(t, "anka-net-shared", old)
	waitFor(t, "the daemon to start the shared plugin again", 30*time.Second, func() bool {
		p := reattachPID(reattach)
		return p != old && alive(p)
	})
	answered := false
	for deadline := time.Now().Add(60 * time.Second); !answered && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		page, err := l.fetch("http://" + vip + "/")
		answered = err == nil && strings.Contains(page, "anka-guest v1")
	}
	if !answered {
		plog, _ := os.ReadFile(filepath.Join(e.dir, "state", "plugins", "anka-net-shared", "plugin.log"))
		if len(plog) > 6000 {
			plog = plog[len(plog)-6000:]
		}
		qlog, _ := os.ReadFile(filepath.Join(e.dir, "state", "vms", "v1", "qemu.log"))
		t.Fatalf("timed out after 1m0s waiting for the vhost-user guest to answer after the plugin's restart\nqemu.log: %s\nplugin.log (end):\n%s", qlog, plog)
	}
	if got := l.card("v1").IP; got != vip {
		t.Errorf("the vhost-user guest's address after the restart: %q, had %s", got, vip)
	}
}

// nicFeatures is the virtio feature bits the guest's eth0 negotiated, bit
// 0 first, from its console ("nic features" line).
func nicFeatures(t *testing.T, e *env, vm string) string {
	t.Helper()
	const mark = "anka-guest: nic features "
	var line string
	waitFor(t, vm+" to print its NIC features", 30*time.Second, func() bool {
		b, _ := os.ReadFile(filepath.Join(e.dir, "state", "vms", vm, "console.log"))
		i := bytes.Index(b, []byte(mark))
		if i < 0 {
			return false
		}
		rest := b[i+len(mark):]
		j := bytes.IndexByte(rest, '\n')
		if j < 0 {
			return false
		}
		line = strings.TrimSpace(string(rest[:j]))
		return true
	})
	return line
}

// tcpEcho sends n pseudo-random bytes to the guest's TCP echo (port 7)
// from namespace ns and checks that the same bytes come back.
func tcpEcho(t *testing.T, ns *frameiotest.Netns, ip string, n int) {
	t.Helper()
	var c net.Conn
	if err := ns.Run(func() (err error) {
		c, err = net.DialTimeout("tcp", net.JoinHostPort(ip, "7"), 10*time.Second)
		return err
	}); err != nil {
		t.Fatalf("TCP echo on %s: %v", ip, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(120 * time.Second))
	data := make([]byte, n)
	rand.New(rand.NewSource(int64(n))).Read(data)
	sent := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		sent <- err
	}()
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("TCP echo of %d bytes through %s: %v", n, ip, err)
	}
	if err := <-sent; err != nil {
		t.Fatalf("TCP echo: sending: %v", err)
	}
	if !bytes.Equal(got, data) {
		i := 0
		for i < n && got[i] == data[i] {
			i++
		}
		t.Fatalf("TCP echo through %s: %d bytes came back changed from byte %d", ip, n, i)
	}
}
