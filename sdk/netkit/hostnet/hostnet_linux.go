//go:build linux

package hostnet

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/anka-net/anka/sdk/netkit/frameio"
)

// Mode is how far guests get beyond the host.
type Mode int

const (
	// NAT is the shared type: outbound masquerade, forwarding accepted for
	// the subnet, nothing inbound except established/related.
	NAT Mode = iota
	// Isolated is the host type: guests reach the host and each other,
	// never beyond: forwarding is dropped for the subnet.
	Isolated
)

func (m Mode) String() string {
	switch m {
	case NAT:
		return "nat"
	case Isolated:
		return "isolated"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Config describes one network's host side.
type Config struct {
	// Name is the network's name: "shared" gives the TAP "anka-shared0"
	// and the nftables table "anka-shared" (family inet). Letters,
	// digits, '-' and '_'.
	Name string
	// TAP is the interface name; "" means "anka-" + Name + "0".
	TAP string
	// Prefix is the guests' IPv4 subnet, e.g. 192.168.64.0/24.
	Prefix netip.Prefix
	// Gateway is the host's address in Prefix, put on the TAP as
	// Gateway/Prefix.Bits().
	Gateway netip.Addr
	// MTU is set on the TAP; 0 means frameio.DefaultMTU (1500), the
	// largest is frameio.MaxMTU (65520).
	MTU  int
	Mode Mode
	// Bridge makes the host side a Linux bridge instead of a TAP: the
	// device named TAP (default anka-<Name>0) is then a bridge holding the
	// gateway address, the plugin's switch joins it through a TAP port
	// named Uplink (Link returns it), and VMs on the kernel fast path get
	// TAP ports of their own (AddPort), with anti-spoofing in the
	// nftables bridge table anka-br-<Name>. See bridge_linux.go.
	Bridge bool
	// Uplink names the switch's TAP on the bridge; "" means
	// "anka-" + Name + "sw". Bridge mode only.
	Uplink string
	// PortPrefix starts the name of every VM TAP (PortName): the prefix
	// and 8 hex digits. "" means "ak" and the first character of Name
	// ("aks" for shared). Bridge mode only.
	PortPrefix string
	// ClaimWindow is how long a VM TAP that Setup adopted from an earlier
	// run stays on the bridge, filtered by the rules that run gave it,
	// waiting for AddPort (its VM attached again); then it is set down and
	// taken off the bridge, or removed once no process holds it. 0 means
	// DefaultClaimWindow. Bridge mode only.
	ClaimWindow time.Duration
	// Logger gets what Setup cleaned up, adopted and set up; nil means
	// slog.Default().
	Logger *slog.Logger
}

// ErrPrefixInUse is wrapped by Setup's error when the subnet overlaps an
// address or a route the host already has.
var ErrPrefixInUse = errors.New("hostnet: the subnet is already in use on this host")

// Network is a set-up host side: the TAP with the gateway address and
// the nftables rules.
type Network struct {
	cfg     Config
	tag     string
	ifindex int // the gateway device's: the TAP, or the bridge
	tap     *frameio.TAPPort
	env     *env
	log     *slog.Logger
	br      *bridgeState // bridge mode only

	mu     sync.Mutex
	closed bool
}

// Setup makes the host side of a network in the calling thread's network
// namespace. In bridge mode it first tries to adopt the bridge a killed
// earlier run left (see the package doc: kept when it matches cfg, with
// the VM TAPs on it that running VMs hold, the tables replaced in one
// transaction). Otherwise it removes what a crashed earlier run left under
// the same name (the TAP, the table, its rules in iptables-nft's FORWARD
// chain), then refuses a Prefix that overlaps an address of any
// interface or a route inside Prefix (the error wraps ErrPrefixInUse and
// names the interface), creates the TAP with MTU, address and link up, and
// installs the rules in one batch.
//
// In NAT mode Setup also turns on IPv4 forwarding
// (/proc/sys/net/ipv4/ip_forward = 1) and leaves it on after Close: other
// software on the host may rely on it by then, and our forward chain keeps
// the subnet's part of it in check. Isolated mode needs no forwarding and
// does not touch the setting.
//
// On failure nothing of the new network is left behind.
func Setup(cfg Config) (*Network, error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("network", cfg.Name, "tap", cfg.TAP)
	e, err := openEnv()
	if err != nil {
		return nil, err
	}
	n := &Network{cfg: cfg, tag: tableName(cfg.Name), env: e, log: log}
	if err := n.setup(); err != nil {
		e.close()
		return nil, err
	}
	log.Info("hostnet: network up", "prefix", cfg.Prefix, "gateway", cfg.Gateway, "mode", cfg.Mode, "mtu", n.tap.MTU())
	return n, nil
}

func (n *Network) setup() error {
	cfg := &n.cfg
	if cfg.Bridge {
		adopted, err := n.adoptBridge()
		if adopted {
			return nil
		}
		if err != nil {
			n.log.Info("hostnet: not adopting what an earlier run left; setting the network up anew", "reason", err)
		}
	}
	removed, err := n.env.cleanup(n.tag, cfg.TAP, n.sweep(), n.log)
	if err != nil {
		return fmt.Errorf("hostnet: removing what an earlier run of network %q left: %w", cfg.Name, err)
	}
	if len(removed) > 0 {
		n.log.Warn("hostnet: removed leftovers of an earlier run", "removed", strings.Join(removed, ", "))
	}
	if err := n.env.checkPrefix(cfg, 0, n.log); err != nil {
		return err
	}
	if cfg.Bridge {
		return n.setupBridge()
	}
	// Offload and HandGSO: as for the bridge's uplink (openUplink).
	tap, err := frameio.OpenTAP(cfg.TAP, frameio.TAPOptions{MTU: cfg.MTU, Logger: cfg.Logger, Offload: true, HandGSO: true})
	if err != nil {
		return fmt.Errorf("hostnet: %w", err)
	}
	fail := func(err error) error {
		tap.Close()
		// Closing the TAP removes it; delete by index in case something
		// else holds it open.
		if l, lerr := n.env.nl.LinkByIndex(n.ifindex); lerr == nil && l.Attrs().Name == cfg.TAP {
			n.env.nl.LinkDel(l)
		}
		return err
	}
	link, err := n.env.nl.LinkByName(cfg.TAP)
	if err != nil {
		return fail(fmt.Errorf("hostnet: finding the new TAP %s: %w", cfg.TAP, err))
	}
	n.ifindex = link.Attrs().Index
	if err := n.env.nl.LinkSetAlias(link, n.tag); err != nil {
		return fail(fmt.Errorf("hostnet: tagging TAP %s: %w", cfg.TAP, err))
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   cfg.Gateway.AsSlice(),
		Mask: net.CIDRMask(cfg.Prefix.Bits(), 32),
	}}
	if err := n.env.nl.AddrAdd(link, addr); err != nil {
		return fail(fmt.Errorf("hostnet: adding %s to %s: %w", addr.IPNet, cfg.TAP, err))
	}
	if err := n.env.nl.LinkSetUp(link); err != nil {
		return fail(fmt.Errorf("hostnet: bringing %s up: %w", cfg.TAP, err))
	}
	if cfg.Mode == NAT {
		if err := enableForwarding(n.log); err != nil {
			return fail(err)
		}
	}
	if err := n.env.install(cfg, n.tag, n.log); err != nil {
		return fail(err)
	}
	n.tap = tap
	return nil
}

// Link is the TAP port the plugin attaches to its switch: the TAP holding
// the gateway, or in bridge mode the switch's uplink port on the bridge.
// Closing it removes the interface, so leave that to Close.
func (n *Network) Link() *frameio.TAPPort { return n.tap }

// Device is the interface holding the gateway address: the TAP, or the
// bridge in bridge mode.
func (n *Network) Device() string { return n.cfg.TAP }

// GatewayMAC is the MAC of the interface holding the gateway address: the
// MAC the kernel answers ARP for the gateway with.
func (n *Network) GatewayMAC() (net.HardwareAddr, error) {
	l, err := n.env.nl.LinkByIndex(n.ifindex)
	if err != nil {
		return nil, fmt.Errorf("hostnet: %s: %w", n.cfg.TAP, err)
	}
	return l.Attrs().HardwareAddr, nil
}

// Close removes the TAP, the table and the rules Setup inserted into
// iptables-nft's FORWARD chain. It may be called from any goroutine and
// more than once. A Network whose TAP has since been replaced by a later
// Setup of the same name (the crash recovery case) closes only its own
// TAP and leaves the newer network's table and rules alone.
func (n *Network) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	defer n.env.close()

	superseded := n.supersededLocked()
	var errs []error
	if n.br != nil {
		n.br.stopCaptures()
	}
	if err := n.tap.Close(); err != nil {
		errs = append(errs, fmt.Errorf("hostnet: closing TAP %s: %w", n.tap.Name(), err))
	}
	if superseded {
		n.log.Info("hostnet: TAP was replaced by a newer setup; leaving its rules alone")
		return errors.Join(errs...)
	}
	removed, err := n.env.cleanup(n.tag, n.cfg.TAP, n.sweep(), n.log)
	if err != nil {
		errs = append(errs, fmt.Errorf("hostnet: closing network %q: %w", n.cfg.Name, err))
	}
	n.log.Info("hostnet: network down", "removed", strings.Join(removed, ", "))
	return errors.Join(errs...)
}

