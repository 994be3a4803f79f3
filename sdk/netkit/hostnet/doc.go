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
// Adoption (bridge mode): a plugin killed with SIGKILL leaves its bridge,
// its VM TAPs and both tables in the kernel, and the fast-path VMs keep
// talking through them. The next Setup adopts that bridge instead of
// removing it when it matches the configuration, decided on what the
// kernel reports (netlink, nftables listings), never on a file:
//
//   - the bridge is kept when it is tagged anka-<name>, has Config.MTU, the
//     derived gateway MAC and exactly Gateway/bits as IPv4 address, and
//     the subnet is free but for its own connected route; otherwise (other
//     subnet, MTU or name, or not ours) everything is cleaned up and made
//     anew, as at a first start;
//   - a VM TAP of the network that a process holds, is a port of the
//     bridge, and has in anka-br-<name> exactly the chain this package
//     writes for some MAC and pin plus the ports map entry jumping to it,
//     stays as it is, up and filtered; AddPort (the VM attached again)
//     takes it back without it leaving the bridge, replacing its rules
//     only if the MAC differs. One no AddPort claims within
//     Config.ClaimWindow (a minute) is then set down and taken off the
//     bridge, or removed if nobody holds it any more;
//   - VM TAPs nobody holds are removed; held ones failing the checks are
//     set down and taken off the bridge before their rules go (AddPort
//     takes them back); other interfaces are taken off the bridge; the
//     dead run's uplink is replaced;
//   - the inet table, the bridge table and our rules in iptables-nft's
//     FORWARD chain are replaced in one nftables transaction (old tables
//     deleted and new ones added in the same batch), so no packet sees
//     the network without anti-spoofing or NAT; conntrack entries, NAT
//     bindings included, are not touched.
//
// If anything fails while adopting, the transaction leaves the old rules
// and Setup falls back to the cleanup and a new bridge. Close and Cleanup
// are unchanged: a plugin stopped normally removes its bridge. See
// adopt_linux.go.
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
