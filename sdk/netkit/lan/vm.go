package lan

import (
	"bytes"
	"encoding/binary"
	"errors"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anka-net/anka/sdk/netkit/capture"
	"github.com/anka-net/anka/sdk/netkit/dhcpserver"
	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/mactrans"
	"github.com/anka-net/anka/sdk/netkit/vhostuser"
	"github.com/anka-net/anka/sdk/netkit/vswitch"
)

// VM is a VM's card as the LAN needs it.
type VM struct {
	// ID is the identity its address belongs to (the VM's uuid).
	ID string
	// Name is for messages and logs.
	Name string
	// DynamicMAC is the MAC the LAN sees (unique per host). Required.
	DynamicMAC net.HardwareAddr
	// InternalMAC is the MAC the guest's NIC has (-m); nil or equal to
	// DynamicMAC means no translation.
	InternalMAC net.HardwareAddr
	// StaticIP is the VM's fixed address: reserved for it, handed out by
	// DHCP, and the only one its port may send from. Invalid: dynamic.
	StaticIP netip.Addr
}

// AttachRequest asks for a VM's port.
type AttachRequest struct {
	VM VM
	// Kinds the runtime can connect, preferred first; the LAN hands out
	// frameio.KindDgram, frameio.KindStream and frameio.KindVhostUser,
	// and with a Bridge frameio.KindTAP. Empty means dgram. A TAP, when offered, wins over
	// the order (it is the kernel fast path) for a VM without an internal
	// MAC, unless the VM's datagram socket is live: a VM still running
	// on sockets (attached again after a restart) keeps them.
	Kinds []frameio.Kind
	// RunDir is the VM's folder for sockets; paths must stay under 108
	// bytes. Not needed for a TAP.
	RunDir string
	// MTU is what the runtime asks for; 0 takes the LAN's. Less than the
	// LAN's is refused: DHCP tells every guest the LAN's MTU.
	MTU int
}

// Endpoint is what the VM's runtime connects to.
type Endpoint struct {
	Kind frameio.Kind
	// PluginPath is the LAN's socket; VMPath the one the VM binds (dgram).
	PluginPath string
	VMPath     string
	// TAP is the VM's TAP on the bridge (tap): the runtime opens it by
	// name (QEMU -netdev tap,ifname=TAP,script=no,downscript=no).
	TAP string
	// MAC is the NIC's address: the internal MAC when set, else the
	// dynamic one.
	MAC net.HardwareAddr
	MTU int
}

// Status is what the LAN knows about a VM.
type Status struct {
	Name     string
	Attached bool
	// Since is when the VM was attached.
	Since time.Time
	// IP is the address the guest uses: set once the guest took its lease
	// or sent from its fixed address since it was attached.
	IP netip.Addr
	// Pinned is the address its port may send from (a lease or the fixed
	// address), which the guest may not have taken yet.
	Pinned   netip.Addr
	StaticIP netip.Addr
	// Lease is the DHCP server's record, if any; LeaseState "" without.
	Lease      dhcpserver.Lease
	LeaseState string
	DynamicMAC net.HardwareAddr
	// InternalMAC is the guest's MAC (equal to DynamicMAC without -m).
	InternalMAC net.HardwareAddr
	Endpoint    Endpoint
	// Port counts frames through the VM's port, from its current or
	// last attachment.
	Port vswitch.Stats
	// Capture is the file being written, "" when none.
	Capture string
}

// vmState is one VM the LAN knows.
type vmState struct {
	rec  record
	att  *attachment // nil while detached
	last vswitch.Stats
}

// attachment is a VM's port while it is attached: a switch port, or on
// the kernel fast path a TAP on the bridge (port nil).
type attachment struct {
	ep   Endpoint
	mac  net.HardwareAddr // the dynamic MAC
	port *vswitch.Port
	// live is port for the forwarding goroutine, which starts before
	// Attach sets port.
	live     atomic.Pointer[vswitch.Port]
	fallback netip.Addr // pinned when no lease holds: the fixed address, else placeholder
	// placeholder is the network address: pinned to it, a port sends
	// DHCP (from 0.0.0.0) only.
	placeholder netip.Addr
	confirmed   atomic.Bool
	capture     capture.Capture
	since       time.Time

	// The kernel fast path: the TAP and its bridge.
	tap    string
	bridge Bridge
	log    *slog.Logger
	pmu    sync.Mutex // orders pins; guards pin, gone, capStop
	pin    netip.Addr
	gone   bool
	// capStop ends the TAP's capture reader.
	capStop func()
}

