package lan

import (
	"net"
	"net/netip"

	"github.com/anka-net/anka/sdk/netkit/vswitch"
)

// Bridge is a kernel bridge the LAN's host link is a port of, whose other
// ports are VM TAPs: the kernel fast path. hostnet.Network in bridge mode
// is one (Config.Bridge). With a Bridge in its Config, the LAN hands out
// TAP endpoints to VMs whose runtime takes a TAP and that need no MAC
// translation; their frames never pass through the switch, except DHCP,
// which the bridge steers to ServiceMAC behind the host link.
type Bridge interface {
	// ServiceMAC is the MAC the bridge sends VM TAPs' DHCP requests to,
	// behind the host link: the LAN's service port takes it and its DHCP
	// replies come from it.
	ServiceMAC() net.HardwareAddr
	// PortName is the name VM id's TAP has, in this run and every other.
	PortName(id string) string
	// AddPort gives VM id a TAP on the bridge that lets only mac send,
	// and IPv4 and ARP only DHCP from 0.0.0.0 until PinPort; a TAP left
	// by an earlier run (a VM still running) is taken back (adopted).
	AddPort(id string, mac net.HardwareAddr) (name string, adopted bool, err error)
	// PinPort lets the TAP send IPv4 and ARP from ip only; invalid: DHCP
	// only.
	PinPort(name string, ip netip.Addr) error
	// PortStats counts the TAP's frames (Rx from the VM, Tx to it) and
	// drops by reason; seen: the VM sent from its pinned address since
	// it was pinned.
	PortStats(name string) (st vswitch.Stats, seen bool, err error)
	// RemovePort deletes the TAP and its rules (the VM stopped).
	RemovePort(name string) error
	// CapturePort hands sink every frame to and from the TAP until stop.
	CapturePort(name string, sink func(frame []byte)) (stop func(), err error)
}
