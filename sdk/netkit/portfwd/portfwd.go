package portfwd

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Defaults for the zero values of the Forwarder's settings.
const (
	DefaultDialTimeout    = 5 * time.Second
	DefaultUDPIdleTimeout = 60 * time.Second
	DefaultMaxUDPSessions = 1024
	DefaultMaxTCPConns    = 1024
)

// ErrNoRule is wrapped by Remove when no rule has the name.
var ErrNoRule = errors.New("portfwd: no such rule")

// ErrClosed is wrapped by Add after Close.
var ErrClosed = errors.New("portfwd: forwarder closed")

// Rule is one host->guest forward.
type Rule struct {
	Name  string // unique within a Forwarder
	Proto string // "tcp" or "udp"
	// HostIP is the host address listened on; the zero Addr means 0.0.0.0
	// (every IPv4 address of the host). An IPv6 address listens on IPv6.
	HostIP netip.Addr
	// HostPort is the host port; 0 picks a free one, reported by Rules.
	HostPort  int
	GuestPort int
}

func (r Rule) hostAddr() netip.AddrPort {
	return netip.AddrPortFrom(r.HostIP, uint16(r.HostPort))
}

// Target returns the guest's current IP, or false when it is not known yet
// (no lease): the connection or datagram is then refused or dropped, and
// logged. It is called once per new TCP connection and UDP session, so the
// forward follows a guest whose address changed; it must be quick and safe
// for concurrent use.
type Target func() (netip.Addr, bool)

// Forwarder holds the forwards of one plugin. Set its exported fields
// before the first Add; a rule takes the values in force when it is added.
// The zero value is not usable: call New.
type Forwarder struct {
	// DialTimeout bounds a TCP connection to the guest; 0 means 5s.
	DialTimeout time.Duration
	// UDPIdleTimeout ends a UDP session with no datagram either way for
	// this long; 0 means 60s.
	UDPIdleTimeout time.Duration
	// MaxUDPSessions caps the sessions of one UDP rule (each holds a
	// socket); datagrams from further clients are dropped. 0 means 1024.
	MaxUDPSessions int
	// MaxTCPConns caps the connections of one TCP rule (each holds two
	// sockets); further connections are reset. 0 means 1024.
	MaxTCPConns int

	log *slog.Logger

	mu     sync.Mutex
	rules  map[string]*forward
	closed bool
}

// forward is one rule at work.
type forward struct {
	rule Rule // HostIP and HostPort as bound
	impl interface{ close() }
}

// New returns a Forwarder with no rules. A nil logger means slog.Default().
func New(logger *slog.Logger) *Forwarder {
	if logger == nil {
		logger = slog.Default()
	}
	return &Forwarder{log: logger, rules: make(map[string]*forward)}
}

// Add binds the rule's host socket and starts forwarding to the address
// to returns. A host port already in use, a duplicate name or a bad rule
// is an error, and nothing is bound.
func (f *Forwarder) Add(r Rule, to Target) error {
	r.Proto = strings.ToLower(r.Proto)
	if err := check(r); err != nil {
		return err
	}
	if to == nil {
		return fmt.Errorf("portfwd: rule %q: no Target", r.Name)
	}
	if !r.HostIP.IsValid() {
		r.HostIP = netip.IPv4Unspecified()
	}
	r.HostIP = r.HostIP.Unmap()

	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return fmt.Errorf("portfwd: rule %q: %w", r.Name, ErrClosed)
	}
	if _, ok := f.rules[r.Name]; ok {
		return fmt.Errorf("portfwd: a rule named %q exists already; remove it first or pick another name", r.Name)
	}
	fw := &forward{rule: r}
	log := f.log.With("rule", r.Name, "proto", r.Proto)
	var err error
	switch r.Proto {
	case "tcp":
		var t *tcpForward
		t, err = startTCP(r, to, orDuration(f.DialTimeout, DefaultDialTimeout), orInt(f.MaxTCPConns, DefaultMaxTCPConns), log)
		if err == nil {
			fw.rule.HostPort = t.ln.Addr().(*net.TCPAddr).Port
			fw.impl = t
		}
	case "udp":
		var u *udpForward
		u, err = startUDP(r, to, orDuration(f.UDPIdleTimeout, DefaultUDPIdleTimeout), orInt(f.MaxUDPSessions, DefaultMaxUDPSessions), log)
		if err == nil {
			fw.rule.HostPort = u.ln.LocalAddr().(*net.UDPAddr).Port
			fw.impl = u
		}
	}
	if err != nil {
		return bindError(r, err)
	}
	f.rules[r.Name] = fw
	log.Info("portfwd: forwarding", "host", fw.rule.hostAddr(), "guest_port", r.GuestPort)
	return nil
}

