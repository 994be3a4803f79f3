//go:build linux

package frameio_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

func TestStreamRoundTrip(t *testing.T) {
	server, client := frameiotest.StreamPair(t, frameiotest.StreamPairOptions{MTU: 9000})
	before := client.Stats()
	sizes := []int{14, 60, 1514, 9014, 9018, 100}
	out := frameio.NewBatch(64, 9000)
	for i := range out {
		out[i].N = frameiotest.FillFrame(out[i].Buf, sizes[i%len(sizes)], uint32(i))
	}
	for _, dir := range []struct {
		name     string
		from, to frameio.Port
	}{{"client to server", client, server}, {"server to client", server, client}} {
		t.Run(dir.name, func(t *testing.T) {
			if n, err := dir.from.WriteBatch(out); n != 64 || err != nil {
				t.Fatalf("write = %d, %v", n, err)
			}
			got := collect(t, dir.to, 64)
			for i := range got {
				if !bytes.Equal(got[i], out[i].Bytes()) {
					t.Fatalf("frame %d: %d bytes, want %d", i, len(got[i]), out[i].N)
				}
			}
		})
	}
	var total uint64
	for i := range out {
		total += uint64(out[i].N)
	}
	if s := client.Stats(); s.TxFrames-before.TxFrames != 64 || s.TxBytes-before.TxBytes != total || s.RxFrames != 64 || s.RxBytes != total {
		t.Fatalf("client stats %+v, want 64 frames and %d bytes each way", s, total)
	}
}

