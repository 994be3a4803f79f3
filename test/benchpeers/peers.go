package benchpeers

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
)

// startAdapter runs `benchpeers adapter` in ns and waits until it says
// it is ready (TAP up, socket connected or bound).
func (s *session) startAdapter(ctx context.Context, ns *netns, label string, mtu int, args ...string) (*proc, error) {
	cfg := &s.h.cfg
	argv := append([]string{"adapter", "-tap", "eth0", "-mtu", strconv.Itoa(mtu), "-batch", strconv.Itoa(cfg.Batch)}, args...)
	p, err := startProc(&s.cl, ns, s.dir, label, nil, cfg.Tool, argv...)
	if err != nil {
		return nil, err
	}
	err = waitFor(ctx, 15*time.Second, label+" to be ready", func() (bool, error) {
		b, _ := os.ReadFile(p.log)
		if strings.Contains(string(b), "adapter ready") {
			return true, nil
		}
		if p.exited() {
			return false, fmt.Errorf("%w: %s exited: %s", errStop, label, p.logTail())
		}
		return false, nil
	})
	return p, err
}

// waitSocket waits for a peer's socket file.
func (s *session) waitSocket(ctx context.Context, p *proc, path string) error {
	return waitFor(ctx, 15*time.Second, p.name+" to create "+path, func() (bool, error) {
		if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return true, nil
		}
		if p.exited() {
			return false, fmt.Errorf("%w: %s exited: %s", errStop, p.name, p.logTail())
		}
		return false, nil
	})
}

// setupVeth is the kernel limit: a veth pair from the guest straight to
// the host side, offloads as the kernel sets them.
func (s *session) setupVeth(mtu int) error {
	if err := s.vethTo(s.host, "hv0", "eth0", mtu); err != nil {
		return err
	}
	s.hostAddr = vethFar
	return nil
}

// The kernel limit's addresses: the far end of the veth, and the guest's.
const (
	vethFar   = "10.66.0.1"
	vethGuest = "10.66.0.2"
)

// vethTo links the guest to far by a veth pair (farIf there, guestIf in
// the guest), vethFar and vethGuest on its ends, both up.
func (s *session) vethTo(far *netns, farIf, guestIf string, mtu int) error {
	m := strconv.Itoa(mtu)
	for _, st := range [][]string{
		{"link", "add", farIf, "mtu", m, "type", "veth", "peer", "name", guestIf, "mtu", m, "netns", s.guest.name},
		{"addr", "add", vethFar + "/24", "dev", farIf},
		{"link", "set", farIf, "up"},
	} {
		if err := far.ip(st...); err != nil {
			return err
		}
	}
	for _, st := range [][]string{
		{"addr", "add", vethGuest + "/24", "dev", guestIf},
		{"link", "set", guestIf, "up"},
	} {
		if err := s.guest.ip(st...); err != nil {
			return err
		}
	}
	return nil
}

// setupCeiling joins the guest's TAP to a TAP on the host side through
// two adapters and one socket: the cost of the framing with no network
// behind it.
func (s *session) setupCeiling(ctx context.Context, mtu int, stream bool) error {
	var hostArgs, guestArgs []string
	if stream {
		sock := filepath.Join(s.dir, "ceil.sock")
		hostArgs = []string{"-stream-listen", sock}
		guestArgs = []string{"-stream-connect", sock}
		s.note = "stream socket"
	} else {
		a, b := filepath.Join(s.dir, "guest.sock"), filepath.Join(s.dir, "host.sock")
		hostArgs = []string{"-dgram-bind", b, "-dgram-peer", a}
		guestArgs = []string{"-dgram-bind", a, "-dgram-peer", b}
		s.note = "datagram sockets"
	}
	if _, err := s.startAdapter(ctx, s.host, "adapter-host", mtu, hostArgs...); err != nil {
		return err
	}
	if _, err := s.startAdapter(ctx, s.guest, "adapter-guest", mtu, guestArgs...); err != nil {
		return err
	}
	if err := s.host.ip("addr", "add", "10.77.0.1/24", "dev", "eth0"); err != nil {
		return err
	}
	if err := s.guest.ip("addr", "add", "10.77.0.2/24", "dev", "eth0"); err != nil {
		return err
	}
	s.hostAddr = "10.77.0.1"
	return nil
}

// gvproxy's fixed addresses: the guest MAC its DHCP server has a static
// lease for, and the virtual host address it NATs to 127.0.0.1.
const (
	gvproxyGuestMAC = "5a:94:ef:e4:0c:ee"
	gvproxyHostIP   = "192.168.127.254"
)

