//go:build linux

package frameio_test

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/frameio/frameiotest"
)

var frameSizes = []int{64, 1514}

// BenchmarkDgramRelay is the raw relay the switch is compared against:
// guest → plugin port → Relay → plugin port → guest, with
// net.unix.max_dgram_qlen as found and, as root, raised in a private
// network namespace (a socket takes the limit of the namespace it is
// created in). Guests behave as QEMU (never connect: the plugin's sends
// to them are capped by the limit) or as vfkit (connect: no cap).
func BenchmarkDgramRelay(b *testing.B) {
	found, err := frameio.MaxDgramQlen()
	if err != nil {
		b.Fatal(err)
	}
	type setting struct {
		name string
		ns   *frameiotest.Netns
	}
	settings := []setting{{fmt.Sprintf("qlen=%d", found), nil}}
	if os.Geteuid() == 0 {
		ns := frameiotest.NewNetns(b)
		if err := ns.Run(func() error { return frameio.SetMaxDgramQlen(frameio.RecommendedMaxDgramQlen) }); err != nil {
			b.Fatal(err)
		}
		settings = append(settings, setting{fmt.Sprintf("qlen=%d", frameio.RecommendedMaxDgramQlen), ns})
	}
	for _, s := range settings {
		for _, guest := range []frameiotest.GuestMode{frameiotest.GuestQEMU, frameiotest.GuestConnected} {
			for _, size := range frameSizes {
				b.Run(fmt.Sprintf("%s/guest=%s/%dB", s.name, guest, size), func(b *testing.B) {
					frameiotest.BenchDgramRelay(b, frameiotest.RelayOptions{FrameLen: size, Guest: guest, Netns: s.ns})
				})
			}
		}
	}
}

// BenchmarkStreamRelay is the raw relay over stream sockets.
func BenchmarkStreamRelay(b *testing.B) {
	for _, size := range frameSizes {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			frameiotest.BenchStreamRelay(b, frameiotest.RelayOptions{FrameLen: size})
		})
	}
}

// BenchmarkHop is one socket hop, no relay: what a port costs alone.
func BenchmarkHop(b *testing.B) {
	for _, size := range frameSizes {
		b.Run(fmt.Sprintf("dgram/%dB", size), func(b *testing.B) {
			plugin, guest := frameiotest.DgramPair(b, frameiotest.DgramPairOptions{Guest: frameiotest.GuestConnected})
			frameiotest.Throughput(b, guest, plugin, size, 64)
		})
		b.Run(fmt.Sprintf("stream/%dB", size), func(b *testing.B) {
			server, client := frameiotest.StreamPair(b, frameiotest.StreamPairOptions{})
			frameiotest.Throughput(b, client, server, size, 64)
		})
		b.Run(fmt.Sprintf("pipe/%dB", size), func(b *testing.B) {
			x, y := frameio.Pipe(frameio.DefaultMTU)
			defer x.Close()
			frameiotest.Throughput(b, x, y, size, 64)
		})
	}
}

// BenchmarkTAPOffloadWrite writes runs of 40 full-size segments of one
// TCP flow from a guest to the host's socket through an offloading TAP
// (each run merged into one write), their checksums complete (the TAP
// verifies each before it merges) or partial, as a guest with checksum
// offload leaves them (nothing to verify: the kernel sums the merged
// segment). Each run waits for the host's ACK and window, so this is the
// cost of a run through the port and the host's stack, reading included.
func BenchmarkTAPOffloadWrite(b *testing.B) {
	for _, partial := range []bool{false, true} {
		b.Run(fmt.Sprintf("partial=%v", partial), func(b *testing.B) { benchTAPOffloadWrite(b, partial) })
	}
}

