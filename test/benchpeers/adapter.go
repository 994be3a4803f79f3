package benchpeers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/vhostuser/vhostuserdriver"
)

// AdapterOptions describe one adapter: a TAP in the calling process's
// network namespace (the guest's NIC) joined to a peer's unix socket in
// one of QEMU's framings, or to a vhost-user back-end. Exactly one of the
// socket fields (DgramPeer with DgramBind, StreamConnect, StreamListen,
// VhostUser) is set.
type AdapterOptions struct {
	TAP string // interface name, created (and gone when the adapter ends)
	MTU int
	MAC string // set on the TAP before it goes up; empty keeps the kernel's
	// TxQueueLen is the TAP's ring of frames waiting for the adapter
	// (txqueuelen); 0 means DefaultTxQueueLen. See there.
	TxQueueLen int

	// DgramBind and DgramPeer: one frame per datagram, as QEMU's -netdev
	// dgram (bind local.path, send to remote.path). The adapter connects
	// to the peer, as vfkit does and as frameio ports do.
	DgramBind, DgramPeer string
	// StreamConnect: connect to a listening peer (gvproxy -listen-qemu,
	// passt, QEMU's -netdev stream,server=off); 4-byte big-endian length
	// before each frame.
	StreamConnect string
	// StreamListen: listen and take one peer at a time (the other side of
	// the adapter ceiling).
	StreamListen string
	// VhostUser: connect to a vhost-user back-end's socket as QEMU's
	// vhost-user-net front-end does, and drive its queues as the guest's
	// virtio-net driver (vhostuserdriver), the MTU announced with
	// NET_SET_MTU as QEMU's host_mtu= does. See VhostUserBatch for how
	// frames cross.
	VhostUser string
	// VhostUserNoOffload keeps checksum offload and TSO off the vhost-user
	// guest's NIC. By default the adapter takes them, as Linux's
	// virtio-net does from a device that offers them: the TAP standing in
	// for the guest's NIC is opened with PassOffload, so the namespace's
	// stack hands over TCP segments of up to 64 KiB with their checksums
	// partial, and they go into the transmit queue with their virtio-net
	// header, as a guest with TSO puts them there; the other way the
	// guest takes GUEST_TSO4/6, so the host's segments arrive whole and
	// are written to the TAP with their header.
	VhostUserNoOffload bool
	// VhostUserQueueSize is the size of both virtqueues (QEMU's
	// rx_queue_size and tx_queue_size); 0 means 1024, what anka gives
	// its QEMU VMs on vhost-user (QEMU's own default is 256).
	VhostUserQueueSize int

	// Batch is how many frames one socket write carries; 1 (the default)
	// is QEMU's one frame per write. The vhost-user mode has no write per
	// frame and ignores it (VhostUserBatch).
	Batch int
	// WriteTimeout is how long a write to a full socket waits before the
	// frame is dropped. QEMU stops reading its NIC until the socket takes
	// more; a long timeout comes closest. 0 means one second.
	WriteTimeout time.Duration
	Logger       *slog.Logger
}

// DefaultTxQueueLen is the adapter's TAP ring. A TAP drops a frame its
// ring has no room for, where a virtio NIC stops its queue and the guest
// waits: with the kernel's 1000, a few milliseconds in which the adapter
// is not scheduled (two CPUs, four busy processes) become TCP losses
// that the guest blames on the network (passt 2023 stops dead after
// some). A long ring stands in for the virtio NIC's back-pressure.
const DefaultTxQueueLen = 10000

// VhostUserBatch is how many frames the vhost-user mode moves per call
// each way. With vhost-user QEMU is out of the data path: the guest's
// virtio-net driver puts each frame its stack hands it in a transmit
// descriptor and publishes the ring, kicking only when the back-end
// asks for kicks, and takes received frames off the used ring a NAPI
// budget (64) at a time. The adapter's analogue: the TAP is read one
// frame per read(2) as always (with offloads, see VhostUserNoOffload, a
// frame may be a TCP segment of up to 64 KiB), up to this many until the
// TAP is empty, and the frames
// read go into the transmit queue with one WriteBatch (one publish, at
// most one kick); the other way one ReadBatch of the receive queue, then
// one write(2) per frame into the TAP. The socket modes' Batch of 1
// stands for QEMU's one sendmsg per frame, a cost vhost-user does not
// have.
const VhostUserBatch = 64

// The buffers the vhost-user mode posts above MTU 1500 (and, with
// GUEST_TSO negotiated, at any MTU: vhostuserdriver), as Linux's
// virtio-net does with a back-end that offers indirect descriptors but no
// mergeable receive buffers (this one): each receive buffer ("big
// packets") is a header and a chain of 4 KiB pages behind one indirect
// table, one ring slot per buffer; a large frame is sent as its header
// and 32 KiB pieces (TCP fills page fragments), again through a table.
// At 1500 a frame is one descriptor each way.
const (
	vhostUserRxChunk = 4096
	vhostUserTxChunk = 32 << 10
)

// Adapter is a running adapter.
type Adapter struct {
	tap    *frameio.TAPPort
	sock   frameio.Port
	cancel context.CancelFunc
	wg     sync.WaitGroup
	errMu  sync.Mutex
	err    error
	done   chan struct{}
	once   sync.Once
}