// setupGvproxy runs gvproxy in the host namespace with a QEMU stream
// socket and its HTTP API; the guest takes its address by DHCP and
// reaches the host namespace's loopback at 192.168.127.254.
func (s *session) setupGvproxy(ctx context.Context, mtu int) error {
	cfg := &s.h.cfg
	sock := filepath.Join(s.dir, "gvproxy.sock")
	api := filepath.Join(s.dir, "gvproxy-api.sock")
	p, err := startProc(&s.cl, s.host, s.dir, "gvproxy", nil, cfg.Gvproxy,
		"-listen-qemu", "unix://"+sock, "-listen", "unix://"+api, "-mtu", strconv.Itoa(mtu))
	if err != nil {
		return err
	}
	if err := s.waitSocket(ctx, p, sock); err != nil {
		return err
	}
	if _, err := s.startAdapter(ctx, s.guest, "adapter", mtu, "-mac", gvproxyGuestMAC, "-stream-connect", sock); err != nil {
		return err
	}
	l, err := s.dhcp(ctx, "eth0")
	if err != nil {
		return err
	}
	s.note = "QEMU stream socket; guest " + l.IP
	s.hostAddr = gvproxyHostIP
	return nil
}

// setupPasst runs passt in the host namespace, which gets a veth with
// an address and a default route for passt to copy (passt needs a
// routable interface); the guest takes that address by DHCP and reaches
// the host namespace's loopback at the gateway address (passt maps the
// gateway to the host by default).
func (s *session) setupPasst(ctx context.Context, mtu int) error {
	cfg := &s.h.cfg
	for _, st := range [][]string{
		{"link", "add", "ext0", "type", "veth", "peer", "name", "ext1"},
		{"addr", "add", "10.0.2.15/24", "dev", "ext0"},
		{"link", "set", "ext0", "up"},
		{"link", "set", "ext1", "up"},
		{"route", "add", "default", "via", "10.0.2.2"},
	} {
		if err := s.host.ip(st...); err != nil {
			return err
		}
	}
	sock := filepath.Join(s.dir, "passt.sock")
	p, err := startProc(&s.cl, s.host, s.dir, "passt", nil, cfg.Passt, "-f", "-q", "-4", "-s", sock, "-m", strconv.Itoa(mtu))
	if err != nil {
		return err
	}
	if err := s.waitSocket(ctx, p, sock); err != nil {
		return err
	}
	if _, err := s.startAdapter(ctx, s.guest, "adapter", mtu, "-stream-connect", sock); err != nil {
		return err
	}
	l, err := s.dhcp(ctx, "eth0")
	if err != nil {
		return err
	}
	if l.Router == "" {
		return fmt.Errorf("passt's DHCP gave no gateway")
	}
	s.note = "stream socket; guest " + l.IP
	s.hostAddr = l.Router
	return nil
}

// ankaWorld is one user's anka: its state dir and config files, run in
// the host namespace, so the daemon and the plugins it starts live there.
type ankaWorld struct {
	s    *session
	bin  string
	dir  string
	env  []string
	vms  []string
	idle []frameio.Port
}

type ankaEndpoint struct {
	Kind       string `json:"kind"`
	PluginPath string `json:"plugin_path"`
	VMPath     string `json:"vm_path"`
	TAP        string `json:"tap"`
	MAC        string `json:"mac"`
}

func (s *session) newAnka(mtu int) (*ankaWorld, error) {
	cfg := &s.h.cfg
	dir := filepath.Join(s.dir, "anka")
	for _, d := range []string{"state", "plugins"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	w := &ankaWorld{s: s, bin: cfg.Anka, dir: dir, env: []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + dir,
		"ANKA_STATE_DIR=" + filepath.Join(dir, "state"),
		"ANKA_CONFIG=" + filepath.Join(dir, "user.yaml"),
		"ANKA_SYSTEM_CONFIG=" + filepath.Join(dir, "system.yaml"),
		"ANKA_PLUGIN_DIR=" + filepath.Join(dir, "plugins"),
		"ANKA_MTU=" + strconv.Itoa(mtu),
		// The data path is the same whoever the plugin runs as; root
		// spares the benchmark a plugin user and a /dev/net/tun open to it.
		"ANKA_PLUGIN_USER=root",
	}}
	s.cl.add(w.teardown)
	return w, nil
}

func (w *ankaWorld) run(ctx context.Context, args ...string) ([]byte, error) {
	c, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return w.s.host.output(c, w.env, w.bin, args...)
}

