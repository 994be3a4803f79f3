// Package lan is a routed LAN a network plugin runs for its VMs: one
// learning switch, the host joined to it as the gateway, a DHCP server
// whose leases survive the plugin, anti-spoofing, MAC translation for VMs
// with an internal MAC, fixed addresses, and one port per VM on the
// endpoint kind its runtime takes.
//
//	host (kernel) ── TAP (gateway .1, from hostnet) ─┐
//	                                                  ├─ vswitch ── VM ports (dgram or stream sockets)
//	DHCP server, ARP (in process, a service port) ───┘
//
// With a kernel bridge (Config.Bridge, hostnet in bridge mode) the host
// side is a Linux bridge holding the gateway, the switch joins it through
// a TAP, and VMs that can take a TAP and need no MAC translation get a TAP
// port on the bridge: the kernel fast path, where frames never leave the
// kernel. Both kinds share one subnet, one DHCP server and one lease
// store, and reach each other through the uplink:
//
//	host (gateway .1) = bridge ─┬─ uplink TAP ── vswitch ── socket VMs, DHCP server
//	                            ├─ VM TAP (QEMU) ─ anti-spoofing in nftables (bridge family)
//	                            └─ VM TAP ...
//
// Fast-path VMs' DHCP requests reach the switch through the uplink (the
// bridge steers them to the service MAC); the LAN knows them by their
// dynamic MAC, which the bridge's rules pin. Their anti-spoofing is the
// bridge's (Bridge.PinPort follows the lease), their counters and capture
// the TAP's.
//
// The host side is a plain frame port, normally the TAP hostnet sets up
// with the gateway address: host <-> guest traffic is then ordinary kernel
// routing through that interface, and NAT, forwarding and firewalling are
// the kernel's (hostnet's) business. lan never parses more of a frame than
// DHCP, ARP and the source address it pins.
//
// Addresses belong to VM identities (uuids), not MACs: clones sharing an
// internal MAC get distinct dynamic MACs on the network and distinct
// leases. A VM's port is pinned to its address once it has one (its fixed
// address from the start; a dynamic VM to its lease, and before its first
// lease to the network address, which lets only DHCP through), so a guest
// cannot take another's address.
//
// The package knows nothing of the plugin protocol: errors carry a Kind a
// plugin maps to its codes, endpoints are frameio kinds.
package lan

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/anka-net/anka/sdk/netkit/arp"
	"github.com/anka-net/anka/sdk/netkit/dhcpserver"
	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/vswitch"
)

// LAN is one running network. All methods are safe for concurrent use.
type LAN struct {
	cfg   Config
	sw    *vswitch.Switch
	store *dhcpserver.Store
	srv   *dhcpserver.Server
	svc   *vswitch.Port // DHCP replies and ARP answers enter here
	host  *vswitch.Port // nil without a host link
	arp   *arp.Responder
	// bridgeFn is sendToBridge as a func value made once: a method value
	// made per frame in intercept escapes to the heap, an allocation per
	// frame on the forwarding path.
	bridgeFn func([]byte)

	// ports maps a VM ID to its *attachment for OnLease, which the DHCP
	// server calls from its goroutines (and from calls made under mu).
	ports sync.Map
	// fast maps the dynamic MAC of each VM on the kernel fast path to its
	// ID, for DHCP coming in through the host link; replaced whole under
	// mu, read without a lock on the forwarding path.
	fast atomic.Pointer[map[[6]byte]string]

	mu      sync.Mutex
	vms     map[string]*vmState // by VM ID: every VM known, attached or not
	regPath string
	closed  bool
}

