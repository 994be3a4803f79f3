package benchpeers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Peer names, in the order they run and are shown.
const (
	PeerAnka          = "anka"            // this project's shared network, through the external runtime
	PeerAnkaVhostUser = "anka-vhost-user" // the same, the VM on a vhost-user endpoint
	PeerAnkaFastPath  = "anka-fastpath"   // a namespace guest on the shared plugin's kernel bridge
	PeerGvproxy       = "gvproxy"         // gvisor-tap-vsock, -listen-qemu
	PeerPasst         = "passt"           // passt, its default stream socket
	PeerVeth          = "veth"            // the kernel limit: a veth straight to the host side
	PeerAdapterDgram  = "adapter-dgram"   // two adapters joined by a datagram socket pair
	PeerAdapterStream = "adapter-stream"  // two adapters joined by a stream socket
)

// AllPeers is every peer, in run order.
var AllPeers = []string{PeerAnka, PeerAnkaVhostUser, PeerAnkaFastPath, PeerGvproxy, PeerPasst, PeerVeth, PeerAdapterDgram, PeerAdapterStream}

// Metric keys. TCP keys end in the MTU: "tcp_g2h_1500".
const (
	MetricRRp50  = "rr_p50_us"
	MetricRRp99  = "rr_p99_us"
	MetricRRtps  = "rr_per_s"
	MetricUDP64  = "udp64_fps"
	metricIdleFx = "_idle" // tcp_g2h_1500_idle16
)

// TCPKey is the metric key of a TCP run.
func TCPKey(dir string, mtu int) string { return fmt.Sprintf("tcp_%s_%d", dir, mtu) }

// IdleKey is the metric key of the guest->host run with n idle VMs.
func IdleKey(mtu, n int) string { return fmt.Sprintf("%s%s%d", TCPKey("g2h", mtu), metricIdleFx, n) }

// BesideKey is the metric key of the fast-path session's runs through
// the veth beside the bridge (the kernel limit, alternated with the fast
// path's runs); BesideRatioKey that of the quotient of each pair, the
// fast path's figure over the veth's.
func BesideKey(tcpKey string) string      { return tcpKey + "_veth_beside" }
func BesideRatioKey(tcpKey string) string { return tcpKey + "_x_veth_beside" }

// Config is one harness run.
type Config struct {
	Anka    string // bin/anka; the plugins sit beside it
	Tool    string // the benchpeers binary: adapter, rr-server, rr-client
	Gvproxy string // empty: skip gvproxy
	Passt   string // empty: skip passt
	Iperf3  string // empty: TCP by the tool's own bulk transfer (smoke runs)
	Busybox string

	Duration   time.Duration // each iperf3 run
	Omit       int           // seconds iperf3 leaves out at the start
	RRDuration time.Duration
	MTUs       []int
	Count      int      // rounds; figures are medians
	Peers      []string // nil: AllPeers
	Idle       int      // extra idle VMs for the idle run on anka; 0 skips it
	FastPath   bool     // try the fast-path peer when the plugin has a bridge
	// FastPathPairs: in the fast-path session, pairs of TCP runs per
	// direction, one through the bridge and one through a veth beside it
	// to a namespace of its own (the kernel limit), the order swapped
	// every pair. 0: one run through the bridge, compared with the veth
	// peer's session only.
	FastPathPairs int
	Batch         int // frames per adapter write; 1 is QEMU's
	// VhostUserNoOffload takes checksum offload and TSO off the
	// vhost-user guest's NIC (adapter -vhost-user-no-offload).
	VhostUserNoOffload bool
	WorkDir            string // sockets, logs, state; removed afterwards
	Logf               func(format string, args ...any)
}

func (c *Config) logf(format string, args ...any) {
	if c.Logf != nil {
		c.Logf(format, args...)
	}
}

// smallMTU is the MTU at which latency and small-frame rates are taken.
func (c *Config) smallMTU() int { return slices.Min(c.MTUs) }

// skipError says a peer cannot be measured here, and why.
type skipError struct{ why string }

func (e *skipError) Error() string { return e.why }

func skipf(format string, args ...any) error { return &skipError{fmt.Sprintf(format, args...)} }