// startVM creates, attaches to the shared network and starts an
// external VM, and returns its endpoint. endpoint is what the VM's
// hypervisor offers (`anka create --endpoint`); empty is the external
// runtime's default (dgram, stream).
func (w *ankaWorld) startVM(ctx context.Context, name, endpoint string) (ankaEndpoint, error) {
	args := []string{"create", name, "--runtime", "external"}
	if endpoint != "" {
		args = append(args, "--endpoint", endpoint)
	}
	if _, err := w.run(ctx, args...); err != nil {
		return ankaEndpoint{}, err
	}
	w.vms = append(w.vms, name)
	if _, err := w.run(ctx, "modify", name, "set", "network-card", "-t", "shared"); err != nil {
		return ankaEndpoint{}, err
	}
	if _, err := w.run(ctx, "start", name); err != nil {
		return ankaEndpoint{}, err
	}
	out, err := w.run(ctx, "-j", "show", name)
	if err != nil {
		return ankaEndpoint{}, err
	}
	var env struct {
		Status string
		Body   struct {
			Endpoint *ankaEndpoint `json:"endpoint"`
		}
	}
	if err := json.Unmarshal(out, &env); err != nil || env.Body.Endpoint == nil {
		return ankaEndpoint{}, fmt.Errorf("anka -j show %s: no endpoint (%v): %s", name, err, out)
	}
	return *env.Body.Endpoint, nil
}

// show returns `anka -j show NAME network` as a map.
func (w *ankaWorld) card(ctx context.Context, name string) map[string]any {
	out, err := w.run(ctx, "-j", "show", name, "network")
	if err != nil {
		return nil
	}
	var env struct{ Body map[string]any }
	json.Unmarshal(out, &env)
	return env.Body
}