// dialRaw connects to a stream listener without frameio, to send bytes no
// frameio port would.
func dialRaw(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func listen(t *testing.T, o frameio.StreamOptions) *frameio.StreamListener {
	t.Helper()
	if o.Logger == nil {
		o.Logger = testLogger(t)
	}
	l, err := frameio.ListenStream(filepath.Join(frameiotest.TempDir(t), "s.sock"), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestStreamPartialWrites(t *testing.T) {
	l := listen(t, frameio.StreamOptions{})
	c := dialRaw(t, l.Path())
	var stream []byte
	var want [][]byte
	for i, size := range []int{60, 1514, 14, 700, 1518} {
		f := make([]byte, size)
		frameiotest.FillFrame(f, size, uint32(i))
		want = append(want, f)
		stream = frameio.AppendStreamFrame(stream, f)
	}
	// Dribble the stream out in pieces that split headers and frames.
	go func() {
		for i := 0; i < len(stream); {
			n := min(1+i%7, len(stream)-i)
			if _, err := c.Write(stream[i : i+n]); err != nil {
				return
			}
			i += n
			if i%5 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	got := collect(t, l, len(want))
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("frame %d differs", i)
		}
	}
}

func TestStreamBadLengthClosesConnection(t *testing.T) {
	const mtu = 1500
	for _, bad := range []uint32{0xFFFFFFFF, 0, 13, uint32(frameio.FrameSize(mtu) + 1), 1 << 20} {
		t.Run("", func(t *testing.T) {
			l := listen(t, frameio.StreamOptions{MTU: mtu})
			c := dialRaw(t, l.Path())
			good := make([]byte, 60)
			frameiotest.FillFrame(good, 60, 1)
			msg := frameio.AppendStreamFrame(nil, good)
			msg = binary.BigEndian.AppendUint32(msg, bad)
			msg = append(msg, bytes.Repeat([]byte{0xAA}, 100)...)
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			// The frame before the bad length still arrives.
			if got := collect(t, l, 1); !bytes.Equal(got[0], good) {
				t.Fatalf("got %x", got[0])
			}
			// The next read finds the bad length.
			next := make(chan []byte, 1)
			go func() { next <- collect(t, l, 1)[0] }()
			// Then the listener hangs up on that connection.
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
				t.Fatalf("after length %#x the connection is still open: read = %v", bad, err)
			}
			// A new connection works.
			c2 := dialRaw(t, l.Path())
			frameiotest.FillFrame(good, 60, 2)
			if _, err := c2.Write(frameio.AppendStreamFrame(nil, good)); err != nil {
				t.Fatal(err)
			}
			if got := <-next; !bytes.Equal(got, good) {
				t.Fatalf("after reconnecting got %x", got)
			}
			out := frames(1, 60, 3)
			if n, _ := l.WriteBatch(out); n != 1 {
				t.Fatal("cannot write to the new connection")
			}
		})
	}
}

func TestStreamNewConnectionReplacesOld(t *testing.T) {
	l := listen(t, frameio.StreamOptions{})
	o := frameio.StreamOptions{Logger: testLogger(t)}
	first, err := frameio.DialStream(l.Path(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if err := frameiotest.Introduce(first, l); err != nil {
		t.Fatal(err)
	}
	second, err := frameio.DialStream(l.Path(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	waitFor(t, "the second connection", func() bool { return l.Connections() == 2 })
	// The first client finds its connection closed.
	done := make(chan error, 1)
	go func() {
		_, err := first.ReadBatch(frameio.NewBatch(1, 1500))
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, io.EOF) {
			t.Fatalf("old client read = %v, want EOF", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("old connection not closed")
	}
	out := frames(3, 200, 10)
	if n, _ := l.WriteBatch(out); n != 3 {
		t.Fatalf("wrote %d to the new connection", n)
	}
	got := collect(t, second, 3)
	if frameiotest.Seq(got[2]) != 12 {
		t.Fatal("wrong frames on the new connection")
	}
	second.WriteBatch(out[:1])
	collect(t, l, 1)
}

func TestStreamListenerWithoutConnection(t *testing.T) {
	l := listen(t, frameio.StreamOptions{})
	if n, err := l.WriteBatch(frames(5, 60, 0)); n != 0 || err != nil {
		t.Fatalf("write with nobody connected = %d, %v", n, err)
	}
	if s := l.Stats(); s.TxDropped != 5 {
		t.Fatalf("TxDropped = %d", s.TxDropped)
	}
	done := make(chan error, 1)
	go func() {
		_, err := l.ReadBatch(frameio.NewBatch(1, 1500))
		done <- err
	}()
	time.Sleep(10 * time.Millisecond) // let the reader wait; not synchronisation
	l.Close()
	woken(t, "reader", done, frameio.ErrClosed)
}

// A peer that stops reading makes writes wait WriteTimeout, then drop
// whole frames: a frame begun is finished by the next write, so the
// stream stays in step and the connection open.
func TestStreamWriteTimeoutKeepsStreamInStep(t *testing.T) {
	for _, timeout := range []time.Duration{20 * time.Millisecond, -1} {
		t.Run(timeout.String(), func(t *testing.T) {
			l := listen(t, frameio.StreamOptions{WriteTimeout: timeout, SocketBuffer: 64 << 10})
			c := dialRaw(t, l.Path())
			c.Write(frameio.AppendStreamFrame(nil, frames(1, 60, 0)[0].Bytes()))
			collect(t, l, 1)
			var sent, seq int
			for tries := 0; tries < 1000; tries++ {
				out := frames(64, 1514, uint32(seq))
				n, _ := l.WriteBatch(out)
				sent += n
				seq += 64
				if n < len(out) {
					break
				}
			}
			s := l.Stats()
			if s.TxDropped == 0 {
				t.Fatalf("nothing dropped after %d frames to a peer that does not read", sent)
			}
			// The peer reads again; more frames follow.
			done := make(chan []byte)
			go func() {
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				b, _ := io.ReadAll(c)
				done <- b
			}()
			for i := 0; i < 20; i++ {
				if n, _ := l.WriteBatch(frames(8, 1514, 1<<20+uint32(8*i))); n > 0 {
					sent += n
				}
				time.Sleep(time.Millisecond)
			}
			waitFor(t, "everything written", func() bool {
				n, _ := l.WriteBatch(frames(1, 100, 1<<30))
				sent += n
				return n == 1
			})
			if !l.Connected() {
				t.Fatal("the connection was closed")
			}
			l.Close()
			b := <-done
			count := 0
			for len(b) >= 4 {
				n := int(binary.BigEndian.Uint32(b))
				if (n != 1514 && n != 100) || len(b) < 4+n {
					t.Fatalf("frame %d: length %d with %d bytes left: stream out of step", count, n, len(b)-4)
				}
				b = b[4+n:]
				count++
			}
			s = l.Stats()
			if len(b) != 0 || count != int(s.TxFrames) || count != sent {
				t.Fatalf("read %d whole frames and %d stray bytes; the port counted %d sent, WriteBatch said %d", count, len(b), s.TxFrames, sent)
			}
			t.Logf("%d frames sent whole, %d dropped", count, s.TxDropped)
		})
	}
}

func TestStreamAllocs(t *testing.T) {
	server, client := frameiotest.StreamPair(t, frameiotest.StreamPairOptions{})
	out := frames(64, 1514, 0)
	in := frameio.NewBatch(64, 1500)
	for _, dir := range []struct {
		name     string
		from, to frameio.Port
	}{{"client to server", client, server}, {"server to client", server, client}} {
		t.Run(dir.name, func(t *testing.T) {
			allocs := testing.AllocsPerRun(200, func() {
				if n, err := dir.from.WriteBatch(out); n != 64 || err != nil {
					t.Fatalf("write = %d, %v", n, err)
				}
				for got := 0; got < 64; {
					n, err := dir.to.ReadBatch(in)
					if err != nil {
						t.Fatal(err)
					}
					got += n
				}
			})
			if allocs != 0 {
				t.Fatalf("%v allocations per WriteBatch+ReadBatch of 64 frames, want 0", allocs)
			}
		})
	}
}

// Close wakes a reader waiting for frames and a writer waiting for room
// on a connection whose peer neither sends nor reads.
func TestStreamCloseUnblocksReadAndWrite(t *testing.T) {
	path := filepath.Join(frameiotest.TempDir(t), "peer.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p, err := frameio.DialStream(path, frameio.StreamOptions{WriteTimeout: time.Hour, SocketBuffer: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	peer, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	for i := 0; ; i++ { // fill the socket: the last batch waits for room
		if i > 10000 {
			t.Fatal("the socket never filled")
		}
		done := make(chan struct{})
		go func() {
			p.WriteBatch(frames(64, 1514, 0))
			close(done)
		}()
		select {
		case <-done:
			continue
		case <-time.After(200 * time.Millisecond):
		}
		read := make(chan error)
		go func() {
			_, err := p.ReadBatch(frameio.NewBatch(8, 1500))
			read <- err
		}()
		time.Sleep(20 * time.Millisecond) // let the reader wait; not synchronisation
		p.Close()
		wrote := make(chan error, 1)
		go func() { <-done; wrote <- nil }()
		woken(t, "writer", wrote, nil)
		woken(t, "reader", read, frameio.ErrClosed)
		return
	}
}
