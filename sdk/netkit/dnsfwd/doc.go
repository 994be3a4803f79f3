// Package dnsfwd is the resolver guests are told to use. A network's DHCP
// server names the gateway (192.168.64.1 on the shared network) as DNS
// server; the plugin runs a Forwarder on that address, on the host side
// where the network's TAP holds it, and the Forwarder relays every query
// to the host's own resolvers. Because it runs on the host it can use
// loopback resolvers a guest could never reach, such as systemd-resolved's
// stub at 127.0.0.53.
//
//	fwd, err := dnsfwd.Start(dnsfwd.Config{
//		Listen: netip.MustParseAddrPort("192.168.64.1:53"), // UDP and TCP
//		Logger: log,
//	}) // upstreams: the nameservers of /etc/resolv.conf
//	defer fwd.Close()
//
// Behaviour:
//
//   - Start binds both sockets before it returns; a port another DNS
//     server holds, an address no interface has, or a privileged port
//     without the capability fail there, with the fix in the message.
//   - Upstreams are asked in order, each for at most Config.Timeout (2s).
//     An error or timeout moves on to the next; so do SERVFAIL and REFUSED,
//     which are relayed only when no upstream does better. When nothing
//     answers, the guest gets SERVFAIL at once rather than a timeout.
//   - Each upstream query carries a fresh random ID and must echo the
//     question; the answer goes back with the guest's ID.
//   - A query that came over UDP goes upstream over UDP, and again over TCP
//     when the answer is truncated; the full answer is relayed, truncated to
//     the size the guest offered (512 bytes without EDNS), with the TC bit
//     when it does not fit. A query that came over TCP goes over TCP.
//   - Without Config.Upstreams the nameservers of resolv.conf are used, and
//     the file is checked again (at most once a second, on a query) so a
//     host that changes resolvers (DHCP, VPN, Wi-Fi) is followed: a new
//     mtime, size or inode triggers a re-read. A file with no usable
//     nameserver keeps the upstreams already in use.
//   - An upstream that is the forwarder itself (the same address, or
//     loopback when listening on the wildcard address) is ignored, so a
//     host whose resolv.conf points at the gateway cannot loop queries.
//   - At most Config.MaxInFlight (256) queries are forwarded at once and as
//     many TCP connections are open: a flood from a guest costs the plugin
//     bounded memory and file descriptors. UDP queries over the cap are
//     dropped and counted in Stats.Dropped.
//   - Close ends queries in flight (it does not wait out their timeouts)
//     and returns when every goroutine has finished.
package dnsfwd