// setIP pins the address the VM may send from.
func (a *attachment) setIP(ip netip.Addr) {
	if a.port != nil {
		a.port.SetIP(ip)
		return
	}
	a.pmu.Lock()
	defer a.pmu.Unlock()
	if a.gone {
		return
	}
	a.pin = ip
	rule := ip
	if ip == a.placeholder {
		rule = netip.Addr{} // DHCP only
	}
	if err := a.bridge.PinPort(a.tap, rule); err != nil {
		a.log.Warn("cannot pin the VM's TAP to its address", "tap", a.tap, "ip", ip, "error", err)
	}
}

// ip is the pinned address, if any.
func (a *attachment) ip() (netip.Addr, bool) {
	if a.port != nil {
		return a.port.IP()
	}
	a.pmu.Lock()
	defer a.pmu.Unlock()
	return a.pin, a.pin.IsValid()
}

// stats counts the port's frames; seen reports, for a TAP, traffic from
// its pinned address.
func (a *attachment) stats() (st vswitch.Stats, seen bool) {
	if a.port != nil {
		return a.port.Stats(), false
	}
	st, seen, err := a.bridge.PortStats(a.tap)
	if err != nil {
		a.log.Debug("no counters for the VM's TAP", "tap", a.tap, "error", err)
	}
	return st, seen
}

func (r record) label() string {
	if r.Name != "" {
		return r.Name
	}
	return r.ID
}

// SocketNames are the socket file names in a VM's run folder.
func (l *LAN) socketNames() (plugin, vm string) {
	return l.cfg.Name + ".sock", l.cfg.Name + "-vm.sock"
}

// maxSocketPath is the longest unix socket path Linux binds.
const maxSocketPath = 107

