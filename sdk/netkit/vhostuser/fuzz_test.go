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
// guest address 0 (user address 1 MiB), both queues of 8 entries.
func fuzzSession() []byte {
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
	msg(vuproto.SetFeatures, u(1<<vuproto.FVersion1|1<<vuproto.NetFMTU))
	msg(vuproto.SetMemTable, vuproto.PutMemTable(nil, []vuproto.MemRegion{{MemorySize: 1 << 16, UserspaceAddr: 1 << 20}}))
	for q := range uint32(2) {
		msg(vuproto.SetVringNum, vuproto.VringState{Index: q, Num: 8}.Put(nil))
		msg(vuproto.SetVringBase, vuproto.VringState{Index: q}.Put(nil))
		msg(vuproto.SetVringAddr, vuproto.VringAddr{Index: q, Desc: 1<<20 + uint64(q)*0x1000, Avail: 1<<20 + uint64(q)*0x1000 + 0x200, Used: 1<<20 + uint64(q)*0x1000 + 0x400}.Put(nil))
		msg(vuproto.SetVringKick, u(uint64(q)))
		msg(vuproto.SetVringCall, u(uint64(q)|vuproto.VringNoFDMask))
		msg(vuproto.SetVringEnable, vuproto.VringState{Index: q, Num: 1}.Put(nil))
	}
	msg(vuproto.NetSetMTU, u(1500))
	cfg := make([]byte, vuproto.ConfigHeaderSize+12)
	binary.LittleEndian.PutUint32(cfg[4:], 12)
	msg(vuproto.GetConfig, cfg)
	msg(vuproto.GetVringBase, vuproto.VringState{Index: 1}.Put(nil))
	return b
}

// FuzzHandle feeds a stream of messages to the request handler and runs
// the data path after each: nothing may panic (a recovered data path
// fault counts as a failure here), whatever the messages say. Memory
// tables get a 64 KiB memfd per region and kicks an eventfd, so ring
// addresses the fuzzer picks are really mapped and walked.
func FuzzHandle(f *testing.F) {
	f.Add(fuzzSession())
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0})
	f.Add(fuzzSession()[:100])
	dir, err := os.MkdirTemp("", "vufuzz")
	if err != nil {
		f.Fatal(err)
	}
	defer os.RemoveAll(dir)
	p, err := Listen(filepath.Join(dir, "s"), Options{MTU: 1500, WriteTimeout: -1})
	if err != nil {
		f.Fatal(err)
	}
	defer p.Close()
	mfd, err := unix.MemfdCreate("fuzz", unix.MFD_CLOEXEC)
	if err != nil {
		f.Fatal(err)
	}
	defer unix.Close(mfd)
	unix.Ftruncate(mfd, 1<<16)
	rd := frameio.NewBatch(4, 1500)
	wr := frameio.NewBatch(2, 1500)
	wr[0].N, wr[1].N = 64, 1514

	f.Fuzz(func(t *testing.T, data []byte) {
		defer p.teardown()
		// Fresh zeroed memory each run, so a run does not depend on the last.
		unix.Ftruncate(mfd, 0)
		unix.Ftruncate(mfd, 1<<16)
		for len(data) >= vuproto.HeaderSize {
			h, err := vuproto.ParseHeader(data)
			if err != nil {
				return
			}
			data = data[vuproto.HeaderSize:]
			n := min(int(h.Size), len(data))
			m := vuproto.Msg{Header: h, Payload: data[:n]}
			data = data[n:]
			switch h.Request {
			case vuproto.SetMemTable:
				if len(m.Payload) >= 4 {
					for range min(binary.LittleEndian.Uint32(m.Payload), 8) {
						fd, _ := unix.Dup(mfd)
						m.FDs = append(m.FDs, fd)
					}
				}
			case vuproto.SetVringKick, vuproto.SetVringCall, vuproto.SetVringErr:
				if len(m.Payload) >= 8 && m.Payload[1]&1 == 0 {
					fd, _ := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
					m.FDs = append(m.FDs, fd)
				}
			}
			p.handle(&m)
			for _, fd := range m.FDs {
				if fd >= 0 {
					unix.Close(fd)
				}
			}
			p.readOnce(rd, true)
			p.WriteBatchNoWait(wr)
			if p.faults.Load() != 0 {
				t.Fatal("the data path faulted")
			}
		}
	})
}
