package frameio

import (
	"errors"
	"fmt"
	"sync/atomic"
)

// Limits of an Ethernet frame as anka carries it.
const (
	// MaxMTU is the largest MTU any port accepts (QEMU's and passt's limit).
	MaxMTU = 65520
	// DefaultMTU is the MTU when none is configured.
	DefaultMTU = 1500
	// EthHeaderLen is an untagged Ethernet header.
	EthHeaderLen = 14
	// VLANTagLen is room for one 802.1Q tag.
	VLANTagLen = 4
	// MinFrameLen is the shortest frame a port hands up: an Ethernet
	// header. Shorter input is malformed and dropped.
	MinFrameLen = EthHeaderLen
)

// FrameSize is the buffer size that holds any frame of a port with mtu.
func FrameSize(mtu int) int { return mtu + EthHeaderLen + VLANTagLen }

// Kind names how a port carries frames.
type Kind string

const (
	KindDgram  Kind = "dgram"  // unix datagram, one frame per datagram
	KindStream Kind = "stream" // unix stream, 4-byte big-endian length before each frame
	KindTAP    Kind = "tap"    // Linux TAP device
	KindPacket Kind = "packet" // AF_PACKET on a host interface
	KindPipe   Kind = "pipe"   // in-process, for services and tests

	KindVhostUser Kind = "vhost-user" // vhost-user back-end: the guest's virtqueues in shared memory
)

// Frame is one frame in a buffer the caller owns and reuses. Buf keeps its
// full capacity between calls; N is the length of the frame in it.
type Frame struct {
	Buf []byte
	N   int
	// Off is what the frame leaves to its sender (a partial checksum, a
	// segment to cut); the zero value for a plain frame. Only ports that
	// take offloads set or read it.
	Off Offload
}

// Bytes is the frame itself.
func (f *Frame) Bytes() []byte { return f.Buf[:f.N] }

// NewBatch allocates n reusable frame buffers for a port with mtu, in one
// backing array so a batch is a single allocation for the port's life.
func NewBatch(n, mtu int) []Frame { return NewBatchSize(n, FrameSize(mtu)) }

// NewBatchSize is NewBatch with buffers of size bytes each.
func NewBatchSize(n, size int) []Frame {
	backing := make([]byte, n*size)
	fs := make([]Frame, n)
	for i := range fs {
		fs[i].Buf = backing[i*size : (i+1)*size : (i+1)*size]
	}
	return fs
}

// Port is one end of a frame path.
//
// ReadBatch blocks until at least one frame arrives, fills frames[:n] (Buf
// is written, N set) and returns n. Frames that are malformed or larger
// than the port's MTU are dropped and counted, never returned; to close
// the gap a port may exchange Bufs between elements of frames, so treat
// the Bufs as a pool rather than tie a buffer to an index.
// WriteBatch sends frames[:len(frames)] in as few system calls as the kind
// allows and returns how many were sent; a frame that cannot be sent (peer
// gone, buffer full) is dropped and counted rather than blocking the
// switch forever. Reads and writes may run concurrently with each other;
// concurrent writers are safe. Close unblocks a pending read, which then
// returns ErrClosed.
type Port interface {
	ReadBatch(frames []Frame) (int, error)
	WriteBatch(frames []Frame) (int, error)
	Close() error
	Kind() Kind
	MTU() int
	Stats() Stats
}

// NoWaitWriter is a Port that can also write without waiting for room:
// what the peer cannot take at once is dropped and counted. The switch
// floods (broadcast, multicast, unknown unicast) with it, so that a peer
// that does not read (an idle VM's socket, full) costs a flood nothing
// instead of WriteTimeout, once per such peer.
type NoWaitWriter interface {
	WriteBatchNoWait(frames []Frame) (int, error)
}

// Stats are a snapshot of a port's counters since it opened. It is a plain
// value: count with Counters, whose fields are atomic and aligned on every
// platform.
type Stats struct {
	RxFrames, RxBytes    uint64
	TxFrames, TxBytes    uint64
	RxDropped, TxDropped uint64 // malformed, oversize, or no room / no peer
}

// Counters are a port's live statistics, safe for concurrent use. The zero
// value is ready; a Port implemented elsewhere may embed it.
type Counters struct {
	rxFrames, rxBytes    atomic.Uint64
	txFrames, txBytes    atomic.Uint64
	rxDropped, txDropped atomic.Uint64
}

// AddRx counts frames handed up and their bytes.
func (c *Counters) AddRx(frames, bytes int) {
	if frames > 0 {
		c.rxFrames.Add(uint64(frames))
		c.rxBytes.Add(uint64(bytes))
	}
}

// AddTx counts frames sent and their bytes.
func (c *Counters) AddTx(frames, bytes int) {
	if frames > 0 {
		c.txFrames.Add(uint64(frames))
		c.txBytes.Add(uint64(bytes))
	}
}

// AddRxDropped counts received frames that were not handed up.
func (c *Counters) AddRxDropped(n int) {
	if n > 0 {
		c.rxDropped.Add(uint64(n))
	}
}

// AddTxDropped counts frames that could not be sent.
func (c *Counters) AddTxDropped(n int) {
	if n > 0 {
		c.txDropped.Add(uint64(n))
	}
}

// Snapshot reads the counters.
func (c *Counters) Snapshot() Stats {
	return Stats{
		RxFrames: c.rxFrames.Load(), RxBytes: c.rxBytes.Load(),
		TxFrames: c.txFrames.Load(), TxBytes: c.txBytes.Load(),
		RxDropped: c.rxDropped.Load(), TxDropped: c.txDropped.Load(),
	}
}

// ErrClosed is returned by a closed port.
var ErrClosed = errors.New("frameio: port closed")

// checkMTU reports an MTU outside 68..MaxMTU.
func checkMTU(mtu int) error {
	if mtu < 68 || mtu > MaxMTU {
		return fmt.Errorf("frameio: MTU %d is out of range: use 68 to %d", mtu, MaxMTU)
	}
	return nil
}
