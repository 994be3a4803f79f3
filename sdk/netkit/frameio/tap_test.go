//go:build linux

package frameio_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"golang.org/x/sys/unix"
)

// collectMatching reads from p until it has n frames for which match
// holds, skipping the others, failing t after five seconds.
func collectMatching(t testing.TB, p frameio.Port, n int, match func([]byte) bool) [][]byte {
	t.Helper()
	fs := collectFrames(t, p, n, match)
	out := make([][]byte, len(fs))
	for i := range fs {
		out[i] = fs[i].Bytes()
	}
	return out
}

// collectFrames is collectMatching keeping each frame's Off.
func collectFrames(t testing.TB, p frameio.Port, n int, match func([]byte) bool) []frameio.Frame {
	t.Helper()
	ch := make(chan []frameio.Frame, 1)
	go func() {
		var out []frameio.Frame
		batch := frameio.NewBatch(16, p.MTU())
		for len(out) < n {
			k, err := p.ReadBatch(batch)
			if err != nil {
				break
			}
			for i := 0; i < k; i++ {
				if f := batch[i].Bytes(); match(f) {
					out = append(out, frameio.Frame{Buf: bytes.Clone(f), N: len(f), Off: batch[i].Off})
				}
			}
		}
		ch <- out
	}()
	select {
	case out := <-ch:
		if len(out) < n {
			t.Fatalf("read %d of %d frames before the port failed", len(out), n)
		}
		return out
	case <-time.After(5 * time.Second):
		p.Close()
		t.Fatalf("timed out waiting for %d matching frames on %s port", n, p.Kind())
		return nil
	}
}

func etherType(f []byte) uint16 { return binary.BigEndian.Uint16(f[12:14]) }

var (
	guestMAC = net.HardwareAddr{0x02, 0xa4, 0x6b, 0, 0, 0x22}
	guestIP  = net.IPv4(10, 99, 0, 2).To4()
	hostIP   = net.IPv4(10, 99, 0, 1).To4()
)

// arpRequest asks who has tpa, from sha/spa.
func arpRequest(sha net.HardwareAddr, spa, tpa net.IP) []byte {
	f := make([]byte, 60)
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], sha)
	binary.BigEndian.PutUint16(f[12:], 0x0806)
	a := f[14:]
	binary.BigEndian.PutUint16(a[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 1) // request
	copy(a[8:14], sha)
	copy(a[14:18], spa)
	copy(a[24:28], tpa)
	return f
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// echoRequest is an ICMP echo request from the guest to dst.
func echoRequest(dstMAC net.HardwareAddr, src, dst net.IP, id uint16, payload []byte) []byte {
	f := make([]byte, 14+20+8+len(payload))
	copy(f[0:6], dstMAC)
	copy(f[6:12], guestMAC)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	ip[8] = 64
	ip[9] = 1 // ICMP
	copy(ip[12:16], src)
	copy(ip[16:20], dst)
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	icmp := f[34:]
	icmp[0] = 8
	binary.BigEndian.PutUint16(icmp[4:], id)
	binary.BigEndian.PutUint16(icmp[6:], 1)
	copy(icmp[8:], payload)
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp))
	return f
}

// openTAP opens TAP anka0 in ns with o, up and logging to t, and closes
// it when the test ends.
func openTAP(t *testing.T, ns *frameiotest.Netns, o frameio.TAPOptions) *frameio.TAPPort {
	t.Helper()
	o.Up, o.Logger = true, testLogger(t)
	var tap *frameio.TAPPort
	if err := ns.Run(func() (err error) {
		tap, err = frameio.OpenTAP("anka0", o)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tap.Close() })
	return tap
}

