package lan

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
)

// Config describes one LAN.
type Config struct {
	// Name names the LAN in files and log lines: its leases are
	// DataDir/<Name>-leases.db, its VMs DataDir/<Name>-vms.json, and a
	// VM's sockets <Name>.sock and <Name>-vm.sock in its run folder.
	// Lower-case letters, digits and dashes.
	Name string
	// Prefix is the subnet, e.g. 192.168.64.0/24 (IPv4 only).
	Prefix netip.Prefix
	// Gateway is the host's address on the LAN: DHCP server, router
	// (option 3) and, usually, DNS. Anka's networks use .1.
	Gateway netip.Addr
	// GatewayMAC is the MAC that owns Gateway. With a HostLink it must be
	// the host interface's own MAC (the kernel answers ARP for the
	// gateway there); without one, lan answers ARP with it, and a nil
	// GatewayMAC gets a locally administered MAC derived from Name.
	GatewayMAC net.HardwareAddr
	// RangeStart and RangeEnd bound the dynamic addresses, both included.
	// Static reservations may lie anywhere in Prefix.
	RangeStart, RangeEnd netip.Addr
	// LeaseTime is the DHCP lease (default 24h).
	LeaseTime time.Duration
	// MTU of the LAN: every port's buffers, the MTU the endpoints carry
	// and DHCP option 26. Default 1500, at most 65520.
	MTU int
	// DNS servers announced by DHCP (option 6), in order; none when empty.
	DNS []netip.Addr
	// Domain is DHCP option 15 when not empty.
	Domain string
	// NoRouter announces no router: guests get no default route and
	// reach only the LAN itself.
	NoRouter bool
	// DataDir holds the lease database and the list of VMs, so a LAN made
	// again over the same folder hands every VM the same address.
	// Required.
	DataDir string
	// HostLink joins the host to the LAN: usually the TAP that holds
	// Gateway (hostnet.Network.Link), so host <-> guest traffic is plain
	// kernel routing. The LAN owns it from New on and closes it. Nil: no
	// host side; lan answers ARP for the gateway itself.
	HostLink frameio.Port
	// Bridge, when set, is the kernel bridge HostLink is a port of
	// (hostnet.Network in bridge mode): VMs whose runtime takes a TAP
	// and that have no internal MAC get a TAP on it, the kernel fast
	// path; the others, and every VM without a Bridge, get sockets on
	// the switch. GatewayMAC is then the bridge's MAC. Requires HostLink.
	Bridge Bridge
	// Logger gets the LAN's events; nil means slog.Default().
	Logger *slog.Logger
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
}

