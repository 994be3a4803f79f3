package main

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/netkit/capture"
	"github.com/anka-net/anka/sdk/netkit/mactrans"
	"github.com/anka-net/anka/sdk/netkit/vswitch"
)

// attachment is a VM's port while it is attached.
type attachment struct {
	p     *Plugin
	id    string
	name  string
	up    *uplink
	ep    sdk.Endpoint
	dyn   [6]byte
	port  *vswitch.Port
	out   *mactrans.Translator // internal -> dynamic; nil without -m
	since time.Time
	// live is the port for the forwarding goroutine, which starts
	// before Attach returns; frames before it is set are dropped, so
	// none slips through before the port is pinned.
	live      atomic.Pointer[vswitch.Port]
	confirmed atomic.Bool // the guest has its address: Status.IP
	released  atomic.Bool // the guest released or declined its lease
	capture   capture.Capture

	// Guarded by Plugin.amu.
	addr   netip.Addr // pinned: the only IPv4 source the VM may use
	source string     // "dhcp" or "manual"
	expiry time.Time  // of a DHCP lease; zero for manual or infinite
	server netip.Addr // the DHCP server

	// refused is the last address the guest was refused, and why;
	// nRefused counts the frames dropped for it and those before.
	refused  atomic.Pointer[refusal]
	nRefused atomic.Uint64

	// prev is what the VM had when it was attached last, from the record:
	// a guest that kept its lease while the VM was attached again (the
	// plugin restarted) is shown with it as a lease.
	prev record
}

type refusal struct {
	addr netip.Addr
	why  string
}

// refuse notes a frame dropped because its source address is not the
// VM's; it allocates only when the address changes.
func (a *attachment) refuse(addr netip.Addr, why func() string) bool {
	a.nRefused.Add(1)
	if r := a.refused.Load(); r != nil && r.addr == addr {
		return false
	}
	a.refused.Store(&refusal{addr: addr, why: why()})
	return true
}

// unpinned is the pin of a VM without an address: only frames from
// 0.0.0.0 (DHCP, ARP probes) get past the switch's anti-spoofing.
var unpinned = netip.IPv4Unspecified()

// Address sources.
const (
	byDHCP   = "dhcp"
	byManual = "manual"
)

// fromGuest runs on every frame the VM sends, after MAC translation and
// before the switch's anti-spoofing, which lets IPv4 and ARP through
// only from the pinned address. An unpinned VM (no lease seen) gets
// pinned to the first address it sends from, unless another VM or the
// host uses it: a guest may set its address by hand, but only one, and
// never someone else's. DHCP client messages must carry the VM's own MAC,
// so a guest cannot ask for (or release) another VM's lease.
func (a *attachment) fromGuest(f []byte) bool {
	if a.out != nil {
		a.out.ToNetwork(f)
	}
	port := a.live.Load()
	if port == nil {
		return false
	}
	if isDHCPRequest(f) {
		if dhcpChaddr(f) != a.dyn {
			return false
		}
		if t := dhcpType(f); t == dhcpRelease || t == dhcpDecline {
			a.released.Store(true)
		}
	}
	src, ok := sourceIPv4(f)
	if !ok {
		return true
	}
	pin, _ := port.IP()
	switch {
	case src == pin:
	case pin == unpinned || a.released.Load():
		a.p.claim(a, src)
	default:
		// The switch drops it.
		a.refuse(src, func() string { return "the VM is pinned to " + pin.String() })
	}
	return true
}

// claim pins a to src, the address its guest sends from, when it may
// have it.
func (p *Plugin) claim(a *attachment, src netip.Addr) {
	p.amu.Lock()
	defer p.amu.Unlock()
	if pin, _ := a.port.IP(); pin != unpinned && !a.released.Load() {
		return // pinned meanwhile
	}
	if why := p.refuseLocked(a, src); why != "" {
		if a.refuse(src, func() string { return why }) {
			p.log.Warn("a guest sends from an address it may not have; its frames are dropped", "vm", a.name, "address", src, "why", why)
		}
		return
	}
	if a.prev.IP == src.String() && a.prev.Source == byDHCP && p.now().Before(a.prev.Expiry) {
		server, _ := netip.ParseAddr(a.prev.Server)
		p.pinLocked(a, src, byDHCP, a.prev.Expiry, server)
		p.log.Info("the guest kept its lease", "vm", a.name, "address", src, "expiry", a.prev.Expiry)
		return
	}
	p.pinLocked(a, src, byManual, time.Time{}, netip.Addr{})
	p.log.Info("the guest set its address by hand; pinned until it stops", "vm", a.name, "address", src)
}

