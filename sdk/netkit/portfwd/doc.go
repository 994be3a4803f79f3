// Package portfwd forwards host ports to a guest, in user space: what
// `anka modify vm1 add port-forwarding ssh -g 22 -p 2222` needs on a
// network where the guest is behind NAT. The forwarder listens on the
// host and connects to the guest's address; the kernel routes that
// connection through the plugin's TAP, so no firewall rule is involved
// and the forward works for connections from the host itself too.
//
//	fwd := portfwd.New(log)
//	defer fwd.Close()
//	err := fwd.Add(portfwd.Rule{Name: "ssh", Proto: "tcp", HostPort: 2222, GuestPort: 22},
//		func() (netip.Addr, bool) { return leases.IP(vmID) })
//
// Behaviour:
//
//   - Add binds at once. A host port in use fails there, naming the
//     protocol, address and port and saying to pick another host port;
//     so do a privileged port without the capability and an address the
//     host does not have. A zero HostIP listens on 0.0.0.0; HostPort 0
//     takes a free port, which Rules reports.
//   - The guest's address is asked of the Target for every new connection
//     or UDP session, so forwards follow a guest whose lease changed. While
//     it reports none, TCP connections are reset and datagrams dropped,
//     with a rate-limited warning.
//   - TCP: each connection is dialled to the guest (5s timeout) and copied
//     both ways with io.Copy between *net.TCPConn, which splices on Linux
//     (no copy through user space). When one side ends its sending the
//     other side's write half is closed (CloseWrite), so half-closed
//     protocols work; an error one way resets both. A guest that refuses
//     or cannot be reached resets the client's connection.
//   - UDP: a session per client address, each with its own socket
//     connected to the guest, so replies reach the right client; a session
//     ends after UDPIdleTimeout (60s) with no datagram either way. A
//     session holds a 64 KiB buffer only while it relays a datagram. On a
//     wildcard HostIP answers leave from the host address the client wrote
//     to (IP_PKTINFO), as a client's connected socket requires.
//   - Caps: MaxTCPConns (1024) connections and MaxUDPSessions (1024)
//     sessions per rule, so a flood cannot exhaust the plugin's file
//     descriptors; beyond them connections are reset and datagrams
//     dropped.
//   - Remove and Close close the listener and every live connection and
//     session (peers see a reset) and return when all goroutines are gone.
package portfwd