func TestTAPTalksToTheKernel(t *testing.T) {
	ns := frameiotest.NewNetns(t)
	tap := openTAP(t, ns, frameio.TAPOptions{MTU: 1400})
	link := ns.IP(t, "link", "show", "anka0")
	if !strings.Contains(link, "mtu 1400") || !strings.Contains(link, ",UP") {
		t.Fatalf("TAP not set up: %s", link)
	}
	ns.IP(t, "addr", "add", "10.99.0.1/24", "dev", "anka0")

	if n, err := tap.WriteBatch([]frameio.Frame{{Buf: arpRequest(guestMAC, guestIP, hostIP), N: 60}}); n != 1 || err != nil {
		t.Fatalf("write ARP request = %d, %v", n, err)
	}
	reply := collectMatching(t, tap, 1, func(f []byte) bool {
		return etherType(f) == 0x0806 && binary.BigEndian.Uint16(f[20:]) == 2 && bytes.Equal(f[28:32], hostIP)
	})[0]
	if !bytes.Equal(reply[0:6], guestMAC) || !bytes.Equal(reply[38:42], guestIP) {
		t.Fatalf("ARP reply not addressed to the guest: %x", reply)
	}
	kernelMAC := net.HardwareAddr(reply[22:28])
	t.Logf("the kernel answered ARP: 10.99.0.1 is at %s", kernelMAC)

	// A ping in a full-size frame.
	payload := bytes.Repeat([]byte("anka"), (1400-28)/4)
	req := echoRequest(kernelMAC, guestIP, hostIP, 0x4242, payload)
	if n, _ := tap.WriteBatch([]frameio.Frame{{Buf: req, N: len(req)}}); n != 1 {
		t.Fatal("echo request not written")
	}
	echo := collectMatching(t, tap, 1, func(f []byte) bool {
		return etherType(f) == 0x0800 && f[23] == 1 && f[34] == 0 && binary.BigEndian.Uint16(f[38:]) == 0x4242
	})[0]
	if !bytes.Equal(echo[42:], payload) {
		t.Fatal("echo reply payload differs")
	}
	if s := tap.Stats(); s.TxFrames != 2 || s.RxFrames < 2 {
		t.Fatalf("stats %+v", s)
	}

	// Too big for the MTU: dropped before the kernel sees it.
	big := make([]byte, frameio.FrameSize(1400)+1)
	if n, _ := tap.WriteBatch([]frameio.Frame{{Buf: big, N: len(big)}}); n != 0 || tap.Stats().TxDropped != 1 {
		t.Fatalf("oversize frame: wrote %d, stats %+v", n, tap.Stats())
	}

	// A ping round trip allocates nothing in the port.
	out := []frameio.Frame{{Buf: req, N: len(req)}}
	in := frameio.NewBatch(8, 1400)
	allocs := testing.AllocsPerRun(100, func() {
		if n, _ := tap.WriteBatch(out); n != 1 {
			t.Fatal("echo request not written")
		}
		for {
			n, err := tap.ReadBatch(in)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < n; i++ {
				if f := in[i].Bytes(); etherType(f) == 0x0800 && f[34] == 0 {
					return
				}
			}
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per TAP write and read", allocs)
	}

	tap.Close()
	if out, err := exec.Command("ip", "-n", ns.Name, "link", "show", "anka0").CombinedOutput(); err == nil {
		t.Fatalf("a TAP that is not persistent outlived its port: %s", out)
	}
}

func TestTAPPersistAndAttach(t *testing.T) {
	ns := frameiotest.NewNetns(t)
	var tap *frameio.TAPPort
	if err := ns.Run(func() (err error) {
		tap, err = frameio.OpenTAP("anka1", frameio.TAPOptions{Persist: true})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	tap.Close()
	ns.IP(t, "link", "show", "anka1")
	ns.IP(t, "link", "del", "anka1")

	// A TAP opened by someone else, handed over as a file descriptor.
	var attached *frameio.TAPPort
	if err := ns.Run(func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, _ := unix.NewIfreq("anka2")
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return err
		}
		attached, err = frameio.AttachTAP(fd, frameio.TAPOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer attached.Close()
	if attached.Name() != "anka2" {
		t.Fatalf("name = %q", attached.Name())
	}
	done := make(chan error, 1)
	go func() {
		_, err := attached.ReadBatch(frameio.NewBatch(4, 1500))
		done <- err
	}()
	time.Sleep(10 * time.Millisecond) // let the reader wait; not synchronisation
	attached.Close()
	select {
	case err := <-done:
		if err != frameio.ErrClosed {
			t.Fatalf("read after close = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake the TAP reader")
	}
}

// An offloading TAP (the switch's uplink) still reads and writes plain
// frames: the kernel answers ARP and ping written through it (ICMP comes
// complete), and a TCP SYN it sends with its checksum left partial is
// handed up partial and finishes to a valid checksum.
func TestTAPOffload(t *testing.T) {
	ns := frameiotest.NewNetns(t)
	tap := openTAP(t, ns, frameio.TAPOptions{MTU: 1500, Offload: true})
	ns.IP(t, "addr", "add", "10.99.0.1/24", "dev", "anka0")
	if n, err := tap.WriteBatch([]frameio.Frame{{Buf: arpRequest(guestMAC, guestIP, hostIP), N: 60}}); n != 1 || err != nil {
		t.Fatalf("write ARP request = %d, %v", n, err)
	}
	reply := collectMatching(t, tap, 1, func(f []byte) bool {
		return etherType(f) == 0x0806 && binary.BigEndian.Uint16(f[20:]) == 2 && bytes.Equal(f[28:32], hostIP)
	})[0]
	kernelMAC := net.HardwareAddr(reply[22:28])
	payload := bytes.Repeat([]byte("anka"), (1500-28)/4)
	req := echoRequest(kernelMAC, guestIP, hostIP, 0x4243, payload)
	if n, _ := tap.WriteBatch([]frameio.Frame{{Buf: req, N: len(req)}}); n != 1 {
		t.Fatal("echo request not written")
	}
	echo := collectMatching(t, tap, 1, func(f []byte) bool {
		return etherType(f) == 0x0800 && f[23] == 1 && f[34] == 0 && binary.BigEndian.Uint16(f[38:]) == 0x4243
	})[0]
	if !bytes.Equal(echo[42:], payload) {
		t.Fatal("echo reply payload differs")
	}

	// The kernel's SYN to the guest: its checksum left partial (the
	// kernel's NEEDS_CSUM), handed up so, and it finishes to a valid one.
	dialed := make(chan error, 1)
	go ns.Run(func() error {
		c, err := net.DialTimeout("tcp4", "10.99.0.2:7", 2*time.Second)
		if err == nil {
			c.Close()
		}
		dialed <- err
		return nil
	})
	synf := collectFrames(t, tap, 1, func(f []byte) bool {
		return etherType(f) == 0x0800 && f[23] == 6 && bytes.Equal(f[30:34], guestIP)
	})[0]
	if want := (frameio.Offload{Partial: true, CsumStart: 34, CsumOffset: 16}); synf.Off != want {
		t.Fatalf("SYN handed up with Off %+v, want %+v", synf.Off, want)
	}
	if !synf.Finish() {
		t.Fatal("the SYN's partial checksum does not finish")
	}
	syn := synf.Bytes()
	ihl := int(syn[14]&0x0f) * 4
	tcp := syn[14+ihl : 14+int(binary.BigEndian.Uint16(syn[16:]))]
	pseudo := append(append(append([]byte{}, syn[26:34]...), 0, 6), byte(len(tcp)>>8), byte(len(tcp)))
	if c := checksum(append(pseudo, tcp...)); c != 0 {
		t.Fatalf("SYN's TCP checksum not completed (%#x): %x", c, syn)
	}
	// The guest refuses (RST, its checksum partial), so the dial ends
	// before the namespace does.
	rst := tcpSeg(false, kernelMAC, 7, binary.BigEndian.Uint16(tcp[0:]), 0, binary.BigEndian.Uint32(tcp[4:])+1, 0x14, nil, true)
	tap.WriteBatch([]frameio.Frame{rst})
	if err := <-dialed; err == nil {
		t.Fatal("the guest's RST did not refuse the connection")
	}
}

// tcpGuestFrame is a TCP/IPv4 frame from the guest to the host's port
// 7777, checksums filled.
func tcpGuestFrame(dst net.HardwareAddr, seq, ack uint32, flags byte, payload []byte) []byte {
	f := make([]byte, 54+len(payload))
	copy(f[0:], dst)
	copy(f[6:], guestMAC)
	f[12], f[13] = 0x08, 0x00
	ip := f[14:34]
	ip[0], ip[6], ip[8], ip[9] = 0x45, 0x40, 64, 6
	binary.BigEndian.PutUint16(ip[2:], uint16(len(f)-14))
	binary.BigEndian.PutUint16(ip[4:], uint16(seq))
	copy(ip[12:], guestIP)
	copy(ip[16:], hostIP)
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	tcp := f[34:]
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 7777)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], ack)
	tcp[12], tcp[13] = 5<<4, flags
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	copy(tcp[20:], payload)
	pseudo := append(append([]byte{}, f[26:34]...), 0, 6, byte(len(tcp)>>8), byte(len(tcp)))
	binary.BigEndian.PutUint16(tcp[16:], checksum(append(pseudo, tcp...)))
	return f
}

// A run of one flow's full-size segments written to an offloading TAP is
// merged into one segment for the kernel (coalesceRun): the host's socket
// must read every byte, in order.
func TestTAPOffloadMergedWrite(t *testing.T) {
	ns := frameiotest.NewNetns(t)
	tap := openTAP(t, ns, frameio.TAPOptions{MTU: 1500, Offload: true})
	ns.IP(t, "addr", "add", "10.99.0.1/24", "dev", "anka0")
	const total = 40 * 1448
	got := ns.Receive(t, "tcp4", "10.99.0.1:7777", total, 5*time.Second)

	tap.WriteBatch([]frameio.Frame{{Buf: arpRequest(guestMAC, guestIP, hostIP), N: 60}})
	reply := collectMatching(t, tap, 1, func(f []byte) bool {
		return etherType(f) == 0x0806 && binary.BigEndian.Uint16(f[20:]) == 2
	})[0]
	kmac := net.HardwareAddr(reply[22:28])
	isTCP := func(flags byte) func([]byte) bool {
		return func(f []byte) bool {
			return etherType(f) == 0x0800 && f[23] == 6 && f[47]&flags == flags
		}
	}
	const iss = 1000
	syn := tcpGuestFrame(kmac, iss, 0, 0x02, nil)
	tap.WriteBatch([]frameio.Frame{{Buf: syn, N: len(syn)}})
	synack := collectMatching(t, tap, 1, isTCP(0x12))[0]
	hostSeq := binary.BigEndian.Uint32(synack[38:]) + 1
	ack := tcpGuestFrame(kmac, iss+1, hostSeq, 0x10, nil)
	tap.WriteBatch([]frameio.Frame{{Buf: ack, N: len(ack)}})

	want := make([]byte, total)
	for i := range want {
		want[i] = byte(i * 13)
	}
	var batch []frameio.Frame
	for off := 0; off < total; off += 1448 {
		flags := byte(0x10)
		if off+1448 == total {
			flags = 0x18
		}
		f := tcpGuestFrame(kmac, iss+1+uint32(off), hostSeq, flags, want[off:off+1448])
		batch = append(batch, frameio.Frame{Buf: f, N: len(f)})
	}
	if n, err := tap.WriteBatch(batch); n != len(batch) || err != nil {
		t.Fatalf("wrote %d of %d: %v", n, len(batch), err)
	}
	b := <-got
	if !bytes.Equal(b, want) {
		t.Fatalf("the host read %d bytes of %d, or not the same", len(b), total)
	}
	if s := tap.Stats(); s.TxFrames != uint64(3+len(batch)) {
		t.Fatalf("stats %+v", s)
	}
}

// A frame longer than the port's buffers (the TAP's MTU raised behind
// its back) is dropped and counted, never handed up cut short: a TAP
// read returns at most the buffer's length.
func TestTAPDropsWhatTheBufferCannotHold(t *testing.T) {
	ns := frameiotest.NewNetns(t)
	tap := openTAP(t, ns, frameio.TAPOptions{MTU: 1400})
	ns.IP(t, "link", "set", "anka0", "mtu", "1500")
	ns.IP(t, "addr", "add", "10.99.0.1/24", "dev", "anka0")
	ns.IP(t, "neigh", "replace", "10.99.0.2", "lladdr", guestMAC.String(), "dev", "anka0")
	if err := ns.Run(func() error {
		c, err := net.Dial("udp4", "10.99.0.2:9")
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write(make([]byte, 1450)); err != nil {
			return err
		}
		_, err = c.Write([]byte("small"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	f := collectMatching(t, tap, 1, func(f []byte) bool { return etherType(f) == 0x0800 && f[23] == 17 })[0]
	if len(f) != 14+20+8+5 || string(f[42:]) != "small" {
		t.Fatalf("read a %d-byte UDP frame, want the small one", len(f))
	}
	if s := tap.Stats(); s.RxDropped != 1 {
		t.Fatalf("stats %+v: want the long frame dropped", s)
	}
}
