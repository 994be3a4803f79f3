package dnsfwd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// Defaults for the zero values of Config.
const (
	DefaultTimeout     = 2 * time.Second
	DefaultMaxInFlight = 256
)

// resolvConfCheckEvery bounds how often a query stats the resolv.conf
// file; tests lower it.
var resolvConfCheckEvery = time.Second

// Config describes a forwarder.
type Config struct {
	// Listen is the address served over UDP and TCP, for example
	// 192.168.64.1:53. Port 0 picks a free port, the same for both (see
	// Forwarder.Addr).
	Listen netip.AddrPort
	// Upstreams are the resolvers asked, in order, as "ip:port" (a bare
	// address means port 53). Empty means the nameservers of ResolvConf,
	// re-read whenever that file changes.
	Upstreams []string
	// ResolvConf is the file read when Upstreams is empty;
	// "" means /etc/resolv.conf.
	ResolvConf string
	// Timeout bounds one query to one upstream (dial, send, answer);
	// 0 means 2s.
	Timeout time.Duration
	// MaxInFlight caps the queries being forwarded at once, and the TCP
	// connections open at once; 0 means 256. A UDP query over the cap is
	// dropped (the client retries), a TCP connection over it waits in the
	// kernel's backlog.
	MaxInFlight int
	// Logger gets start, stop, resolver changes and failures (rate-limited);
	// nil means slog.Default().
	Logger *slog.Logger
}

// Stats counts queries since Start.
type Stats struct {
	Queries  uint64 // received and accepted by the DNS parser
	Answered uint64 // relayed from an upstream (any rcode)
	Failed   uint64 // answered SERVFAIL by the forwarder: no upstream answered
	Dropped  uint64 // not answered: MaxInFlight queries were already in flight
}

// Forwarder serves DNS on one address and relays every query to the
// upstream resolvers. It is safe for concurrent use.
type Forwarder struct {
	log     *slog.Logger
	addr    netip.AddrPort
	timeout time.Duration
	sem     chan struct{}

	udpSrv, tcpSrv *dns.Server
	serveDone      chan struct{} // closed when both servers have returned

	ctx    context.Context // cancelled by Close: in-flight exchanges end
	cancel context.CancelFunc

	ups atomic.Pointer[[]string]
	// resolv.conf tracking; upstreams from Config are fixed.
	rcPath    string
	rcMu      sync.Mutex // held while checking the file; queries TryLock it
	rcInfo    os.FileInfo
	rcChecked time.Time

	queries, answered, failed, dropped atomic.Uint64
	dropLog, failLog                   logLimiter

	closeOnce sync.Once
	closeErr  error
}

// Start binds the UDP and TCP sockets on cfg.Listen, then serves them until
// Close. It fails at once if either socket cannot be bound, or when no
// upstream is known.
func Start(cfg Config) (*Forwarder, error) {
	if !cfg.Listen.IsValid() {
		return nil, errors.New("dnsfwd: Config.Listen is not set (for example 192.168.64.1:53)")
	}
	f := &Forwarder{
		log:     cfg.Logger,
		timeout: cfg.Timeout,
	}
	if f.log == nil {
		f.log = slog.Default()
	}
	if f.timeout <= 0 {
		f.timeout = DefaultTimeout
	}
	maxInFlight := cfg.MaxInFlight
	if maxInFlight <= 0 {
		maxInFlight = DefaultMaxInFlight
	}
	f.sem = make(chan struct{}, maxInFlight)

	pc, ln, err := listen(cfg.Listen)
	if err != nil {
		return nil, err
	}
	la := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	f.addr = netip.AddrPortFrom(la.Addr().Unmap(), la.Port())
	closeSockets := func() { pc.Close(); ln.Close() }

	if len(cfg.Upstreams) > 0 {
		ups := make([]string, 0, len(cfg.Upstreams))
		for _, s := range cfg.Upstreams {
			u, err := normalizeUpstream(s)
			if err != nil {
				closeSockets()
				return nil, err
			}
			ups = append(ups, u)
		}
		if ups = f.withoutSelf(ups); len(ups) == 0 {
			closeSockets()
			return nil, fmt.Errorf("dnsfwd: every upstream in Config.Upstreams is this forwarder (%v) itself", f.addr)
		}
		f.ups.Store(&ups)
	} else {
		f.rcPath = cfg.ResolvConf
		if f.rcPath == "" {
			f.rcPath = DefaultResolvConf
		}
		ups, info, err := f.readResolvConf()
		if err != nil {
			closeSockets()
			return nil, err
		}
		f.rcInfo, f.rcChecked = info, time.Now()
		f.ups.Store(&ups)
	}

	f.ctx, f.cancel = context.WithCancel(context.Background())
	h := dns.HandlerFunc(f.serve)
	f.udpSrv = &dns.Server{PacketConn: pc, Handler: h, UDPSize: dns.DefaultMsgSize}
	f.tcpSrv = &dns.Server{Listener: newLimitListener(ln, maxInFlight), Handler: h}
	f.serveDone = make(chan struct{})
	var wg sync.WaitGroup
	started := make(chan error, 2)
	for _, srv := range []*dns.Server{f.udpSrv, f.tcpSrv} {
		var once sync.Once
		report := func(err error) { once.Do(func() { started <- err }) }
		srv.NotifyStartedFunc = func() { report(nil) }
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := srv.ActivateAndServe()
			report(err) // no-op once started
			if err != nil {
				f.log.Error("dnsfwd: server stopped", "addr", f.addr, "err", err)
			}
		}()
	}
	go func() { wg.Wait(); close(f.serveDone) }()
	var startErr error
	for range 2 {
		if err := <-started; err != nil && startErr == nil {
			startErr = err
		}
	}
	if startErr != nil {
		f.Close()
		closeSockets()
		return nil, fmt.Errorf("dnsfwd: serving %v: %w", f.addr, startErr)
	}
	f.log.Info("dnsfwd: serving", "addr", f.addr, "upstreams", f.Upstreams())
	return f, nil
}

