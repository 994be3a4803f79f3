// Package dhcpserver is the DHCP server inside a network plugin. It sits on
// a switch port, not on a kernel socket, because the plugin owns the data
// plane and a guest's DHCP traffic never reaches the host's stack.
//
// Addresses belong to identities, not MAC addresses: the plugin knows
// which port is which VM and passes the VM's uuid with every request, so
// several VMs with one fixed MAC still get distinct addresses, and a VM
// keeps its address when its MAC changes. A request handed over with an
// empty identity falls back to the DHCP client identifier (option 61),
// then to chaddr, as a plain DHCP server would; those keys carry the
// prefixes "client-id:" and "mac:", which no VM uuid has.
//
// Every lease is in a bbolt file, fsynced before its ACK leaves: a plugin
// restarted after a crash never hands out an address a guest still holds.
// Waiting writers share one fsync (group commit) so durability does not
// cap the rate.
package dhcpserver

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// LeaseState says how far a client got with an address.
type LeaseState uint8

const (
	// StateOffered holds an address between OFFER and REQUEST. It is
	// never written to disk.
	StateOffered LeaseState = 1
	// StateBound is an ACKed lease; past its Expiry it is expired but the
	// address stays the identity's until someone else needs it.
	StateBound LeaseState = 2
	// StateReleased is a lease the client gave back. The address is
	// still the identity's first choice, and the last one the pool reuses.
	StateReleased LeaseState = 3
)

func (s LeaseState) String() string {
	switch s {
	case StateOffered:
		return "offered"
	case StateBound:
		return "bound"
	case StateReleased:
		return "released"
	}
	return "none"
}

// Lease is a copy of what the server knows about one identity.
type Lease struct {
	Identity string
	IP       netip.Addr
	MAC      net.HardwareAddr
	ClientID []byte
	Hostname string // as the client sent it in option 12
	Expiry   time.Time
	State    LeaseState
}

// Active reports whether the lease holds its address at now.
func (l Lease) Active(now time.Time) bool {
	return l.State == StateBound && now.Before(l.Expiry)
}

// Stats counts what the server did since it started.
type Stats struct {
	Discovers, Offers, Requests, Acks, Naks uint64
	Declines, Releases, Informs             uint64
	// NoAddress counts DISCOVERs left unanswered because the pool is
	// empty.
	NoAddress uint64
	// Ignored counts malformed requests and requests meant for another
	// server.
	Ignored uint64
	// Dropped counts frames HandleFrame threw away because the queue, or
	// the sending port's share of it, was full, or the server was closed.
	Dropped uint64
	// CommitErrors counts writes the disk refused; no reply left for them.
	CommitErrors uint64
	// CorruptRecords counts unreadable records skipped at start.
	CorruptRecords uint64
	// DeclinesRefused counts DECLINEs that quarantined nothing because
	// their identity already kept MaxDeclined addresses in quarantine.
	DeclinesRefused uint64
}

type counters struct {
	discovers, offers, requests, acks, naks atomic.Uint64
	declines, releases, informs             atomic.Uint64
	noAddress, ignored, dropped, commitErrs atomic.Uint64
	corrupt, declinesRefused                atomic.Uint64
}

// lease is the in-memory record; every field is guarded by Server.mu.
type lease struct {
	identity string
	ip       uint32
	state    LeaseState
	expiry   int64 // unix nanoseconds
	mac      net.HardwareAddr
	clientID []byte
	hostname string
	// seq changes with every modification, so a failed commit undoes
	// only what nobody changed since.
	seq uint64
}

func (l *lease) public() Lease {
	return Lease{
		Identity: l.identity,
		IP:       u32Addr(l.ip),
		MAC:      cloneMAC(l.mac),
		ClientID: cloneBytes(l.clientID),
		Hostname: l.hostname,
		Expiry:   time.Unix(0, l.expiry),
		State:    l.state,
	}
}

