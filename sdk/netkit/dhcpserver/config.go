package dhcpserver

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"strings"
	"time"
)

// Defaults for the zero values of Config.
const (
	// DefaultLeaseTime follows the host default Anka uses in shared mode.
	DefaultLeaseTime = 86400 * time.Second
	// DefaultQuarantine keeps a declined address away from everyone long
	// enough for whoever squats on it to be noticed; dnsmasq uses the same.
	DefaultQuarantine = 10 * time.Minute
	// DefaultWorkers is enough to keep parsing off the switch goroutine;
	// workers never wait for the disk, so more would not add throughput.
	DefaultWorkers = 4
	// DefaultQueueLen bounds the frames waiting for a worker.
	DefaultQueueLen = 512

	// offerHold is how long an OFFER keeps its address away from others.
	// Offers are never written to disk: a client that does not REQUEST in
	// time simply starts over.
	offerHold = 60 * time.Second
	// maxIdentityLen keeps keys far below bbolt's limit.
	maxIdentityLen = 1024
)

// Config describes one DHCP service on one switch. The zero values of
// LeaseTime, Quarantine, Workers, QueueLen and Now take the defaults above.
type Config struct {
	// ServerIP is the address the server answers from and names in the
	// server identifier option: the gateway, .1 on anka's networks.
	ServerIP netip.Addr
	// ServerMAC is the source of every reply frame.
	ServerMAC net.HardwareAddr
	// Subnet is the network the guests live on; its mask is option 1.
	Subnet netip.Prefix
	// Router is option 3. Left invalid, no router is announced (a network
	// with no way out).
	Router netip.Addr
	// DNS is option 6, in order.
	DNS []netip.Addr
	// Domain is option 15 when not empty.
	Domain string
	// RangeStart and RangeEnd bound the dynamic pool, both included.
	// Reservations may lie outside it, anywhere in the subnet.
	RangeStart, RangeEnd netip.Addr
	// LeaseTime is option 51; renew (T1) is half of it, rebind (T2) 7/8.
	LeaseTime time.Duration
	// MTU is option 26 when not zero.
	MTU int
	// Quarantine is how long a DECLINEd address stays out of the pool.
	Quarantine time.Duration

	// Workers and QueueLen size the HandleFrame path.
	Workers  int
	QueueLen int

	// Now is the clock; tests inject one to expire leases and quarantine.
	Now func() time.Time
	// OnLease, when set, learns every lease change after it is durable:
	// a binding that was ACKed, a RELEASE, a DECLINE (State zero, no IP).
	// Anti-spoofing uses it to pin a port to its address. It is called
	// from the server's goroutines, one call at a time, and must not
	// block for long nor call the server. Per identity the calls come in
	// the order of the changes: a change that became durable after a
	// newer one was told is not told at all.
	OnLease func(Lease)
}

// withDefaults returns c with the zero values filled in.
func (c Config) withDefaults() Config {
	if c.LeaseTime == 0 {
		c.LeaseTime = DefaultLeaseTime
	}
	if c.Quarantine == 0 {
		c.Quarantine = DefaultQuarantine
	}
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
	if c.QueueLen == 0 {
		c.QueueLen = DefaultQueueLen
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Validate reports the first reason c cannot serve, in words a person can
// act on. Zero values that have defaults are accepted.
func (c Config) Validate() error {
	c = c.withDefaults()
	p := c.Subnet
	if !p.IsValid() || !p.Addr().Is4() {
		return fmt.Errorf("dhcp: subnet %v is not an IPv4 prefix", c.Subnet)
	}
	if p.Bits() < 8 || p.Bits() > 30 {
		return fmt.Errorf("dhcp: subnet %v: the prefix length must be between /8 and /30", p)
	}
	if p != p.Masked() {
		return fmt.Errorf("dhcp: subnet %v has host bits set; did you mean %v?", p, p.Masked())
	}
	net4, bcast := subnetBounds(p)
	inHosts := func(a netip.Addr) bool {
		if !a.Is4() || !p.Contains(a) {
			return false
		}
		u := addrU32(a)
		return u != net4 && u != bcast
	}
	if !inHosts(c.ServerIP) {
		return fmt.Errorf("dhcp: server address %v is not a host address of subnet %v", c.ServerIP, p)
	}
	if len(c.ServerMAC) != 6 {
		return fmt.Errorf("dhcp: server MAC %q is not a 6-byte Ethernet address", c.ServerMAC)
	}
	if c.Router.IsValid() && !inHosts(c.Router) {
		return fmt.Errorf("dhcp: router %v is not a host address of subnet %v", c.Router, p)
	}
	for _, d := range c.DNS {
		if !d.Is4() {
			return fmt.Errorf("dhcp: DNS server %v is not an IPv4 address", d)
		}
	}
	if len(c.Domain) > 255 || strings.ContainsRune(c.Domain, 0) {
		return fmt.Errorf("dhcp: domain %q is longer than 255 bytes or holds a NUL", c.Domain)
	}
	if !inHosts(c.RangeStart) || !inHosts(c.RangeEnd) {
		return fmt.Errorf("dhcp: range %v-%v must lie within the host addresses of subnet %v", c.RangeStart, c.RangeEnd, p)
	}
	lo, hi := addrU32(c.RangeStart), addrU32(c.RangeEnd)
	if lo > hi {
		return fmt.Errorf("dhcp: range start %v is after range end %v", c.RangeStart, c.RangeEnd)
	}
	if s := addrU32(c.ServerIP); s >= lo && s <= hi {
		return fmt.Errorf("dhcp: range %v-%v contains the server address %v; start the range after it", c.RangeStart, c.RangeEnd, c.ServerIP)
	}
	if c.Router.IsValid() {
		if r := addrU32(c.Router); r >= lo && r <= hi {
			return fmt.Errorf("dhcp: range %v-%v contains the router %v", c.RangeStart, c.RangeEnd, c.Router)
		}
	}
	if c.LeaseTime < time.Second || c.LeaseTime > math.MaxUint32*time.Second {
		return fmt.Errorf("dhcp: lease time %v must be between 1s and %ds", c.LeaseTime, uint32(math.MaxUint32))
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		return fmt.Errorf("dhcp: MTU %d must be 0 (not announced) or between 68 and 65535", c.MTU)
	}
	if c.Quarantine < 0 {
		return fmt.Errorf("dhcp: quarantine %v is negative", c.Quarantine)
	}
	if c.Workers < 0 || c.QueueLen < 0 {
		return fmt.Errorf("dhcp: workers %d and queue length %d must not be negative", c.Workers, c.QueueLen)
	}
	return nil
}

// subnetBounds returns the network and broadcast addresses of p.
func subnetBounds(p netip.Prefix) (network, broadcast uint32) {
	network = addrU32(p.Masked().Addr())
	broadcast = network | (1<<(32-p.Bits()) - 1)
	return network, broadcast
}

// Addresses are uint32 inside the server: cheap map keys and arithmetic.
func addrU32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func u32Addr(u uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)})
}

func u32IP(u uint32) net.IP {
	return net.IP{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)}
}

// ipU32 reads a 4-byte (or v4-in-v6) net.IP; zero for anything else.
func ipU32(ip net.IP) uint32 {
	ip4 := ip.To4()
	if ip4 == nil {
		return 0
	}
	return uint32(ip4[0])<<24 | uint32(ip4[1])<<16 | uint32(ip4[2])<<8 | uint32(ip4[3])
}
