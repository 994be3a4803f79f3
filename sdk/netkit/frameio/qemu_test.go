//go:build linux

package frameio_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

// Tests against the real QEMU (7.2 here). They skip without it, and the
// boot test without the test guest (make guest; ANKA_GUEST_DIR names
// another directory) or with -short.

func needQEMU(t *testing.T) string {
	t.Helper()
	q, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("needs qemu-system-x86_64")
	}
	return q
}

func startQEMU(t *testing.T, ns *frameiotest.Netns, args ...string) {
	t.Helper()
	q := needQEMU(t)
	ctx, cancel := context.WithCancel(context.Background())
	var cmd *exec.Cmd
	if ns != nil {
		cmd = exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name, q}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, q, args...)
	}
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
		if t.Failed() {
			t.Logf("qemu output:\n%s", out.String())
		}
	})
}

func dgramNetdev(local, remote string) string {
	return "dgram,id=n0,local.type=unix,local.path=" + local + ",remote.type=unix,remote.path=" + remote
}

// QEMU's dgram netdev sends with sendto and never connects, so what a
// plugin sends to it is capped by max_dgram_qlen as it was in the network
// namespace QEMU created its socket in. A QEMU that is not running (-S)
// reads no more than one, so the cap shows.
func TestQEMUDgramIsUnconnected(t *testing.T) {
	needQEMU(t)
	for _, qlen := range []int{0, 64} {
		name := "host namespace"
		if qlen > 0 {
			name = fmt.Sprintf("namespace with qlen %d", qlen)
		}
		t.Run(name, func(t *testing.T) {
			want, err := frameio.MaxDgramQlen()
			if err != nil {
				t.Fatal(err)
			}
			var ns *frameiotest.Netns
			if qlen > 0 {
				ns = frameiotest.NewNetns(t)
				if err := ns.Run(func() error { return frameio.SetMaxDgramQlen(qlen) }); err != nil {
					t.Fatal(err)
				}
				want = qlen
			}
			dir := frameiotest.TempDir(t)
			pp, gp := filepath.Join(dir, "p.sock"), filepath.Join(dir, "q.sock")
			plugin, err := frameio.ListenDgram(pp, frameio.DgramOptions{Peer: gp, PeerCheck: 10 * time.Millisecond, WriteTimeout: -1, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer plugin.Close()
			startQEMU(t, ns, "-nodefaults", "-S", "-display", "none", "-m", "64",
				"-netdev", dgramNetdev(gp, pp), "-device", "virtio-net-pci,netdev=n0")
			waitFor(t, "the plugin to connect to QEMU's socket", plugin.Connected)
			n, _ := plugin.WriteBatch(frames(4*want, 60, 0))
			t.Logf("QEMU's socket (max_dgram_qlen %d where it was made) took %d frames before EAGAIN", want, n)
			// The queue holds max_dgram_qlen+1; QEMU may have read one
			// before it found its NIC unable to take it.
			if n < want+1 || n > want+2 {
				t.Fatalf("QEMU took %d frames, want %d or %d: is its socket connected?", n, want+1, want+2)
			}
		})
	}
}

// A real guest behind a datagram port, relayed to a TAP in a namespace:
// the namespace reaches the guest's web server. Then the plugin restarts
// and binds the same path: QEMU's frames come back to it.
func TestQEMUGuestThroughDgramPort(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	needQEMU(t)
	guest := frameiotest.GuestDir(t)
	ns := frameiotest.NewNetns(t)
	dir := frameiotest.TempDir(t)
	pp, gp := filepath.Join(dir, "p.sock"), filepath.Join(dir, "q.sock")

	var tap *frameio.TAPPort
	if err := ns.Run(func() (err error) {
		tap, err = frameio.OpenTAP("anka-q0", frameio.TAPOptions{Up: true, Logger: testLogger(t)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer tap.Close()
	ns.IP(t, "addr", "add", "10.77.0.1/24", "dev", "anka-q0")

	// A plugin: a port, relayed both ways to the TAP.
	plug := func(o frameio.DgramOptions) (*frameio.DgramPort, func()) {
		o.Logger = testLogger(t)
		p, err := frameio.ListenDgram(pp, o)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			frameio.Relay(ctx, p, tap, 64)
			close(done)
		}()
		go frameio.Relay(ctx, tap, p, 64)
		return p, func() {
			cancel()
			p.Close()
			<-done
		}
	}
	// No Peer: the plugin learns QEMU's address from the guest's first
	// frame (IPv6 duplicate address detection, here; DHCP in real life).
	// A guest with nothing to say would never be learned, which is why a
	// plugin should be told QEMU's path when the core knows it.
	plugin, stop := plug(frameio.DgramOptions{})
	// The TAP→plugin relay of a stopped plugin ends at its next frame;
	// any frame it eats meanwhile, the guest's TCP sends again.

	console := filepath.Join(dir, "console.log")
	startQEMU(t, nil, "-m", "256", "-kernel", filepath.Join(guest, "vmlinuz"), "-initrd", filepath.Join(guest, "initrd.img"),
		"-append", "console=ttyS0 anka.hostname=fio anka.ip=10.77.0.2/24",
		"-display", "none", "-serial", "file:"+console, "-no-reboot",
		"-netdev", dgramNetdev(gp, pp), "-device", "virtio-net-pci,netdev=n0")
	defer func() {
		if t.Failed() {
			b, _ := os.ReadFile(console)
			t.Logf("console:\n%s", b)
		}
	}()

	get := func() string {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			var body string
			err := ns.Run(func() error {
				c, err := net.DialTimeout("tcp", "10.77.0.2:80", time.Second)
				if err != nil {
					return err
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				fmt.Fprintf(c, "GET / HTTP/1.0\r\n\r\n")
				b, err := io.ReadAll(c)
				body = string(b)
				return err
			})
			if err == nil && strings.Contains(body, "anka-guest fio") {
				return body
			}
			if time.Now().After(deadline) {
				t.Fatalf("no web page from the guest: %v %q", err, body)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	get()
	if plugin.Peer() != gp || !plugin.Connected() {
		t.Fatalf("plugin peer %q connected %v; want QEMU's %s", plugin.Peer(), plugin.Connected(), gp)
	}
	t.Logf("guest reached through the port; plugin stats %+v", plugin.Stats())

	// The plugin restarts; told QEMU's path, it reaches a guest that has
	// nothing to say first.
	stop()
	plugin, stop = plug(frameio.DgramOptions{Peer: gp})
	defer stop()
	get()
	t.Logf("guest reached again after the plugin restarted; stats %+v", plugin.Stats())
}