// Cleanup removes, in the calling thread's network namespace, whatever
// network name left: the table "anka-<name>", the rules tagged with it in
// iptables-nft's FORWARD chain, and the TAP "anka-<name>0" or any TAP
// Setup tagged with the name (custom TAP names included). It is what
// Setup does first; a plugin calls it when it drops a network for good,
// tests call it to start clean. Nothing to remove is not an error.
func Cleanup(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	e, err := openEnv()
	if err != nil {
		return err
	}
	defer e.close()
	if _, err := e.cleanup(tableName(name), defaultTAP(name), &sweep{prefix: defaultPortPrefix(name), tag: tableName(name)}, slog.Default()); err != nil {
		return fmt.Errorf("hostnet: cleaning up network %q: %w", name, err)
	}
	return nil
}

func tableName(name string) string         { return "anka-" + name }
func bridgeTableName(name string) string   { return "anka-br-" + name }
func defaultTAP(name string) string        { return "anka-" + name + "0" }
func defaultUplink(name string) string     { return "anka-" + name + "sw" }
func defaultPortPrefix(name string) string { return "ak" + strings.ToLower(name[:1]) }

func checkName(name string) error {
	if name == "" {
		return errors.New("hostnet: the network needs a name")
	}
	if len(name) > 64 {
		return fmt.Errorf("hostnet: network name %q is longer than 64 bytes", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("hostnet: network name %q: use letters, digits, '-' and '_'", name)
		}
	}
	return nil
}