func benchTAPOffloadWrite(b *testing.B, partial bool) {
	ns := frameiotest.NewNetns(b)
	var tap *frameio.TAPPort
	var kmac net.HardwareAddr
	if err := ns.Run(func() (err error) {
		if tap, err = frameio.OpenTAP("anka0", frameio.TAPOptions{MTU: 1500, Up: true, Offload: true}); err != nil {
			return err
		}
		ifc, err := net.InterfaceByName("anka0")
		if err == nil {
			kmac = ifc.HardwareAddr
		}
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer tap.Close()
	ns.IP(b, "addr", "add", "10.99.0.1/24", "dev", "anka0")
	ns.IP(b, "neigh", "replace", "10.99.0.2", "lladdr", guestMAC.String(), "dev", "anka0")
	var ln net.Listener
	if err := ns.Run(func() (err error) { ln, err = net.Listen("tcp4", "10.99.0.1:7777"); return err }); err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	// What the host's TCP says, as the TAP reads it.
	type hostSeg struct {
		seq, ack, win uint32
		flags         byte
	}
	from := make(chan hostSeg, 1024)
	go func() {
		defer close(from)
		in := frameio.NewBatch(16, 1500)
		for {
			n, err := tap.ReadBatch(in)
			if err != nil {
				return
			}
			for i := 0; i < n; i++ {
				if f := in[i].Bytes(); len(f) >= 54 && etherType(f) == 0x0800 && f[23] == 6 {
					from <- hostSeg{binary.BigEndian.Uint32(f[38:]), binary.BigEndian.Uint32(f[42:]), uint32(binary.BigEndian.Uint16(f[48:])), f[47]}
				}
			}
		}
	}()
	// wait returns the first segment from the host for which ok holds.
	wait := func(what string, ok func(hostSeg) bool) hostSeg {
		timeout := time.After(5 * time.Second)
		for {
			select {
			case h, open := <-from:
				if !open {
					b.Fatal("the TAP closed")
				}
				if ok(h) {
					return h
				}
			case <-timeout:
				b.Fatalf("the host never sent %s", what)
			}
		}
	}
	const iss, size, segs = 1000, 1448, 40
	tap.WriteBatch([]frameio.Frame{guestSeg(false, kmac, iss, 0, 0x02, nil, partial)})
	sa := wait("a SYN-ACK", func(h hostSeg) bool { return h.flags == 0x12 })
	hostSeq := sa.seq + 1
	tap.WriteBatch([]frameio.Frame{guestSeg(false, kmac, iss+1, hostSeq, 0x10, nil, partial)})
	payload := make([]byte, size)
	run := make([]frameio.Frame, segs)
	for i := range run {
		run[i] = guestSeg(false, kmac, iss+1+uint32(i*size), hostSeq, 0x10, payload, partial)
	}
	next := uint32(iss + 1)
	b.SetBytes(segs * size)
	for b.Loop() {
		for i := range run {
			setSeq(run[i].Bytes(), next+uint32(i*size), partial)
		}
		if n, err := tap.WriteBatch(run); n != segs || err != nil {
			b.Fatalf("wrote %d of %d: %v", n, segs, err)
		}
		next += segs * size
		// The next run goes when the host has taken this one and has
		// room for another (no window scaling: at most 64 KiB, some 60 KB).
		wait("an ACK", func(h hostSeg) bool { return h.ack == next && h.win >= segs*size })
	}
}

// setSeq sets a TCP/IPv4 segment's sequence number and, when complete,
// updates its checksum for the change (RFC 1624), as a guest would have
// computed it: the port, not this, is what is measured.
func setSeq(f []byte, seq uint32, partial bool) {
	old := binary.BigEndian.Uint32(f[38:])
	binary.BigEndian.PutUint32(f[38:], seq)
	if partial {
		return // the pseudo-header's sum does not cover it
	}
	sum := uint32(^binary.BigEndian.Uint16(f[50:])) +
		uint32(^uint16(old>>16)) + uint32(^uint16(old)) + seq>>16 + seq&0xffff
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(f[50:], ^uint16(sum))
}
