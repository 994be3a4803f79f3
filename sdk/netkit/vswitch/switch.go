// Package vswitch is the learning Ethernet switch at the heart of every
// network plugin. Ports are VM sockets, TAPs, host interfaces or in-process
// services. It learns MACs with aging, floods broadcast, multicast and
// unknown unicast, and never floods known unicast (socket_vmnet's flooding
// collapses throughput as idle VMs are added). Each port can carry
// anti-spoofing, isolation, hooks (MAC translation) and counters.
//
// Forwarding runs on the goroutine that read the frames: a batch read from
// one port is written to its destination with one batched write, so a
// frame costs one read and one write system call share, like a raw relay.
//
// A frame may come with its TCP checksum left partial (frameio.Offload:
// a guest with checksum offload behind a vhost-user port). It goes as it
// is to a port whose link takes such frames (frameio.PartialWriter: the
// uplink TAP with offloads, whose kernel completes it), so nobody sums
// the payload on the way; the switch completes it in place for any other
// port, and before a flood. A GSO frame (a TCP segment of up to 64 KiB
// the uplink hands up whole: frameio.GSOReader) goes whole to a port
// whose link takes them (frameio.GSOWriter: a vhost-user guest with
// TSO), and is cut to the MTU for any other (checksums partial for a
// PartialWriter, complete otherwise) and before a flood. A frame it
// cannot complete or cut is dropped and counted ("offload the switch
// cannot complete").
package vswitch

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
)

// Config sets up a switch.
type Config struct {
	// MTU of every port's buffers (default frameio.DefaultMTU).
	MTU int
	// Batch is how many frames one read may return (default 64).
	Batch int
	// AgeTime forgets learned MACs not seen for this long (default 300 s).
	AgeTime time.Duration
	// Now is the clock in nanoseconds (default: monotonic time).
	Now    func() int64
	Logger *slog.Logger
}

// Switch forwards frames between ports.
type Switch struct {
	cfg          Config
	table        *table
	ports        atomic.Pointer[[]*Port]
	interceptors atomic.Pointer[[]Interceptor]
	mu           sync.Mutex // serialises changes to ports and interceptors
	v6mu         sync.Mutex
	v6           map[[16]byte]*Port // IPv6 addresses claimed by ports (first come)
	done         chan struct{}
	wg           sync.WaitGroup
	closed       bool
}

// Interceptor sees every frame a port sends before it is forwarded (a DHCP
// server, an ARP responder). It returns true when it consumed the frame.
// It runs on the forwarding goroutine: it must be quick and must copy what
// it keeps.
type Interceptor func(from *Port, frame []byte) bool