// Run measures every peer Count times and returns the medians. A peer
// that fails is recorded with its error and the run goes on; ctx ends it
// early, cleaning up what it made.
func Run(ctx context.Context, cfg Config) (*Results, error) {
	if cfg.Count <= 0 {
		cfg.Count = 1
	}
	if len(cfg.MTUs) == 0 {
		cfg.MTUs = []int{1500, 65520}
	}
	if cfg.Duration <= 0 {
		cfg.Duration = 5 * time.Second
	}
	if cfg.RRDuration <= 0 {
		cfg.RRDuration = cfg.Duration
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 1
	}
	if cfg.Busybox == "" {
		cfg.Busybox = "busybox"
	}
	peers := cfg.Peers
	if len(peers) == 0 {
		peers = AllPeers
	}
	for _, p := range peers {
		if !slices.Contains(AllPeers, p) {
			return nil, fmt.Errorf("unknown peer %q: choose from %s", p, strings.Join(AllPeers, ", "))
		}
	}
	work, err := os.MkdirTemp(cfg.WorkDir, "abp-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	// passt drops to nobody before it binds its socket.
	os.Chmod(work, 0o755)
	h := &harness{cfg: cfg, work: work}
	if err := h.writeScripts(); err != nil {
		return nil, err
	}
	res := &Results{Machine: DescribeMachine(cfg), Date: time.Now().UTC().Format(time.RFC3339)}
	res.Settings = Settings{
		Duration: cfg.Duration.String(), RRDuration: cfg.RRDuration.String(), Omit: cfg.Omit,
		MTUs: cfg.MTUs, Count: cfg.Count, Idle: cfg.Idle, AdapterBatch: cfg.Batch,
		VhostUserOffload: !cfg.VhostUserNoOffload, FastPathPairs: cfg.FastPathPairs,
	}
	for _, name := range peers {
		pr := &PeerResult{Name: name, Label: peerLabels[name], Metrics: map[string]*Metric{}}
		if why := h.unavailable(name); why != "" {
			pr.Skipped = why
		}
		res.Peers = append(res.Peers, pr)
	}
	for round := 1; round <= cfg.Count; round++ {
		for _, pr := range res.Peers {
			if pr.Skipped != "" {
				continue
			}
			for _, mtu := range cfg.MTUs {
				if err := ctx.Err(); err != nil {
					return res, err
				}
				cfg.logf("round %d/%d: %s at MTU %d", round, cfg.Count, pr.Name, mtu)
				err := h.session(ctx, pr, round, mtu, standardSession)
				if pr.Name == PeerAnka && mtu == cfg.smallMTU() && cfg.Idle > 0 && ctx.Err() == nil {
					h.record(pr, round, mtu, err)
					cfg.logf("round %d/%d: %s at MTU %d, %d idle VMs", round, cfg.Count, pr.Name, mtu, cfg.Idle)
					err = h.session(ctx, pr, round, mtu, idleSession)
				}
				if ctx.Err() != nil {
					return res, ctx.Err()
				}
				h.record(pr, round, mtu, err)
				if pr.Skipped != "" {
					break
				}
			}
		}
	}
	for _, pr := range res.Peers {
		for _, m := range pr.Metrics {
			m.Value = median(m.Runs)
		}
	}
	res.Ratios = ratios(res, cfg)
	res.Machine.LoadEnd = loadavg()
	return res, nil
}

// record notes a session's skip or failure on its peer.
func (h *harness) record(pr *PeerResult, round, mtu int, err error) {
	var skip *skipError
	switch {
	case errors.As(err, &skip):
		pr.Skipped = skip.why
		h.cfg.logf("  %s skipped: %s", pr.Name, skip.why)
	case err != nil:
		msg := fmt.Sprintf("round %d, MTU %d: %v", round, mtu, err)
		pr.Errors = append(pr.Errors, msg)
		h.cfg.logf("  %s failed: %s", pr.Name, msg)
	}
}

var peerLabels = map[string]string{
	PeerAnka:          "anka shared (user-space switch)",
	PeerAnkaVhostUser: "anka shared, vhost-user",
	PeerAnkaFastPath:  "anka shared, kernel fast path",
	PeerGvproxy:       "gvproxy v0.8.9",
	PeerPasst:         "passt",
	PeerVeth:          "kernel veth",
	PeerAdapterDgram:  "adapter ceiling, dgram",
	PeerAdapterStream: "adapter ceiling, stream",
}

type harness struct {
	cfg  Config
	work string
	seq  int
}

// unavailable says why a peer cannot run on this machine, or "".
func (h *harness) unavailable(name string) string {
	switch name {
	case PeerGvproxy:
		if h.cfg.Gvproxy == "" {
			return "gvproxy is not installed (make bench-peers installs it)"
		}
	case PeerPasst:
		if h.cfg.Passt == "" {
			return "passt is not installed (apt-get install passt)"
		}
	case PeerAnka, PeerAnkaVhostUser, PeerAnkaFastPath:
		if h.cfg.Anka == "" {
			return "no anka binary"
		}
		if name == PeerAnkaFastPath && !h.cfg.FastPath {
			return "fast path not requested"
		}
	}
	return ""
}

// session is one peer at one MTU: namespaces, processes, sockets, all
// undone by cl.
type session struct {
	h        *harness
	round    int
	dir      string
	cl       cleanups
	guest    *netns // the guest: a TAP (or veth) and a kernel stack
	host     *netns // the host side: where the servers run
	hostAddr string // the address the guest reaches the servers at
	adapter  *proc  // the guest's adapter, if it has one
	beside   *netns // the fast path's reference: the far end of a veth from the guest
	note     string
}

// sessionKind says what a session measures.
type sessionKind int

const (
	standardSession sessionKind = iota // TCP both ways; at the small MTU also RR and UDP
	idleSession                        // anka only: guest->host, then again with idle VMs attached
)

func (h *harness) session(ctx context.Context, pr *PeerResult, round, mtu int, kind sessionKind) (err error) {
	h.seq++
	s := &session{h: h, round: round, dir: filepath.Join(h.work, fmt.Sprintf("s%d", h.seq))}
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return err
	}
	os.Chmod(s.dir, 0o777) // passt runs as nobody and binds its socket here
	defer s.cl.run()
	if s.guest, err = newNetns(&s.cl, "g"); err != nil {
		return err
	}
	if s.host, err = newNetns(&s.cl, "h"); err != nil {
		return err
	}
	var w *ankaWorld
	switch pr.Name {
	case PeerAnka:
		w, err = s.setupAnka(ctx, mtu, "")
	case PeerAnkaVhostUser:
		_, err = s.setupAnka(ctx, mtu, "vhost-user")
	case PeerAnkaFastPath:
		err = s.setupFastPath(ctx, mtu)
	case PeerGvproxy:
		err = s.setupGvproxy(ctx, mtu)
	case PeerPasst:
		err = s.setupPasst(ctx, mtu)
	case PeerVeth:
		err = s.setupVeth(mtu)
	case PeerAdapterDgram:
		err = s.setupCeiling(ctx, mtu, false)
	case PeerAdapterStream:
		err = s.setupCeiling(ctx, mtu, true)
	}
	if err != nil {
		return err
	}
	if s.note != "" && !slices.Contains(pr.Notes, s.note) {
		pr.Notes = append(pr.Notes, s.note)
	}
	if err := s.startServers(ctx); err != nil {
		return err
	}
	if kind == idleSession {
		return s.measureIdle(ctx, pr, mtu, w)
	}
	return s.measure(ctx, pr, mtu)
}