// listen binds UDP then TCP on the same address. With port 0 the TCP port
// follows the UDP one, retried if another process holds it for TCP.
func listen(ap netip.AddrPort) (*net.UDPConn, net.Listener, error) {
	udp, tcp := "udp6", "tcp6"
	if ap.Addr().Is4() {
		udp, tcp = "udp4", "tcp4"
	}
	var lastErr error
	for range 20 {
		pc, err := net.ListenUDP(udp, net.UDPAddrFromAddrPort(ap))
		if err != nil {
			return nil, nil, bindError("udp", ap, err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		tap := netip.AddrPortFrom(ap.Addr(), uint16(port))
		ln, err := net.ListenTCP(tcp, net.TCPAddrFromAddrPort(tap))
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		lastErr = bindError("tcp", tap, err)
		if ap.Port() != 0 || !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	return nil, nil, lastErr
}

// bindError says what to do about the usual reasons a bind fails.
func bindError(proto string, ap netip.AddrPort, err error) error {
	var hint string
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		hint = "the port is already in use: another DNS server (dnsmasq, systemd-resolved, a second plugin) holds it; stop it or listen on another address"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		hint = "no interface on this host has that address (is the network's TAP up with its gateway address?)"
	case errors.Is(err, syscall.EACCES):
		hint = "ports below 1024 need root or CAP_NET_BIND_SERVICE"
	default:
		return fmt.Errorf("dnsfwd: listen %s %v: %w", proto, ap, err)
	}
	return fmt.Errorf("dnsfwd: listen %s %v: %s: %w", proto, ap, hint, err)
}

// readResolvConf returns the file's nameservers, less this forwarder, or
// an error naming the file when none is left.
func (f *Forwarder) readResolvConf() ([]string, os.FileInfo, error) {
	info, err := os.Stat(f.rcPath)
	if err != nil {
		return nil, nil, fmt.Errorf("dnsfwd: no upstream resolvers: %w (set Config.Upstreams)", err)
	}
	data, err := os.ReadFile(f.rcPath)
	if err != nil {
		return nil, nil, fmt.Errorf("dnsfwd: no upstream resolvers: %w (set Config.Upstreams)", err)
	}
	ups := f.withoutSelf(parseResolvConf(data, resolvConfPort))
	if len(ups) == 0 {
		return nil, nil, fmt.Errorf("dnsfwd: no upstream resolvers: %s has no usable nameserver line other than this forwarder (%v); set Config.Upstreams", f.rcPath, f.addr)
	}
	return ups, info, nil
}

// withoutSelf drops upstreams that are this forwarder, which would loop
// every query back to it until MaxInFlight is used up.
func (f *Forwarder) withoutSelf(ups []string) []string {
	out := ups[:0:0]
	for _, u := range ups {
		ap, err := netip.ParseAddrPort(u)
		if err == nil && ap.Port() == f.addr.Port() &&
			(ap.Addr().WithZone("") == f.addr.Addr().WithZone("") ||
				f.addr.Addr().IsUnspecified() && ap.Addr().IsLoopback()) {
			f.log.Warn("dnsfwd: ignoring upstream: it is this forwarder", "upstream", u, "addr", f.addr)
			continue
		}
		out = append(out, u)
	}
	return out
}

// Addr is the address served, with the port picked when Config.Listen had
// port 0.
func (f *Forwarder) Addr() netip.AddrPort { return f.addr }

// Upstreams returns the resolvers in use now, in the order they are asked.
func (f *Forwarder) Upstreams() []string {
	return append([]string(nil), *f.ups.Load()...)
}

// Stats returns the counters.
func (f *Forwarder) Stats() Stats {
	return Stats{
		Queries:  f.queries.Load(),
		Answered: f.answered.Load(),
		Failed:   f.failed.Load(),
		Dropped:  f.dropped.Load(),
	}
}

// Close stops serving, ends queries in flight and waits for them; the
// sockets are closed when it returns. Later calls return the first result.
func (f *Forwarder) Close() error {
	f.closeOnce.Do(func() {
		f.cancel()
		var errs []error
		for _, srv := range []*dns.Server{f.udpSrv, f.tcpSrv} {
			if err := srv.Shutdown(); err != nil && !strings.Contains(err.Error(), "not started") {
				errs = append(errs, err)
			}
		}
		<-f.serveDone
		f.closeErr = errors.Join(errs...)
		f.log.Info("dnsfwd: stopped", "addr", f.addr)
	})
	return f.closeErr
}

// upstreams returns the current list, re-reading resolv.conf first if its
// check interval has passed and the file changed.
func (f *Forwarder) upstreams() []string {
	if f.rcPath != "" && f.rcMu.TryLock() {
		f.maybeReload()
		f.rcMu.Unlock()
	}
	return *f.ups.Load()
}

// maybeReload runs with rcMu held.
func (f *Forwarder) maybeReload() {
	now := time.Now()
	if now.Sub(f.rcChecked) < resolvConfCheckEvery {
		return
	}
	f.rcChecked = now
	info, err := os.Stat(f.rcPath)
	if err != nil {
		// Often a moment during a replacement; keep what we have.
		f.log.Debug("dnsfwd: cannot stat resolv.conf; keeping upstreams", "path", f.rcPath, "err", err)
		return
	}
	if f.rcInfo != nil && os.SameFile(f.rcInfo, info) &&
		info.ModTime().Equal(f.rcInfo.ModTime()) && info.Size() == f.rcInfo.Size() {
		return
	}
	ups, info, err := f.readResolvConf()
	if err != nil {
		f.log.Warn("dnsfwd: resolv.conf changed but is unusable; keeping upstreams", "path", f.rcPath, "err", err, "upstreams", *f.ups.Load())
		return
	}
	f.rcInfo = info
	if old := *f.ups.Load(); !equalStrings(old, ups) {
		f.ups.Store(&ups)
		f.log.Info("dnsfwd: upstreams changed", "path", f.rcPath, "from", old, "to", ups)
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// serve answers one query.
func (f *Forwarder) serve(w dns.ResponseWriter, r *dns.Msg) {
	f.queries.Add(1)
	select {
	case f.sem <- struct{}{}:
	default:
		f.dropped.Add(1)
		f.dropLog.warn(f.log, "dnsfwd: too many queries in flight; dropping", "addr", f.addr, "max", cap(f.sem), "from", w.RemoteAddr())
		return
	}
	defer func() { <-f.sem }()

	_, overTCP := w.RemoteAddr().(*net.TCPAddr)
	resp := f.forward(r, overTCP)
	if resp == nil {
		f.failed.Add(1)
		resp = new(dns.Msg)
		resp.SetRcode(r, dns.RcodeServerFailure)
		if opt := r.IsEdns0(); opt != nil {
			resp.SetEdns0(dns.DefaultMsgSize, opt.Do())
		}
	} else {
		f.answered.Add(1)
	}
	if !overTCP {
		size := dns.MinMsgSize
		if opt := r.IsEdns0(); opt != nil && int(opt.UDPSize()) > size {
			size = int(opt.UDPSize())
		}
		resp.Truncate(size)
	}
	if err := w.WriteMsg(resp); err != nil {
		f.log.Debug("dnsfwd: cannot answer", "to", w.RemoteAddr(), "err", err)
	}
}

// forward asks the upstreams in order and returns the first usable answer
// with the client's ID, or nil when none answered. SERVFAIL and REFUSED
// move on to the next upstream (as the system resolver does) but are
// returned if nothing better comes.
func (f *Forwarder) forward(r *dns.Msg, overTCP bool) *dns.Msg {
	q := r.Copy()
	var fallback *dns.Msg
	var errs []string
	for _, up := range f.upstreams() {
		if f.ctx.Err() != nil {
			return nil
		}
		// A fresh ID upstream: the client's IDs are not ours to trust.
		q.Id = dns.Id()
		resp, err := f.exchange(q, up, overTCP)
		if err != nil {
			errs = append(errs, up+": "+err.Error())
			continue
		}
		resp.Id = r.Id
		if resp.Rcode == dns.RcodeServerFailure || resp.Rcode == dns.RcodeRefused {
			if fallback == nil {
				fallback = resp
			}
			continue
		}
		return resp
	}
	if fallback != nil {
		return fallback
	}
	if f.ctx.Err() == nil {
		name := ""
		if len(r.Question) > 0 {
			name = r.Question[0].Name
		}
		f.failLog.warn(f.log, "dnsfwd: no upstream answered; SERVFAIL", "name", name, "errors", errs)
	}
	return nil
}

// exchange asks one upstream. A query that came over UDP goes over UDP
// first and over TCP again when the answer is truncated; one that came
// over TCP goes over TCP.
func (f *Forwarder) exchange(q *dns.Msg, up string, overTCP bool) (*dns.Msg, error) {
	if overTCP {
		return f.exchangeNet(q, up, "tcp")
	}
	resp, err := f.exchangeNet(q, up, "udp")
	if err != nil || !resp.Truncated {
		return resp, err
	}
	full, err := f.exchangeNet(q, up, "tcp")
	if err != nil {
		// The truncated answer still tells the client to retry over TCP.
		f.log.Debug("dnsfwd: TCP retry of a truncated answer failed", "upstream", up, "err", err)
		return resp, nil
	}
	return full, nil
}

func (f *Forwarder) exchangeNet(q *dns.Msg, up, network string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(f.ctx, f.timeout)
	defer cancel()
	c := &dns.Client{Net: network, Timeout: f.timeout}
	co, err := c.DialContext(ctx, up)
	if err != nil {
		return nil, err
	}
	// Close interrupts the exchange: deadlines alone would hold Close up
	// for a whole Timeout.
	stop := context.AfterFunc(ctx, func() { co.Close() })
	defer func() {
		if stop() {
			co.Close()
		}
	}()
	resp, _, err := c.ExchangeWithConnContext(ctx, q, co)
	if err != nil {
		return nil, err
	}
	if !sameQuestion(q, resp) {
		return nil, errors.New("answer is for another question")
	}
	return resp, nil
}

// sameQuestion reports whether resp answers q; an answer without a
// question section (some servers' FORMERR) is accepted as an error reply.
func sameQuestion(q, resp *dns.Msg) bool {
	if len(resp.Question) == 0 {
		return resp.Rcode != dns.RcodeSuccess
	}
	if len(resp.Question) != len(q.Question) {
		return false
	}
	for i, a := range q.Question {
		b := resp.Question[i]
		if a.Qtype != b.Qtype || a.Qclass != b.Qclass || !strings.EqualFold(a.Name, b.Name) {
			return false
		}
	}
	return true
}

// limitListener lets at most cap(sem) accepted connections be open.
type limitListener struct {
	net.Listener
	sem       chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func newLimitListener(ln net.Listener, n int) *limitListener {
	return &limitListener{Listener: ln, sem: make(chan struct{}, n), done: make(chan struct{})}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.sem }}, nil
}

func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// logLimiter keeps a flood from becoming a flood of log lines: one line a
// second at most, saying how many were suppressed.
type logLimiter struct {
	next       atomic.Int64 // unix nanoseconds before which lines are suppressed
	suppressed atomic.Uint64
}

func (l *logLimiter) warn(log *slog.Logger, msg string, args ...any) {
	now := time.Now().UnixNano()
	next := l.next.Load()
	if now < next || !l.next.CompareAndSwap(next, now+int64(time.Second)) {
		l.suppressed.Add(1)
		return
	}
	if n := l.suppressed.Swap(0); n > 0 {
		args = append(args, "suppressed", n)
	}
	log.Warn(msg, args...)
}