// refuseLocked says why a may not have addr, "" when it may.
func (p *Plugin) refuseLocked(a *attachment, addr netip.Addr) string {
	if !addr.Is4() || !addr.IsGlobalUnicast() {
		return "not a unicast address a LAN node can have"
	}
	if h := p.claims[addr]; h != nil && h != a {
		return "VM " + h.name + " uses it"
	}
	if a.up.hostHas(addr) {
		return "this host uses it on " + a.up.name
	}
	return ""
}

func (p *Plugin) pinLocked(a *attachment, addr netip.Addr, source string, expiry time.Time, server netip.Addr) {
	if a.addr.IsValid() && p.claims[a.addr] == a {
		delete(p.claims, a.addr)
	}
	a.addr, a.source, a.expiry, a.server = addr, source, expiry, server
	a.released.Store(false)
	p.claims[addr] = a
	a.port.SetIP(addr)
	a.confirmed.Store(true)
	p.saveSoon()
}

func (p *Plugin) unpinLocked(a *attachment) {
	if a.addr.IsValid() && p.claims[a.addr] == a {
		delete(p.claims, a.addr)
	}
	a.addr, a.source, a.expiry, a.server = netip.Addr{}, "", time.Time{}, netip.Addr{}
	a.port.SetIP(unpinned)
	a.confirmed.Store(false)
	p.saveSoon()
}

// snoop reads a DHCP reply from the LAN to a VM (fromWire found it by
// chaddr): an ACK pins the VM to the address the LAN's server gave it and
// dates the lease; a NAK unpins it.
func (p *Plugin) snoop(a *attachment, f []byte) {
	off, _, _, _ := udpPorts(f)
	d := f[off:]
	switch dhcpType(f) {
	case dhcpAck:
		yi := netip.AddrFrom4([4]byte(d[16:20]))
		if yi.IsUnspecified() {
			return // an answer to DHCPINFORM
		}
		var expiry time.Time
		if v := dhcpOption(d, 51); len(v) == 4 {
			if secs := binary.BigEndian.Uint32(v); secs != 0xffffffff {
				expiry = p.now().Add(time.Duration(secs) * time.Second)
			}
		}
		var server netip.Addr
		if v := dhcpOption(d, 54); len(v) == 4 {
			server = netip.AddrFrom4([4]byte(v))
		}
		p.amu.Lock()
		defer p.amu.Unlock()
		if why := p.refuseLocked(a, yi); why != "" {
			a.refused.Store(&refusal{addr: yi, why: fmt.Sprintf("leased by the DHCP server %s, but %s", server, why)})
			p.log.Warn("the LAN's DHCP server gave a VM an address it may not have; not pinned", "vm", a.name, "address", yi, "server", server, "why", why)
			return
		}
		if a.addr != yi || a.source != byDHCP {
			p.log.Info("the VM got its address from the LAN's DHCP server", "vm", a.name, "address", yi, "server", server, "expiry", expiry)
		}
		p.pinLocked(a, yi, byDHCP, expiry, server)
	case dhcpNak:
		p.amu.Lock()
		defer p.amu.Unlock()
		if a.source == byDHCP {
			p.log.Info("the LAN's DHCP server refused the VM's lease", "vm", a.name, "address", a.addr)
			p.unpinLocked(a)
		}
	}
}

// DHCP message types (option 53).
const (
	dhcpDecline = 4
	dhcpAck     = 5
	dhcpNak     = 6
	dhcpRelease = 7
)

// dhcpType is the message type of a DHCP frame isDHCPReply or
// isDHCPRequest accepted, 0 when it has none.
func dhcpType(f []byte) byte {
	off, _, _, _ := udpPorts(f)
	if v := dhcpOption(f[off:], 53); len(v) == 1 {
		return v[0]
	}
	return 0
}

// dhcpOption finds an option of a DHCP message (after the magic cookie).
func dhcpOption(d []byte, code byte) []byte {
	if len(d) < dhcpMinLen || binary.BigEndian.Uint32(d[236:]) != 0x63825363 {
		return nil
	}
	for o := d[dhcpMinLen:]; len(o) > 0; {
		switch o[0] {
		case 0:
			o = o[1:]
			continue
		case 255:
			return nil
		}
		if len(o) < 2 || len(o) < 2+int(o[1]) {
			return nil
		}
		if o[0] == code {
			return o[2 : 2+int(o[1])]
		}
		o = o[2+int(o[1]):]
	}
	return nil
}
