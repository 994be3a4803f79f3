// Command anka-net-shared serves the shared and static network types, on
// one network: VMs get addresses by DHCP (static ones a fixed address),
// reach each other and the host, and the outside through NAT; the host
// reaches them by IP. See README.md.
package main

import "github.com/anka-net/anka/sdk"

func main() {
	startProfiling() // ANKA_PLUGIN_CPUPROFILE, see profile.go
	sdk.ServeFunc(func(env sdk.Env) (sdk.NetworkPlugin, error) { return New(env) })
}