// New starts the LAN: it opens the lease database in cfg.DataDir, loads
// the VMs it knew, and joins cfg.HostLink to the switch. Close stops it.
func New(cfg Config) (*LAN, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, errorf(Unavailable, "LAN %s: cannot make its data folder: %w", cfg.Name, err)
	}
	l := &LAN{cfg: cfg, vms: map[string]*vmState{}, regPath: filepath.Join(cfg.DataDir, cfg.Name+"-vms.json")}
	l.bridgeFn = l.sendToBridge
	recs, err := loadRegistry(l.regPath)
	if err != nil {
		return nil, errorf(Unavailable, "LAN %s: %w", cfg.Name, err)
	}
	for _, r := range recs {
		l.vms[r.ID] = &vmState{rec: r}
	}
	l.store, err = dhcpserver.OpenStore(filepath.Join(cfg.DataDir, cfg.Name+"-leases.db"))
	if err != nil {
		return nil, errorf(Unavailable, "LAN %s: opening its leases: %w", cfg.Name, err)
	}
	serverMAC := cfg.GatewayMAC
	if cfg.Bridge != nil {
		// Replies come from the service port: from the gateway's MAC they
		// would enter the bridge as frames from the bridge itself.
		serverMAC = cfg.Bridge.ServiceMAC()
	}
	l.fast.Store(&map[[6]byte]string{})
	dcfg := dhcpserver.Config{
		ServerIP: cfg.Gateway, ServerMAC: serverMAC, Subnet: cfg.Prefix,
		DNS: cfg.DNS, Domain: cfg.Domain,
		RangeStart: cfg.RangeStart, RangeEnd: cfg.RangeEnd,
		LeaseTime: cfg.LeaseTime, MTU: cfg.MTU, Now: cfg.Now,
		OnLease: l.onLease,
	}
	if !cfg.NoRouter {
		dcfg.Router = cfg.Gateway
	}
	if err := dcfg.Validate(); err != nil {
		l.store.Close()
		return nil, errorf(Invalid, "LAN %s: %w", cfg.Name, err)
	}
	l.srv, err = dhcpserver.New(dcfg, l.store)
	if err != nil {
		l.store.Close()
		return nil, errorf(Unavailable, "LAN %s: starting DHCP: %w", cfg.Name, err)
	}
	l.sw = vswitch.New(vswitch.Config{MTU: cfg.MTU, Logger: cfg.Logger.With("lan", cfg.Name)})
	fail := func(err error) (*LAN, error) {
		l.sw.Close()
		l.srv.Close()
		l.store.Close()
		return nil, err
	}
	svc := vswitch.PortConfig{Name: "services"}
	if cfg.Bridge != nil {
		svc.MAC = cfg.Bridge.ServiceMAC()
	}
	if cfg.HostLink == nil {
		// No host holds the gateway: the service port does, so frames
		// for it end there, and ARP for it is answered here.
		svc.MAC = cfg.GatewayMAC
		l.arp = &arp.Responder{}
		l.arp.Add(cfg.Gateway, cfg.GatewayMAC)
	}
	if l.svc, err = l.sw.AttachService(svc, func([]frameio.Frame) {}); err != nil {
		return fail(errorf(Internal, "LAN %s: %w", cfg.Name, err))
	}
	if cfg.HostLink != nil {
		// The host is the router: it sends from any address, so it has
		// no anti-spoofing; its MAC is pinned so no VM can take it.
		l.host, err = l.sw.Attach(cfg.HostLink, vswitch.PortConfig{Name: "host", MAC: cfg.GatewayMAC})
		if err != nil {
			return fail(errorf(Internal, "LAN %s: joining the host link: %w", cfg.Name, err))
		}
	}
	l.sw.Intercept(l.intercept)
	cfg.Logger.Info("LAN up", "lan", cfg.String(), "vms_known", len(recs))
	return l, nil
}

// intercept takes DHCP requests from VMs to the server, and answers ARP
// for the gateway when no host does. It runs on a port's forwarding
// goroutine.
func (l *LAN) intercept(from *vswitch.Port, fr []byte) bool {
	if from == l.svc {
		return false
	}
	if from == l.host {
		// A fast-path VM's DHCP, steered here by the bridge: known by
		// its source MAC, which the bridge lets no other port send.
		if l.cfg.Bridge == nil || !l.srv.IsDHCP(fr) {
			return false
		}
		id, ok := (*l.fast.Load())[[6]byte(fr[6:12])]
		return ok && l.srv.HandleFrame(id, fr, l.bridgeFn)
	}
	if id := from.Identity(); id != "" && l.srv.IsDHCP(fr) {
		// The reply goes to the asking port only, never flooded: a NAK
		// or a broadcast OFFER is nobody else's business. The closure
		// is made for DHCP frames only, off the forwarding hot path.
		return l.srv.HandleFrame(id, fr, func(b []byte) { l.svc.SendTo(from, b) })
	}
	if l.arp != nil {
		var reply [arp.ReplyLen]byte
		if n, ok := l.arp.HandleFrame(fr, reply[:]); ok {
			l.svc.Send(reply[:n])
			return true
		}
	}
	return false
}

