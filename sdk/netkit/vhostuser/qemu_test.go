//go:build linux

package vhostuser_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
	"github.com/anka-net/anka/sdk/netkit/vhostuser"
)

// The real QEMU (7.2 here) as the front-end, with the test guest (make
// guest; ANKA_GUEST_DIR names another directory). Skips without either,
// and with -short.

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startVM boots the test guest with its NIC on the vhost-user socket.
//
// vectors=0 (no MSI-X, legacy INTx): QEMU 7.2 without KVM (TCG, as on
// this machine) segfaults in msix_set_vector_notifiers, called from
// vhost_net_start when the guest driver sets DRIVER_OK, before it sends
// the back-end anything more: a QEMU bug in its vhost guest-notifier
// masking without irqfd, not something a back-end can avoid.
func startVM(t *testing.T, sock, mac string, mtu int) {
	t.Helper()
	q, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("needs qemu-system-x86_64")
	}
	guest := frameiotest.GuestDir(t)
	console := filepath.Join(t.TempDir(), "console.log")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, q, "-nodefaults", "-display", "none", "-machine", "q35", "-m", "256",
		"-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-machine", "memory-backend=mem",
		"-kernel", filepath.Join(guest, "vmlinuz"), "-initrd", filepath.Join(guest, "initrd.img"),
		"-append", "console=ttyS0 anka.hostname=vu", "-serial", "file:"+console, "-no-reboot",
		"-chardev", "socket,id=vu,path="+sock+",reconnect=1",
		"-netdev", "vhost-user,id=n0,chardev=vu",
		"-device", "virtio-net-pci,netdev=n0,vectors=0,mac="+mac+",host_mtu="+strconv.Itoa(mtu))
	out := &lockedBuf{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		var state string
		select {
		case err := <-exited:
			state = fmt.Sprintf("QEMU had exited on its own: %v", err)
		default:
			cancel()
			<-exited
		}
		if t.Failed() {
			b, _ := os.ReadFile(console)
			t.Logf("%s\nqemu output:\n%s\nconsole:\n%s", state, out.String(), b)
		}
	})
}

// isDHCPDiscover reports whether f is a DHCPDISCOVER broadcast from mac.
func isDHCPDiscover(f []byte, mac net.HardwareAddr) bool {
	if len(f) < 14+20+8+240 || !bytes.Equal(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) ||
		!bytes.Equal(f[6:12], mac) || f[12] != 0x08 || f[13] != 0 {
		return false
	}
	ip := f[14:]
	ihl := int(ip[0]&0xf) * 4
	if ip[9] != 17 || len(ip) < ihl+8+240 {
		return false
	}
	udp := ip[ihl:]
	if binary.BigEndian.Uint16(udp[2:]) != 67 {
		return false
	}
	d := udp[8:]
	if d[0] != 1 || !bytes.Equal(d[236:240], []byte{99, 130, 83, 99}) {
		return false
	}
	for o := d[240:]; len(o) >= 2 && o[0] != 255; {
		if o[0] == 0 {
			o = o[1:]
			continue
		}
		if o[0] == 53 && o[1] >= 1 && len(o) >= 3 {
			return o[2] == 1
		}
		if len(o) < 2+int(o[1]) {
			return false
		}
		o = o[2+int(o[1]):]
	}
	return false
}

var (
	ourMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	ourLL  = net.ParseIP("fe80::1")
)

// linkLocal is the EUI-64 link-local address of mac.
func linkLocal(mac net.HardwareAddr) net.IP {
	ip := make(net.IP, 16)
	ip[0], ip[1] = 0xfe, 0x80
	copy(ip[8:], []byte{mac[0] ^ 2, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]})
	return ip
}

// icmp6 frames an ICMPv6 message from us to the guest, checksum filled.
func icmp6(guestMAC net.HardwareAddr, hopLimit byte, icmp []byte) []byte {
	dst := linkLocal(guestMAC)
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(ourLL.To16())
	add(dst)
	add([]byte{0, 0, byte(len(icmp) >> 8), byte(len(icmp)), 0, 0, 0, 58})
	add(icmp)
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(icmp[2:], ^uint16(sum))
	f := append([]byte{}, guestMAC...)
	f = append(f, ourMAC...)
	f = append(f, 0x86, 0xdd, 0x60, 0, 0, 0, byte(len(icmp)>>8), byte(len(icmp)), 58, hopLimit)
	f = append(f, ourLL.To16()...)
	f = append(f, dst...)
	return append(f, icmp...)
}