// startServers runs iperf3 and the request/response server on the host
// side and waits until the guest gets round trips through.
func (s *session) startServers(ctx context.Context) error {
	cfg := &s.h.cfg
	if err := s.startBulkServer(ctx, s.host, ""); err != nil {
		return err
	}
	if s.beside != nil {
		if err := s.startBulkServer(ctx, s.beside, "beside-"); err != nil {
			return err
		}
	}
	if _, err := startProc(&s.cl, s.host, s.dir, "rr-server", nil, cfg.Tool, "rr-server", "-l", ":7777"); err != nil {
		return err
	}
	if _, err := startProc(&s.cl, s.host, s.dir, "udp-sink", nil, cfg.Tool, "udp-sink", "-l", ":5202", "-u", ":5202"); err != nil {
		return err
	}
	// The path works when a few round trips go through: servers up,
	// addresses, ARP and the peer's NAT.
	if err := waitFor(ctx, 20*time.Second, "a first round trip to "+s.rrAddr(), func() (bool, error) {
		_, err := s.rr(ctx, s.rrAddr(), 0, 3)
		return err == nil, err
	}); err != nil {
		return err
	}
	return nil
}

// startBulkServer runs the TCP server in ns on port 5201, iperf3's or,
// without iperf3, the tool's own; label prefixes its log's name. It
// returns once iperf3 says it listens (the tool's own listens before it
// logs anything, and a client retries its connection).
func (s *session) startBulkServer(ctx context.Context, ns *netns, label string) error {
	cfg := &s.h.cfg
	if cfg.Iperf3 == "" {
		_, err := startProc(&s.cl, ns, s.dir, label+"bulk-server", nil, cfg.Tool, "bulk-server", "-l", ":5201")
		return err
	}
	if _, err := startProc(&s.cl, ns, s.dir, label+"iperf3-server", nil, cfg.Iperf3, "-s", "-p", "5201", "--forceflush"); err != nil {
		return err
	}
	return waitFor(ctx, 10*time.Second, "iperf3 -s in "+ns.name, func() (bool, error) {
		b, _ := os.ReadFile(filepath.Join(s.dir, label+"iperf3-server.log"))
		return strings.Contains(string(b), "listening"), nil
	})
}

func (s *session) rrAddr() string { return netJoin(s.hostAddr, 7777) }

func (s *session) tcp(ctx context.Context, pr *PeerResult, key, what string, reverse bool) error {
	_, err := s.tcpTo(ctx, pr, s.hostAddr, key, what, reverse)
	return err
}