// check fills defaults and returns the first reason cfg cannot serve.
func (c *Config) check() error {
	if c.Name == "" || !nameOK(c.Name) {
		return errorf(Invalid, "LAN name %q: use 1 to 32 lower-case letters, digits and dashes", c.Name)
	}
	if !c.Prefix.IsValid() || !c.Prefix.Addr().Is4() || c.Prefix.Bits() > 30 {
		return errorf(Invalid, "LAN %s: subnet %v is not an IPv4 subnet with room for a gateway and a guest (at most /30)", c.Name, c.Prefix)
	}
	c.Prefix = c.Prefix.Masked()
	bcast := lastAddr(c.Prefix)
	host := func(a netip.Addr) bool {
		return a.Is4() && c.Prefix.Contains(a) && a != c.Prefix.Addr() && a != bcast
	}
	switch {
	case !host(c.Gateway):
		return errorf(Invalid, "LAN %s: gateway %v is not a host address of %v", c.Name, c.Gateway, c.Prefix)
	case !host(c.RangeStart) || !host(c.RangeEnd):
		return errorf(Invalid, "LAN %s: the DHCP range %v-%v must lie inside %v, between its network and broadcast addresses", c.Name, c.RangeStart, c.RangeEnd, c.Prefix)
	case c.RangeStart.Compare(c.RangeEnd) > 0:
		return errorf(Invalid, "LAN %s: the DHCP range starts at %v, after its end %v", c.Name, c.RangeStart, c.RangeEnd)
	case c.RangeStart.Compare(c.Gateway) <= 0 && c.RangeEnd.Compare(c.Gateway) >= 0:
		return errorf(Invalid, "LAN %s: the DHCP range %v-%v holds the gateway %v: start it after the gateway", c.Name, c.RangeStart, c.RangeEnd, c.Gateway)
	case c.DataDir == "":
		return errorf(Invalid, "LAN %s: no data folder for its leases", c.Name)
	}
	if c.MTU == 0 {
		c.MTU = frameio.DefaultMTU
	}
	if c.MTU < 576 || c.MTU > frameio.MaxMTU {
		return errorf(Invalid, "LAN %s: MTU %d is out of range: use 576 to %d", c.Name, c.MTU, frameio.MaxMTU)
	}
	if c.LeaseTime == 0 {
		c.LeaseTime = 24 * time.Hour
	}
	if c.LeaseTime < time.Minute {
		return errorf(Invalid, "LAN %s: lease time %v is shorter than a minute", c.Name, c.LeaseTime)
	}
	if c.Bridge != nil && c.HostLink == nil {
		return errorf(Invalid, "LAN %s: a kernel bridge needs the host link, the switch's port on it", c.Name)
	}
	if c.Bridge != nil {
		if m := c.Bridge.ServiceMAC(); len(m) != 6 || m[0]&1 != 0 {
			return errorf(Invalid, "LAN %s: the bridge's service MAC %v is not a unicast Ethernet address", c.Name, m)
		}
	}
	if c.GatewayMAC == nil {
		if c.HostLink != nil {
			return errorf(Invalid, "LAN %s: a host link needs GatewayMAC, the host interface's MAC", c.Name)
		}
		c.GatewayMAC = derivedMAC(c.Name)
	}
	if len(c.GatewayMAC) != 6 || c.GatewayMAC[0]&1 != 0 {
		return errorf(Invalid, "LAN %s: gateway MAC %v is not a unicast Ethernet address", c.Name, c.GatewayMAC)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

func nameOK(s string) bool {
	if len(s) > 32 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// lastAddr is the broadcast address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	u := binary.BigEndian.Uint32(a[:]) | (1<<(32-p.Bits()) - 1)
	binary.BigEndian.PutUint32(a[:], u)
	return netip.AddrFrom4(a)
}

// derivedMAC is a stable locally administered unicast MAC for a LAN
// without a host side.
func derivedMAC(name string) net.HardwareAddr {
	h := sha256.Sum256([]byte("anka-lan-gateway:" + name))
	mac := net.HardwareAddr(h[:6])
	mac[0] = mac[0]&0xfc | 0x02
	return mac
}

// CheckAddress says why ip cannot be a guest's fixed address on a LAN with
// this subnet and gateway: outside the subnet, its network or broadcast
// address, or the gateway. It needs no running LAN, so a plugin can check a
// card before its network is up.
func CheckAddress(prefix netip.Prefix, gateway, ip netip.Addr) error {
	prefix = prefix.Masked()
	switch {
	case !ip.IsValid():
		return errorf(Invalid, "no address given")
	case !ip.Is4():
		return errorf(Invalid, "%v is not an IPv4 address: the network is %v", ip, prefix)
	case !prefix.Contains(ip):
		return errorf(Invalid, "%v is outside the network's subnet %v: choose an address from %v to %v", ip, prefix, prefix.Addr().Next(), lastAddr(prefix).Prev())
	case ip == prefix.Addr():
		return errorf(Invalid, "%v is the network address of %v, which no host can have", ip, prefix)
	case ip == lastAddr(prefix):
		return errorf(Invalid, "%v is the broadcast address of %v, which no host can have", ip, prefix)
	case ip == gateway:
		return errorf(Invalid, "%v is the gateway of %v (the host's own address): choose another", ip, prefix)
	}
	return nil
}

func (c *Config) String() string {
	return fmt.Sprintf("%s %v gateway %v range %v-%v mtu %d", c.Name, c.Prefix, c.Gateway, c.RangeStart, c.RangeEnd, c.MTU)
}