// Attach creates the VM's port and returns its endpoint; attaching an
// attached VM returns the endpoint it has. A VM with a StaticIP gets it
// reserved (and loses any reservation when it has none).
func (l *LAN) Attach(req AttachRequest) (Endpoint, error) {
	v := req.VM
	if v.ID == "" {
		return Endpoint{}, errorf(Invalid, "a VM without an identity cannot be attached")
	}
	name := v.Name
	if name == "" {
		name = v.ID
	}
	if len(v.DynamicMAC) != 6 || v.DynamicMAC[0]&1 != 0 || bytes.Equal(v.DynamicMAC, make([]byte, 6)) {
		return Endpoint{}, errorf(Invalid, "VM %s: dynamic MAC %v is not a unicast Ethernet address", name, v.DynamicMAC)
	}
	internal := v.InternalMAC
	if len(internal) == 0 {
		internal = v.DynamicMAC
	}
	if len(internal) != 6 || internal[0]&1 != 0 || bytes.Equal(internal, make([]byte, 6)) {
		return Endpoint{}, errorf(Invalid, "VM %s: internal MAC %v is not a unicast Ethernet address", name, internal)
	}
	if v.StaticIP.IsValid() {
		if err := CheckAddress(l.cfg.Prefix, l.cfg.Gateway, v.StaticIP); err != nil {
			return Endpoint{}, errorf(Invalid, "VM %s: %w", name, err)
		}
	}
	mtu := req.MTU
	if mtu == 0 || mtu > l.cfg.MTU {
		mtu = l.cfg.MTU
	}
	if mtu < l.cfg.MTU {
		return Endpoint{}, errorf(Conflict, "network %s runs with MTU %d and tells every guest so by DHCP; VM %s asks for %d: set the same MTU for both", l.cfg.Name, l.cfg.MTU, name, req.MTU)
	}
	pn, vn := l.socketNames()
	var pluginPath, vmPath string
	if req.RunDir != "" {
		pluginPath, vmPath = filepath.Join(req.RunDir, pn), filepath.Join(req.RunDir, vn)
	}
	kind, err := l.chooseKind(req.Kinds, !bytes.Equal(internal, v.DynamicMAC), vmPath)
	if err != nil {
		return Endpoint{}, errorf(Unsupported, "VM %s: %w", name, err)
	}
	ep := Endpoint{Kind: kind, MAC: slices.Clone(internal), MTU: mtu}
	if kind != frameio.KindTAP {
		if req.RunDir == "" {
			return Endpoint{}, errorf(Invalid, "VM %s: no run folder for its sockets", name)
		}
		ep.PluginPath = pluginPath
		if kind == frameio.KindDgram {
			ep.VMPath = vmPath
		}
		if len(ep.PluginPath) > maxSocketPath || len(ep.VMPath) > maxSocketPath {
			return Endpoint{}, errorf(Invalid, "VM %s: the run folder %s is too long for a unix socket path (at most %d bytes)", name, req.RunDir, maxSocketPath)
		}
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return Endpoint{}, errorf(Unavailable, "network %s is shut down", l.cfg.Name)
	}
	st := l.vms[v.ID]
	if st != nil && st.att != nil {
		return st.att.ep, nil
	}
	if v.StaticIP.IsValid() {
		if who := l.holderLocked(v.ID, v.StaticIP); who != "" {
			return Endpoint{}, errorf(Conflict, "VM %s: %v is taken on network %s by %s: choose another address, or release that VM", name, v.StaticIP, l.cfg.Name, who)
		}
	}
	for _, o := range l.vms {
		if o.att != nil && bytes.Equal(o.att.mac, v.DynamicMAC) {
			return Endpoint{}, errorf(Conflict, "VM %s: dynamic MAC %v is already used on network %s by VM %s", name, v.DynamicMAC, l.cfg.Name, o.rec.label())
		}
	}

	log := l.cfg.Logger.With("lan", l.cfg.Name, "vm", name)
	a := &attachment{ep: ep, mac: slices.Clone(v.DynamicMAC), since: l.cfg.Now(), placeholder: l.cfg.Prefix.Addr(), log: log}
	// Before its first lease a VM may send DHCP only: its port is pinned
	// to the network address, which no guest uses.
	a.fallback = a.placeholder
	if v.StaticIP.IsValid() {
		a.fallback = v.StaticIP
	}
	var undo func()
	if kind == frameio.KindTAP {
		undo, err = l.attachTAPLocked(a, v, name)
	} else {
		undo, err = l.attachSocketLocked(a, v, name, internal, log)
	}
	if err != nil {
		return Endpoint{}, err
	}
	if v.StaticIP.IsValid() {
		if err := l.srv.SetReservation(v.ID, v.StaticIP); err != nil {
			undo()
			return Endpoint{}, errorf(Conflict, "VM %s: reserving %v: %w", name, v.StaticIP, err)
		}
	} else if _, ok := l.srv.Reservation(v.ID); ok {
		if err := l.srv.RemoveReservation(v.ID); err != nil {
			undo()
			return Endpoint{}, errorf(Internal, "VM %s: dropping its old fixed address: %w", name, err)
		}
	}
	rec := record{ID: v.ID, Name: v.Name, StaticIP: v.StaticIP, DynamicMAC: v.DynamicMAC.String()}
	if len(v.InternalMAC) > 0 {
		rec.InternalMAC = v.InternalMAC.String()
	}
	if st == nil {
		st = &vmState{}
	}
	if st.rec != rec {
		old, had := l.vms[v.ID]
		oldRec := st.rec
		st.rec = rec
		l.vms[v.ID] = st
		if err := l.saveLocked(); err != nil {
			st.rec = oldRec
			if had {
				l.vms[v.ID] = old
			} else {
				delete(l.vms, v.ID)
			}
			undo()
			return Endpoint{}, err
		}
	}
	st.att = a
	// The lease may have been bound (or the reservation made) since the
	// pin was chosen: pin again now that OnLease finds the port.
	a.setIP(a.pinFor(l.srv, v.ID, v.StaticIP))
	where := a.ep.PluginPath
	if kind == frameio.KindTAP {
		where = a.ep.TAP
	}
	log.Info("VM attached", "kind", kind, "endpoint", where, "mac", v.DynamicMAC.String(), "internal_mac", internal.String(), "static_ip", v.StaticIP)
	return a.ep, nil
}

