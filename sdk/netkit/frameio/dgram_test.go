//go:build linux

package frameio_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

func TestDgramPeerLearned(t *testing.T) {
	for _, mode := range []frameiotest.GuestMode{frameiotest.GuestQEMU, frameiotest.GuestConnected} {
		t.Run(mode.String(), func(t *testing.T) {
			dir := frameiotest.TempDir(t)
			pp, gp := filepath.Join(dir, "p.sock"), filepath.Join(dir, "g.sock")
			plugin, err := frameio.ListenDgram(pp, frameio.DgramOptions{Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer plugin.Close()
			guest, err := frameio.ListenDgram(gp, frameio.DgramOptions{Peer: pp, NoConnect: mode == frameiotest.GuestQEMU, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer guest.Close()
			if plugin.Peer() != "" || plugin.Connected() {
				t.Fatalf("plugin has a peer before any frame: %q", plugin.Peer())
			}

			// Before it has a peer the plugin drops what it sends.
			if n, err := plugin.WriteBatch(frames(1, 60, 9)); n != 0 || err != nil {
				t.Fatalf("write without a peer = %d, %v; want 0, nil", n, err)
			}
			if s := plugin.Stats(); s.TxDropped != 1 {
				t.Fatalf("TxDropped = %d, want 1", s.TxDropped)
			}

			out := frames(3, 100, 1)
			if n, err := guest.WriteBatch(out); n != 3 || err != nil {
				t.Fatalf("guest write = %d, %v", n, err)
			}
			got := collect(t, plugin, 3)
			for i := range got {
				if !bytes.Equal(got[i], out[i].Bytes()) {
					t.Fatalf("frame %d differs", i)
				}
			}
			if plugin.Peer() != gp || !plugin.Connected() {
				t.Fatalf("plugin peer = %q connected %v; want %q connected", plugin.Peer(), plugin.Connected(), gp)
			}

			back := frames(2, 1514, 100)
			if n, err := plugin.WriteBatch(back); n != 2 || err != nil {
				t.Fatalf("plugin write = %d, %v", n, err)
			}
			got = collect(t, guest, 2)
			for i := range got {
				if !bytes.Equal(got[i], back[i].Bytes()) {
					t.Fatalf("frame %d back differs", i)
				}
			}
			s := plugin.Stats()
			if s.RxFrames != 3 || s.RxBytes != 300 || s.TxFrames != 2 || s.TxBytes != 2*1514 {
				t.Fatalf("plugin stats %+v", s)
			}
		})
	}
}

func TestDgramPeerGivenBeforeItExists(t *testing.T) {
	dir := frameiotest.TempDir(t)
	pp, gp := filepath.Join(dir, "p.sock"), filepath.Join(dir, "g.sock")
	plugin, err := frameio.ListenDgram(pp, frameio.DgramOptions{Peer: gp, PeerCheck: 20 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer plugin.Close()
	if plugin.Connected() {
		t.Fatal("connected to a peer that does not exist")
	}
	if n, _ := plugin.WriteBatch(frames(4, 60, 0)); n != 0 {
		t.Fatalf("sent %d frames to nobody", n)
	}
	if s := plugin.Stats(); s.TxDropped != 4 {
		t.Fatalf("TxDropped = %d, want 4", s.TxDropped)
	}

	// QEMU starts and binds its socket: the plugin connects by itself.
	guest, err := frameio.ListenDgram(gp, frameio.DgramOptions{Peer: pp, NoConnect: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer guest.Close()
	waitFor(t, "the plugin to connect", plugin.Connected)

	out := frames(5, 1000, 1)
	if n, err := plugin.WriteBatch(out); n != 5 || err != nil {
		t.Fatalf("plugin write = %d, %v", n, err)
	}
	got := collect(t, guest, 5)
	for i := range got {
		if !bytes.Equal(got[i], out[i].Bytes()) {
			t.Fatalf("frame %d differs", i)
		}
	}
	if n, err := guest.WriteBatch(out[:2]); n != 2 || err != nil {
		t.Fatalf("guest write = %d, %v", n, err)
	}
	collect(t, plugin, 2)
}

func TestDgramVfkitHello(t *testing.T) {
	dir := frameiotest.TempDir(t)
	pp, vp := filepath.Join(dir, "p.sock"), filepath.Join(dir, "vfkit.sock")
	plugin, err := frameio.ListenDgram(pp, frameio.DgramOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer plugin.Close()
	// vfkit binds its own socket, connects to ours and says hello.
	vfkit, err := net.DialUnix("unixgram", &net.UnixAddr{Name: vp, Net: "unixgram"}, &net.UnixAddr{Name: pp, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer vfkit.Close()
	if _, err := vfkit.Write([]byte("VFKT")); err != nil {
		t.Fatal(err)
	}
	frame := frames(1, 60, 7)[0].Bytes()
	if _, err := vfkit.Write(frame); err != nil {
		t.Fatal(err)
	}
	got := collect(t, plugin, 1)
	if !bytes.Equal(got[0], frame) {
		t.Fatalf("got %x, want the frame after the hello", got[0])
	}
	if s := plugin.Stats(); s.RxFrames != 1 || s.RxDropped != 0 {
		t.Fatalf("stats %+v: the hello is neither a frame nor a drop", s)
	}
	if plugin.Peer() != vp {
		t.Fatalf("peer = %q, want %q", plugin.Peer(), vp)
	}
	back := frames(1, 80, 8)
	if n, _ := plugin.WriteBatch(back); n != 1 {
		t.Fatal("reply not sent")
	}
	buf := make([]byte, 2000)
	vfkit.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := vfkit.Read(buf)
	if err != nil || !bytes.Equal(buf[:n], back[0].Bytes()) {
		t.Fatalf("vfkit read %d bytes, %v", n, err)
	}
}

func TestDgramHelloOnlyLearns(t *testing.T) {
	// The hello alone is enough for the plugin to reach vfkit.
	dir := frameiotest.TempDir(t)
	pp, vp := filepath.Join(dir, "p.sock"), filepath.Join(dir, "v.sock")
	plugin, err := frameio.ListenDgram(pp, frameio.DgramOptions{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer plugin.Close()
	vfkit, err := net.DialUnix("unixgram", &net.UnixAddr{Name: vp, Net: "unixgram"}, &net.UnixAddr{Name: pp, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer vfkit.Close()
	vfkit.Write([]byte("VFKT"))
	go plugin.ReadBatch(frameio.NewBatch(1, 1500)) // consumes the hello, then waits
	waitFor(t, "the plugin to learn vfkit from its hello", plugin.Connected)
}

func TestDgramBatch64(t *testing.T) {
	plugin, guest := frameiotest.DgramPair(t, frameiotest.DgramPairOptions{})
	for _, dir := range []struct {
		name     string
		from, to frameio.Port
	}{{"guest to plugin", guest, plugin}, {"plugin to guest", plugin, guest}} {
		t.Run(dir.name, func(t *testing.T) {
			// QEMU does not connect to the plugin, so the kernel queues at
			// most max_dgram_qlen+1 frames for it: the plugin's write waits
			// for the reader.
			out := frames(64, 1514, 1000)
			wrote := make(chan int)
			go func() {
				n, _ := dir.from.WriteBatch(out)
				wrote <- n
			}()
			got := collect(t, dir.to, 64)
			if n := <-wrote; n != 64 {
				t.Fatalf("wrote %d frames, want 64", n)
			}
			for i := range got {
				if !bytes.Equal(got[i], out[i].Bytes()) {
					t.Fatalf("frame %d: seq %d, want %d", i, frameiotest.Seq(got[i]), 1000+i)
				}
			}
		})
	}
}

func TestDgramDropsMalformed(t *testing.T) {
	dir := frameiotest.TempDir(t)
	pp := filepath.Join(dir, "p.sock")
	const mtu = 1500
	plugin, err := frameio.ListenDgram(pp, frameio.DgramOptions{MTU: mtu, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer plugin.Close()
	raw, err := net.DialUnix("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "r.sock"), Net: "unixgram"}, &net.UnixAddr{Name: pp, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	big := make([]byte, frameio.FrameSize(mtu)+1)
	frameiotest.FillFrame(big, len(big), 1)
	fits := make([]byte, frameio.FrameSize(mtu))
	frameiotest.FillFrame(fits, len(fits), 2)
	for _, d := range [][]byte{big, make([]byte, 13), {}, make([]byte, 65000), fits} {
		if _, err := raw.Write(d); err != nil {
			t.Fatalf("sending %d bytes: %v", len(d), err)
		}
	}
	got := collect(t, plugin, 1)
	if !bytes.Equal(got[0], fits) {
		t.Fatalf("got a %d-byte frame (seq %d), want the %d-byte one", len(got[0]), frameiotest.Seq(got[0]), len(fits))
	}
	if s := plugin.Stats(); s.RxDropped != 4 || s.RxFrames != 1 {
		t.Fatalf("stats %+v, want 4 dropped and 1 frame", s)
	}

	// Frames to send that are malformed are dropped and counted too.
	bad := frames(3, 60, 0)
	bad[0].N = 10
	bad[2].N = frameio.FrameSize(mtu) + 1
	n, err := plugin.WriteBatch(bad)
	if n != 1 || err != nil {
		t.Fatalf("write = %d, %v; want the one good frame sent", n, err)
	}
	if s := plugin.Stats(); s.TxDropped != 2 {
		t.Fatalf("TxDropped = %d, want 2", s.TxDropped)
	}
}

func TestDgramStaleSocketReplaced(t *testing.T) {
	dir := frameiotest.TempDir(t)
	pp := filepath.Join(dir, "p.sock")
	first, err := frameio.ListenDgram(pp, frameio.DgramOptions{Logger: frameiotest.Quiet})
	if err != nil {
		t.Fatal(err)
	}
	// A crashed plugin leaves its socket file; the next one takes the path.
	second, err := frameio.ListenDgram(pp, frameio.DgramOptions{Logger: frameiotest.Quiet})
	if err != nil {
		t.Fatalf("binding over a stale socket: %v", err)
	}
	first.Close()
	if _, err := os.Stat(pp); err != nil {
		t.Fatalf("closing the old port removed the new one's socket: %v", err)
	}
	second.Close()
	if _, err := os.Stat(pp); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket file left after Close: %v", err)
	}

	plain := filepath.Join(dir, "plain")
	os.WriteFile(plain, []byte("x"), 0o600)
	if _, err := frameio.ListenDgram(plain, frameio.DgramOptions{}); err == nil {
		t.Fatal("bound over a regular file")
	}
}

func TestDgramCloseUnblocksRead(t *testing.T) {
	p, err := frameio.ListenDgram(filepath.Join(frameiotest.TempDir(t), "p.sock"), frameio.DgramOptions{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() {
		_, err := p.ReadBatch(frameio.NewBatch(8, 1500))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // let the reader park; not synchronisation
	p.Close()
	woken(t, "reader", done, frameio.ErrClosed)
	if _, err := p.WriteBatch(frames(1, 60, 0)); !errors.Is(err, frameio.ErrClosed) {
		t.Fatalf("write after close = %v", err)
	}
}

// A restarted QEMU binds the same path again with a new socket; the
// plugin, still connected to the dead one, would refuse it (EPERM) until
// it notices.
func TestDgramPeerRestarts(t *testing.T) {
	for _, given := range []bool{false, true} {
		name := "learned"
		if given {
			name = "given"
		}
		t.Run(name, func(t *testing.T) {
			dir := frameiotest.TempDir(t)
			pp, gp := filepath.Join(dir, "p.sock"), filepath.Join(dir, "g.sock")
			o := frameio.DgramOptions{PeerCheck: 20 * time.Millisecond, Logger: testLogger(t)}
			if given {
				o.Peer = gp
			}
			plugin, err := frameio.ListenDgram(pp, o)
			if err != nil {
				t.Fatal(err)
			}
			defer plugin.Close()
			guest, err := frameio.ListenDgram(gp, frameio.DgramOptions{Peer: pp, NoConnect: true, Logger: frameiotest.Quiet})
			if err != nil {
				t.Fatal(err)
			}
			guest.WriteBatch(frames(1, 60, 1))
			collect(t, plugin, 1)
			waitFor(t, "connect", plugin.Connected)

			guest.Close()
			guest, err = frameio.ListenDgram(gp, frameio.DgramOptions{Peer: pp, NoConnect: true, Logger: frameiotest.Quiet})
			if err != nil {
				t.Fatal(err)
			}
			defer guest.Close()
			got := make(chan struct{})
			go func() {
				collect(t, plugin, 1)
				close(got)
			}()
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
		send:
			for {
				guest.WriteBatch(frames(1, 60, 2))
				select {
				case <-got:
					break send
				case <-tick.C:
				}
			}
			waitFor(t, "reconnect", plugin.Connected)
			if n, _ := plugin.WriteBatch(frames(1, 60, 3)); n != 1 {
				t.Fatal("the plugin cannot reach the restarted guest")
			}
			collect(t, guest, 1)
		})
	}
}

func TestDgramAllocs(t *testing.T) {
	for _, c := range []struct {
		guest frameiotest.GuestMode
		batch int // QEMU's socket queues 11 frames at most: stay under
	}{{frameiotest.GuestConnected, 64}, {frameiotest.GuestQEMU, 8}} {
		plugin, guest := frameiotest.DgramPair(t, frameiotest.DgramPairOptions{Guest: c.guest})
		out := frames(c.batch, 1514, 0)
		in := frameio.NewBatch(c.batch, 1500)
		for _, dir := range []struct {
			name     string
			from, to frameio.Port
		}{{"guest to plugin", guest, plugin}, {"plugin to guest", plugin, guest}} {
			t.Run(c.guest.String()+"/"+dir.name, func(t *testing.T) {
				allocs := testing.AllocsPerRun(200, func() {
					if n, err := dir.from.WriteBatch(out); n != c.batch || err != nil {
						t.Fatalf("write = %d, %v", n, err)
					}
					for got := 0; got < c.batch; {
						n, err := dir.to.ReadBatch(in)
						if err != nil {
							t.Fatal(err)
						}
						got += n
					}
				})
				if allocs != 0 {
					t.Fatalf("%v allocations per WriteBatch+ReadBatch of %d frames, want 0", allocs, c.batch)
				}
			})
		}
	}
}

// A peer that does not read (an idle VM's socket) fills up: WriteBatch
// then waits WriteTimeout for room, WriteBatchNoWait (the switch's
// floods) drops at once.
func TestDgramNoWaitOnFullPeer(t *testing.T) {
	plugin, _ := fullPeer(t, 3*time.Second)
	fs := frames(1, 1514, 0)
	dropped := plugin.Stats().TxDropped
	start := time.Now()
	for range 10 {
		if n, _ := plugin.WriteBatchNoWait(fs[:1]); n != 0 {
			t.Fatal("a frame went into a full queue")
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("10 writes to a full peer took %v: they waited", d)
	}
	if got := plugin.Stats().TxDropped - dropped; got != 10 {
		t.Fatalf("%d frames counted dropped, want 10", got)
	}
}

// A writer waiting for room in a full peer's queue returns when the port
// is closed, long before its timeout.
func TestDgramCloseUnblocksWrite(t *testing.T) {
	plugin, _ := fullPeer(t, time.Hour)
	done := make(chan error)
	go func() {
		_, err := plugin.WriteBatch(frames(1, 1514, 0))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // let the writer wait; not synchronisation
	plugin.Close()
	woken(t, "writer", done, frameio.ErrClosed)
}

// A writer waiting for room goes on as soon as the peer reads: the port
// watches for send space while it waits (and only then).
func TestDgramWriterWokenByRoom(t *testing.T) {
	plugin, guest := fullPeer(t, time.Hour)
	done := make(chan error, 1)
	go func() {
		n, err := plugin.WriteBatch(frames(1, 1514, 1<<20))
		if err == nil && n != 1 {
			err = fmt.Errorf("sent %d frames, want 1", n)
		}
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // let the writer wait; not synchronisation
	if _, err := guest.ReadBatch(frameio.NewBatch(64, 1514)); err != nil {
		t.Fatal(err)
	}
	if err := woken(t, "writer", done, nil); err != nil {
		t.Fatal(err)
	}
}