// normalize checks cfg and fills in defaults; it touches nothing on the
// host.
func (cfg *Config) normalize() error {
	if err := checkName(cfg.Name); err != nil {
		return err
	}
	if cfg.TAP == "" {
		cfg.TAP = defaultTAP(cfg.Name)
		if len(cfg.TAP) >= 16 {
			return fmt.Errorf("hostnet: network name %q makes the TAP name %q longer than 15 bytes; shorten it or set TAP", cfg.Name, cfg.TAP)
		}
	}
	if !ifnameOK(cfg.TAP) {
		return fmt.Errorf("hostnet: %q is not a usable interface name (at most 15 bytes, no '/', ':', '%%' or spaces)", cfg.TAP)
	}
	if cfg.Bridge {
		if cfg.Uplink == "" {
			cfg.Uplink = defaultUplink(cfg.Name)
			if len(cfg.Uplink) >= 16 {
				return fmt.Errorf("hostnet: network name %q makes the uplink name %q longer than 15 bytes; shorten it or set Uplink", cfg.Name, cfg.Uplink)
			}
		}
		if !ifnameOK(cfg.Uplink) || cfg.Uplink == cfg.TAP {
			return fmt.Errorf("hostnet: uplink %q is not a usable interface name of its own (at most 15 bytes, not the bridge's)", cfg.Uplink)
		}
		if cfg.PortPrefix == "" {
			cfg.PortPrefix = defaultPortPrefix(cfg.Name)
		}
		if !ifnameOK(cfg.PortPrefix+"00000000") || strings.HasPrefix(cfg.TAP, cfg.PortPrefix) || strings.HasPrefix(cfg.Uplink, cfg.PortPrefix) {
			return fmt.Errorf("hostnet: port prefix %q: VM TAPs are named the prefix and 8 hex digits, at most 15 bytes, and no other interface of the network may start with it", cfg.PortPrefix)
		}
	}
	if cfg.Mode != NAT && cfg.Mode != Isolated {
		return fmt.Errorf("hostnet: unknown mode %d", int(cfg.Mode))
	}
	if cfg.MTU == 0 {
		cfg.MTU = frameio.DefaultMTU
	}
	if cfg.MTU < 68 || cfg.MTU > frameio.MaxMTU {
		return fmt.Errorf("hostnet: MTU %d is out of range: use 68 to %d (1500 unless you know better)", cfg.MTU, frameio.MaxMTU)
	}
	if !cfg.Prefix.IsValid() || !cfg.Prefix.Addr().Unmap().Is4() {
		return fmt.Errorf("hostnet: subnet %v is not an IPv4 prefix", cfg.Prefix)
	}
	cfg.Prefix = netip.PrefixFrom(cfg.Prefix.Addr().Unmap(), cfg.Prefix.Bits()).Masked()
	if b := cfg.Prefix.Bits(); b < 8 || b > 30 {
		return fmt.Errorf("hostnet: subnet %v: use a prefix length from 8 to 30", cfg.Prefix)
	}
	if a := cfg.Prefix.Addr(); a.IsLoopback() || a.IsMulticast() || a.IsUnspecified() || a.IsLinkLocalUnicast() {
		return fmt.Errorf("hostnet: subnet %v is reserved (loopback, link-local, multicast or 0/8)", cfg.Prefix)
	}
	cfg.Gateway = cfg.Gateway.Unmap()
	if !cfg.Gateway.Is4() || !cfg.Prefix.Contains(cfg.Gateway) {
		return fmt.Errorf("hostnet: gateway %v is not in subnet %v", cfg.Gateway, cfg.Prefix)
	}
	if cfg.Gateway == cfg.Prefix.Addr() || cfg.Gateway == lastAddr(cfg.Prefix) {
		return fmt.Errorf("hostnet: gateway %v is the network or broadcast address of %v", cfg.Gateway, cfg.Prefix)
	}
	return nil
}