// teardown powers everything off and kills what anka left running.
func (w *ankaWorld) teardown() {
	for _, p := range w.idle {
		p.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w.run(ctx, "daemon", "stop", "--all")
	state := filepath.Join(w.dir, "state")
	if b, err := os.ReadFile(filepath.Join(state, "daemon.pid")); err == nil {
		if pid, _ := strconv.Atoi(strings.TrimSpace(string(b))); pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	files, _ := filepath.Glob(filepath.Join(state, "plugins", "*", "reattach.json"))
	for _, f := range files {
		var ri struct {
			Pid int `json:"pid"`
		}
		if b, err := os.ReadFile(f); err == nil && json.Unmarshal(b, &ri) == nil && ri.Pid > 0 {
			syscall.Kill(ri.Pid, syscall.SIGKILL)
		}
	}
}

// attachGuest connects the guest namespace's TAP to an endpoint.
func (s *session) attachGuest(ctx context.Context, mtu int, ep ankaEndpoint) (*proc, error) {
	args := []string{"-mac", ep.MAC}
	switch ep.Kind {
	case "dgram":
		args = append(args, "-dgram-bind", ep.VMPath, "-dgram-peer", ep.PluginPath)
	case "stream":
		args = append(args, "-stream-connect", ep.PluginPath)
	case "vhost-user":
		args = append(args, "-vhost-user", ep.PluginPath)
		if s.h.cfg.VhostUserNoOffload {
			args = append(args, "-vhost-user-no-offload")
		}
	default:
		return nil, fmt.Errorf("endpoint kind %q: the adapter speaks dgram, stream and vhost-user", ep.Kind)
	}
	return s.startAdapter(ctx, s.guest, "adapter", mtu, args...)
}

// setupAnka is this project's shared network: anka in the host
// namespace, one external VM whose NIC is the guest namespace's TAP
// through the adapter, its address by DHCP from the plugin. endpoint is
// what the VM offers (startVM); the plugin must hand out that kind when
// it is set.
func (s *session) setupAnka(ctx context.Context, mtu int, endpoint string) (*ankaWorld, error) {
	w, err := s.newAnka(mtu)
	if err != nil {
		return nil, err
	}
	ep, err := w.startVM(ctx, "g", endpoint)
	if err != nil {
		return nil, err
	}
	if endpoint != "" && ep.Kind != endpoint {
		return nil, fmt.Errorf("the VM offered only %s and the shared plugin handed out a %s endpoint", endpoint, ep.Kind)
	}
	if s.adapter, err = s.attachGuest(ctx, mtu, ep); err != nil {
		return nil, err
	}
	l, err := s.dhcp(ctx, "eth0")
	if err != nil {
		return nil, err
	}
	if l.Router == "" {
		return nil, fmt.Errorf("the shared network's DHCP gave no gateway")
	}
	s.hostAddr = l.Router
	s.note = ep.Kind + " endpoint"
	if c := w.card(ctx, "g"); c != nil {
		if p, _ := c["path"].(string); p != "" {
			s.note += ", path " + p
		}
	}
	return w, nil
}

// attachIdle starts n more external VMs on the network, each with its
// socket bound as its hypervisor would, and no traffic.
func (w *ankaWorld) attachIdle(ctx context.Context, n int) error {
	for i := 1; i <= n; i++ {
		ep, err := w.startVM(ctx, fmt.Sprintf("idle%d", i), "")
		if err != nil {
			return err
		}
		var p frameio.Port
		switch ep.Kind {
		case "dgram":
			p, err = frameio.ListenDgram(ep.VMPath, frameio.DgramOptions{Peer: ep.PluginPath, Logger: quiet})
		case "stream":
			p, err = frameio.DialStream(ep.PluginPath, frameio.StreamOptions{Logger: quiet})
		default:
			err = fmt.Errorf("endpoint kind %q", ep.Kind)
		}
		if err != nil {
			return err
		}
		w.idle = append(w.idle, p)
		go drain(p)
	}
	return nil
}

var quiet = slog.New(slog.DiscardHandler)

func drain(p frameio.Port) {
	fs := frameio.NewBatch(8, frameio.MaxMTU)
	for {
		if _, err := p.ReadBatch(fs); err != nil {
			return
		}
	}
}

// setupFastPath is the hook for the kernel fast path: a namespace guest
// on the shared plugin's kernel bridge. External VMs get sockets, so the
// guest is a veth port of the bridge that takes over the address and MAC
// an external VM leased through the adapter (the VM is then stopped, so
// its socket port is gone). Skipped when the gateway's interface is not
// a bridge: the plugin has no fast path.
func (s *session) setupFastPath(ctx context.Context, mtu int) error {
	w, err := s.setupAnka(ctx, mtu, "")
	if err != nil {
		return err
	}
	br, err := s.bridgeOf(ctx, s.hostAddr)
	if err != nil {
		return err
	}
	if br == "" {
		return skipf("the shared plugin's gateway %s is not on a kernel bridge: no fast path in this build", s.hostAddr)
	}
	// Take g's lease, then stop g: its socket port leaves the switch.
	out, _ := s.guest.output(ctx, nil, "ip", "-j", "-4", "addr", "show", "dev", "eth0")
	var addrs []struct {
		AddrInfo []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	json.Unmarshal(out, &addrs)
	if len(addrs) == 0 || len(addrs[0].AddrInfo) == 0 {
		return fmt.Errorf("fast path: the guest's leased address: %s", out)
	}
	a := addrs[0].AddrInfo[0]
	s.adapter.stop()
	if _, err := w.run(ctx, "stop", "--force", "g"); err != nil {
		return err
	}
	gmac := ""
	if c := w.card(ctx, "g"); c != nil {
		gmac, _ = c["mac"].(string)
	}
	m := strconv.Itoa(mtu)
	for _, st := range [][]string{
		{"link", "add", "fp0", "mtu", m, "type", "veth", "peer", "name", "eth0", "mtu", m, "netns", s.guest.name},
		{"link", "set", "fp0", "master", br},
		{"link", "set", "fp0", "up"},
	} {
		if err := s.host.ip(st...); err != nil {
			return err
		}
	}
	if gmac != "" {
		if err := s.guest.ip("link", "set", "eth0", "address", gmac); err != nil {
			return err
		}
	}
	for _, st := range [][]string{
		{"addr", "add", fmt.Sprintf("%s/%d", a.Local, a.PrefixLen), "dev", "eth0"},
		{"link", "set", "eth0", "up"},
		{"route", "add", "default", "via", s.hostAddr},
	} {
		if err := s.guest.ip(st...); err != nil {
			return err
		}
	}
	s.note = "veth on bridge " + br
	if s.h.cfg.FastPathPairs > 0 {
		if err := s.setupBeside(mtu); err != nil {
			return fmt.Errorf("the veth beside the fast path: %w", err)
		}
		s.note += fmt.Sprintf("; beside it a veth from the guest to a namespace of its own (the kernel limit), %d pair(s) of runs alternated per direction", s.h.cfg.FastPathPairs)
	}
	return nil
}

// setupBeside gives the fast-path guest a second link, the veth peer's
// veth to a third namespace (its subnet apart from the plugin's, so the
// guest reaches the plugin's network by the bridge and this one by the
// veth), so that the kernel limit can be measured in the same session,
// runs alternated.
func (s *session) setupBeside(mtu int) error {
	ns, err := newNetns(&s.cl, "k")
	if err != nil {
		return err
	}
	if err := s.vethTo(ns, "kv0", "eth1", mtu); err != nil {
		return err
	}
	s.beside = ns
	return nil
}

// bridgeOf names the bridge holding addr in the host namespace, or "".
func (s *session) bridgeOf(ctx context.Context, addr string) (string, error) {
	out, err := s.host.output(ctx, nil, "ip", "-j", "-d", "addr", "show")
	if err != nil {
		return "", err
	}
	var links []struct {
		IfName   string `json:"ifname"`
		LinkInfo struct {
			InfoKind string `json:"info_kind"`
		} `json:"linkinfo"`
		AddrInfo []struct {
			Local string `json:"local"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		return "", err
	}
	for _, l := range links {
		for _, a := range l.AddrInfo {
			if a.Local == addr && l.LinkInfo.InfoKind == "bridge" {
				return l.IfName, nil
			}
		}
	}
	return "", nil
}