func (l *lease) record() record {
	return record{ip: l.ip, state: l.state, expiry: l.expiry, mac: l.mac, clientID: l.clientID, hostname: l.hostname}
}

// Server answers DHCP for one subnet. All methods are safe for concurrent
// use.
type Server struct {
	cfg       Config
	st        *Store
	network   uint32
	broadcast uint32
	serverIP  uint32
	routerIP  uint32
	first     uint32
	last      uint32
	opts      staticOptions

	mu     sync.Mutex
	leases map[string]*lease // by identity
	byIP   map[uint32]*lease
	resv   map[string]uint32 // reservations by identity
	resvIP map[uint32]string
	quar   map[uint32]int64 // quarantined address -> until
	// qby names who declined each address in quarantine, for the
	// per-identity limit; memory only (after a restart every identity
	// starts afresh, the quarantine itself stays).
	qby    map[uint32]string
	qheap  timeHeap // quarantine ends, oldest first
	eheap  timeHeap // lease and offer ends, oldest first
	freed  fifo     // pool addresses given back, longest-free first
	cursor uint32   // next never-handed-out pool address; 0 when used up
	names  map[string]string
	// Keys whose memory state may differ from disk because they were
	// dropped from the index outside a commit; the next commit writes them.
	stale  map[string]struct{}
	staleQ map[uint32]struct{}
	seq    uint64

	// HandleFrame path.
	// queues holds one queue per worker; an identity's frames all go
	// to one (by hash), so they are answered in the order they came: a
	// RELEASE is never overtaken by the REQUEST the client sent before
	// it, which would bind the address again until the lease ran out.
	queues    []chan job
	qmu       sync.Mutex
	queued    map[string]int
	portLimit int
	slots     chan struct{} // bounds commits in flight from the frame path
	done      chan struct{}
	workers   sync.WaitGroup
	inflight  sync.WaitGroup
	closeOnce sync.Once
	closed    atomic.Bool

	stats counters

	// nmu orders OnLease calls; told is the newest change told per
	// identity.
	nmu  sync.Mutex
	told map[string]uint64
}

// ErrClosed is what Handle and HandleFrameSync return after Close.
var ErrClosed = errors.New("dhcp: server closed")

// New starts a server on st, loading every lease, reservation and
// quarantined address from it, and starts the HandleFrame workers.
// Close stops them; the caller closes st afterwards.
func New(cfg Config, st *Store) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if st == nil {
		return nil, errors.New("dhcp: no lease store; open one with OpenStore in the plugin's data directory")
	}
	cfg = cfg.withDefaults()
	if !st.inUse.CompareAndSwap(false, true) {
		return nil, fmt.Errorf("dhcp: lease database %s already serves another server; give each network its own file", st.path)
	}
	data, err := st.load()
	if err != nil {
		st.inUse.Store(false)
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		st:       st,
		serverIP: addrU32(cfg.ServerIP),
		first:    addrU32(cfg.RangeStart),
		last:     addrU32(cfg.RangeEnd),
		leases:   make(map[string]*lease),
		byIP:     make(map[uint32]*lease),
		resv:     make(map[string]uint32),
		resvIP:   make(map[uint32]string),
		quar:     make(map[uint32]int64),
		qby:      make(map[uint32]string),
		told:     make(map[string]uint64),
		names:    make(map[string]string),
		stale:    make(map[string]struct{}),
		staleQ:   make(map[uint32]struct{}),
		queued:   make(map[string]int),
		slots:    make(chan struct{}, 4*batchSize),
		done:     make(chan struct{}),
	}
	s.network, s.broadcast = subnetBounds(cfg.Subnet)
	if cfg.Router.IsValid() {
		s.routerIP = addrU32(cfg.Router)
	}
	s.cursor = s.first
	s.portLimit = max(1, cfg.QueueLen/8)
	s.queues = make([]chan job, cfg.Workers)
	for i := range s.queues {
		s.queues[i] = make(chan job, max(1, cfg.QueueLen/cfg.Workers))
	}
	s.opts = newStaticOptions(cfg)
	s.rebuild(data)
	for _, q := range s.queues {
		s.workers.Add(1)
		go s.work(q)
	}
	return s, nil
}

