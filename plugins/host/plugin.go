package main

import (
	"github.com/anka-net/anka/plugins/shared/routed"
	"github.com/anka-net/anka/sdk"
	"github.com/anka-net/anka/sdk/netkit/hostnet"
)

// version is the binary's version (-ldflags "-X main.version=...").
var version = "dev"

// network is the host-only network: anka's defaults, nothing forwarded
// beyond the host. No DNS forwarder and no default route: names and
// addresses outside are of no use to a guest that cannot reach them, and
// a resolver relaying queries outward would be a way out.
func network() routed.Network {
	return routed.Network{
		Binary: sdk.BinaryName("host"), Version: version,
		Name: "host", Mode: hostnet.Isolated, What: "host-only", KeyPrefix: "host_",
		DefaultStart: "192.168.128.2", DefaultEnd: "192.168.128.254", DefaultMask: "255.255.255.0",
		Types: []routed.Type{
			{Name: "host", Description: "host-only + DHCP: VMs reach each other and the host, never beyond; the host reaches them by IP"},
		},
		NoRouter: true,
	}
}

// New builds the plugin from anka's environment and sets the network up.
func New(env sdk.Env) (*routed.Plugin, error) { return routed.New(env, network()) }
