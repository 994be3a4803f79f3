//go:build linux

package vhostuser

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/vhostuser/internal/vuproto"
	"golang.org/x/sys/unix"
)

// fuzzSession is a well-formed session for the seed corpus: memory at
// guest address 0 (user address 1 MiB), both queues of 8 entries; with
// indirect, the buffers are in indirect tables.
func fuzzSession(indirect bool) []byte { return fuzzSessionWith(indirect, false) }

// fuzzSessionWith is fuzzSession; with offload it also negotiates CSUM,
// TSO, GUEST_CSUM and GUEST_TSO and the guest transmits, after its plain
// frame, a TCP/IPv4 GSO frame of 3000 bytes to cut at 500 and a UDP
// frame with a partial checksum, and posts a second receive buffer, for
// the harness's GSO frame whole: the fuzzer mutates their headers from
// there.
func fuzzSessionWith(indirect, offload bool) []byte {
	var b []byte
	msg := func(req uint32, payload []byte) {
		h := make([]byte, vuproto.HeaderSize)
		vuproto.PutHeader(h, vuproto.Header{Request: req, Flags: vuproto.Version, Size: uint32(len(payload))})
		b = append(append(b, h...), payload...)
	}
	u := func(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }
	msg(vuproto.GetFeatures, nil)
	msg(vuproto.GetProtocolFeatures, nil)
	msg(vuproto.SetProtocolFeatures, u(1<<vuproto.PFReplyAck))
	msg(vuproto.SetOwner, nil)
	feats := uint64(1<<vuproto.FVersion1 | 1<<vuproto.NetFMTU)
	if indirect {
		feats |= 1 << vuproto.FRingIndirectDesc
	}
	if offload {
		feats |= 1<<vuproto.NetFCsum | 1<<vuproto.NetFHostTSO4 | 1<<vuproto.NetFHostTSO6 |
			1<<vuproto.NetFGuestCsum | 1<<vuproto.NetFGuestTSO4 | 1<<vuproto.NetFGuestTSO6
	}
	msg(vuproto.SetFeatures, u(feats))
	msg(vuproto.SetMemTable, vuproto.PutMemTable(nil, []vuproto.MemRegion{{MemorySize: 1 << 16, UserspaceAddr: 1 << 20}}))
	for q := range uint32(2) {
		msg(vuproto.SetVringNum, vuproto.VringState{Index: q, Num: 8}.Put(nil))
		msg(vuproto.SetVringBase, vuproto.VringState{Index: q}.Put(nil))
		msg(vuproto.SetVringAddr, vuproto.VringAddr{Index: q, Desc: 1<<20 + uint64(q)*0x1000, Avail: 1<<20 + uint64(q)*0x1000 + 0x200, Used: 1<<20 + uint64(q)*0x1000 + 0x400}.Put(nil))
		msg(vuproto.SetVringKick, u(uint64(q)))
		msg(vuproto.SetVringCall, u(uint64(q)|vuproto.VringNoFDMask))
		msg(vuproto.SetVringEnable, vuproto.VringState{Index: q, Num: 1}.Put(nil))
	}
	// The guest's side: a frame to transmit on queue 1 and a receive
	// buffer on queue 0, written into memory with the fuzz-only
	// pseudo-request.
	desc := func(addr uint64, n uint32, flags, next uint16) []byte {
		b := binary.LittleEndian.AppendUint64(nil, addr)
		b = binary.LittleEndian.AppendUint32(b, n)
		b = binary.LittleEndian.AppendUint16(b, flags)
		return binary.LittleEndian.AppendUint16(b, next)
	}
	poke := func(off uint16, data []byte) {
		msg(fuzzPoke, append(binary.LittleEndian.AppendUint16(nil, off), data...))
	}
	if indirect {
		// Header and frame in two entries of a table at 0x4000 (TX),
		// at 0x4100 (RX).
		poke(0x4000, append(desc(0x2000, 12, vuproto.DescFNext, 1), desc(0x200c, 64, 0, 0)...))
		poke(0x1000, desc(0x4000, 32, vuproto.DescFIndirect, 0))
		poke(0x4100, append(desc(0x3000, 12, vuproto.DescFWrite|vuproto.DescFNext, 1), desc(0x300c, 2036, vuproto.DescFWrite, 0)...))
		poke(0x0000, desc(0x4100, 32, vuproto.DescFIndirect, 0))
	} else {
		poke(0x1000, desc(0x2000, 12+64, 0, 0))
		poke(0x0000, desc(0x3000, 2048, vuproto.DescFWrite, 0))
	}
	txIdx, rxIdx := []byte{0, 0, 1, 0, 0, 0}, []byte{0, 0, 1, 0, 0, 0}
	if offload {
		// Descriptors 2 and 3: a GSO frame at 0x5000, a partial UDP
		// frame at 0x8000.
		gso := fuzzTCP(3000)
		hdr := []byte{vuproto.NetHdrFNeedsCsum, vuproto.NetHdrGSOTCPv4, 54, 0, 0xf4, 1, 34, 0, 16, 0, 0, 0}
		poke(0x5000, append(hdr, gso...))
		poke(0x1020, desc(0x5000, uint32(12+len(gso)), 0, 0))
		udp := fuzzTCP(100)
		udp[23] = 17
		poke(0x8000, append([]byte{vuproto.NetHdrFNeedsCsum, 0, 0, 0, 0, 0, 34, 0, 6, 0, 0, 0}, udp...))
		poke(0x1030, desc(0x8000, uint32(12+len(udp)), 0, 0))
		txIdx = []byte{0, 0, 3, 0, 0, 0, 2, 0, 3, 0}
		// Receive descriptor 1: 4 KiB at 0x9000.
		poke(0x0010, desc(0x9000, 0x1000, vuproto.DescFWrite, 0))
		rxIdx = []byte{0, 0, 2, 0, 0, 0, 1, 0}
	}
	poke(0x1200, txIdx)
	poke(0x0200, rxIdx)
	msg(vuproto.NetSetMTU, u(1500))
	cfg := make([]byte, vuproto.ConfigHeaderSize+12)
	binary.LittleEndian.PutUint32(cfg[4:], 12)
	msg(vuproto.GetConfig, cfg)
	msg(vuproto.GetVringBase, vuproto.VringState{Index: 1}.Put(nil))
	return b
}

