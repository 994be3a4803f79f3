// Command anka-net-disconnected serves the disconnected network type: the
// VM's NIC is present and its cable unplugged.
package main

import "github.com/anka-net/anka/sdk"

func main() { sdk.Serve(New()) }