func ifnameOK(s string) bool {
	return s != "" && len(s) < 16 && !strings.ContainsAny(s, "/: \t\n%") && s != "." && s != ".."
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// env is one network namespace, pinned: the handles keep working from
// any thread once made.
type env struct {
	ns  netns.NsHandle
	nl  *netlink.Handle
	nft *nftables.Conn
	// own is true when the process cannot enter namespaces (setns
	// takes CAP_SYS_ADMIN): a plugin running unprivileged with
	// CAP_NET_ADMIN. None of its threads can have left ns then, so its
	// sockets open where they are, without setns.
	own bool
}

// openEnv pins the calling thread's network namespace.
func openEnv() (*env, error) {
	ns, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("hostnet: opening the network namespace: %w", err)
	}
	own := !canSetns()
	var nl *netlink.Handle
	if own {
		nl, err = netlink.NewHandle(netlinkRoute)
	} else {
		nl, err = netlink.NewHandleAt(ns, netlinkRoute)
	}
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("hostnet: netlink: %w", err)
	}
	var nft *nftables.Conn
	if own {
		nft, err = nftables.New()
	} else {
		nft, err = nftables.New(nftables.WithNetNSFd(int(ns)))
	}
	if err != nil {
		nl.Close()
		ns.Close()
		return nil, fmt.Errorf("hostnet: nftables: %w", err)
	}
	return &env{ns: ns, nl: nl, nft: nft, own: own}, nil
}