// tcpTo is one TCP run to the server at addr, recorded under key; it
// returns the rate in Gbit/s.
func (s *session) tcpTo(ctx context.Context, pr *PeerResult, addr, key, what string, reverse bool) (float64, error) {
	r, err := s.iperfTCP(ctx, addr, reverse)
	if err != nil {
		return 0, fmt.Errorf("iperf3 TCP %s: %w", what, err)
	}
	pr.add(s.round, key, "Gbit/s", r.bps/1e9)
	pr.add(s.round, key+"_retransmits", "segments", float64(r.retransmits))
	s.h.cfg.logf("  %s TCP %s: %s", pr.Name, what, r)
	return r.bps / 1e9, nil
}

// tcpBeside is the fast-path session's TCP in one direction: pairs of
// runs, one through the plugin's bridge and one through the veth beside
// it, the order swapped every pair so that neither always goes first,
// and the quotient of each pair recorded. Runs seconds apart meet the
// same machine; sessions minutes apart do not (single runs here spread
// over 2x).
func (s *session) tcpBeside(ctx context.Context, pr *PeerResult, mtu int, dir string) error {
	key := TCPKey(dir, mtu)
	for i := 0; i < s.h.cfg.FastPathPairs; i++ {
		var got [2]float64 // the fast path, the veth
		for j := range 2 {
			which := (i + j) % 2
			addr, k, what := s.hostAddr, key, fmt.Sprintf("%s, MTU %d, pair %d", dir, mtu, i+1)
			if which == 1 {
				addr, k, what = vethFar, BesideKey(key), what+", veth beside"
			}
			v, err := s.tcpTo(ctx, pr, addr, k, what, dir == "h2g")
			if err != nil {
				return err
			}
			got[which] = v
		}
		pr.add(s.round, BesideRatioKey(key), "x", got[0]/got[1])
	}
	return nil
}

// measure is a standard session: TCP both ways, then at the small MTU
// request/response, and the UDP flood last (its backlog slows what
// follows for a few seconds). A test that fails is recorded and the
// others still run; the session then fails with the first error.
func (s *session) measure(ctx context.Context, pr *PeerResult, mtu int) error {
	cfg := &s.h.cfg
	var errs []error
	for _, dir := range []string{"g2h", "h2g"} {
		var err error
		if s.beside != nil {
			err = s.tcpBeside(ctx, pr, mtu, dir)
		} else {
			err = s.tcp(ctx, pr, TCPKey(dir, mtu), fmt.Sprintf("%s, MTU %d", dir, mtu), dir == "h2g")
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if mtu != cfg.smallMTU() || ctx.Err() != nil {
		return errors.Join(errs...)
	}
	if r, err := s.rr(ctx, s.rrAddr(), cfg.RRDuration, 0); err != nil {
		errs = append(errs, fmt.Errorf("request/response: %w", err))
	} else {
		pr.add(s.round, MetricRRp50, "µs", r.P50us)
		pr.add(s.round, MetricRRp99, "µs", r.P99us)
		pr.add(s.round, MetricRRtps, "/s", r.PerSecond)
		cfg.logf("  %s request/response: p50 %.0f µs, p99 %.0f µs, %.0f/s", pr.Name, r.P50us, r.P99us, r.PerSecond)
	}
	if ctx.Err() == nil {
		if r, err := s.udp(ctx); err != nil {
			errs = append(errs, fmt.Errorf("UDP 64 B: %w", err))
		} else {
			pr.add(s.round, MetricUDP64, "frames/s", r.PerSecond)
			cfg.logf("  %s UDP 64 B guest->host: %.0f datagrams/s delivered (%d of %d sent)", pr.Name, r.PerSecond, r.Received, r.Sent)
		}
	}
	return errors.Join(errs...)
}

// measureIdle is guest->host with the one VM, then with cfg.Idle more
// VMs attached and quiet, in one session.
func (s *session) measureIdle(ctx context.Context, pr *PeerResult, mtu int, w *ankaWorld) error {
	cfg := &s.h.cfg
	if err := s.tcp(ctx, pr, IdleKey(mtu, 0), fmt.Sprintf("g2h, MTU %d, before the idle VMs", mtu), false); err != nil {
		return err
	}
	if err := w.attachIdle(ctx, cfg.Idle); err != nil {
		return fmt.Errorf("attaching %d idle VMs: %w", cfg.Idle, err)
	}
	time.Sleep(time.Second)
	return s.tcp(ctx, pr, IdleKey(mtu, cfg.Idle), fmt.Sprintf("g2h, MTU %d, %d idle VMs", mtu, cfg.Idle), false)
}

func netJoin(host string, port int) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]:" + strconv.Itoa(port)
	}
	return host + ":" + strconv.Itoa(port)
}
