// Command anka-net-bridge serves the bridge network type: each VM is a
// node of its own on the LAN of one of the host's Ethernet interfaces,
// seen with its dynamic MAC and addressed by the LAN's DHCP server. See
// README.md.
package main

import "github.com/anka-net/anka/sdk"

func main() {
	sdk.ServeFunc(func(env sdk.Env) (sdk.NetworkPlugin, error) { return New(env) })
}