func check(r Rule) error {
	switch {
	case r.Name == "":
		return errors.New("portfwd: a rule needs a name")
	case r.Proto != "tcp" && r.Proto != "udp":
		return fmt.Errorf("portfwd: rule %q: protocol %q: want tcp or udp", r.Name, r.Proto)
	case r.HostPort < 0 || r.HostPort > 65535:
		return fmt.Errorf("portfwd: rule %q: host port %d: want 1-65535", r.Name, r.HostPort)
	case r.GuestPort < 1 || r.GuestPort > 65535:
		return fmt.Errorf("portfwd: rule %q: guest port %d: want 1-65535", r.Name, r.GuestPort)
	case r.HostIP.Zone() != "" && !r.HostIP.Is6():
		return fmt.Errorf("portfwd: rule %q: host address %v", r.Name, r.HostIP)
	}
	return nil
}

// bindError names the protocol, address and port that could not be bound,
// and what to do.
func bindError(r Rule, err error) error {
	where := fmt.Sprintf("%s %v", r.Proto, r.hostAddr())
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("portfwd: rule %q: %s is already in use on the host; pick another host port: %w", r.Name, where, err)
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("portfwd: rule %q: %s: host ports below 1024 need root or CAP_NET_BIND_SERVICE; pick another host port: %w", r.Name, where, err)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("portfwd: rule %q: %s: no interface of this host has address %v; pick one of the host's addresses or leave it empty for all: %w", r.Name, where, r.HostIP, err)
	}
	return fmt.Errorf("portfwd: rule %q: listen %s: %w", r.Name, where, err)
}

// Remove stops the named forward: its host socket is closed and so is
// every connection and session through it. It returns when they are gone.
func (f *Forwarder) Remove(name string) error {
	f.mu.Lock()
	fw, ok := f.rules[name]
	delete(f.rules, name)
	f.mu.Unlock()
	if !ok {
		return fmt.Errorf("portfwd: rule %q: %w", name, ErrNoRule)
	}
	fw.impl.close()
	f.log.Info("portfwd: removed", "rule", name, "proto", fw.rule.Proto, "host", fw.rule.hostAddr())
	return nil
}

// Rules returns the rules in force, sorted by name, with HostIP and
// HostPort as bound (0.0.0.0 for a zero HostIP, the picked port for 0).
func (f *Forwarder) Rules() []Rule {
	f.mu.Lock()
	out := make([]Rule, 0, len(f.rules))
	for _, fw := range f.rules {
		out = append(out, fw.rule)
	}
	f.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Close removes every rule; Add fails afterwards. It returns when every
// connection and goroutine is gone.
func (f *Forwarder) Close() error {
	f.mu.Lock()
	f.closed = true
	all := f.rules
	f.rules = make(map[string]*forward)
	f.mu.Unlock()
	var wg sync.WaitGroup
	for _, fw := range all {
		wg.Go(fw.impl.close)
	}
	wg.Wait()
	return nil
}

func orDuration(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func orInt(n, def int) int {
	if n <= 0 {
		return def
	}
	return n
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
