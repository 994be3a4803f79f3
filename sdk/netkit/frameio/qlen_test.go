//go:build linux

package frameio_test

import (
	"path/filepath"
	"testing"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

func TestMaxDgramQlenPerNamespace(t *testing.T) {
	host, err := frameio.MaxDgramQlen()
	if err != nil {
		t.Fatal(err)
	}
	ns := frameiotest.NewNetns(t)
	err = ns.Run(func() error {
		if n, err := frameio.MaxDgramQlen(); err != nil || n != 10 {
			t.Errorf("a new namespace starts with max_dgram_qlen %d, %v; want 10", n, err)
		}
		if err := frameio.SetMaxDgramQlen(333); err != nil {
			return err
		}
		if n, err := frameio.MaxDgramQlen(); err != nil || n != 333 {
			t.Errorf("after setting 333: %d, %v", n, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := frameio.MaxDgramQlen(); n != host {
		t.Fatalf("the host's max_dgram_qlen changed from %d to %d", host, n)
	}
}

// An unconnected sender (QEMU) can queue only max_dgram_qlen+1 frames to
// a socket that is not connected back to it; once the port connects to
// it, the limit no longer applies. Run in fresh namespaces so the limit
// is known, default and raised.
func TestDgramQlenCapsUnconnectedSender(t *testing.T) {
	for _, qlen := range []int{0, 100} {
		name := "default"
		if qlen > 0 {
			name = "raised"
		}
		t.Run(name, func(t *testing.T) {
			ns := frameiotest.NewNetns(t)
			dir := frameiotest.TempDir(t)
			pp, gp := filepath.Join(dir, "p.sock"), filepath.Join(dir, "g.sock")
			var plugin, guest *frameio.DgramPort
			want := 10
			err := ns.Run(func() (err error) {
				if qlen > 0 {
					if err := frameio.SetMaxDgramQlen(qlen); err != nil {
						return err
					}
					want = qlen
				}
				// Unconnected plugin (no Peer): it learns from the first
				// datagram it reads, and this one reads nothing yet.
				if plugin, err = frameio.ListenDgram(pp, frameio.DgramOptions{Logger: frameiotest.Quiet}); err != nil {
					return err
				}
				guest, err = frameio.ListenDgram(gp, frameio.DgramOptions{Peer: pp, NoConnect: true, WriteTimeout: -1, Logger: frameiotest.Quiet})
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			defer plugin.Close()
			defer guest.Close()

			n, _ := guest.WriteBatch(frames(2*want, 60, 0))
			t.Logf("max_dgram_qlen %d: an unconnected sender queued %d frames before EAGAIN", want, n)
			if n != want+1 {
				t.Fatalf("queued %d frames, want %d (max_dgram_qlen+1)", n, want+1)
			}
			if s := guest.Stats(); s.TxDropped != uint64(2*want-n) {
				t.Fatalf("TxDropped = %d, want %d", s.TxDropped, 2*want-n)
			}

			// Reading makes the plugin connect to the guest: now the guest
			// may queue far more (its send buffer is the limit).
			collect(t, plugin, 1)
			if !plugin.Connected() {
				t.Fatal("plugin did not connect")
			}
			if n, _ := guest.WriteBatch(frames(500, 60, 0)); n != 500 {
				t.Fatalf("after the plugin connected, queued %d of 500", n)
			}
		})
	}
}