// fuzzTCP is an Ethernet, IPv4 and TCP frame with n bytes of payload
// (checksums are the port's business, not the seed's).
func fuzzTCP(n int) []byte {
	b := make([]byte, 54+n)
	b[12], b[13] = 0x08, 0x00
	b[14], b[22], b[23] = 0x45, 64, 6
	binary.BigEndian.PutUint16(b[16:], uint16(40+n))
	b[46] = 5 << 4
	b[47] = 0x18
	for i := range n {
		b[54+i] = byte(i)
	}
	return b
}

// fuzzPoke is a pseudo-request of the fuzz target only: its payload is a
// little-endian u16 offset and bytes to write there into the memory the
// memory tables map, as a guest writes its rings and buffers.
const fuzzPoke = 0xf00d

// FuzzHandle feeds a stream of messages to the request handler and runs
// the data path after each: nothing may panic (a recovered data path
// fault counts as a failure here), whatever the messages say. Memory
// tables get a 64 KiB memfd per region and kicks an eventfd, so ring
// addresses the fuzzer picks are really mapped and walked.
// fuzzHarness is a port and the memory its fuzzed memory tables map.
type fuzzHarness struct {
	p      *Port
	mfd    int
	rd, wr []frameio.Frame
}

func newFuzzHarness(tb testing.TB) *fuzzHarness {
	dir, err := os.MkdirTemp("", "vufuzz")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	p, err := Listen(filepath.Join(dir, "s"), Options{MTU: 1500, WriteTimeout: -1})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	mfd, err := unix.MemfdCreate("fuzz", unix.MFD_CLOEXEC)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { unix.Close(mfd) })
	// Written after each message: a plain frame, a GSO frame (TCP/IPv4,
	// 1400 bytes to cut at 500: whole to a guest with GUEST_TSO4, cut for
	// any other), a full-size plain frame.
	// The second read buffer is a large one, as the switch gives a
	// frameio.GSOReader: a GSO frame read into it is handed up whole.
	h := &fuzzHarness{p: p, mfd: mfd, rd: frameio.NewBatch(4, 1500), wr: frameio.NewBatch(3, 1500)}
	h.rd[1].Buf = make([]byte, frameio.MaxGSOLen)
	h.wr[0].N, h.wr[2].N = 64, 1514
	h.wr[1].N = copy(h.wr[1].Buf, fuzzTCP(1400))
	h.wr[1].Off = frameio.Offload{Partial: true, CsumStart: 34, CsumOffset: 16, GSO: frameio.GSOTCPv4, GSOSize: 500}
	return h
}

