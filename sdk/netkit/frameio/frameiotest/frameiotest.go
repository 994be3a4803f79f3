//go:build linux

// Package frameiotest gives tests and benchmarks of frame paths what they
// all need: connected pairs of ports in a temporary directory, a load
// generator, and the raw relay benchmark that the switch is compared to in
// the same run, with the same socket hops.
package frameiotest

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
)

// EtherType of generated frames: IEEE's local experimental type, which no
// stack answers.
const EtherType = 0x88b5

// Addresses of generated frames (locally administered).
var (
	SrcMAC = [6]byte{0x02, 0xa4, 0x6b, 0, 0, 1}
	DstMAC = [6]byte{0x02, 0xa4, 0x6b, 0, 0, 2}
)

// FillFrame writes a frame of n bytes into b, from SrcMAC to DstMAC with
// EtherType and seq in the first payload bytes, and returns n.
func FillFrame(b []byte, n int, seq uint32) int {
	copy(b[0:6], DstMAC[:])
	copy(b[6:12], SrcMAC[:])
	binary.BigEndian.PutUint16(b[12:14], EtherType)
	for i := 14; i < n; i++ {
		b[i] = byte(i)
	}
	if n >= 18 {
		binary.BigEndian.PutUint32(b[14:18], seq)
	}
	return n
}

// Seq is the sequence number FillFrame put in f.
func Seq(f []byte) uint32 {
	if len(f) < 18 {
		return 0
	}
	return binary.BigEndian.Uint32(f[14:18])
}

// Quiet is a logger that drops everything, for ports whose peer changes
// are expected noise.
var Quiet = slog.New(slog.DiscardHandler)

// TempDir makes a short directory for sockets (a unix socket path holds
// at most 107 bytes, and test names are long) and removes it after tb.
func TempDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "anka-fio-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// GuestDir is the test guest (make guest): ANKA_GUEST_DIR, else the
// repository's build/guest, found from the test's folder upwards. Without
// one the test skips, unless ANKA_E2E says the guest must be there.
func GuestDir(tb testing.TB) string {
	tb.Helper()
	dir := os.Getenv("ANKA_GUEST_DIR")
	if dir == "" {
		wd, _ := os.Getwd()
		for d := wd; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "build", "guest", "vmlinuz")); err == nil {
				dir = filepath.Join(d, "build", "guest")
				break
			}
			if filepath.Dir(d) == d {
				dir = filepath.Join(wd, "build", "guest") // named in the message below
				break
			}
		}
	}
	for _, f := range []string{"vmlinuz", "initrd.img"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			if os.Getenv("ANKA_E2E") != "" {
				tb.Fatalf("ANKA_E2E is set but the test guest is missing: %v (make guest)", err)
			}
			tb.Skipf("needs the test guest (make guest, or ANKA_GUEST_DIR): %v", err)
		}
	}
	abs, _ := filepath.Abs(dir)
	return abs
}

// GuestMode is how the VM side of a datagram pair behaves.
type GuestMode int

const (
	// GuestQEMU binds its own socket and sends every frame with sendto,
	// never connecting: QEMU's -netdev dgram.
	GuestQEMU GuestMode = iota
	// GuestConnected connects to the plugin's socket: vfkit.
	GuestConnected
)

func (m GuestMode) String() string {
	if m == GuestConnected {
		return "connected"
	}
	return "qemu"
}

// DgramPairOptions shape a DgramPair.
type DgramPairOptions struct {
	MTU          int
	Guest        GuestMode
	Dir          string        // "": a TempDir
	Netns        *Netns        // nil: the sockets are made in the test's own namespace
	WriteTimeout time.Duration // both ports
	Logger       *slog.Logger  // nil: Quiet
}

// DgramPair returns a plugin-side port and a guest-side port sending to
// it, once the plugin side has learned the guest and connected to it, as
// it would with a real VM. Both close when tb ends.
func DgramPair(tb testing.TB, o DgramPairOptions) (plugin, guest *frameio.DgramPort) {
	tb.Helper()
	dir := o.Dir
	if dir == "" {
		dir = TempDir(tb)
	}
	log := o.Logger
	if log == nil {
		log = Quiet
	}
	pp, gp := filepath.Join(dir, "plugin.sock"), filepath.Join(dir, "guest.sock")
	open := func() (err error) {
		plugin, err = frameio.ListenDgram(pp, frameio.DgramOptions{MTU: o.MTU, WriteTimeout: o.WriteTimeout, Logger: log})
		if err != nil {
			return err
		}
		guest, err = frameio.ListenDgram(gp, frameio.DgramOptions{
			MTU: o.MTU, Peer: pp, NoConnect: o.Guest == GuestQEMU, WriteTimeout: o.WriteTimeout, Logger: log,
		})
		if err != nil {
			plugin.Close()
		}
		return err
	}
	var err error
	if o.Netns != nil {
		err = o.Netns.Run(open)
	} else {
		err = open()
	}
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		plugin.Close()
		guest.Close()
	})
	if err := Introduce(guest, plugin); err != nil {
		tb.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !plugin.Connected() {
		if time.Now().After(deadline) {
			tb.Fatal("plugin port did not connect to the guest")
		}
		time.Sleep(time.Millisecond)
	}
	return plugin, guest
}

// Introduce sends frames from a to b until b reads one, so b knows a
// (a datagram port learns its peer, a stream listener accepts). It gives
// up after five seconds.
func Introduce(a, b frameio.Port) error {
	got := make(chan error, 1)
	in := frameio.NewBatch(1, b.MTU())
	go func() {
		_, err := b.ReadBatch(in)
		got <- err
	}()
	out := frameio.NewBatch(1, a.MTU())
	out[0].N = FillFrame(out[0].Buf, 60, 0)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(5 * time.Second)
	for {
		if _, err := a.WriteBatch(out); err != nil {
			return err
		}
		select {
		case err := <-got:
			return err
		case <-tick.C:
		case <-deadline:
			return errors.New("frameiotest: the ports did not exchange a frame in 5s")
		}
	}
}

