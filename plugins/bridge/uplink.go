package main

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anka-net/anka/sdk/netkit/vswitch"
)

// uplink is one bridged interface: its AF_PACKET port on a switch shared
// by every VM bridged to it. The first Attach to the interface makes it,
// the last Detach closes it.
type uplink struct {
	name string
	mtu  int
	wire *wirePort
	sw   *vswitch.Switch
	port *vswitch.Port
	log  *slog.Logger
	// lroOff: LRO was on and we switched it off; close switches it on.
	lroOff bool
	off    offloader
	note   func(string, bool) error
	// vms maps dynamic MACs to the VMs attached here, copied on write:
	// the forwarding goroutine reads it for every frame from the wire.
	vms atomic.Pointer[map[[6]byte]*attachment]
	// n counts the attached VMs (Plugin.mu).
	n int
	// snoop is told of DHCP replies to the VMs.
	snoop func(a *attachment, f []byte)

	hmu       sync.Mutex
	hostAddrs []netip.Addr
	hostAt    time.Time
}

// openUplink opens ifname's packet socket and switch. LRO goes off while
// bridged: a frame LRO merged may not say how to cut it again (the
// kernel switches LRO off for the same reason when an interface joins a
// Linux bridge). GRO stays on: what it merges carries its segment size,
// and the port cuts it. note records the change before it is made, so a
// plugin that dies meanwhile gives LRO back when it starts again.
func openUplink(ifname string, log *slog.Logger, off offloader, note func(string, bool) error) (*uplink, error) {
	u := &uplink{name: ifname, log: log, off: off, note: note}
	m := map[[6]byte]*attachment{}
	u.vms.Store(&m)
	if on, err := off.LRO(ifname); err != nil {
		log.Debug("cannot read LRO; leaving the offloads alone", "interface", ifname, "error", err)
	} else if on {
		if err := note(ifname, true); err != nil {
			return nil, fmt.Errorf("recording the offloads of %s before changing them: %w", ifname, err)
		}
		if err := off.SetLRO(ifname, false); err != nil {
			note(ifname, false)
			log.Warn("cannot switch LRO off; frames it merges beyond the MTU are dropped", "interface", ifname, "error", err)
		} else {
			u.lroOff = true
			log.Info("LRO switched off while bridged", "interface", ifname)
		}
	}
	wire, err := openWire(ifname, log)
	if err != nil {
		u.restore()
		return nil, err
	}
	u.wire, u.mtu = wire, wire.MTU()
	u.sw = vswitch.New(vswitch.Config{MTU: u.mtu, Logger: log})
	u.port, err = u.sw.Attach(wire, vswitch.PortConfig{Name: "uplink " + ifname, FromLink: u.fromWire})
	if err != nil {
		wire.Close()
		u.sw.Close()
		u.restore()
		return nil, err
	}
	log.Info("interface bridged", "interface", ifname, "mtu", u.mtu)
	return u, nil
}

// close detaches the wire (leaving promiscuous mode), stops the switch
// and gives LRO back.
func (u *uplink) close() {
	u.sw.Close()
	u.restore()
	u.log.Info("interface no longer bridged", "interface", u.name)
}

func (u *uplink) restore() {
	if !u.lroOff {
		return
	}
	u.lroOff = false
	if err := u.off.SetLRO(u.name, true); err != nil {
		u.log.Warn("cannot switch LRO back on", "interface", u.name, "error", err)
	} else {
		u.log.Info("LRO switched back on", "interface", u.name)
	}
	u.note(u.name, false)
}

// offloader reads and switches LRO (ethtool); tests replace it, as no
// virtual interface has LRO to switch.
type offloader interface {
	LRO(ifname string) (bool, error)
	SetLRO(ifname string, on bool) error
}

type kernelOffloads struct{}

func (kernelOffloads) LRO(ifname string) (bool, error)     { return lro(ifname) }
func (kernelOffloads) SetLRO(ifname string, on bool) error { return setLRO(ifname, on) }

// add and remove keep vms, under Plugin.mu.
func (u *uplink) add(mac [6]byte, a *attachment) {
	m := maps.Clone(*u.vms.Load())
	m[mac] = a
	u.vms.Store(&m)
}

func (u *uplink) remove(mac [6]byte) {
	m := maps.Clone(*u.vms.Load())
	delete(m, mac)
	u.vms.Store(&m)
}

