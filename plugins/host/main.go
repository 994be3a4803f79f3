// Command anka-net-host serves the host network type: VMs get addresses
// by DHCP and reach each other and the host, never beyond; the host
// reaches them by IP. See README.md.
package main

import "github.com/anka-net/anka/sdk"

func main() {
	sdk.ServeFunc(func(env sdk.Env) (sdk.NetworkPlugin, error) { return New(env) })
}