// rebuild fills the index from disk. Records that contradict each other
// (left by a crash between an offer that displaced an expired lease and
// the next commit) are resolved in favour of the later expiry, and the
// loser is deleted at the next commit.
func (s *Server) rebuild(d *loaded) {
	now := s.cfg.Now().UnixNano()
	s.stats.corrupt.Store(uint64(d.corrupt))
	ids := make([]string, 0, len(d.reservations))
	for id := range d.reservations {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		ip := d.reservations[id]
		if _, dup := s.resvIP[ip]; dup || !s.hostAddr(ip) {
			continue // from an older subnet; the plugin sets it again or removes it
		}
		s.resv[id], s.resvIP[ip] = ip, id
	}
	for ip, until := range d.quarantine {
		if u := until.UnixNano(); u > now {
			s.quar[ip] = u
			s.qheap.push(u, ip)
		} else {
			s.staleQ[ip] = struct{}{}
		}
	}
	ids = ids[:0]
	for id := range d.leases {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool {
		a, b := d.leases[ids[i]], d.leases[ids[j]]
		if a.expiry != b.expiry {
			return a.expiry > b.expiry
		}
		return ids[i] < ids[j]
	})
	for _, id := range ids {
		r := d.leases[id]
		owner, reserved := s.resvIP[r.ip]
		switch {
		case !s.hostAddr(r.ip), s.byIP[r.ip] != nil, reserved && owner != id && r.expiry <= now:
			s.stale[id] = struct{}{}
			continue
		}
		l := &lease{identity: id, ip: r.ip, state: r.state, expiry: r.expiry, mac: r.mac, clientID: r.clientID, hostname: r.hostname}
		s.leases[id] = l
		s.byIP[r.ip] = l
		s.pushExpiry(l.expiry, l.ip)
	}
}

// decision is what a request earns, worked out under the lock; the reply
// is built from it after the lock is released.
type decision struct {
	kind     dhcpv4.MessageType // MessageTypeNone: no reply
	yiaddr   uint32
	hostname string
	lease    bool
	message  string
}

// Handle answers one DHCP request from identity. A nil reply with a nil
// error means no reply is due: RELEASE, DECLINE, a malformed request, a
// DISCOVER when the pool is empty, or a REQUEST that chose another
// server. A REQUEST that changes a lease returns only after the lease is
// fsynced; ctx is checked before the work starts (a commit, once queued,
// is not abandoned half way).
//
// Option values in the reply may share memory with the server and the
// request: replace options, do not write into them.
func (s *Server) Handle(ctx context.Context, identity string, req *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.closed.Load() {
		return nil, ErrClosed
	}
	d, t := s.process(identity, req)
	if t != nil {
		if err := s.commit(t); err != nil {
			return nil, err
		}
	}
	if d.kind == dhcpv4.MessageTypeNone {
		return nil, nil
	}
	return s.buildReply(req, d), nil
}

// fallbackIdentity keys a request that came without an identity.
func fallbackIdentity(req *dhcpv4.DHCPv4) string {
	if cid := req.Options.Get(dhcpv4.OptionClientIdentifier); len(cid) > 0 {
		return "client-id:" + hex.EncodeToString(cid)
	}
	for _, b := range req.ClientHWAddr {
		if b != 0 {
			return "mac:" + req.ClientHWAddr.String()
		}
	}
	return ""
}

// optIP reads a 4-byte address option; ok is false when absent or
// malformed.
func optIP(req *dhcpv4.DHCPv4, code dhcpv4.OptionCode) (uint32, bool) {
	v := req.Options.Get(code)
	if len(v) != 4 {
		return 0, false
	}
	return binary.BigEndian.Uint32(v), true
}

