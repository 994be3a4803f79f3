package frameio_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

func TestPipe(t *testing.T) {
	a, b := frameio.Pipe(1500)
	out := frames(10, 1514, 0)
	if n, err := a.WriteBatch(out); n != 10 || err != nil {
		t.Fatalf("write = %d, %v", n, err)
	}
	got := collect(t, b, 10)
	for i := range got {
		if !bytes.Equal(got[i], out[i].Bytes()) {
			t.Fatalf("frame %d differs", i)
		}
	}
	// The writer's buffers are its own again at once: the pipe copied.
	out[0].Buf[20] ^= 0xff
	b.WriteBatch(out[:1])
	if got := collect(t, a, 1); !bytes.Equal(got[0], out[0].Bytes()) {
		t.Fatal("b to a differs")
	}

	// A full queue drops, and counts.
	big := frames(frameio.PipeQueue+10, 60, 0)
	if n, _ := a.WriteBatch(big); n != frameio.PipeQueue {
		t.Fatalf("queued %d, want %d", n, frameio.PipeQueue)
	}
	if s := a.Stats(); s.TxDropped != 10 {
		t.Fatalf("TxDropped = %d", s.TxDropped)
	}
	collect(t, b, frameio.PipeQueue)

	allocs := testing.AllocsPerRun(100, func() {
		a.WriteBatch(out)
		for got := 0; got < len(out); {
			n, _ := b.ReadBatch(out)
			got += n
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per batch", allocs)
	}

	// Closing one end: its reads fail, the other end reads EOF.
	done := make(chan error, 1)
	go func() {
		_, err := b.ReadBatch(frameio.NewBatch(1, 1500))
		done <- err
	}()
	a.Close()
	select {
	case err := <-done:
		if !errors.Is(err, io.EOF) {
			t.Fatalf("read from b after a closed = %v, want EOF", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("closing a did not wake b's reader")
	}
	if _, err := a.ReadBatch(out); !errors.Is(err, frameio.ErrClosed) {
		t.Fatalf("read from closed a = %v", err)
	}
	if n, err := b.WriteBatch(out); n != 0 || err != nil {
		t.Fatalf("write to closed a = %d, %v; want a silent drop", n, err)
	}
}

func TestRelay(t *testing.T) {
	a, b := frameio.Pipe(1500)
	c, d := frameio.Pipe(1500)
	done := make(chan error, 1)
	go func() { done <- frameio.Relay(context.Background(), b, c, 16) }()
	out := frames(40, 300, 0)
	a.WriteBatch(out)
	got := collect(t, d, 40)
	for i := range got {
		if frameiotest.Seq(got[i]) != uint32(i) {
			t.Fatalf("frame %d out of order", i)
		}
	}
	b.Close()
	if err := <-done; !errors.Is(err, frameio.ErrClosed) {
		t.Fatalf("relay ended with %v", err)
	}
}
