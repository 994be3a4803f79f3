package main

import (
	"github.com/anka-net/anka/plugins/shared/routed"
	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/netkit/hostnet"
)

// version is the binary's version (-ldflags "-X main.version=...").
var version = "dev"

// network is the shared network: anka's defaults, NAT out, DNS through
// the gateway, port forwards in.
func network() routed.Network {
	return routed.Network{
		Binary: sdk.BinaryName("shared"), Version: version,
		Name: "shared", Mode: hostnet.NAT, What: "NAT",
		DefaultStart: "192.168.64.2", DefaultEnd: "192.168.64.254", DefaultMask: "255.255.255.0",
		Types: []routed.Type{
			{Name: "shared", Description: "NAT + DHCP: VMs reach each other, the host and the outside; the host reaches them by IP; inbound only by port forwarding"},
			{Name: "static", Description: "a fixed address (--ip) on the shared network, handed out by DHCP and pinned", Static: true},
		},
		DNS: true, PortForward: true,
	}
}

// New builds the plugin from anka's environment and sets the network up.
func New(env sdk.Env) (*routed.Plugin, error) { return routed.New(env, network()) }