func (s *Server) process(identity string, req *dhcpv4.DHCPv4) (decision, *txn) {
	var none decision
	if req == nil || req.OpCode != dhcpv4.OpcodeBootRequest {
		s.stats.ignored.Add(1)
		return none, nil
	}
	id := identity
	if id == "" {
		id = fallbackIdentity(req)
	}
	if id == "" || len(id) > maxIdentityLen {
		s.stats.ignored.Add(1)
		return none, nil
	}
	now := s.cfg.Now().UnixNano()
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		s.stats.discovers.Add(1)
		return s.discover(id, req, now), nil
	case dhcpv4.MessageTypeRequest:
		s.stats.requests.Add(1)
		return s.request(id, req, now)
	case dhcpv4.MessageTypeDecline:
		s.stats.declines.Add(1)
		return none, s.decline(id, req, now)
	case dhcpv4.MessageTypeRelease:
		s.stats.releases.Add(1)
		return none, s.release(id, req, now)
	case dhcpv4.MessageTypeInform:
		s.stats.informs.Add(1)
		s.mu.Lock()
		h := s.hostnameFor(id, s.leases[id])
		s.mu.Unlock()
		return decision{kind: dhcpv4.MessageTypeAck, hostname: h}, nil
	}
	s.stats.ignored.Add(1)
	return none, nil
}

// hostnameFor prefers the name the plugin set over the client's own.
func (s *Server) hostnameFor(id string, l *lease) string {
	if n, ok := s.names[id]; ok {
		return n
	}
	if l != nil {
		return l.hostname
	}
	return ""
}

// noteClient records what the client says about itself.
func noteClient(l *lease, req *dhcpv4.DHCPv4) {
	if len(req.ClientHWAddr) > 0 && !macEqual(l.mac, req.ClientHWAddr) {
		l.mac = cloneMAC(req.ClientHWAddr)
	}
	if cid := req.Options.Get(dhcpv4.OptionClientIdentifier); len(cid) > 0 && string(cid) != string(l.clientID) {
		l.clientID = cloneBytes(cid)
	}
	if h := req.HostName(); h != "" {
		l.hostname = h
	}
}

func macEqual(a, b net.HardwareAddr) bool { return string(a) == string(b) }

func (s *Server) discover(id string, req *dhcpv4.DHCPv4, now int64) decision {
	requested, _ := optIP(req, dhcpv4.OptionRequestedIPAddress)
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.leases[id]
	ip := s.pick(id, l, requested, now)
	if ip == 0 {
		s.stats.noAddress.Add(1)
		return decision{}
	}
	if l == nil {
		l = &lease{identity: id}
		s.leases[id] = l
	}
	if l.ip != ip || l.state != StateBound || l.expiry <= now {
		s.assign(nil, l, ip)
		l.state = StateOffered
		l.expiry = now + int64(offerHold)
		s.pushExpiry(l.expiry, ip)
		noteClient(l, req)
		l.seq = s.nextSeq()
	}
	s.stats.offers.Add(1)
	return decision{kind: dhcpv4.MessageTypeOffer, yiaddr: ip, hostname: s.hostnameFor(id, l), lease: true}
}

