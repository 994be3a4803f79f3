// Package lantest plays the guests of a LAN in tests: a DHCP client in Go
// on a VM's socket (no root needed), and network namespaces whose eth0 is a
// TAP relayed to a VM's socket, as QEMU relays its NIC, running busybox's
// udhcpc and ping (root).
package lantest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"github.com/anka-net/anka/sdk/netkit/vhostuser/vhostuserdriver"
)

// Plug is a VM endpoint as the plugin handed it out.
type Plug struct {
	Kind       frameio.Kind // dgram (default), stream, tap or vhost-user
	PluginPath string
	VMPath     string
	// TAP is the VM's TAP (tap), opened by name as QEMU opens it, in
	// NS or, when NS is nil, in the calling thread's namespace.
	TAP string
	NS  *frameiotest.Netns
	MAC net.HardwareAddr // the NIC's MAC (internal when set)
	MTU int
}

// Open is the VM side of p, as QEMU makes it: for dgram it binds VMPath
// and sends to PluginPath without connecting; for stream and vhost-user
// it connects;
// for tap it opens the TAP by name (QEMU -netdev tap,ifname=...; QEMU
// holds it by its file descriptor). It is closed when tb ends.
func Open(tb testing.TB, p Plug) frameio.Port {
	tb.Helper()
	var port frameio.Port
	var err error
	switch p.Kind {
	case frameio.KindDgram, "":
		port, err = frameio.ListenDgram(p.VMPath, frameio.DgramOptions{MTU: p.MTU, Peer: p.PluginPath, NoConnect: true, Logger: frameiotest.Quiet})
	case frameio.KindStream:
		port, err = frameio.DialStream(p.PluginPath, frameio.StreamOptions{MTU: p.MTU, Logger: frameiotest.Quiet})
	case frameio.KindTAP:
		port, err = OpenTAP(p)
	case frameio.KindVhostUser:
		// The front-end and the guest's virtio driver, as QEMU and Linux
		// drive them; big frames in chains of pages, as Linux posts them.
		port, err = vhostuserdriver.Dial(p.PluginPath, vhostuserdriver.DriverOptions{MTU: p.MTU, HostMTU: p.MTU, RxChunk: 4096, Log: frameiotest.Quiet})
	default:
		tb.Fatalf("lantest: cannot play the VM behind a %s endpoint", p.Kind)
	}
	if err != nil {
		tb.Fatalf("lantest: the VM side of %+v: %v", p, err)
	}
	tb.Cleanup(func() { port.Close() })
	return port
}

// Lease is what a DHCP exchange gave a guest.
type Lease struct {
	IP        netip.Addr
	Mask      net.IPMask
	Router    netip.Addr
	DNS       []netip.Addr
	MTU       int
	LeaseTime time.Duration
	Server    netip.Addr
}

// Client is a DHCP client in Go on a VM's port: a guest without a kernel.
// Frames that are not DHCP replies for it go to Other.
type Client struct {
	Port  frameio.Port
	MAC   net.HardwareAddr // chaddr and the frames' source: the NIC's MAC
	in    chan []byte
	Other chan []byte
	done  chan struct{}

	mu sync.Mutex
	// asked holds the transaction ids of the client's own exchanges
	// (DORA, Renew, Exchange, Fence); unasked the replies it read for
	// any other.
	asked   map[dhcpv4.TransactionID]bool
	unasked []*dhcpv4.DHCPv4
}

// NewClient reads port until tb ends.
func NewClient(tb testing.TB, port frameio.Port, mac net.HardwareAddr) *Client {
	c := &Client{Port: port, MAC: mac, in: make(chan []byte, 64), Other: make(chan []byte, 1024), done: make(chan struct{}),
		asked: make(map[dhcpv4.TransactionID]bool)}
	go c.read()
	tb.Cleanup(func() {
		port.Close()
		<-c.done
	})
	return c
}

func (c *Client) read() {
	defer close(c.done)
	b := frameio.NewBatch(16, c.Port.MTU())
	for {
		n, err := c.Port.ReadBatch(b)
		for i := range n {
			f := append([]byte(nil), b[i].Bytes()...)
			ch := c.Other
			if isDHCPReply(f) {
				ch = c.in
				c.note(f)
			}
			select {
			case ch <- f:
			default:
			}
		}
		if err != nil {
			return
		}
	}
}

// note records f, a DHCP reply, when it answers none of the client's
// exchanges; before f reaches c.in, so whoever takes from c.in a reply
// that came later finds f recorded.
func (c *Client) note(f []byte) {
	r, err := parseDHCP(f)
	if err != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.asked[r.TransactionID] {
		c.unasked = append(c.unasked, r)
	}
}