// StartAdapter opens the TAP and the socket and starts relaying both ways.
func StartAdapter(o AdapterOptions) (*Adapter, error) {
	if o.TAP == "" {
		return nil, errors.New("adapter: no TAP name")
	}
	n := 0
	for _, s := range []string{o.DgramPeer, o.StreamConnect, o.StreamListen, o.VhostUser} {
		if s != "" {
			n++
		}
	}
	if n != 1 || (o.DgramPeer != "") != (o.DgramBind != "") {
		return nil, errors.New("adapter: give one of -dgram-bind with -dgram-peer, -stream-connect, -stream-listen, -vhost-user")
	}
	if o.Batch <= 0 {
		o.Batch = 1
	}
	if o.WriteTimeout == 0 {
		o.WriteTimeout = time.Second
	}
	if o.MTU == 0 {
		o.MTU = frameio.DefaultMTU
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	offload := o.VhostUser != "" && !o.VhostUserNoOffload
	tap, err := frameio.OpenTAP(o.TAP, frameio.TAPOptions{MTU: o.MTU, PassOffload: offload, Logger: log})
	if err != nil {
		return nil, err
	}
	if o.MAC != "" {
		if out, err := exec.Command("ip", "link", "set", "dev", tap.Name(), "address", o.MAC).CombinedOutput(); err != nil {
			tap.Close()
			return nil, fmt.Errorf("adapter: MAC %s on %s: %v: %s", o.MAC, tap.Name(), err, out)
		}
	}
	if o.TxQueueLen <= 0 {
		o.TxQueueLen = DefaultTxQueueLen
	}
	if out, err := exec.Command("ip", "link", "set", "dev", tap.Name(), "txqueuelen", strconv.Itoa(o.TxQueueLen), "up").CombinedOutput(); err != nil {
		tap.Close()
		return nil, fmt.Errorf("adapter: %s up: %v: %s", tap.Name(), err, out)
	}
	var sock frameio.Port
	switch {
	case o.DgramPeer != "":
		// QEMU's socket takes the namespace's max_dgram_qlen: raise it
		// here as a plugin does in its own, so that neither side of the
		// comparison is held by the default of 10.
		frameio.SetMaxDgramQlen(frameio.RecommendedMaxDgramQlen)
		sock, err = frameio.ListenDgram(o.DgramBind, frameio.DgramOptions{MTU: o.MTU, Peer: o.DgramPeer, WriteTimeout: o.WriteTimeout, Logger: log})
	case o.VhostUser != "":
		o.Batch = VhostUserBatch
		qs := o.VhostUserQueueSize
		if qs == 0 {
			qs = 1024
		}
		do := vhostuserdriver.DriverOptions{MTU: o.MTU, HostMTU: o.MTU, QueueSize: qs, WriteTimeout: o.WriteTimeout, Offload: offload, Log: log}
		if o.MTU > 1500 {
			do.RxChunk, do.TxChunk = vhostUserRxChunk, vhostUserTxChunk
		}
		sock, err = dialVhostUserRetry(o.VhostUser, do, 10*time.Second)
	case o.StreamConnect != "":
		sock, err = dialStreamRetry(o.StreamConnect, frameio.StreamOptions{MTU: o.MTU, WriteTimeout: o.WriteTimeout, Logger: log}, 10*time.Second)
	default:
		sock, err = frameio.ListenStream(o.StreamListen, frameio.StreamOptions{MTU: o.MTU, WriteTimeout: o.WriteTimeout, Logger: log})
	}
	if err != nil {
		tap.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &Adapter{tap: tap, sock: sock, cancel: cancel, done: make(chan struct{})}
	for _, pair := range [][2]frameio.Port{{tap, sock}, {sock, tap}} {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			err := frameio.Relay(ctx, pair[0], pair[1], o.Batch)
			a.fail(err)
		}()
	}
	return a, nil
}

func dialStreamRetry(path string, o frameio.StreamOptions, wait time.Duration) (*frameio.StreamPort, error) {
	deadline := time.Now().Add(wait)
	for {
		p, err := frameio.DialStream(path, o)
		if err == nil || time.Now().After(deadline) {
			return p, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dialVhostUserRetry connects to a vhost-user back-end, waiting for its
// socket as QEMU's reconnecting chardev does.
func dialVhostUserRetry(path string, o vhostuserdriver.DriverOptions, wait time.Duration) (*vhostuserdriver.Driver, error) {
	deadline := time.Now().Add(wait)
	for {
		d, err := vhostuserdriver.Dial(path, o)
		if err == nil || time.Now().After(deadline) {
			return d, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (a *Adapter) fail(err error) {
	a.errMu.Lock()
	if a.err == nil {
		a.err = err
	}
	a.errMu.Unlock()
	a.once.Do(func() { close(a.done) })
}

// Done is closed when either direction stops (the peer went away).
func (a *Adapter) Done() <-chan struct{} { return a.done }

// Err is why the adapter stopped.
func (a *Adapter) Err() error {
	a.errMu.Lock()
	defer a.errMu.Unlock()
	return a.err
}

// Stats are the TAP's and the socket's counters.
func (a *Adapter) Stats() (tap, sock frameio.Stats) { return a.tap.Stats(), a.sock.Stats() }

// Close stops both directions and closes the TAP and the socket.
func (a *Adapter) Close() {
	a.cancel()
	a.tap.Close()
	a.sock.Close()
	a.wg.Wait()
}