// attachSocketLocked gives a VM its socket and switch port; undo takes
// them back.
func (l *LAN) attachSocketLocked(a *attachment, v VM, name string, internal net.HardwareAddr, log *slog.Logger) (undo func(), err error) {
	ep := a.ep
	var link frameio.Port
	switch ep.Kind {
	case frameio.KindDgram:
		// Connected to the VM's socket, so the kernel never caps the
		// frames QEMU queues to us (see frameio's package doc).
		link, err = frameio.ListenDgram(ep.PluginPath, frameio.DgramOptions{MTU: ep.MTU, Peer: ep.VMPath, Logger: log})
	case frameio.KindStream:
		link, err = frameio.ListenStream(ep.PluginPath, frameio.StreamOptions{MTU: ep.MTU, Logger: log})
	case frameio.KindVhostUser:
		// No MAC in the device's config space: the runtime gives the NIC
		// its MAC (QEMU's mac=, which QEMU prefers, warning when the
		// back-end offers one too).
		link, err = vhostuser.Listen(ep.PluginPath, vhostuser.Options{MTU: ep.MTU, Log: log})
	}
	if err != nil {
		return nil, errorf(Unavailable, "VM %s: cannot create its socket: %w", name, err)
	}
	pc := vswitch.PortConfig{Name: name, Identity: v.ID, MAC: slices.Clone(v.DynamicMAC), AntiSpoof: true, Capture: &a.capture}
	var out, in *mactrans.Translator
	if !bytes.Equal(internal, v.DynamicMAC) {
		// One translator per direction: each runs on its own goroutine.
		out, err = mactrans.New(internal, v.DynamicMAC)
		if err == nil {
			in, err = mactrans.New(internal, v.DynamicMAC)
		}
		if err != nil {
			link.Close()
			return nil, errorf(Invalid, "VM %s: MAC translation: %w", name, err)
		}
		pc.ToLink = in.ToGuest
	}
	pc.FromLink = func(f []byte) bool {
		if out != nil {
			out.ToNetwork(f)
		}
		if !a.confirmed.Load() {
			a.observe(f)
		}
		return true
	}
	port, err := l.sw.Attach(link, pc)
	if err != nil {
		link.Close()
		return nil, errorf(Internal, "VM %s: joining the switch of network %s: %w", name, l.cfg.Name, err)
	}
	a.port = port
	port.SetIP(a.pinFor(l.srv, v.ID, v.StaticIP))
	a.live.Store(port)
	l.ports.Store(v.ID, a)
	return func() {
		l.ports.Delete(v.ID)
		port.Detach()
	}, nil
}

// attachTAPLocked gives a VM its TAP on the bridge: the kernel fast path.
// A TAP an earlier run left for a VM that still runs is taken back. undo
// removes a TAP it made, never one it took back (its VM holds it).
func (l *LAN) attachTAPLocked(a *attachment, v VM, name string) (undo func(), err error) {
	br := l.cfg.Bridge
	tap, adopted, err := br.AddPort(v.ID, v.DynamicMAC)
	if err != nil {
		return nil, errorf(Unavailable, "VM %s: cannot make its TAP on the bridge of network %s: %w", name, l.cfg.Name, err)
	}
	a.tap, a.bridge = tap, br
	a.ep.TAP = tap
	a.setIP(a.pinFor(l.srv, v.ID, v.StaticIP))
	l.setFastLocked(v.DynamicMAC, v.ID)
	l.ports.Store(v.ID, a)
	if adopted {
		a.log.Info("took back the VM's TAP from an earlier run", "tap", tap)
	}
	return func() {
		l.ports.Delete(v.ID)
		l.setFastLocked(v.DynamicMAC, "")
		a.pmu.Lock()
		a.gone = true
		a.pmu.Unlock()
		if !adopted {
			br.RemovePort(tap)
		}
	}, nil
}

// setFastLocked maps a fast-path VM's MAC to its ID ("" removes it);
// l.mu is held.
func (l *LAN) setFastLocked(mac net.HardwareAddr, id string) {
	m := maps.Clone(*l.fast.Load())
	if id == "" {
		delete(m, [6]byte(mac))
	} else {
		m[[6]byte(mac)] = id
	}
	l.fast.Store(&m)
}

// pinFor is the address a VM's port may send from now: its fixed
// address, its lease (even expired: DHCP gives it back first), else the
// fallback.
func (a *attachment) pinFor(srv *dhcpserver.Server, id string, static netip.Addr) netip.Addr {
	if static.IsValid() {
		return static
	}
	if le, ok := srv.Lease(id); ok && le.IP.IsValid() && le.State != dhcpserver.StateOffered {
		return le.IP
	}
	return a.fallback
}

// observe marks the attachment confirmed once the guest sends from its
// pinned address (IPv4 or ARP): a guest with a fixed address set by hand,
// or one that kept its lease across a plugin restart, never asks DHCP.
func (a *attachment) observe(f []byte) {
	p := a.live.Load()
	if p == nil || len(f) < 42 {
		return
	}
	ip, ok := p.IP()
	if !ok || ip == a.placeholder {
		return
	}
	want := ip.As4()
	switch binary.BigEndian.Uint16(f[12:14]) {
	case 0x0800:
		if [4]byte(f[26:30]) == want {
			a.confirmed.Store(true)
		}
	case 0x0806:
		if [4]byte(f[28:32]) == want {
			a.confirmed.Store(true)
		}
	}
}