// run feeds data to the port as a stream of messages, running the data
// path after each.
func (h *fuzzHarness) run(t *testing.T, data []byte) {
	p := h.p
	defer p.teardown()
	// Fresh zeroed memory each run, so a run does not depend on the last.
	unix.Ftruncate(h.mfd, 0)
	unix.Ftruncate(h.mfd, 1<<16)
	for len(data) >= vuproto.HeaderSize {
		hd, err := vuproto.ParseHeader(data)
		if err != nil {
			return
		}
		data = data[vuproto.HeaderSize:]
		n := min(int(hd.Size), len(data))
		m := vuproto.Msg{Header: hd, Payload: data[:n]}
		data = data[n:]
		switch hd.Request {
		case fuzzPoke:
			if len(m.Payload) > 2 {
				unix.Pwrite(h.mfd, m.Payload[2:], int64(binary.LittleEndian.Uint16(m.Payload)))
			}
		case vuproto.SetMemTable:
			if len(m.Payload) >= 4 {
				for range min(binary.LittleEndian.Uint32(m.Payload), 8) {
					fd, _ := unix.Dup(h.mfd)
					m.FDs = append(m.FDs, fd)
				}
			}
		case vuproto.SetVringKick, vuproto.SetVringCall, vuproto.SetVringErr:
			if len(m.Payload) >= 8 && m.Payload[1]&1 == 0 {
				fd, _ := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
				m.FDs = append(m.FDs, fd)
			}
		}
		if hd.Request != fuzzPoke {
			p.handle(&m)
		}
		for _, fd := range m.FDs {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
		got, _ := p.readOnce(h.rd, true)
		for i, f := range h.rd[:got] {
			// Whatever the headers said: whole frames within the MTU,
			// or partial ones that complete; in the large buffer also
			// a GSO frame the switch may carry whole, its segments
			// within the MTU.
			if f.Off.GSO != frameio.GSONone && i == 1 {
				var s frameio.Segmenter
				if f.N > frameio.MaxGSOLen || !frameio.WholeGSO(f.Bytes(), f.Off) || s.Load(f.Bytes(), f.Off) != nil ||
					s.SegmentLen()-frameio.EthHeaderLen > 1500 {
					t.Fatalf("ReadBatch returned a GSO frame of %d bytes with Off %+v that may not go whole", f.N, f.Off)
				}
				continue
			}
			if f.N < frameio.MinFrameLen || f.N > frameio.FrameSize(1500) || f.Off.GSO != frameio.GSONone {
				t.Fatalf("ReadBatch returned %d bytes with Off %+v", f.N, f.Off)
			}
			if f.Off.Partial && !f.Finish() {
				t.Fatalf("a partial frame of %d bytes that does not finish: %+v", f.N, f.Off)
			}
		}
		p.WriteBatchNoWait(h.wr)
		if p.faults.Load() != 0 {
			t.Fatal("the data path faulted")
		}
	}
}

func FuzzHandle(f *testing.F) {
	f.Add(fuzzSession(false))
	f.Add(fuzzSession(true))
	f.Add(fuzzSessionWith(false, true))
	f.Add(fuzzSessionWith(true, true))
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0})
	f.Add(fuzzSession(false)[:100])
	h := newFuzzHarness(f)
	f.Fuzz(h.run)
}

// The seed sessions really move a frame each way, direct and through
// indirect tables, so the fuzzer starts from a data path that works; the
// offload seeds also move a GSO frame and a partial one.
func TestFuzzSeedMovesFrames(t *testing.T) {
	for _, indirect := range []bool{false, true} {
		h := newFuzzHarness(t)
		h.run(t, fuzzSession(indirect))
		if s := h.p.Stats(); s.RxFrames != 1 || s.TxFrames != 1 || s.RxDropped != 0 {
			t.Fatalf("seed session (indirect %v): %+v, want one frame each way", indirect, s)
		}
		want := uint64(0)
		if indirect {
			want = 1
		}
		if to, from := IndirectUsed(h.p); to != want || from != want {
			t.Fatalf("seed session (indirect %v): %d/%d indirect tables to/from the guest, want %d each", indirect, to, from, want)
		}
		// With offloads: the plain frame, the GSO frame whole (in
		// the large buffer) and the UDP frame; to the guest the plain
		// frame and the GSO frame whole (two buffers).
		h.run(t, fuzzSessionWith(indirect, true))
		if s := h.p.Stats(); s.RxFrames != 1+3 || s.TxFrames != 1+2 || s.TxBytes != 64+64+uint64(h.wr[1].N) || s.RxDropped != 0 || GSOFrames(h.p) != 1 || WholeFrames(h.p) != 1 {
			t.Fatalf("offload seed session (indirect %v): %+v, %d GSO frames (%d whole); want 3 more frames from the guest, one GSO whole, and 2 to it", indirect, s, GSOFrames(h.p), WholeFrames(h.p))
		}
	}
}