// fromWire runs on every frame from the interface. In promiscuous mode
// the socket sees the host's own unicast traffic and, on a shared
// segment, other hosts': only broadcast, multicast and frames for a VM
// go on. A frame from outside with a VM's MAC as its source is a loop or
// a spoofer, never the VM. DHCP replies are read to learn the VMs'
// addresses.
func (u *uplink) fromWire(f []byte) bool {
	m := *u.vms.Load()
	if f[0]&1 == 0 {
		if _, ok := m[[6]byte(f[0:6])]; !ok {
			return false
		}
	}
	if _, ok := m[[6]byte(f[6:12])]; ok {
		return false
	}
	if isDHCPReply(f) && u.snoop != nil {
		if a := m[dhcpChaddr(f)]; a != nil {
			u.snoop(a, f)
		}
	}
	return true
}

// hostHas reports whether the host holds addr on the interface, which no
// VM may take. The list is read again at most once a second.
func (u *uplink) hostHas(addr netip.Addr) bool {
	u.hmu.Lock()
	defer u.hmu.Unlock()
	if time.Since(u.hostAt) > time.Second {
		u.hostAddrs, u.hostAt = u.hostAddrs[:0], time.Now()
		if ifc, err := net.InterfaceByName(u.name); err == nil {
			as, _ := ifc.Addrs()
			for _, a := range as {
				if n, ok := a.(*net.IPNet); ok {
					if ip, ok := netip.AddrFromSlice(n.IP); ok {
						u.hostAddrs = append(u.hostAddrs, ip.Unmap())
					}
				}
			}
		}
	}
	for _, a := range u.hostAddrs {
		if a == addr {
			return true
		}
	}
	return false
}

// l3 is the ethertype and the offset of the payload past one VLAN tag,
// as the switch's anti-spoofing reads frames.
func l3(f []byte) (etype uint16, off int, ok bool) {
	if len(f) < 14 {
		return 0, 0, false
	}
	etype, off = binary.BigEndian.Uint16(f[12:14]), 14
	if etype == 0x8100 {
		if len(f) < 18 {
			return 0, 0, false
		}
		etype, off = binary.BigEndian.Uint16(f[16:18]), 18
	}
	return etype, off, true
}

// udpPorts returns the offset of the UDP payload of an IPv4 frame and
// its ports; ok false for anything else.
func udpPorts(f []byte) (payload int, sport, dport uint16, ok bool) {
	etype, off, ok := l3(f)
	if !ok || etype != 0x0800 || len(f) < off+20 || f[off+9] != 17 {
		return 0, 0, 0, false
	}
	if binary.BigEndian.Uint16(f[off+6:])&0x1fff != 0 {
		return 0, 0, 0, false // a later fragment
	}
	u := off + int(f[off]&0x0f)*4
	if len(f) < u+8 {
		return 0, 0, 0, false
	}
	return u + 8, binary.BigEndian.Uint16(f[u:]), binary.BigEndian.Uint16(f[u+2:]), true
}

// DHCP's fixed header: chaddr at 28, options after the cookie at 236.
const (
	dhcpChaddrOff = 28
	dhcpMinLen    = 240
)

func isDHCPReply(f []byte) bool {
	p, sport, dport, ok := udpPorts(f)
	return ok && sport == 67 && dport == 68 && len(f) >= p+dhcpMinLen
}

func isDHCPRequest(f []byte) bool {
	p, sport, dport, ok := udpPorts(f)
	return ok && sport == 68 && dport == 67 && len(f) >= p+dhcpMinLen
}

// dhcpChaddr is the client MAC of a DHCP frame isDHCPReply or
// isDHCPRequest accepted.
func dhcpChaddr(f []byte) [6]byte {
	p, _, _, _ := udpPorts(f)
	return [6]byte(f[p+dhcpChaddrOff:])
}

// sourceIPv4 is the sender's address of an IPv4 or ARP frame; ok false
// for other frames and for 0.0.0.0.
func sourceIPv4(f []byte) (netip.Addr, bool) {
	etype, off, ok := l3(f)
	if !ok {
		return netip.Addr{}, false
	}
	var b []byte
	switch etype {
	case 0x0800:
		if len(f) < off+20 {
			return netip.Addr{}, false
		}
		b = f[off+12 : off+16]
	case 0x0806:
		if len(f) < off+28 {
			return netip.Addr{}, false
		}
		b = f[off+14 : off+18]
	default:
		return netip.Addr{}, false
	}
	a := netip.AddrFrom4([4]byte(b))
	return a, !a.IsUnspecified()
}