// New starts a switch; Close stops it.
func New(cfg Config) *Switch {
	if cfg.MTU == 0 {
		cfg.MTU = frameio.DefaultMTU
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 64
	}
	if cfg.AgeTime <= 0 {
		cfg.AgeTime = 300 * time.Second
	}
	if cfg.Now == nil {
		start := time.Now()
		cfg.Now = func() int64 { return int64(time.Since(start)) + 1 }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Switch{cfg: cfg, table: newTable(), v6: map[[16]byte]*Port{}, done: make(chan struct{})}
	s.ports.Store(&[]*Port{})
	s.interceptors.Store(&[]Interceptor{})
	s.wg.Add(1)
	go s.janitor()
	return s
}

// PortConfig says what a port is and which rules apply to it.
type PortConfig struct {
	Name string
	// Identity is who is behind the port (a VM's uuid); services such as
	// the DHCP server key leases on it.
	Identity string
	// MAC is the port's own address on the network (a VM's dynamic MAC).
	// When set it is pinned in the table: learning never moves it.
	MAC net.HardwareAddr
	// AntiSpoof: the port sends only from MAC and, once SetIP was called,
	// from that IPv4 address; never DHCP server replies, router
	// advertisements, or neighbour advertisements for others' addresses.
	AntiSpoof bool
	// Isolated ports never exchange frames with other isolated ports.
	Isolated bool
	// FromLink runs on each frame the link delivers, before anything else
	// (e.g. MAC translation internal -> dynamic); false drops the frame.
	FromLink func(frame []byte) bool
	// ToLink runs on each frame before it is written to the link (e.g.
	// dynamic -> internal), under the port's transmit lock, on a private
	// copy when the frame also goes elsewhere.
	ToLink func(frame []byte)
	// Capture, when set, sees every frame received and sent.
	Capture interface{ Write(frame []byte) }
}

// Port is one attachment to the switch.
type Port struct {
	sw       *Switch
	cfg      PortConfig
	mac      MAC
	link     frameio.Port // nil for service ports
	partial  bool         // link takes frames whose checksum is partial (frameio.PartialWriter)
	gso      bool         // link takes GSO frames whole (frameio.GSOWriter)
	deliver  func(frames []frameio.Frame)
	ip       atomic.Uint64 // bit 32 set: an IPv4 address is pinned in the low 32 bits
	txMu     sync.Mutex
	svcMu    sync.Mutex // one Send at a time on a service port
	svcFwd   *forwarder
	closed   atomic.Bool
	readDone chan struct{}
	stats    counters
}

type counters struct {
	rxFrames, rxBytes, txFrames, txBytes atomic.Uint64
	txErrors                             atomic.Uint64
	drops                                [numDropReasons]atomic.Uint64
}

// Stats are a port's counters.
type Stats struct {
	RxFrames, RxBytes, TxFrames, TxBytes, TxErrors uint64
	// Drops counts frames the switch refused, by reason.
	Drops map[string]uint64
}

// ErrClosed is returned when attaching to a closed switch.
var ErrClosed = errors.New("vswitch: switch closed")

// Attach joins a frame port (VM socket, TAP, host interface) and starts
// forwarding what it reads.
func (s *Switch) Attach(link frameio.Port, cfg PortConfig) (*Port, error) {
	p, err := s.add(cfg, link, nil)
	if err != nil {
		return nil, err
	}
	p.readDone = make(chan struct{})
	go p.readLoop()
	return p, nil
}

// AttachService joins an in-process endpoint: frames for it are handed to
// deliver (on the sender's goroutine: copy what you keep), and it sends
// with Port.Send.
func (s *Switch) AttachService(cfg PortConfig, deliver func(frames []frameio.Frame)) (*Port, error) {
	p, err := s.add(cfg, nil, deliver)
	if err != nil {
		return nil, err
	}
	p.svcFwd = s.newForwarder(0)
	return p, nil
}

func (s *Switch) add(cfg PortConfig, link frameio.Port, deliver func([]frameio.Frame)) (*Port, error) {
	p := &Port{sw: s, cfg: cfg, link: link, deliver: deliver}
	if pw, ok := link.(frameio.PartialWriter); ok {
		p.partial = pw.TakesPartial()
	}
	if gw, ok := link.(frameio.GSOWriter); ok {
		p.gso = gw.TakesGSO()
	}
	if len(cfg.MAC) != 0 {
		if len(cfg.MAC) != 6 {
			return nil, fmt.Errorf("vswitch: port %s: MAC %v is not 6 bytes", cfg.Name, cfg.MAC)
		}
		p.mac = MAC(cfg.MAC)
	}
	if cfg.AntiSpoof && p.mac.IsZero() {
		return nil, fmt.Errorf("vswitch: port %s: anti-spoofing needs the port's MAC", cfg.Name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if !p.mac.IsZero() {
		if e := s.table.lookup(p.mac); e != nil && e.pinned {
			return nil, fmt.Errorf("vswitch: port %s: MAC %s already belongs to port %s", cfg.Name, net.HardwareAddr(p.mac[:]), e.port.cfg.Name)
		}
		s.table.pin(p.mac, p)
	}
	old := *s.ports.Load()
	ports := append(append(make([]*Port, 0, len(old)+1), old...), p)
	s.ports.Store(&ports)
	return p, nil
}

// Intercept adds an interceptor for frames sent by ports.
func (s *Switch) Intercept(fn Interceptor) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := *s.interceptors.Load()
	l := append(append(make([]Interceptor, 0, len(old)+1), old...), fn)
	s.interceptors.Store(&l)
}

// Name is the port's name.
func (p *Port) Name() string { return p.cfg.Name }

// Identity is who is behind the port.
func (p *Port) Identity() string { return p.cfg.Identity }

// MAC is the port's own address, or nil.
func (p *Port) MAC() net.HardwareAddr {
	if p.mac.IsZero() {
		return nil
	}
	return append(net.HardwareAddr(nil), p.mac[:]...)
}

// SetIP pins the port's IPv4 address (once leased); anti-spoofing then
// refuses any other source address. An invalid addr unpins.
func (p *Port) SetIP(addr netip.Addr) {
	if !addr.Is4() {
		p.ip.Store(0)
		return
	}
	b := addr.As4()
	p.ip.Store(1<<32 | uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3]))
}