// StreamPairOptions shape a StreamPair.
type StreamPairOptions struct {
	MTU          int
	Dir          string
	WriteTimeout time.Duration
	Logger       *slog.Logger
}

// StreamPair returns a listening stream port and a client connected to
// it, once the listener has taken the connection.
func StreamPair(tb testing.TB, o StreamPairOptions) (server *frameio.StreamListener, client *frameio.StreamPort) {
	tb.Helper()
	dir := o.Dir
	if dir == "" {
		dir = TempDir(tb)
	}
	log := o.Logger
	if log == nil {
		log = Quiet
	}
	so := frameio.StreamOptions{MTU: o.MTU, WriteTimeout: o.WriteTimeout, Logger: log}
	path := filepath.Join(dir, "stream.sock")
	server, err := frameio.ListenStream(path, so)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { server.Close() })
	client, err = frameio.DialStream(path, so)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { client.Close() })
	if err := Introduce(client, server); err != nil {
		tb.Fatal(err)
	}
	return server, client
}

// Blast writes batches of frames of frameLen bytes to p until stop is
// closed or p fails, and returns how many frames p took.
func Blast(p frameio.Port, frameLen, batch int, stop <-chan struct{}) uint64 {
	frames := frameio.NewBatch(batch, max(p.MTU(), frameLen))
	for i := range frames {
		frames[i].N = FillFrame(frames[i].Buf, frameLen, uint32(i))
	}
	var sent uint64
	for {
		select {
		case <-stop:
			return sent
		default:
		}
		n, err := p.WriteBatch(frames)
		sent += uint64(n)
		if err != nil {
			return sent
		}
	}
}

// Drain reads from p until it has counted want frames, and returns the
// count and the error that stopped it early.
func Drain(p frameio.Port, want uint64, batch int) (uint64, error) {
	frames := frameio.NewBatch(batch, p.MTU())
	var got uint64
	for got < want {
		n, err := p.ReadBatch(frames)
		got += uint64(n)
		if err != nil {
			return got, err
		}
	}
	return got, nil
}

// Throughput measures b.N frames of frameLen bytes from send to recv,
// the sender writing as fast as it can, and reports Mpps, Gbit/s (frame
// bytes, no preamble or gap) and loss% (frames the sender got rid of
// that never arrived). ns/op is per frame.
func Throughput(b *testing.B, send, recv frameio.Port, frameLen, batch int) {
	b.Helper()
	if batch <= 0 {
		batch = 64
	}
	b.ReportAllocs()
	b.SetBytes(int64(frameLen))
	stop := make(chan struct{})
	var sent uint64
	var wg sync.WaitGroup
	wg.Add(1)
	b.ResetTimer()
	start := time.Now()
	go func() {
		defer wg.Done()
		sent = Blast(send, frameLen, batch, stop)
	}()
	got, err := Drain(recv, uint64(b.N), batch)
	elapsed := time.Since(start)
	b.StopTimer()
	close(stop)
	wg.Wait()
	if err != nil {
		b.Fatalf("receiving: %v after %d of %d frames", err, got, b.N)
	}
	pps := float64(got) / elapsed.Seconds()
	b.ReportMetric(pps/1e6, "Mpps")
	b.ReportMetric(pps*float64(frameLen)*8/1e9, "Gbit/s")
	if sent > got {
		b.ReportMetric(100*float64(sent-got)/float64(sent), "loss%")
	} else {
		b.ReportMetric(0, "loss%")
	}
}

// RelayOptions shape the raw relay benchmarks.
type RelayOptions struct {
	FrameLen int
	Batch    int // 0: 64
	MTU      int // 0: enough for FrameLen, at least DefaultMTU
	Guest    GuestMode
	// Netns, if set, is where the sockets are made: its
	// net.unix.max_dgram_qlen applies to them.
	Netns        *Netns
	WriteTimeout time.Duration
}

func (o *RelayOptions) mtu() int {
	if o.MTU != 0 {
		return o.MTU
	}
	return max(frameio.DefaultMTU, o.FrameLen-frameio.EthHeaderLen)
}

// BenchDgramRelay measures the raw relay over datagram sockets: guest A
// sends to plugin port A, Relay copies each batch to plugin port B, which
// sends to guest B. Two socket hops, the same as a switch between two VMs.
func BenchDgramRelay(b *testing.B, o RelayOptions) {
	b.Helper()
	po := DgramPairOptions{MTU: o.mtu(), Guest: o.Guest, Netns: o.Netns, WriteTimeout: o.WriteTimeout}
	pa, ga := DgramPair(b, po)
	pb, gb := DgramPair(b, po)
	relay(b, pa, pb)
	Throughput(b, ga, gb, o.FrameLen, o.Batch)
}

// BenchStreamRelay is BenchDgramRelay over stream sockets, clients
// playing the guests.
func BenchStreamRelay(b *testing.B, o RelayOptions) {
	b.Helper()
	so := StreamPairOptions{MTU: o.mtu(), WriteTimeout: o.WriteTimeout}
	sa, ca := StreamPair(b, so)
	sb, cb := StreamPair(b, so)
	relay(b, sa, sb)
	Throughput(b, ca, cb, o.FrameLen, o.Batch)
}

// relay runs frameio.Relay from src to dst until tb ends.
func relay(tb testing.TB, src, dst frameio.Port) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		frameio.Relay(ctx, src, dst, 64)
	}()
	tb.Cleanup(func() {
		cancel()
		src.Close()
		<-done
	})
}