// tunHint explains a TAP that cannot be made for lack of access to
// /dev/net/tun: CAP_NET_ADMIN is not enough for a process that is not
// root, the device must be open to it too.
func tunHint(err error) error {
	if err == nil || !errors.Is(err, os.ErrPermission) || !strings.Contains(err.Error(), "/dev/net/tun") {
		return err
	}
	return fmt.Errorf("%w: an unprivileged plugin needs /dev/net/tun readable and writable by everyone (mode 0666, as Debian's udev sets it: chmod 0666 /dev/net/tun), or run plugins as root (anka config plugin_user root)", err)
}

// canSetns reports whether the calling thread has CAP_SYS_ADMIN, which
// setns(2) needs.
func canSetns() bool {
	var hdr = unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return true // assume so: the old behaviour
	}
	return data[unix.CAP_SYS_ADMIN/32].Effective&(1<<(unix.CAP_SYS_ADMIN%32)) != 0
}

// netNS is what mdlayher/netlink's Config.NetNS takes: 0 (no setns) in
// the process's own namespace.
func (e *env) netNS() int {
	if e.own {
		return 0
	}
	return int(e.ns)
}

func (e *env) close() {
	e.nl.Close()
	e.ns.Close()
}

// cleanup removes the table tag, the FORWARD rules tagged tag, the TAP
// named tap or tagged tag (or the bridge, in bridge mode), and with sw the
// VM TAPs of the network (those a VM still holds are kept, down, for a
// later run to take back), and says what it removed.
func (e *env) cleanup(tag, tap string, sw *sweep, log *slog.Logger) ([]string, error) {
	var removed []string
	if sw != nil {
		r, err := e.sweepPorts(sw, log)
		removed = append(removed, r...)
		if err != nil {
			return removed, err
		}
		if found, err := e.removeTableOf(nftables.TableFamilyBridge, sw.bridgeTable()); err != nil {
			return removed, err
		} else if found {
			removed = append(removed, "nftables table bridge "+sw.bridgeTable())
		}
	}
	n, err := e.removeRules(tag)
	if err != nil {
		return nil, err
	}
	if n > 0 {
		removed = append(removed, fmt.Sprintf("%d rules in ip filter FORWARD", n))
	}
	if found, err := e.removeTable(tag); err != nil {
		return removed, err
	} else if found {
		removed = append(removed, "nftables table inet "+tag)
	}
	links, err := retryDump(e.nl.LinkList)
	if err != nil {
		return removed, fmt.Errorf("listing interfaces: %w", err)
	}
	for _, l := range links {
		a := l.Attrs()
		if a.Name != tap && a.Alias != tag {
			continue
		}
		what := "TAP"
		switch {
		case l.Type() == "tuntap":
		case l.Type() == "bridge" && a.Alias == tag:
			// Ours (bridge mode): tagged when it was made.
			what = "bridge"
		case a.Name == tap:
			return removed, fmt.Errorf("interface %s exists and is not a TAP (it is %s); remove it or pick another network name", tap, l.Type())
		default:
			continue
		}
		if err := e.nl.LinkDel(l); err != nil && !errors.Is(err, os.ErrNotExist) {
			return removed, fmt.Errorf("removing %s %s: %w", what, a.Name, err)
		}
		removed = append(removed, what+" "+a.Name)
	}
	return removed, nil
}

