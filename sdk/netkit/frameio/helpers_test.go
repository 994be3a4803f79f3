package frameio_test

import (
	"bytes"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

// testLogger sends a port's log lines to the test log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// collect reads frames from p until it has n of them, failing t after
// five seconds (and closing p to stop the reader).
func collect(t testing.TB, p frameio.Port, n int) [][]byte {
	t.Helper()
	type result struct {
		frames [][]byte
		err    error
	}
	ch := make(chan result, 1)
	go func() {
		var out [][]byte
		batch := frameio.NewBatch(64, p.MTU())
		for len(out) < n {
			k, err := p.ReadBatch(batch)
			for i := 0; i < k; i++ {
				out = append(out, bytes.Clone(batch[i].Bytes()))
			}
			if err != nil {
				ch <- result{out, err}
				return
			}
		}
		ch <- result{out, nil}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("reading %s port: %v after %d of %d frames", p.Kind(), r.err, len(r.frames), n)
		}
		return r.frames
	case <-time.After(5 * time.Second):
		p.Close()
		t.Fatalf("reading %s port: timed out waiting for %d frames", p.Kind(), n)
		return nil
	}
}

// frames makes a batch of n frames of length size, numbered from seq.
func frames(n, size int, seq uint32) []frameio.Frame {
	fs := frameio.NewBatch(n, max(frameio.DefaultMTU, size))
	for i := range fs {
		fs[i].N = frameiotest.FillFrame(fs[i].Buf, size, seq+uint32(i))
	}
	return fs
}

// waitFor polls cond until it holds or five seconds pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// woken waits up to five seconds for a call that Close (or the peer's)
// should wake, checks it ended with want (nil: anything) and returns what
// it ended with.
func woken(t testing.TB, what string, done <-chan error, want error) error {
	t.Helper()
	select {
	case err := <-done:
		if want != nil && !errors.Is(err, want) {
			t.Fatalf("%s woken with %v, want %v", what, err, want)
		}
		return err
	case <-time.After(5 * time.Second):
		t.Fatalf("nothing woke the %s", what)
		return nil
	}
}

// fullPeer makes a plugin-side datagram port connected to a guest-side one
// that does not read, and fills the guest's queue with 1514-byte frames.
func fullPeer(t testing.TB, writeTimeout time.Duration) (plugin, guest *frameio.DgramPort) {
	t.Helper()
	dir := frameiotest.TempDir(t)
	pp, gp := filepath.Join(dir, "p.sock"), filepath.Join(dir, "g.sock")
	guest, err := frameio.ListenDgram(gp, frameio.DgramOptions{Peer: pp, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { guest.Close() })
	plugin, err = frameio.ListenDgram(pp, frameio.DgramOptions{Peer: gp, WriteTimeout: writeTimeout, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plugin.Close() })
	waitFor(t, "connected", plugin.Connected)
	fs := frames(64, 1514, 0)
	for i := 0; ; i++ {
		if n, _ := plugin.WriteBatchNoWait(fs); n < len(fs) {
			return plugin, guest
		}
		if i > 10000 {
			t.Fatal("the peer's queue never filled")
		}
	}
}
