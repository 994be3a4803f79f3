// Package frameio moves Ethernet frames between a network plugin and the
// outside: a VM's unix socket (datagram or length-prefixed stream), a TAP
// device, or a host interface through AF_PACKET. Every kind is a Port with
// batched reads and writes into caller-owned, reused buffers.
//
// # Kinds
//
//   - DgramPort (ListenDgram): one frame per unix datagram. QEMU's -netdev
//     dgram, vfkit (whose 4-byte "VFKT" hello is consumed), Apple's
//     VZFileHandleNetworkDeviceAttachment. recvmmsg and sendmmsg.
//   - StreamListener (ListenStream) and StreamPort (DialStream): a unix
//     stream, each frame behind a 4-byte big-endian length. QEMU's -netdev
//     stream and socket, socket_vmnet. One read takes up to 256 KiB, many
//     frames; a batch goes out in one writev. QEMU 7.2's stream netdev
//     cannot reconnect, so QEMU guests attach by datagram or TAP and the
//     stream kind serves other hypervisors.
//   - TAPPort (OpenTAP, AttachTAP): a Linux TAP, one read or write per
//     frame (a TAP has no mmsg calls). With TAPOptions.Offload
//     (IFF_VNET_HDR, TSO4, TSO6 and checksum offload) the host's stack
//     hands 64 KiB TCP segments, which the port cuts to the MTU, and runs
//     of one TCP flow's segments are written as one merged segment;
//     ReadBatch returns frames within the MTU, untagged TCP ones with
//     their checksum partial, and WriteBatch takes frames whose checksum
//     is partial as well (see Offloads). The switch's uplink
//     uses it, with TAPOptions.HandGSO: the host's segments then come up
//     whole into large buffers (GSOReader). TAPOptions.PassOffload
//     passes the offloads through instead (see Offloads).
//   - PacketPort (OpenPacket): AF_PACKET on a host interface, for bridged
//     networks. recvmmsg and sendmmsg; VLAN tags the kernel stripped are
//     put back; frames coalesced by GRO beyond the MTU are dropped.
//   - PipePort (Pipe): in process, for services and tests.
//
// Datagram, packet and stream sockets wait in poll(2), asking for POLLOUT
// only while a writer waits for room, not on the Go runtime poller: that
// poller registers a socket for EPOLLOUT for its whole life, and then
// every frame the peer (a VM's hypervisor) reads wakes the poller's
// thread from the peer's read, on the peer's CPU. A blocked ReadBatch
// holds a thread; Close wakes it with ErrClosed. TAP ports stay on the
// runtime poller (the tun driver wakes writers only after one found no
// room). Steady-state
// ReadBatch and WriteBatch allocate nothing (the tests check it with
// testing.AllocsPerRun, the benchmarks with -benchmem).
//
// Input is never trusted: a datagram shorter than an Ethernet header or
// longer than FrameSize(MTU) is dropped and counted; a stream length
// outside 14..FrameSize(MTU) (0xFFFFFFFF included, which allocates
// nothing) closes that connection with a log line, and the listener takes
// the next one. Drops are logged at most once a second per port.
//
// A full peer makes WriteBatch wait up to WriteTimeout (10 ms by default)
// and then drop the rest of the batch, so one stalled VM cannot hold up a
// switch. A DgramPort's WriteBatchNoWait (NoWaitWriter) does not wait
// at all: the switch floods with it, so that the full sockets of idle VMs,
// which nobody reads, cost a broadcast nothing. A stream never drops
// half a frame: the rest is sent first by the next WriteBatch.
//
// # Offloads
//
// A guest with checksum offload leaves its TCP checksums partial, and one
// with TSO hands over segments of up to 64 KiB: Frame.Off says so (an
// Offload, as a virtio-net header does). Ports hand up plain frames
// unless they say otherwise (OffloadReader); the vhost-user port and an
// Offload TAP hand up partial TCP checksums (they cut GSO segments
// themselves, with a Segmenter, leaving each piece's checksum partial).
// A port that takes partial checksums on write is a PartialWriter: the
// switch passes them to it as they are and completes them (Frame.Finish)
// for any other port, so nobody sums the payload on the way from a guest
// to the host's kernel, nor from the host's kernel to a vhost-user guest
// that negotiated VIRTIO_NET_F_GUEST_CSUM:
//
//   - An Offload TAP reads the host's TSO segments and cuts them to the
//     MTU, each piece's TCP checksum partial. With HandGSO (a GSOReader)
//     it hands a segment up whole instead when the frame it reads into
//     holds MaxGSOLen bytes and the segment may travel whole (WholeGSO:
//     untagged TCP the Segmenter can cut, checksum partial at the TCP
//     header): the switch gives its uplink a few such buffers, passes the
//     segment whole to a GSOWriter (a vhost-user guest with TSO) and cuts
//     it for every other port and for floods. It hands up a TCP frame
//     the kernel left partial (NEEDS_CSUM) as it is: untagged TCP over
//     IPv4 or IPv6, the checksum at the TCP header's place. Every other
//     partial checksum (UDP, ICMPv6, anything behind a VLAN tag) is
//     completed, since MAC translation patches those checksums and the
//     switch's services read them.
//   - An Offload TAP writes a frame with a partial checksum behind a
//     virtio header with NEEDS_CSUM, csum_start and csum_offset, for the
//     kernel to complete; in a run it merges (untagged TCP over IPv4 or
//     IPv6 whose checksum is partial at the TCP checksum's place, or
//     complete and verified), it skips the TCP checksum check of partial
//     frames, since the kernel computes the merged segment's anyway. It
//     refuses GSO segments.
//   - A PassOffload TAP stands in for a virtio guest (tests, benchmarks):
//     the namespace's kernel hands it TSO segments with partial checksums,
//     as a guest with TSO does, and ReadBatch returns them as they are,
//     Off filled from the virtio header. A GSO segment needs a buffer of
//     up to MaxGSOLen: pass buffers that large (a segment larger than its
//     buffer is dropped and counted). WriteBatch writes each frame behind
//     the header its Off describes, GSO segments included, and merges
//     nothing. Two PassOffload TAPs relayed with Off untouched join two
//     namespaces as a virtio link would.
//
// A port that sets Off sets it on every frame it returns, the zero value
// included: callers reuse their batches.
//
// # Datagram sockets and net.unix.max_dgram_qlen
//
// Linux lets a datagram wait in a unix socket's queue from a sender the
// socket is not connected to only while the queue holds no more than
// net.unix.max_dgram_qlen datagrams: 10 by default, so the 12th queued
// frame fails with EAGAIN. A socket takes the limit when it is created,
// from the network namespace it is created in.
//
// QEMU's dgram netdev binds its own socket and sends with sendto, never
// connecting. So a DgramPort connects to its peer as soon as it knows the
// address (DgramOptions.Peer, or the first datagram's source): QEMU's
// frames to the plugin are then uncapped. The other way the cap stays:
// QEMU's socket is not connected to the plugin, so the plugin can queue
// only max_dgram_qlen+1 frames for it, then waits (the kernel wakes a
// connected writer when the queue drains) and, past WriteTimeout, drops.
// Plugins therefore raise the limit (SetMaxDgramQlen,
// RecommendedMaxDgramQlen) in their network namespace, and QEMU must
// create its socket in a namespace where it is raised for it to apply.
// The test TestQEMUDgramIsUnconnected shows both with the real QEMU: 11
// frames queued in the host namespace, 65 or 66 in one with the limit at
// 64 (QEMU may read one before it sees its NIC cannot take it).
//
// Connecting has a cost: the kernel then refuses datagrams from any other
// socket (EPERM). A port serves one VM, and it must notice when its peer
// is replaced: a QEMU restarted binds the same path with a new socket
// (the plugin, still connected to the dead one, would refuse it), a vfkit
// restarted binds another. A write that finds the peer gone, or a check
// of the peer's socket file every PeerCheck, disconnects the port and
// reconnects to Peer or learns the new peer. A peer that is learned can
// only be learned when the guest speaks first (DHCP does); a plugin that
// knows the VM's socket path should pass it as Peer, so that a plugin
// restarted reaches a quiet guest too.
//
// For unix datagrams the kernel charges a queued datagram to the sender's
// SO_SNDBUF, not the receiver's SO_RCVBUF; ports set both to
// DefaultSocketBuffer (4 MiB, forced past net.core.wmem_max with
// CAP_NET_ADMIN): room for dozens of bursts of 64 full-size frames.
//
// # Numbers
//
// The raw relay (Relay between two plugin ports, guests on both sides:
// two socket hops, as through a switch), from BenchmarkDgramRelay and
// BenchmarkStreamRelay on a 2-vCPU AMD EPYC VM, Linux 6.18, where a unix
// datagram sent and received costs 2.3 µs in the kernel even with mmsg
// calls (so these are relative figures; profiles show 95% of the time in
// system calls). Medians of three 2 s runs; 0 allocs/op everywhere.
//
//	dgram relay            qlen=10            qlen=512
//	QEMU-like guest  64 B  0.15 Mpps          0.18 Mpps
//	QEMU-like guest 1514 B 0.14 Mpps 1.7 Gb/s 0.16 Mpps 1.9 Gb/s
//	connected guest  64 B  0.19 Mpps          0.20 Mpps
//	connected guest 1514B  0.15 Mpps 1.9 Gb/s 0.16 Mpps 2.0 Gb/s
//	stream relay     64 B  3.6 Mpps  1.8 Gb/s
//	stream relay   1514 B  1.2 Mpps 14 Gb/s
//	one dgram hop    64 B  0.34 Mpps; 1514 B 0.28 Mpps 3.4 Gb/s
//	one stream hop   64 B  4.3 Mpps;  1514 B 1.5 Mpps 18 Gb/s
//
// Loss (frames dropped after WriteTimeout when the receiving goroutine is
// not scheduled in time: three busy goroutines share two CPUs) was 0.2 to
// 3%. The package frameiotest holds the relay benchmark so that the
// switch's benchmark runs it alongside its own.
package frameio
