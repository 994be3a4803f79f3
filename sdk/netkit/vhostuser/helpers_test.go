//go:build linux

package vhostuser_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/vhostuser"
	"github.com/anka-net/anka/sdk/netkit/vhostuser/vhostuserdriver"
)

func testLog(t testing.TB) *slog.Logger {
	if os.Getenv("VHOSTUSER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// sockDir is a short directory for sockets (sun_path is 108 bytes).
func sockDir(t testing.TB) string {
	d, err := os.MkdirTemp("", "vu")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func listen(t testing.TB, o vhostuser.Options) *vhostuser.Port {
	t.Helper()
	if o.Log == nil {
		o.Log = testLog(t)
	}
	p, err := vhostuser.Listen(filepath.Join(sockDir(t), "vu.sock"), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t testing.TB, p *vhostuser.Port, o vhostuserdriver.DriverOptions) *vhostuserdriver.Driver {
	t.Helper()
	if o.Log == nil {
		o.Log = testLog(t)
	}
	if o.MTU == 0 {
		o.MTU = p.MTU()
		o.HostMTU = o.MTU
	}
	d, err := vhostuserdriver.Dial(p.Path(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// frame is a recognisable frame of n bytes: broadcast destination, a
// source MAC, and seq in the payload.
func frame(n, seq int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + seq)
	}
	copy(b, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0, 0, 0, 1})
	b[12], b[13] = 0x88, 0xb5
	if n >= 18 {
		b[14], b[15], b[16], b[17] = byte(seq>>24), byte(seq>>16), byte(seq>>8), byte(seq)
	}
	return b
}

// send writes all of frames through w, retrying what was dropped.
func send(t testing.TB, w frameio.Port, frames [][]byte, mtu int) error {
	batch := frameio.NewBatch(16, mtu)
	for i := 0; i < len(frames); {
		n := min(len(batch), len(frames)-i)
		for j := 0; j < n; j++ {
			batch[j].N = copy(batch[j].Buf, frames[i+j])
		}
		sent, err := w.WriteBatch(batch[:n])
		if err != nil {
			return err
		}
		i += sent
	}
	return nil
}

// receive reads want frames from r and returns them.
func receive(r frameio.Port, want, mtu int) ([][]byte, error) {
	batch := frameio.NewBatch(16, mtu)
	var out [][]byte
	for len(out) < want {
		n, err := r.ReadBatch(batch)
		if err != nil {
			return out, err
		}
		for _, f := range batch[:n] {
			out = append(out, append([]byte(nil), f.Bytes()...))
		}
	}
	return out, nil
}

// transfer sends frames from w to r and checks they arrive whole and in
// order.
func transfer(t testing.TB, w, r frameio.Port, frames [][]byte, mtu int) {
	t.Helper()
	var got [][]byte
	var rerr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		got, rerr = receive(r, len(frames), mtu)
	}()
	if err := send(t, w, frames, mtu); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if rerr != nil {
		t.Fatal(rerr)
	}
	if err := sameFrames(got, frames); err != nil {
		t.Fatal(err)
	}
}

func sameFrames(got, want [][]byte) error {
	if len(got) != len(want) {
		return fmt.Errorf("got %d frames, want %d", len(got), len(want))
	}
	for i := range got {
		if !bytes.Equal(got[i], want[i]) {
			return fmt.Errorf("frame %d: got %d bytes %x..., want %d bytes %x...", i, len(got[i]), head(got[i]), len(want[i]), head(want[i]))
		}
	}
	return nil
}

func head(b []byte) []byte { return b[:min(len(b), 24)] }

// eventually polls cond until it holds or a generous deadline passes (a
// hang guard, not a timing assertion).
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting: %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
