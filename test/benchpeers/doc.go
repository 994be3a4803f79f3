// Package benchpeers is the side-by-side benchmark of VM networks
// (`make bench-peers`): a network namespace with a TAP stands in for the
// guest, joined to each network by one small adapter that speaks QEMU's
// framings (unix datagram, one frame per datagram; unix stream, a 4-byte
// big-endian length before each frame), one frame per write as QEMU
// writes them.
//
// Peers: this project's shared network through the external runtime
// (anka and its plugin in a namespace of their own), once on the
// datagram socket it hands out by default and once on a vhost-user
// endpoint (the adapter then plays QEMU's vhost-user front-end and the
// guest's virtio-net driver, vhostuserdriver), the kernel fast path
// (a veth on the plugin's bridge, measured in pairs of runs alternated
// with a veth beside it to a namespace of its own), gvproxy
// (-listen-qemu), passt (its default stream socket), the kernel limit (a
// veth straight to the host side), and the adapter's own ceiling (two
// adapters joined by one socket, no network behind it). For each:
// iperf3 TCP both ways at each MTU, request/response latency over TCP,
// and small-UDP frames per second; for the shared network also guest to
// host with idle VMs attached. The figures are medians over rounds; the
// ratios the performance issue targets are computed from the same run.
//
// Everything runs in network namespaces the harness makes, inside a
// network and mount namespace of its own (cmd/benchpeers re-executes
// itself under unshare); all traffic stays inside them.
package benchpeers