// echoRequest is an ICMPv6 echo request to the guest with size bytes of
// data.
func echoRequest(guestMAC net.HardwareAddr, seq uint16, size int) []byte {
	icmp := []byte{128, 0, 0, 0, 0x12, 0x34, byte(seq >> 8), byte(seq)}
	for i := range size {
		icmp = append(icmp, byte(i))
	}
	return icmp6(guestMAC, 64, icmp)
}

// neighborAdvert tells the guest where fe80::1 is.
func neighborAdvert(guestMAC net.HardwareAddr) []byte {
	icmp := []byte{136, 0, 0, 0, 0x60, 0, 0, 0}
	icmp = append(icmp, ourLL.To16()...)
	icmp = append(icmp, 2, 1)
	icmp = append(icmp, ourMAC...)
	return icmp6(guestMAC, 255, icmp)
}

// fromGuestICMP6 returns the ICMPv6 message in the guest's frame f, or nil.
func fromGuestICMP6(f []byte, guestMAC net.HardwareAddr) []byte {
	if len(f) < 14+40+8 || !bytes.Equal(f[6:12], guestMAC) || f[12] != 0x86 || f[13] != 0xdd || f[14+6] != 58 {
		return nil
	}
	return f[14+40:]
}

// solicitsUs reports whether the guest asks where fe80::1 is: it got our
// echo request and wants to answer.
func solicitsUs(icmp []byte) bool {
	return icmp != nil && icmp[0] == 135 && len(icmp) >= 24 && bytes.Equal(icmp[8:24], ourLL.To16())
}

// echoReplySize is the data size of an echo reply, or -1.
func echoReplySize(icmp []byte) int {
	if icmp == nil || icmp[0] != 129 {
		return -1
	}
	return len(icmp) - 8
}

// A real QEMU connects, the guest boots, its DHCPDISCOVER arrives
// through ReadBatch, and an ICMPv6 echo request written with WriteBatch
// gets its reply (after a neighbour solicitation the port answers). Then
// the plugin restarts: the port closes, a new one listens on the same
// path, QEMU reconnects (reconnect=1) and restarts the running device on
// it, and both directions work again. With MTU 65520 the guest posts
// "big packets" (receive buffers chained from pages) and transmits large
// frames as chains: a 60000-byte echo goes both ways. The port offers
// indirect descriptors and Linux takes them: its big receive buffers each
// come as one indirect table, which the port's counter shows.
//
// The port offers checksum offload (both ways) and TSO, and Linux takes
// them: a TCP echo (the guest's nc on port 7) of 200 KB with the test as
// the peer, every other segment to the guest with its checksum partial
// (GUEST_CSUM: NEEDS_CSUM in its header), brings the guest's TCP frames
// with partial checksums, and its bulk data as GSO frames the port cuts;
// every segment completes to a valid checksum, the data comes back whole
// and the port drops nothing.
func TestQEMUGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	for _, tc := range []struct {
		name     string
		mtu      int
		echoSize int
		restart  bool
	}{
		{"MTU 1500 and plugin restart", 1500, 1000, true},
		{"MTU 65520 (indirect tables)", frameio.MaxMTU, 60000, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mac := net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}
			path := filepath.Join(sockDir(t), "vu.sock")
			p, err := vhostuser.Listen(path, vhostuser.Options{MTU: tc.mtu, Log: testLog(t)})
			if err != nil {
				t.Fatal(err)
			}
			startVM(t, path, mac.String(), tc.mtu)
			frames := readAll(p)
			expectGuest(t, p, frames, mac, tc.echoSize, "first boot")
			toGuest, fromGuest := vhostuser.IndirectUsed(p)
			t.Logf("indirect tables: %d frames to the guest, %d from it", toGuest, fromGuest)
			if s := p.Stats(); toGuest == 0 || toGuest != s.TxFrames {
				// Every frame the port gave the guest went into a big
				// receive buffer (header and pages; at MTU 1500 too, as
				// the guest took GUEST_TSO): through a table each, when
				// Linux took the feature.
				t.Errorf("%d of the %d frames to the guest went through indirect tables, want all (port stats %+v)", toGuest, s.TxFrames, s)
			}
			guestTCP(t, p, frames, mac)
			p.Close()
			if !tc.restart {
				return
			}
			p, err = vhostuser.Listen(path, vhostuser.Options{MTU: tc.mtu, Log: testLog(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			expectGuest(t, p, readAll(p), mac, tc.echoSize, "after the plugin restarted")
		})
	}
}