func (s *Server) request(id string, req *dhcpv4.DHCPv4, now int64) (decision, *txn) {
	sid, hasSID := optIP(req, dhcpv4.OptionServerIdentifier)
	requested, _ := optIP(req, dhcpv4.OptionRequestedIPAddress)
	ciaddr := ipU32(req.ClientIPAddr)
	var target uint32
	switch {
	case hasSID: // SELECTING
		if sid != s.serverIP {
			s.stats.ignored.Add(1)
			return decision{}, nil // the client chose another server
		}
		target = requested
		if target == 0 {
			target = ciaddr
		}
	case requested != 0: // INIT-REBOOT
		target = requested
	default: // RENEWING (unicast) or REBINDING (broadcast): the same answer
		target = ciaddr
	}
	if target == 0 {
		s.stats.ignored.Add(1)
		return decision{}, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.leases[id]
	if !s.canBind(id, l, target, now) {
		s.stats.naks.Add(1)
		return decision{kind: dhcpv4.MessageTypeNak, message: fmt.Sprintf("address %v is not yours", u32Addr(target))}, nil
	}
	t := &txn{}
	t.touch(s, id)
	if l == nil {
		l = &lease{identity: id}
		s.leases[id] = l
	}
	s.assign(t, l, target)
	l.state = StateBound
	l.expiry = now + int64(s.cfg.LeaseTime)
	noteClient(l, req)
	s.pushExpiry(l.expiry, target)
	s.finish(t)
	t.tell(s, l.public())
	s.stats.acks.Add(1)
	return decision{kind: dhcpv4.MessageTypeAck, yiaddr: target, hostname: s.hostnameFor(id, l), lease: true}, t
}

func (s *Server) decline(id string, req *dhcpv4.DHCPv4, now int64) *txn {
	if sid, ok := optIP(req, dhcpv4.OptionServerIdentifier); ok && sid != s.serverIP {
		s.stats.ignored.Add(1)
		return nil
	}
	ip, _ := optIP(req, dhcpv4.OptionRequestedIPAddress)
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.leases[id]
	if ip == 0 || l == nil || l.ip != ip {
		s.stats.ignored.Add(1)
		return nil
	}
	if r, ok := s.resv[id]; ok && r == ip {
		// A reserved address goes to nobody else anyway; quarantine
		// would only keep it from its owner. Whoever squats on it is
		// the operator's to find.
		return nil
	}
	t := &txn{}
	t.touch(s, id)
	if s.declinedBy(id, now) >= MaxDeclined {
		// Declining every offer would take an address out of the pool
		// per round trip: one guest could empty it. Past the limit the
		// guest loses its offer, and the address goes back to the pool.
		s.stats.declinesRefused.Add(1)
		s.removeLease(l)
		s.finish(t)
		t.tell(s, Lease{Identity: id})
		return t
	}
	until := now + int64(s.cfg.Quarantine)
	prevUntil, wasQ := s.quar[ip]
	s.quar[ip] = until
	prevBy, hadBy := s.qby[ip]
	s.qby[ip] = id
	s.qheap.push(until, ip)
	t.quarIPs = append(t.quarIPs, ip)
	t.undo = append(t.undo, func() {
		if s.qby[ip] == id {
			if hadBy {
				s.qby[ip] = prevBy
			} else {
				delete(s.qby, ip)
			}
		}
		if s.quar[ip] == until {
			if wasQ {
				s.quar[ip] = prevUntil
			} else {
				delete(s.quar, ip)
				s.recycle(ip)
			}
		}
	})
	s.removeLease(l)
	s.finish(t)
	t.tell(s, Lease{Identity: id})
	return t
}

// MaxDeclined is how many addresses one identity may keep in quarantine
// by DECLINE at a time. A real address conflict is rare and short; a
// guest that declines everything is attacking the pool.
const MaxDeclined = 2

// declinedBy counts the addresses id declined that are still in
// quarantine at now, forgetting those that are not.
func (s *Server) declinedBy(id string, now int64) int {
	n := 0
	for ip, who := range s.qby {
		if !s.quarantined(ip, now) {
			delete(s.qby, ip)
			continue
		}
		if who == id {
			n++
		}
	}
	return n
}

func (s *Server) release(id string, req *dhcpv4.DHCPv4, now int64) *txn {
	if sid, ok := optIP(req, dhcpv4.OptionServerIdentifier); ok && sid != s.serverIP {
		s.stats.ignored.Add(1)
		return nil
	}
	ip := ipU32(req.ClientIPAddr)
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.leases[id]
	if ip == 0 || l == nil || l.ip != ip || l.state != StateBound {
		s.stats.ignored.Add(1)
		return nil
	}
	t := &txn{}
	t.touch(s, id)
	l.state = StateReleased
	l.expiry = now
	s.pushExpiry(l.expiry, ip)
	s.finish(t)
	t.tell(s, l.public())
	return t
}