// ask records xid as one of the client's own exchanges, before it is sent.
func (c *Client) ask(xid dhcpv4.TransactionID) {
	c.mu.Lock()
	c.asked[xid] = true
	c.mu.Unlock()
}

func (c *Client) isAsked(xid dhcpv4.TransactionID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.asked[xid]
}

// Unasked returns the DHCP replies the client has read so far whose
// transaction is none of its exchanges: replies meant for another port,
// or for frames sent with Send. A reply repeated because an exchange
// resent its request (the server answers every copy) is not among them.
func (c *Client) Unasked() []*dhcpv4.DHCPv4 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.unasked)
}

func isDHCPReply(f []byte) bool {
	if len(f) < 42 || f[12] != 0x08 || f[13] != 0x00 || f[23] != 17 {
		return false
	}
	udp := 14 + int(f[14]&0x0f)*4
	return len(f) >= udp+8 && f[udp+2] == 0 && f[udp+3] == 68
}

// Send writes one frame.
func (c *Client) Send(f []byte) error {
	b := []frameio.Frame{{Buf: f, N: len(f)}}
	if n, err := c.Port.WriteBatch(b); n != 1 {
		return fmt.Errorf("frame not sent: %v", err)
	}
	return nil
}

// DORA runs DISCOVER, OFFER, REQUEST, ACK, resending every 300 ms until
// within passes; a NAK starts over.
func (c *Client) DORA(within time.Duration) (Lease, error) {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		disc, err := dhcpv4.NewDiscovery(c.MAC)
		if err != nil {
			return Lease{}, err
		}
		offer, err := c.exchange(disc, dhcpv4.MessageTypeOffer, deadline)
		if err != nil {
			return Lease{}, err
		}
		req, err := dhcpv4.NewRequestFromOffer(offer)
		if err != nil {
			return Lease{}, err
		}
		ack, err := c.exchange(req, dhcpv4.MessageTypeAck, deadline)
		if errors.Is(err, errNAK) {
			continue
		}
		if err != nil {
			return Lease{}, err
		}
		return leaseOf(ack), nil
	}
	return Lease{}, fmt.Errorf("no lease in %v", within)
}

var errNAK = errors.New("NAK")

func (c *Client) exchange(m *dhcpv4.DHCPv4, want dhcpv4.MessageType, deadline time.Time) (*dhcpv4.DHCPv4, error) {
	frame, err := c.frame(m)
	if err != nil {
		return nil, err
	}
	return c.await(frame, m.TransactionID, m.MessageType(), want, deadline, nil)
}

// frame wraps m as the guest sends it: from 0.0.0.0:68 to the broadcast.
func (c *Client) frame(m *dhcpv4.DHCPv4) ([]byte, error) {
	eth := &layers.Ethernet{SrcMAC: c.MAC, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.IPv4zero.To4(), DstIP: net.IPv4bcast.To4()}
	udp := &layers.UDP{SrcPort: 68, DstPort: 67}
	udp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, udp, gopacket.Payload(m.ToBytes()))
	return buf.Bytes(), err
}

func parseDHCP(f []byte) (*dhcpv4.DHCPv4, error) {
	p := gopacket.NewPacket(f, layers.LayerTypeEthernet, gopacket.Default)
	udp, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if !ok {
		return nil, errors.New("not UDP")
	}
	return dhcpv4.FromBytes(udp.Payload)
}

func leaseOf(ack *dhcpv4.DHCPv4) Lease {
	l := Lease{Mask: ack.SubnetMask(), LeaseTime: ack.IPAddressLeaseTime(0)}
	l.IP, _ = netip.AddrFromSlice(ack.YourIPAddr.To4())
	if rs := ack.Router(); len(rs) > 0 {
		l.Router, _ = netip.AddrFromSlice(rs[0].To4())
	}
	for _, d := range ack.DNS() {
		a, _ := netip.AddrFromSlice(d.To4())
		l.DNS = append(l.DNS, a)
	}
	if s := ack.ServerIdentifier(); s != nil {
		l.Server, _ = netip.AddrFromSlice(s.To4())
	}
	if v := ack.Options.Get(dhcpv4.OptionInterfaceMTU); len(v) == 2 {
		l.MTU = int(v[0])<<8 | int(v[1])
	}
	return l
}

// UDPFrame builds a UDP datagram frame from the guest, for tests of what
// the LAN lets through (anti-spoofing).
func UDPFrame(src, dst net.HardwareAddr, srcIP, dstIP netip.Addr, sport, dport uint16, payload []byte) []byte {
	eth := &layers.Ethernet{SrcMAC: src, DstMAC: dst, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: srcIP.AsSlice(), DstIP: dstIP.AsSlice()}
	udp := &layers.UDP{SrcPort: layers.UDPPort(sport), DstPort: layers.UDPPort(dport)}
	udp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, udp, gopacket.Payload(payload))
	return buf.Bytes()
}