// IP is the pinned IPv4 address, if any.
func (p *Port) IP() (netip.Addr, bool) {
	b, ok := p.ip4()
	if !ok {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4(b), true
}

func (p *Port) ip4() ([4]byte, bool) {
	v := p.ip.Load()
	if v>>32 == 0 {
		return [4]byte{}, false
	}
	return [4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}, true
}

// Stats returns the port's counters.
func (p *Port) Stats() Stats {
	st := Stats{
		RxFrames: p.stats.rxFrames.Load(), RxBytes: p.stats.rxBytes.Load(),
		TxFrames: p.stats.txFrames.Load(), TxBytes: p.stats.txBytes.Load(),
		TxErrors: p.stats.txErrors.Load(), Drops: map[string]uint64{},
	}
	for i := 1; i < numDropReasons; i++ {
		if n := p.stats.drops[i].Load(); n > 0 {
			st.Drops[dropNames[i]] = n
		}
	}
	if p.link != nil {
		// What the link threw away never reached the switch: runts,
		// datagrams longer than the MTU allows, a stream's impossible
		// length prefix. A guest sending junk shows up here.
		if n := p.link.Stats().RxDropped; n > 0 {
			st.Drops[DropLink] = n
		}
	}
	return st
}

// DropLink is the Stats.Drops key of frames the port's link dropped
// before the switch saw them: shorter than an Ethernet header, longer
// than the MTU allows, or announced by a malformed stream length prefix.
const DropLink = "malformed or oversize at the socket"

// Send injects frames from a service port into the switch.
func (p *Port) Send(frames ...[]byte) {
	if p.closed.Load() {
		return
	}
	p.svcMu.Lock()
	defer p.svcMu.Unlock()
	f := p.svcFwd
	batch := f.in[:0]
	for _, b := range frames {
		if len(b) < frameio.MinFrameLen || len(b) > len(f.scratch.Buf) {
			continue
		}
		i := len(batch)
		if i == cap(batch) {
			p.sw.forward(p, f, batch)
			batch = batch[:0]
			i = 0
		}
		batch = batch[:i+1]
		batch[i].N, batch[i].Off = copy(batch[i].Buf, b), frameio.Offload{}
	}
	p.sw.forward(p, f, batch)
}

// SendTo injects frames from a service port to port to alone, whatever
// their destination MAC: a reply meant for the port that asked (DHCP)
// reaches no other, even when it is addressed to broadcast or to a MAC
// the asker claims. It never waits for room: what to's link cannot take
// at once is dropped and counted (the client asks again), so a guest
// that floods requests and reads no replies holds up nobody else's.
// Frames for a detached port are dropped.
func (p *Port) SendTo(to *Port, frames ...[]byte) {
	if p.closed.Load() || to == nil {
		return
	}
	p.svcMu.Lock()
	defer p.svcMu.Unlock()
	f := p.svcFwd
	batch := f.in[:0]
	for _, b := range frames {
		if len(b) < frameio.MinFrameLen || len(b) > len(f.scratch.Buf) || len(batch) == cap(batch) {
			continue
		}
		i := len(batch)
		batch = batch[:i+1]
		batch[i].N, batch[i].Off = copy(batch[i].Buf, b), frameio.Offload{}
	}
	if len(batch) > 0 {
		to.transmit(batch, true)
	}
}

// Detach removes the port: it stops forwarding, forgets its MACs and
// addresses, and closes its link.
func (p *Port) Detach() error {
	if p.closed.Swap(true) {
		return nil
	}
	s := p.sw
	s.mu.Lock()
	old := *s.ports.Load()
	ports := make([]*Port, 0, len(old))
	for _, q := range old {
		if q != p {
			ports = append(ports, q)
		}
	}
	s.ports.Store(&ports)
	s.mu.Unlock()
	s.table.forget(p)
	s.v6mu.Lock()
	for a, q := range s.v6 {
		if q == p {
			delete(s.v6, a)
		}
	}
	s.v6mu.Unlock()
	var err error
	if p.link != nil {
		err = p.link.Close()
		<-p.readDone
	}
	return err
}

// Ports lists the attached ports.
func (s *Switch) Ports() []*Port { return append([]*Port(nil), *s.ports.Load()...) }

// Lookup tells which port a MAC was learned or pinned on.
func (s *Switch) Lookup(mac net.HardwareAddr) (*Port, bool) {
	if len(mac) != 6 {
		return nil, false
	}
	e := s.table.lookup(MAC(mac))
	if e == nil || s.expired(e) {
		return nil, false
	}
	return e.port, true
}

func (s *Switch) expired(e *entry) bool {
	return !e.pinned && s.cfg.Now()-e.seen.Load() > int64(s.cfg.AgeTime)
}

// Close detaches every port and stops the switch.
func (s *Switch) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	var errs []error
	for _, p := range s.Ports() {
		if err := p.Detach(); err != nil {
			errs = append(errs, err)
		}
	}
	close(s.done)
	s.wg.Wait()
	return errors.Join(errs...)
}

// janitor ages out learned MACs.
func (s *Switch) janitor() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.AgeTime / 4)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			s.table.expire(s.cfg.Now() - int64(s.cfg.AgeTime))
		}
	}
}

// claimIPv6 gives an IPv6 address to the first port that advertises it.
func (s *Switch) claimIPv6(addr [16]byte, p *Port) bool {
	s.v6mu.Lock()
	defer s.v6mu.Unlock()
	if q, ok := s.v6[addr]; ok {
		return q == p
	}
	s.v6[addr] = p
	return true
}
