// Command anka-net-segment serves the segment network type: VMs whose
// cards name the same segment share a private Ethernet segment. It is the
// template for third-party plugins; see README.md.
package main

import "github.com/anka-net/anka/sdk"

func main() { sdk.Serve(New()) }