// readAll reads p until it closes: the frames, copied, with their Off.
// What the test does not take in time is dropped (the guest retries).
func readAll(p *vhostuser.Port) <-chan got {
	ch := make(chan got, 4096)
	go func() {
		// As the switch reads it (frameio.GSOReader): the first
		// GSOBuffers buffers large, so a TSO frame may come up whole.
		b := frameio.NewBatch(64, p.MTU())
		copy(b, frameio.NewBatchSize(p.GSOBuffers(), frameio.MaxGSOLen))
		for {
			n, err := p.ReadBatch(b)
			if err != nil {
				return
			}
			for _, f := range b[:n] {
				select {
				case ch <- got{append([]byte(nil), f.Bytes()...), f.Off}:
				default:
				}
			}
		}
	}()
	return ch
}

// expectGuest waits for the guest's DHCPDISCOVER on p and for its reply
// to an echo request of echoSize bytes sent through p.
func expectGuest(t *testing.T, p *vhostuser.Port, frames <-chan got, mac net.HardwareAddr, echoSize int, phase string) {
	t.Helper()
	mtu := p.MTU()
	// Hang guards for a TCG boot, not timing assertions.
	deadline := time.After(3 * time.Minute)
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	out := frameio.NewBatch(1, mtu)
	write := func(f []byte) {
		out[0].N = copy(out[0].Buf, f)
		p.WriteBatchNoWait(out)
	}
	sawDiscover, replied := false, false
	var seq uint16
	for !sawDiscover || !replied {
		select {
		case g := <-frames:
			f := g.b
			if isDHCPDiscover(f, mac) {
				sawDiscover = true
			}
			icmp := fromGuestICMP6(f, mac)
			if solicitsUs(icmp) {
				write(neighborAdvert(mac))
			}
			if n := echoReplySize(icmp); n >= 0 {
				if n != echoSize {
					t.Fatalf("%s: echo reply with %d bytes of data, want %d", phase, n, echoSize)
				}
				replied = true
			}
		case <-tick.C:
			if p.Connected() {
				seq++
				write(echoRequest(mac, seq, echoSize))
			}
		case <-deadline:
			t.Fatalf("%s: gave up: DHCPDISCOVER seen %v, echo reply %v; port stats %+v, connected %v",
				phase, sawDiscover, replied, p.Stats(), p.Connected())
		}
	}
	if s := p.Stats(); s.RxDropped != 0 {
		t.Errorf("%s: the port dropped %d frames from the guest", phase, s.RxDropped)
	}
}

// tcpToGuest is a TCP segment from fe80::1 port 40000 to the guest's
// link-local address port 7, its checksum complete.
func tcpToGuest(guestMAC net.HardwareAddr, seq, ack uint32, flags byte, opts, payload []byte) []byte {
	f := append([]byte{}, guestMAC...)
	f = append(f, ourMAC...)
	n := 20 + len(opts) + len(payload)
	f = append(f, 0x86, 0xdd, 0x60, 0, 0, 0, byte(n>>8), byte(n), 6, 64)
	f = append(f, ourLL.To16()...)
	f = append(f, linkLocal(guestMAC)...)
	tcp := make([]byte, 20, n)
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 7)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], ack)
	tcp[12], tcp[13] = byte((20+len(opts))/4)<<4, flags
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	f = append(append(append(f, tcp...), opts...), payload...)
	binary.BigEndian.PutUint16(f[54+16:], ^uint16(sum16(pseudo(f, 14, 54, true), f[54:])))
	return f
}

const (
	tcpFIN, tcpSYN, tcpRST, tcpPSH, tcpACK = 0x01, 0x02, 0x04, 0x08, 0x10
)