// chooseKind picks the endpoint: a TAP (the kernel fast path) when the
// runtime offers one, the LAN has a bridge and the VM needs no MAC
// translation, unless the VM's datagram socket is live (a VM running on
// sockets, attached again after a restart, keeps them); else the first
// socket kind offered.
func (l *LAN) chooseKind(kinds []frameio.Kind, translated bool, vmPath string) (frameio.Kind, error) {
	if len(kinds) == 0 {
		return frameio.KindDgram, nil
	}
	if slices.Contains(kinds, frameio.KindDgram) && vmPath != "" && socketLive(vmPath) {
		// A VM running on datagrams, attached again after a restart.
		return frameio.KindDgram, nil
	}
	offersTAP := slices.Contains(kinds, frameio.KindTAP)
	if offersTAP && l.cfg.Bridge != nil && !translated {
		return frameio.KindTAP, nil
	}
	for _, k := range kinds {
		if k == frameio.KindDgram || k == frameio.KindStream || k == frameio.KindVhostUser {
			return k, nil
		}
	}
	if offersTAP && l.cfg.Bridge != nil {
		return "", errors.New("a VM with an internal MAC (-m) needs its frames translated, which only the user-space switch does, and the runtime offered a TAP only (" + kindList(kinds) + "): offer a dgram, stream or vhost-user socket, or drop the internal MAC")
	}
	if l.cfg.Bridge != nil {
		return "", errors.New("the network hands out TAPs, dgram, stream and vhost-user sockets; the runtime offered " + kindList(kinds))
	}
	return "", errors.New("the network hands out dgram, stream and vhost-user sockets; the runtime offered " + kindList(kinds))
}

func kindList(kinds []frameio.Kind) string {
	s := ""
	for i, k := range kinds {
		if i > 0 {
			s += ", "
		}
		s += string(k)
	}
	return s
}

// Detach removes the VM's port and its socket, or its TAP; its address
// stays its own. Detaching a VM that is not attached succeeds, and removes
// a TAP an earlier run left for it.
func (l *LAN) Detach(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.detachIDLocked(id)
}

func (l *LAN) detachIDLocked(id string) {
	if v := l.vms[id]; v != nil && v.att != nil {
		l.detachLocked(v, true)
		return
	}
	if br := l.cfg.Bridge; br != nil && !l.closed {
		// The VM stopped; a TAP kept for it by an earlier run is of no
		// use any more.
		if err := br.RemovePort(br.PortName(id)); err != nil {
			l.cfg.Logger.Warn("removing a TAP left for a VM", "lan", l.cfg.Name, "vm", id, "error", err)
		}
	}
}

// detachLocked takes a VM's port away; remove deletes a fast-path VM's
// TAP (the VM stopped), else it is left to the bridge's owner (Close).
func (l *LAN) detachLocked(v *vmState, remove bool) {
	a := v.att
	if a == nil {
		return
	}
	l.ports.Delete(v.rec.ID)
	if a.port != nil {
		a.port.Detach()
		v.last = a.port.Stats()
	} else {
		v.last, _ = a.stats()
		l.setFastLocked(a.mac, "")
		a.pmu.Lock()
		a.gone = true
		stop := a.capStop
		a.capStop = nil
		a.pmu.Unlock()
		if stop != nil {
			stop()
		}
		if remove {
			if err := a.bridge.RemovePort(a.tap); err != nil {
				a.log.Warn("removing the VM's TAP", "tap", a.tap, "error", err)
			}
		}
	}
	a.capture.Stop()
	v.att = nil
	l.cfg.Logger.Info("VM detached", "lan", l.cfg.Name, "vm", v.rec.label())
}

// Release forgets the VM: its port, lease, reservation and record.
// Releasing a VM the LAN does not know succeeds.
func (l *LAN) Release(id string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	v := l.vms[id]
	l.detachIDLocked(id)
	if err := l.srv.Release(id); err != nil {
		return errorf(Internal, "network %s: forgetting the lease of VM %s: %w", l.cfg.Name, id, err)
	}
	if v != nil {
		delete(l.vms, id)
		if err := l.saveLocked(); err != nil {
			l.vms[id] = v
			return err
		}
		l.cfg.Logger.Info("VM released", "lan", l.cfg.Name, "vm", v.rec.label())
	}
	return nil
}

