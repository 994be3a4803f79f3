package frameio_test

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

// TestDgramAnswersAPeerThatJustBound: a plugin's port made before QEMU
// bound its socket fails its first connect. When the VM's first frame
// arrives a moment later, the reply to it must not be dropped for want
// of a connection (it was, within 100 ms of the failed attempt: a fresh
// VM lost the OFFER to its first DISCOVER).
func TestDgramAnswersAPeerThatJustBound(t *testing.T) {
	dir := frameiotest.TempDir(t)
	pluginPath, vmPath := filepath.Join(dir, "p.sock"), filepath.Join(dir, "vm.sock")
	plugin, err := frameio.ListenDgram(pluginPath, frameio.DgramOptions{Peer: vmPath, Logger: frameiotest.Quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer plugin.Close()
	vm, err := frameio.ListenDgram(vmPath, frameio.DgramOptions{Peer: pluginPath, NoConnect: true, Logger: frameiotest.Quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	f := make([]byte, 60)
	frameiotest.FillFrame(f, len(f), 1)
	if n, err := vm.WriteBatch([]frameio.Frame{{Buf: f, N: len(f)}}); n != 1 {
		t.Fatal(n, err)
	}
	collect(t, plugin, 1)
	if n, _ := plugin.WriteBatch([]frameio.Frame{{Buf: f, N: len(f)}}); n != 1 {
		t.Fatalf("the reply to the VM's first frame was dropped (%+v)", plugin.Stats())
	}
	collect(t, vm, 1)
}

// TestStreamCountsCutFrames: a malformed length prefix or a peer that
// hangs up inside a frame counts one frame dropped; the frames before it
// are delivered, and the listener takes the next connection.
func TestStreamCountsCutFrames(t *testing.T) {
	path := filepath.Join(frameiotest.TempDir(t), "s.sock")
	l, err := frameio.ListenStream(path, frameio.StreamOptions{Logger: frameiotest.Quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	good := make([]byte, 60)
	frameiotest.FillFrame(good, len(good), 7)
	cases := []struct {
		name  string
		data  []byte
		whole int // frames delivered
	}{
		{"0xFFFFFFFF", []byte{0xff, 0xff, 0xff, 0xff}, 0},
		{"zero", []byte{0, 0, 0, 0}, 0},
		{"a frame then 0xFFFFFFFF", append(frameio.AppendStreamFrame(nil, good), 0xff, 0xff, 0xff, 0xff), 1},
		{"half a header", []byte{0, 0}, 0},
		{"a header without its frame", binary.BigEndian.AppendUint32(nil, 60), 0},
		{"a frame then half a frame", append(frameio.AppendStreamFrame(nil, good), append(binary.BigEndian.AppendUint32(nil, 60), good[:30]...)...), 1},
	}
	frames := make(chan []byte, 16)
	go func() {
		batch := frameio.NewBatch(8, frameio.DefaultMTU)
		for {
			n, err := l.ReadBatch(batch)
			for i := range n {
				frames <- bytes.Clone(batch[i].Bytes())
			}
			if err != nil {
				close(frames)
				return
			}
		}
	}()
	for i, c := range cases {
		conn, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write(c.data)
		if c.data[0] == 0xff || (len(c.data) == 4 && c.data[3] == 0) || len(c.data) > 64 && c.data[64] == 0xff {
			// Malformed: the listener hangs up.
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.Copy(io.Discard, conn); err != nil {
				t.Errorf("%s: the connection was not closed: %v", c.name, err)
			}
		}
		conn.Close()
		for range c.whole {
			select {
			case f := <-frames:
				if !bytes.Equal(f, good) {
					t.Errorf("%s: delivered %x", c.name, f)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("%s: the frame before the bad part was not delivered", c.name)
			}
		}
		deadline := time.Now().Add(5 * time.Second)
		for l.Stats().RxDropped < uint64(i+1) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if got := l.Stats().RxDropped; got != uint64(i+1) {
			t.Errorf("%s: %d frames counted dropped in all; want %d", c.name, got, i+1)
		}
	}
	select {
	case f, ok := <-frames:
		if ok {
			t.Errorf("a frame delivered from the bad parts: %x", f)
		}
	default:
	}
}