// guestTCP has the test be a TCP peer of the guest's echo service (port
// 7, over IPv6 link-local) and sends it 200 KB, every other segment with
// its checksum partial (the guest took GUEST_CSUM: it gets them behind
// NEEDS_CSUM and must take their data as it would complete ones') and
// some as GSO frames of up to 8 segments (the guest took GUEST_TSO6: it
// gets them whole, behind GSO_TCPV6, in its big receive buffers): the
// guest, with checksum offload and TSO negotiated, leaves its checksums
// partial and hands its echo over as GSO frames, which come up whole in
// the reader's large buffers (the test cuts them, as the switch would)
// and cut in its others. Every frame the port returns must complete
// to a valid checksum (Finish where it is partial), the data must come
// back whole, and the port must drop nothing: the headers a real Linux
// guest writes pass the port's checks.
func guestTCP(t *testing.T, p *vhostuser.Port, frames <-chan got, mac net.HardwareAddr) {
	t.Helper()
	const mss, iss = 1440, 1000
	data := payloadBytes(200000, 42)
	dropsBefore, gsoBefore := p.Stats().RxDropped, vhostuser.GSOFrames(p)
	out := frameio.NewBatch(1, p.MTU())
	write := func(f []byte) {
		out[0].N, out[0].Off = copy(out[0].Buf, f), frameio.Offload{}
		p.WriteBatchNoWait(out)
	}
	// writePartial writes f with its TCP checksum partial, as the host's
	// TCP leaves it and the uplink TAP hands it up: the guest took
	// GUEST_CSUM, so it gets it so (NEEDS_CSUM) and sums nothing.
	sentPartial := 0
	writePartial := func(f []byte) {
		out[0].N = copy(out[0].Buf, f)
		b := out[0].Bytes()
		binary.BigEndian.PutUint16(b[54+16:], 0)
		binary.BigEndian.PutUint16(b[54+16:], uint16(pseudo(b, 14, 54, true)))
		out[0].Off = frameio.Offload{Partial: true, CsumStart: 54, CsumOffset: 16}
		if n, _ := p.WriteBatchNoWait(out); n == 1 {
			sentPartial++
		}
	}
	// writeGSO writes f as one GSO frame of segments of mss, as the
	// host's TCP hands 64 KiB segments up through the uplink TAP: the
	// guest took GUEST_TSO6, so it gets it whole (GSO_TCPV6, NEEDS_CSUM)
	// and its stack takes the data as it would the segments'.
	sentGSO, gsoOut := 0, frameio.NewBatchSize(1, frameio.MaxGSOLen)
	writeGSO := func(f []byte) {
		gsoOut[0].N = copy(gsoOut[0].Buf, f)
		b := gsoOut[0].Bytes()
		binary.BigEndian.PutUint16(b[54+16:], 0)
		binary.BigEndian.PutUint16(b[54+16:], uint16(pseudo(b, 14, 54, true)))
		gsoOut[0].Off = frameio.Offload{Partial: true, CsumStart: 54, CsumOffset: 16, GSO: frameio.GSOTCPv6, GSOSize: mss}
		if n, _ := p.WriteBatchNoWait(gsoOut); n == 1 {
			sentGSO++
		}
	}
	if !vhostuser.GuestCsum(p) {
		t.Error("the guest did not take VIRTIO_NET_F_GUEST_CSUM")
	}
	if v4, v6 := vhostuser.GuestTSO(p); !v4 || !v6 {
		t.Errorf("the guest took GUEST_TSO4 %v, GUEST_TSO6 %v; want both", v4, v6)
	}
	var (
		irs                 uint32
		established         bool
		una, nxt            int // our data: acknowledged, sent
		echo                []byte
		partial, whole, seg int
		wnd                 = 16 * mss
		progress            bool
	)
	ack := func() {
		write(tcpToGuest(mac, iss+1+uint32(nxt), irs+1+uint32(len(echo)), tcpACK, nil, nil))
	}
	pump := func() {
		for established && nxt < len(data) && nxt-una < wnd {
			if k := min(8, (len(data)-nxt)/mss, (wnd-(nxt-una))/mss); k >= 2 && (nxt/mss)%3 == 2 {
				// Every third place, up to 8 segments in one.
				writeGSO(tcpToGuest(mac, iss+1+uint32(nxt), irs+1+uint32(len(echo)), tcpACK|tcpPSH, nil, data[nxt:nxt+k*mss]))
				nxt += k * mss
				continue
			}
			n := min(mss, len(data)-nxt)
			f := tcpToGuest(mac, iss+1+uint32(nxt), irs+1+uint32(len(echo)), tcpACK|tcpPSH, nil, data[nxt:nxt+n])
			if (nxt/mss)%2 == 1 {
				writePartial(f) // every other segment
			} else {
				write(f)
			}
			nxt += n
		}
	}
	// Hang guards for TCG, not timing assertions.
	deadline := time.After(3 * time.Minute)
	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	// A TSO frame handed up whole is cut here, as the switch would for
	// a port that takes none, and its segments go through the checks
	// below like any other frame.
	var cut []got
	wholeIn := 0
	takeWhole := func(g got) {
		want := frameio.Offload{Partial: true, CsumStart: 54, CsumOffset: 16, GSO: frameio.GSOTCPv6, GSOSize: g.off.GSOSize}
		if g.off != want || g.off.GSOSize > mss || !frameio.WholeGSO(g.b, g.off) || int(binary.BigEndian.Uint16(g.b[18:])) != len(g.b)-54 {
			t.Fatalf("a GSO frame of %d bytes from the guest came whole with Off %+v", len(g.b), g.off)
		}
		var sg frameio.Segmenter
		if err := sg.Load(g.b, g.off); err != nil {
			t.Fatal(err)
		}
		for sg.Pending() {
			f := frameio.NewBatch(1, p.MTU())[0]
			if !sg.Next(&f, false) {
				t.Fatal("cutting a whole GSO frame failed")
			}
			cut = append(cut, got{f.Bytes(), f.Off})
		}
		wholeIn++
	}
	for len(echo) < len(data) {
		var g got
		if len(cut) > 0 {
			g, cut = cut[0], cut[1:]
		} else {
			select {
			case g = <-frames:
			case <-tick.C:
				switch {
				case !established:
					write(tcpToGuest(mac, iss, 0, tcpSYN, []byte{2, 4, mss >> 8, mss & 0xff}, nil))
				case !progress:
					nxt = una // go back: something was lost
					ack()
					pump()
				}
				progress = false
				continue
			case <-deadline:
				t.Fatalf("gave up: %d of %d bytes echoed, %d acknowledged; port stats %+v", len(echo), len(data), una, p.Stats())
			}
		}
		if g.off.GSO != frameio.GSONone {
			takeWhole(g)
			continue
		}
		if solicitsUs(fromGuestICMP6(g.b, mac)) {
			write(neighborAdvert(mac))
			continue
		}
		f := g.b
		if len(f) < 74 || f[12] != 0x86 || f[13] != 0xdd || f[20] != 6 || binary.BigEndian.Uint16(f[54:]) != 7 || binary.BigEndian.Uint16(f[56:]) != 40000 {
			continue
		}
		if g.off.Partial {
			if g.off.CsumStart != 54 || g.off.CsumOffset != 16 {
				t.Fatalf("a TCP frame from the guest came with Off %+v", g.off)
			}
			fr := frameio.Frame{Buf: f, N: len(f), Off: g.off}
			if !fr.Finish() {
				t.Fatalf("Finish refused %+v", g.off)
			}
			partial++
		} else {
			whole++
		}
		if g.off.GSO != frameio.GSONone || !l4Valid(f, 14, 54, true) {
			t.Fatalf("a TCP frame of %d bytes from the guest has a bad checksum (Off %+v)", len(f), g.off)
		}
		if len(f)-54-int(f[54+12]>>4)*4 > mss {
			t.Fatalf("a segment of %d bytes, more than the MSS %d", len(f), mss)
		}
		seq, ackn, flags := binary.BigEndian.Uint32(f[58:]), binary.BigEndian.Uint32(f[62:]), f[54+13]
		if flags&tcpRST != 0 {
			t.Fatalf("the guest reset the connection (echo %d of %d bytes)", len(echo), len(data))
		}
		if flags&tcpSYN != 0 {
			if !established {
				irs, established = seq, true
				wnd = min(wnd, int(binary.BigEndian.Uint16(f[54+14:])))
			}
			ack()
			pump()
			continue
		}
		if !established {
			continue
		}
		if a := int(ackn - iss - 1); a > una && a <= nxt {
			una, progress = a, true
		}
		if pl := f[54+int(f[54+12]>>4)*4:]; len(pl) > 0 {
			seg++
			if seq == irs+1+uint32(len(echo)) {
				echo = append(echo, pl...)
				progress = true
			}
			ack()
		}
		pump()
	}
	write(tcpToGuest(mac, iss+1+uint32(nxt), 0, tcpRST, nil, nil))
	if !bytes.Equal(echo, data) {
		t.Fatal("the echo differs from what was sent")
	}
	gso := vhostuser.GSOFrames(p) - gsoBefore
	t.Logf("TCP echo of %d bytes: %d TCP frames from the guest with partial checksums, %d complete; %d data segments, from %d GSO frames (%d handed up whole); %d segments to the guest partial, %d GSO frames whole",
		len(data), partial, whole, seg, gso, wholeIn, sentPartial, sentGSO)
	if wholeIn == 0 || uint64(wholeIn) > gso {
		t.Errorf("%d of the guest's %d GSO frames came up whole: want some (the reader's first buffers are large)", wholeIn, gso)
	}
	if sentPartial == 0 || sentGSO == 0 {
		t.Errorf("%d segments went to the guest with their checksum partial and %d GSO frames whole: want both", sentPartial, sentGSO)
	}
	if partial == 0 || gso == 0 {
		t.Errorf("the guest sent %d partial TCP frames and %d GSO frames: want both (checksum offload and TSO negotiated)", partial, gso)
	}
	if d := p.Stats().RxDropped - dropsBefore; d != 0 {
		t.Errorf("the port dropped %d of the guest's frames", d)
	}
}