// Known reports whether the LAN knows VM id (attached now or before, and
// not released).
func (l *LAN) Known(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.vms[id] != nil
}

// Attached reports whether VM id has a port now.
func (l *LAN) Attached(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	v := l.vms[id]
	return v != nil && v.att != nil
}

// Addr is the address to reach VM id at while it is attached: its lease
// or fixed address, which its port is pinned to. false while it is
// detached or has none yet.
func (l *LAN) Addr(id string) (netip.Addr, bool) {
	v, ok := l.ports.Load(id)
	if !ok {
		return netip.Addr{}, false
	}
	a := v.(*attachment)
	ip, ok := a.ip()
	if !ok || ip == l.cfg.Prefix.Addr() {
		return netip.Addr{}, false
	}
	return ip, true
}

// Status reports what the LAN knows of VM id; false when it does not
// know the VM.
func (l *LAN) Status(id string) (Status, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	v := l.vms[id]
	if v == nil {
		return Status{}, false
	}
	st := Status{Name: v.rec.Name, StaticIP: v.rec.StaticIP, Port: v.last}
	st.DynamicMAC, _ = net.ParseMAC(v.rec.DynamicMAC)
	st.InternalMAC = st.DynamicMAC
	if v.rec.InternalMAC != "" {
		st.InternalMAC, _ = net.ParseMAC(v.rec.InternalMAC)
	}
	if le, ok := l.srv.Lease(id); ok {
		st.Lease, st.LeaseState = le, le.State.String()
	}
	if a := v.att; a != nil {
		st.Attached = true
		st.Since = a.since
		st.Endpoint = a.ep
		var seen bool
		st.Port, seen = a.stats()
		if ip, ok := a.ip(); ok && ip != l.cfg.Prefix.Addr() {
			st.Pinned = ip
			if seen && a.port == nil {
				// A fast-path guest sent from its address: it has it
				// (kept across a plugin restart, or set by hand).
				a.confirmed.Store(true)
			}
			if a.confirmed.Load() {
				st.IP = ip
			}
		}
		if path, ok, _ := a.capture.Active(); ok {
			st.Capture = path
		}
	}
	return st, true
}

// StartCapture records the frames of VM id's port to a new pcap file at
// path (absolute; never overwritten), with snaplen bytes of each (0: all).
// The capture ends with StopCapture or when the VM is detached.
func (l *LAN) StartCapture(id, path string, snaplen int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	v := l.vms[id]
	if v == nil || v.att == nil {
		return errorf(Conflict, "VM %s is not attached to network %s: start it before capturing", id, l.cfg.Name)
	}
	a := v.att
	if err := a.capture.Start(path, snaplen); err != nil {
		kind := Unavailable
		if errors.Is(err, capture.ErrActive) {
			kind = Conflict
		}
		return errorf(kind, "capturing VM %s to %s: %w", v.rec.label(), path, err)
	}
	if a.port == nil {
		// The fast path: frames never pass through the switch; a packet
		// socket on the VM's TAP sees them both ways.
		stop, err := a.bridge.CapturePort(a.tap, a.capture.Write)
		if err != nil {
			a.capture.Stop()
			os.Remove(path)
			return errorf(Unavailable, "capturing VM %s on its TAP %s: %w", v.rec.label(), a.tap, err)
		}
		a.pmu.Lock()
		a.capStop = stop
		a.pmu.Unlock()
	}
	return nil
}

// StopCapture ends VM id's capture and returns how many frames it wrote.
func (l *LAN) StopCapture(id string) (frames uint64, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	v := l.vms[id]
	if v == nil || v.att == nil {
		return 0, errorf(Conflict, "VM %s is not attached to network %s", id, l.cfg.Name)
	}
	v.att.pmu.Lock()
	stop := v.att.capStop
	v.att.capStop = nil
	v.att.pmu.Unlock()
	if stop != nil {
		stop()
	}
	if err := v.att.capture.Stop(); err != nil && !errors.Is(err, capture.ErrNotActive) {
		f, _ := v.att.capture.Stats()
		return f, errorf(Unavailable, "the capture of VM %s stopped early: %w", v.rec.label(), err)
	} else if errors.Is(err, capture.ErrNotActive) {
		return 0, errorf(Conflict, "no capture is running for VM %s", v.rec.label())
	}
	f, _ := v.att.capture.Stats()
	return f, nil
}
