// Package vhostuser is a vhost-user net back-end: a frameio.Port
// (frameio.KindVhostUser) that moves a VM's frames by reading and writing
// the guest's virtqueues directly in its shared memory, instead of one
// system call and one copy per frame through a socket on each side.
//
// # Use
//
// Listen creates a unix socket; QEMU connects to it as the front-end:
//
//	-object memory-backend-memfd,id=mem,size=<RAM>,share=on -machine memory-backend=mem
//	-chardev socket,id=vu,path=<socket>,reconnect=1
//	-netdev vhost-user,id=n0,chardev=vu
//	-device virtio-net-pci,netdev=n0,mac=<mac>,host_mtu=<MTU>
//
// Guest memory must be shared (share=on) for the back-end to map it.
// host_mtu= is what the guest sees as its MTU; the port checks it against
// Options.MTU (NET_SET_MTU) and QEMU refuses to start the device when it
// is larger. The guest's MAC is QEMU's mac=.
//
// Under TCG (no KVM) QEMU 7.2 segfaults when a guest driver starts a
// vhost-user virtio-net-pci with MSI-X (in msix_set_vector_notifiers,
// before the back-end hears of it); vectors=0 on the device avoids it.
// With KVM, MSI-X goes through irqfd.
//
// One front-end is served at a time. When it disconnects (QEMU stops, or
// it is dropped for misbehaving), the port forgets its memory and rings
// and accepts the next one; QEMU's reconnect= brings the same VM back.
// The Port is the same object throughout: while no front-end is
// connected, ReadBatch blocks and WriteBatch drops and counts.
//
// ReadBatch returns the frames the guest transmitted (its TX queue, 1),
// without their virtio-net header but with what it said in Frame.Off
// (see Offloads). WriteBatch puts frames into the guest's receive
// buffers (RX queue, 0) after a header that is zero but for num_buffers
// 1 and, for a frame whose checksum is partial going to a guest that
// took GUEST_CSUM, NEEDS_CSUM with csum_start and csum_offset, and for a
// GSO frame going to a guest that took GUEST_TSO4/TSO6 also gso_type,
// gso_size and hdr_len (see Offloads), waiting up to Options.WriteTimeout
// for buffers;
// WriteBatchNoWait does not wait. Both hand the guest one
// interrupt per batch, and only when it asked for interrupts
// (VRING_AVAIL_F_NO_INTERRUPT clear). While draining the transmit queue
// the port sets VRING_USED_F_NO_NOTIFY, so a busy guest does not kick
// for every frame; the receive queue's kicks stay off except while a
// writer waits for buffers. The data path allocates nothing per frame.
//
// # Features
//
// Offered: VIRTIO_F_VERSION_1 (12-byte header), VIRTIO_NET_F_MTU (the
// guest learns host_mtu), VIRTIO_RING_F_INDIRECT_DESC,
// VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_NET_F_CSUM,
// VIRTIO_NET_F_HOST_TSO4/HOST_TSO6, VIRTIO_NET_F_GUEST_CSUM and
// VIRTIO_NET_F_GUEST_TSO4/GUEST_TSO6 unless Options.NoOffload (see
// Offloads; a driver acknowledging HOST_TSO without CSUM, or GUEST_TSO
// without GUEST_CSUM, is refused, as virtio 1.x 5.1.3.1 requires, with
// the reason logged), and
// VIRTIO_NET_F_MAC when Options.MAC is set. Protocol features: REPLY_ACK
// (refusals reach QEMU as errors instead of silence), NET_MTU, and CONFIG
// when Options.MAC is set (GET_CONFIG serves the MAC, link up and MTU to
// front-ends that read config from the back-end; QEMU's virtio-net does
// not, and warns when offered it).
//
// Indirect descriptors are offered for the guest's receive buffers. Without
// VIRTIO_NET_F_MRG_RXBUF (not offered, below) a Linux guest with an MTU
// above 1500, or with GUEST_TSO4/TSO6 at any MTU, posts "big packets":
// receive buffers of a header and 16 or so pages, chained. Chained in
// the ring, each takes about 17 of its descriptors and a 256-entry queue
// holds 14 buffers, so TCP towards a guest that is late loses frames;
// with the feature Linux puts every buffer of more than one descriptor
// in an indirect table (one ring descriptor each), and the queue holds
// 256. Its transmit side does the same for frames in pieces. (A guest at
// MTU 1500 without GUEST_TSO posts single descriptors, and indirect
// tables change nothing there.) The
// port walks a ring chain of zero or more descriptors ended by at most one
// INDIRECT descriptor, as the virtio 1.x split ring allows; the table must
// be 16·n bytes (0 < n ≤ 32768, the longest chain any queue can have)
// inside one memory region, its entries chained by index within it,
// with no INDIRECT among them; the INDIRECT descriptor carries no NEXT
// and its WRITE flag is ignored; direction rules are as for a plain
// chain, and the walk is bounded by the table's size.
//
// Not offered, deliberately for now: HOST_ECN, HOST_UFO, GUEST_ECN and
// GUEST_UFO, VIRTIO_NET_F_MRG_RXBUF (a Linux guest with a large MTU, or
// with GUEST_TSO at any MTU, then posts big packets, which the port
// fills across the chain or table), EVENT_IDX,
// multiqueue, packed rings, dirty-page logging (so no live migration),
// IOMMU, inflight tracking, postcopy.
//
// Requests handled: GET/SET_FEATURES, GET/SET_PROTOCOL_FEATURES,
// SET_OWNER, RESET_OWNER, SET_MEM_TABLE, SET_VRING_NUM/ADDR/BASE,
// GET_VRING_BASE (stops the queue; the port never holds a descriptor
// between batches, so the returned index is exact), SET_VRING_KICK/CALL/
// ERR (with or without fd), SET_VRING_ENABLE, GET_QUEUE_NUM, NET_SET_MTU,
// GET_CONFIG. Anything else ends the session with a logged reason.
// This is what QEMU 7.2's vhost-user-net sends: at connect GET_FEATURES,
// GET/SET_PROTOCOL_FEATURES, SET_OWNER, GET_FEATURES, SET_VRING_CALL and
// SET_VRING_ERR per queue, SET_VRING_ENABLE; when the guest starts the
// device NET_SET_MTU, SET_FEATURES, SET_MEM_TABLE, then per queue
// SET_VRING_NUM, BASE, ADDR, KICK, CALL; when it stops, GET_VRING_BASE.
//
// # Offloads
//
// With VIRTIO_NET_F_CSUM and HOST_TSO4/TSO6 a Linux guest neither sums
// its TCP payload nor cuts it to the MTU: it leaves the checksum partial
// and hands over TCP segments of up to 64 KiB. The port reads each
// chain's virtio-net header (flags, gso_type, hdr_len, gso_size,
// csum_start, csum_offset; little-endian) and sets Frame.Off on every
// frame it returns:
//
//   - No NEEDS_CSUM, GSO_NONE: a plain frame, Off zero.
//   - NEEDS_CSUM, GSO_NONE (CSUM negotiated, else dropped): a frame up to
//     the MTU. TCP over IPv4 (not a fragment) or IPv6 (next header TCP),
//     untagged, with csum_start at the TCP header and csum_offset 16, is
//     returned partial (Off.Partial, CsumStart, CsumOffset) for whoever
//     sends it on to complete: the switch does for ports that are not a
//     frameio.PartialWriter, a TAP with offloads leaves it to the kernel.
//     Anything else (UDP, ICMPv6, a VLAN tag) is completed here
//     (Frame.Finish), dropped when its checksum's place is outside the
//     frame: MAC translation patches such frames and the plugin's
//     services (DHCP, DNS, NDP) read them, and both want a complete
//     checksum.
//   - GSO_TCPV4 or GSO_TCPV6 (the matching HOST_TSO negotiated, else
//     dropped): the chain, up to frameio.MaxGSOLen after its header
//     (longer is dropped as oversize), is copied into a scratch buffer of
//     the transmit queue: that copy is the only read of the guest's
//     memory, and everything after reads the copy, never the guest's
//     buffer again (which the guest may rewrite at any time; reading it
//     twice would let headers checked once differ from what is sent).
//     frameio.Segmenter cuts it into frames of gso_size payload bytes
//     each, their checksums left partial (completed when tagged), which
//     ReadBatch returns in order with the frames around them. Segments a
//     full batch has no room for stay in the scratch and come first from
//     the next ReadBatch, before another chain is taken (even after the
//     front-end has gone: they are the port's memory, not the guest's);
//     the chain itself went back to the guest at once, so GET_VRING_BASE
//     stays exact.
//     Whole, into a large buffer: the port is a frameio.GSOReader
//     (GSOBuffers: 4 unless NoOffload, 0 then), so the switch makes the
//     first 4 frame buffers of each batch it reads from the port
//     frameio.MaxGSOLen bytes long. A GSO chain read when the caller's
//     next buffer is that large is copied straight into it instead of
//     the scratch (the same single copy, the only read of guest memory),
//     and every check below is made on that copy. When it passes them
//     and the switch may carry it whole (frameio.WholeGSO: untagged, no
//     CWR; and its IP length is the frame's), it is returned as it is,
//     one frame with Off {Partial, CsumStart at the TCP header,
//     CsumOffset 16, GSO, GSOSize}: the switch hands it whole to a
//     frameio.GSOWriter (the uplink TAP with HandGSO, a guest with
//     GUEST_TSO) and cuts it for any other port, so nothing cuts it
//     twice and the host's stack gets the guest's segment as it came.
//     One that does not (a VLAN tag, CWR, an IP length that lies) is
//     copied from the buffer into the scratch (memory of the port's,
//     not the guest's) and cut as above, its first segment into that
//     buffer. Only 4 because every VM port gets that many 64 KiB
//     buffers from the switch for as long as it is attached (256 KiB a
//     port), and a batch seldom holds more TSO frames than that: the
//     rest are cut into its MTU buffers as before.
//     Dropped: the ECN bit and any other gso_type (UDP, unknown); no
//     NEEDS_CSUM, or csum_start not at the TCP header or csum_offset not
//     16 (the spec's MUST for GSO); hdr_len larger than the frame (as
//     Linux's tun does); gso_size below 48 (Linux sends no smaller MSS;
//     this bounds one chain at about 1400 segments); what Segmenter will
//     not cut (not TCP, a fragment, headers alone); segments larger than
//     the MTU. A smaller hdr_len is taken: without GUEST_HDRLEN the
//     spec makes it a hint the device must not rely on, and the segmenter
//     reads the headers from the frame.
//
// Each dropped frame is counted (RxDropped) and logged at most once a
// second with its reason; it costs the guest that frame only, never its
// session. Into large buffers or not, the same frames are dropped for
// the same reasons. ReadBatch stays free of allocations per frame; the scratch
// (frameio.MaxGSOLen bytes) is allocated once a front-end negotiates
// TSO.
//
// Towards the guest, with VIRTIO_NET_F_GUEST_CSUM a Linux guest takes
// frames whose checksum is partial and sums nothing: the port is a
// frameio.PartialWriter (TakesPartial, true unless NoOffload), so the
// switch hands it TCP frames as the host's kernel (through the uplink
// TAP) or another guest left them, and WriteBatch writes a frame with
// Off.Partial behind a header with NEEDS_CSUM, csum_start and
// csum_offset (little-endian, the VERSION_1 layout), its bytes as they
// are: the guest's stack takes the checksum as good, or completes it
// when it forwards the frame. Whether a guest took GUEST_CSUM is its
// session's: the switch asks TakesPartial once, when the port is
// attached (before any guest connects), so for a front-end that did not
// take it (or after a reconnect without it) WriteBatch completes the
// checksum itself, in a copy of its own (the caller's frame is left as
// it is), and the guest gets a complete one. A partial checksum whose
// place lies outside the frame is dropped and counted either way.
// Complete frames go with no flag (DATA_VALID is not set: the port
// vouches for no checksum it did not compute).
//
// With VIRTIO_NET_F_GUEST_TSO4/TSO6 a Linux guest takes TCP segments of
// up to 64 KiB whole and posts receive buffers that hold one (big
// packets: a header and 17 pages, at any MTU, through an indirect
// table). The port is a frameio.GSOWriter (TakesGSO, true unless
// NoOffload; asked once, at attach, like TakesPartial), so the switch
// hands it the host's 64 KiB segments as the uplink TAP read them, and
// WriteBatch checks each GSO frame (Off.GSO GSOTCPv4 or GSOTCPv6) before
// trusting it: TCP over IPv4 (not a fragment) or IPv6 (no extension
// header) as its type says, untagged or behind one VLAN tag, the IP
// length the frame's, Off.Partial with CsumStart at the TCP header and
// CsumOffset 16, payload after the headers, GSOSize of at least 48,
// segments no larger than the MTU, the frame at most frameio.MaxGSOLen.
// Anything else is dropped and counted (TxDropped) and logged with its
// reason. For a guest that negotiated the GUEST_TSO of the frame's kind,
// the frame goes whole into one receive chain behind a header with
// NEEDS_CSUM, gso_type (TCPV4 or TCPV6), gso_size, hdr_len (Ethernet, IP
// and TCP headers), csum_start and csum_offset (little-endian, the
// VERSION_1 layout; num_buffers 1); a chain too small for it is returned
// to the guest empty and the frame counted in TxDropped (a guest that
// negotiated GUEST_TSO without MRG_RXBUF should post buffers of 65562
// bytes or more: virtio 1.x, 5.1.6.3.1). For any other guest (no
// GUEST_TSO, or only the other kind's) WriteBatch cuts the frame with a
// frameio.Segmenter into frames of the MTU, in a buffer of its own (the
// caller's frame is left as it is), their checksums partial for a guest
// that took GUEST_CSUM and complete for any other, and writes them one
// receive buffer each. A frame counts once in what WriteBatch returns,
// and only when all of it went: when buffers run out partway through its
// segments, those written stay with the guest (its TCP takes them as
// they come) and the frame is counted in TxDropped. Stats count what the
// guest was given: each chain filled (a whole GSO frame, a segment) in
// TxFrames, its frame's bytes in TxBytes. The write path allocates
// nothing per frame either (the buffer for completing copies and
// segments is allocated once).
//
// # A hostile front-end
//
// The front-end (and through it the guest) controls the messages and the
// rings. The port checks every address against the memory table (ring
// addresses as front-end user addresses, buffers as guest physical
// addresses; a buffer or indirect table must lie inside one region),
// bounds a descriptor chain by the queue size and an indirect table's
// walk by its size (loops end there), checks indexes, flags and
// lengths, and checks a region against the size of its file before
// mapping it, and each virtio-net header as Offloads says. A bad chain
// is returned to the guest unused and counted
// (RxDropped from the guest, TxDropped towards it); an avail index more
// than a queue ahead, a malformed or unsupported message, too many file
// descriptors, a front-end that does not read its replies within 5
// seconds or says nothing within 10 seconds of connecting ends that
// session, logged, and the port waits for the next
// front-end. Memory truncated under the mapping faults when touched; the
// data path runs with debug.SetPanicOnFault and turns such a fault into
// an ended session instead of a crashed plugin.
//
// The subpackage vhostuserdriver is the other side, a front-end and
// virtio-net driver in one, for tests and benchmarks.
package vhostuser