// checkPrefix refuses cfg.Prefix when an interface has an address
// overlapping it or a route sends part of it elsewhere. A route covering
// more than the prefix (a VPN's 10.0.0.0/8, say) is only logged: our
// connected route is more specific and wins for the subnet. own, when not
// 0, is the index of the network's own device being adopted: its gateway
// address and its connected route are the network's, not in the way.
func (e *env) checkPrefix(cfg *Config, own int, log *slog.Logger) error {
	linkName := func(idx int) string {
		if l, err := e.nl.LinkByIndex(idx); err == nil {
			return l.Attrs().Name
		}
		return fmt.Sprintf("#%d", idx)
	}
	hint := "pick another range with `anka config start_address`, `end_address` and `subnet_mask`"
	if cfg.Mode == Isolated {
		hint = "pick another range with `anka config host_start_address`, `host_end_address` and `host_subnet_mask`"
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return e.nl.AddrList(nil, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("hostnet: listing addresses: %w", err)
	}
	for _, a := range addrs {
		p, ok := toPrefix(a.IPNet)
		if !ok || !p.Overlaps(cfg.Prefix) {
			continue
		}
		if own != 0 && a.LinkIndex == own && p == netip.PrefixFrom(cfg.Gateway, cfg.Prefix.Bits()) {
			continue
		}
		return fmt.Errorf("%w: interface %s has %s, which overlaps %v; %s (or remove the address)",
			ErrPrefixInUse, linkName(a.LinkIndex), a.IPNet, cfg.Prefix, hint)
	}
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return e.nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: mainTable}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return fmt.Errorf("hostnet: listing routes: %w", err)
	}
	for _, r := range routes {
		p, ok := toPrefix(r.Dst)
		if !ok || p.Bits() == 0 || !p.Overlaps(cfg.Prefix) {
			continue
		}
		if own != 0 && r.LinkIndex == own && p == cfg.Prefix {
			continue
		}
		via := "route " + p.String()
		if r.LinkIndex > 0 {
			via += " dev " + linkName(r.LinkIndex)
		}
		if r.Gw != nil {
			via += " via " + r.Gw.String()
		}
		if p.Bits() < cfg.Prefix.Bits() {
			log.Warn("hostnet: a broader route covers the subnet; the network's own route wins for it", "route", via)
			continue
		}
		who := "no interface"
		if r.LinkIndex > 0 {
			who = "interface " + linkName(r.LinkIndex)
		}
		return fmt.Errorf("%w: %s (%s) sends part of %v elsewhere; %s (or remove the route)",
			ErrPrefixInUse, who, via, cfg.Prefix, hint)
	}
	return nil
}

func toPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	bits, size := n.Mask.Size()
	if !a.Is4() || (size != 32 && size != 128) {
		return netip.Prefix{}, false
	}
	if size == 128 {
		bits -= 96
	}
	return netip.PrefixFrom(a, bits), true
}

// retryDump repeats a netlink dump the kernel interrupted because the
// table changed under it.
func retryDump[T any](f func() ([]T, error)) ([]T, error) {
	var (
		v   []T
		err error
	)
	for range 5 {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// enableForwarding turns on IPv4 forwarding in the calling thread's
// namespace (/proc/sys/net follows the thread that opens it).
func enableForwarding(log *slog.Logger) error {
	b, err := os.ReadFile(ipForwardPath)
	if err != nil {
		return fmt.Errorf("hostnet: reading %s: %w", ipForwardPath, err)
	}
	if strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	if err := os.WriteFile(ipForwardPath, []byte("1"), 0o644); err != nil {
		if errors.Is(err, os.ErrPermission) {
			// Writing /proc/sys takes root, not CAP_NET_ADMIN.
			return fmt.Errorf("hostnet: enabling IPv4 forwarding (%s): %w: an unprivileged plugin declares sdk.SysctlIPForward in its Info so anka sets it before the start, or the host sets net.ipv4.ip_forward=1", ipForwardPath, err)
		}
		return fmt.Errorf("hostnet: enabling IPv4 forwarding (%s): %w", ipForwardPath, err)
	}
	log.Info("hostnet: enabled IPv4 forwarding; it stays on")
	return nil
}
