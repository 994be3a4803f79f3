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
// without their virtio-net header. WriteBatch puts frames into the
// guest's receive buffers (RX queue, 0) after a zeroed header (no
// checksum offload, GSO_NONE), waiting up to Options.WriteTimeout for
// buffers; WriteBatchNoWait does not wait. Both hand the guest one
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
// VHOST_USER_F_PROTOCOL_FEATURES, and VIRTIO_NET_F_MAC when Options.MAC
// is set. Protocol features: REPLY_ACK
// (refusals reach QEMU as errors instead of silence), NET_MTU, and CONFIG
// when Options.MAC is set (GET_CONFIG serves the MAC, link up and MTU to
// front-ends that read config from the back-end; QEMU's virtio-net does
// not, and warns when offered it).
//
// Indirect descriptors are offered for the guest's receive buffers. Without
// VIRTIO_NET_F_MRG_RXBUF (not offered, below) a Linux guest with an MTU
// above 1500 posts "big packets": receive buffers of a header and 16 or
// so pages, chained. Chained in the ring, each takes about 17 of its
// descriptors and a 256-entry queue holds 14 buffers, so TCP towards a
// guest that is late loses frames; with the feature Linux puts every
// buffer of more than one descriptor in an indirect table (one ring
// descriptor each), and the queue holds 256. Its transmit side does the
// same for frames in pieces. (At MTU 1500 Linux's receive buffers are
// single descriptors, and indirect tables change nothing there.) The
// port walks a ring chain of zero or more descriptors ended by at most one
// INDIRECT descriptor, as the virtio 1.x split ring allows; the table must
// be 16·n bytes (0 < n ≤ 32768, the longest chain any queue can have)
// inside one memory region, its entries chained by index within it,
// with no INDIRECT among them; the INDIRECT descriptor carries no NEXT
// and its WRITE flag is ignored; direction rules are as for a plain
// chain, and the walk is bounded by the table's size.
//
// Not offered, deliberately for now: checksum and segmentation offloads
// (frames leave the port whole and checksummed, as every other frameio
// port delivers them), VIRTIO_NET_F_MRG_RXBUF (a Linux guest with a
// large MTU then posts big packets, which the port fills across the
// chain or table), EVENT_IDX, multiqueue, packed rings, dirty-page
// logging (so no live migration), IOMMU, inflight tracking, postcopy.
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
// # A hostile front-end
//
// The front-end (and through it the guest) controls the messages and the
// rings. The port checks every address against the memory table (ring
// addresses as front-end user addresses, buffers as guest physical
// addresses; a buffer or indirect table must lie inside one region),
// bounds a descriptor chain by the queue size and an indirect table's
// walk by its size (loops end there), checks indexes, flags and
// lengths, and checks a region against the size of its file before
// mapping it. A bad chain is returned to the guest unused and counted
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
