// Package hostnet is the host side of a routed VM network: a TAP device
// holding the gateway address (.1 of the subnet) that a plugin joins to its
// switch, so the host reaches guests by IP and guests reach the host at the
// gateway, plus the nftables rules that decide how far guests get beyond
// the host.
//
//   - NAT (the shared type): traffic from the subnet to anywhere else is
//     masqueraded and forwarded; nothing is forwarded into the subnet
//     except replies (ct state established,related). Port forwards are the
//     plugin's job, in user space.
//   - Isolated (the host type): nothing is forwarded from or to the
//     subnet. Guests still reach the host itself (input is not touched)
//     and each other (through the plugin's switch, never the kernel).
//
// Bridge mode (Config.Bridge), the kernel fast path: the gateway lives on
// a Linux bridge instead (named like the TAP, anka-<name>0, with a MAC
// derived from the name, so guests' ARP caches survive a restart), the
// plugin's switch joins it through a TAP port (Link, anka-<name>sw), and
// AddPort gives each fast-path VM a persistent TAP port of its own
// (ak<first letter><8 hex of the VM's id>) that the VM's process opens by
// name. Each VM TAP is filtered in the nftables table bridge
// anka-br-<name>: its MAC only; IPv4 and ARP from its pinned address only
// (PinPort), DHCP from 0.0.0.0 before; no DHCP server replies, router
// advertisements or VLAN tags; DHCP requests are steered to ServiceMAC,
// behind the uplink. A TAP a process still holds (a running VM) survives
// Close and the next Setup's cleanup, down, for AddPort to take back; the
// others are removed. See bridge_linux.go. The forward chain accepts what
// the bridge passes between its own ports first: with br_netfilter loaded
// (Docker loads it) bridged frames cross the IPv4 hooks too, and in
// isolated mode an accept for them is also put into iptables-nft's
// FORWARD chain.
//
// Everything lives in the plugin's own nftables table, "anka-<name>"
// (family inet), set up in one atomic batch through netlink; no nft or
// iptables binary is run. A packet must be accepted by every base chain on
// its hook, so a drop policy in another table still wins over our accept.
// The one such table this package knows is iptables-nft's
// "table ip filter { chain FORWARD }" (Docker, ufw, firewalld's iptables
// backend): in NAT mode two accept rules for the subnet are inserted at the
// top of that chain, carrying the comment "anka-<name>", and exactly those
// are removed again. They are inserted only if the chain exists when Setup
// runs: a firewall started later needs the network set up again.
//
// Limitations: rulesets loaded with iptables-legacy are invisible to
// nftables and not handled (a legacy FORWARD drop policy still drops the
// guests' traffic; add the accept rules there yourself or switch the host
// to iptables-nft). Other tables' drop rules (firewalld's own inet table,
// a hand-written ruleset) are not handled either. Only IPv4 is set up.
//
// Setup and Cleanup act on the network namespace of the calling OS thread,
// as frameio.OpenTAP does: a process whose threads all live in one
// namespace (a plugin, normally) needs nothing special; code that switches
// namespaces locks the goroutine to its thread (runtime.LockOSThread)
// first. A Network remembers its namespace, so Close works from any
// goroutine.
package hostnet