// sendToBridge hands a DHCP reply for a fast-path VM straight to the host
// link (the bridge), past the switch: the switch has not learnt the VM's
// MAC from a frame the DHCP server took, and would flood the reply to
// every socket VM.
func (l *LAN) sendToBridge(b []byte) {
	if _, err := l.cfg.HostLink.WriteBatch([]frameio.Frame{{Buf: b, N: len(b)}}); err != nil {
		l.cfg.Logger.Debug("DHCP reply to the bridge not sent", "lan", l.cfg.Name, "error", err)
	}
}

// onLease pins a VM's port to the address the DHCP server just bound for
// it, or back to its fixed address or the placeholder when the lease
// ended.
func (l *LAN) onLease(le dhcpserver.Lease) {
	v, ok := l.ports.Load(le.Identity)
	if !ok {
		return
	}
	a := v.(*attachment)
	if le.State == dhcpserver.StateBound && le.IP.IsValid() {
		a.setIP(le.IP)
		a.confirmed.Store(true)
		return
	}
	a.confirmed.Store(false)
	a.setIP(a.fallback)
}

// Close detaches every VM (their leases stay in the data folder) and
// stops the switch, the DHCP server and the host link.
func (l *LAN) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	for _, v := range l.vms {
		// A fast-path VM's TAP stays: its VM may still run, and the
		// bridge's owner keeps what a running VM holds for the next run.
		l.detachLocked(v, false)
	}
	l.mu.Unlock()
	err1 := l.sw.Close()
	err2 := l.srv.Close()
	err3 := l.store.Close()
	for _, err := range []error{err1, err2, err3} {
		if err != nil {
			return fmt.Errorf("closing LAN %s: %w", l.cfg.Name, err)
		}
	}
	l.cfg.Logger.Info("LAN down", "lan", l.cfg.Name)
	return nil
}

// Config returns the LAN's configuration with its defaults filled in.
func (l *LAN) Config() Config { return l.cfg }

// Switch is the LAN's switch, for ports a plugin adds itself.
func (l *LAN) Switch() *vswitch.Switch { return l.sw }

// DHCP is the LAN's DHCP server (leases, stats).
func (l *LAN) DHCP() *dhcpserver.Server { return l.srv }

// HostPort is the host link's switch port, nil without one.
func (l *LAN) HostPort() *vswitch.Port { return l.host }

// saveLocked writes the registry; l.mu is held.
func (l *LAN) saveLocked() error {
	recs := make([]record, 0, len(l.vms))
	for _, v := range l.vms {
		recs = append(recs, v.rec)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].ID < recs[j].ID })
	if err := saveRegistry(l.regPath, recs); err != nil {
		return errorf(Internal, "LAN %s: saving its VMs to %s: %w", l.cfg.Name, l.regPath, err)
	}
	return nil
}

// holder names who holds ip besides id: a VM with it as its fixed address,
// or one with a live lease on it; "" when nobody. l.mu is held.
func (l *LAN) holderLocked(id string, ip netip.Addr) string {
	for oid, v := range l.vms {
		if oid != id && v.rec.StaticIP == ip {
			return fmt.Sprintf("VM %s as its fixed address", v.rec.label())
		}
	}
	now := l.cfg.Now()
	for _, le := range l.srv.Leases() {
		if le.IP == ip && le.Identity != id && le.State == dhcpserver.StateBound && le.Active(now) {
			who := le.Identity
			if v := l.vms[le.Identity]; v != nil {
				who = v.rec.label()
			}
			return fmt.Sprintf("VM %s, leased until %s", who, le.Expiry.UTC().Format("2006-01-02 15:04:05 UTC"))
		}
	}
	return ""
}

// CheckStatic says why VM id cannot have ip as its fixed address: the
// address is not a guest address of the LAN, or another VM holds it (as
// its fixed address, or by a live lease). It changes nothing; Attach
// reserves the address.
func (l *LAN) CheckStatic(id string, ip netip.Addr) error {
	if err := CheckAddress(l.cfg.Prefix, l.cfg.Gateway, ip); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if who := l.holderLocked(id, ip); who != "" {
		return errorf(Conflict, "%v is taken on network %s by %s: choose another address, or release that VM", ip, l.cfg.Name, who)
	}
	return nil
}
