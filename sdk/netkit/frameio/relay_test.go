package frameio

import (
	"context"
	"encoding/binary"
	"errors"
	"testing"
)

// offloadSrc hands out one batch of frames with offloads, then fails.
type offloadSrc struct {
	frames [][]byte
	offs   []Offload
	done   bool
}

func (s *offloadSrc) ReadBatch(fs []Frame) (int, error) {
	if s.done {
		return 0, ErrClosed
	}
	s.done = true
	for i, b := range s.frames {
		if len(b) > len(fs[i].Buf) {
			return 0, errors.New("buffer too small for a GSO frame")
		}
		fs[i].N = copy(fs[i].Buf, b)
		fs[i].Off = s.offs[i]
	}
	return len(s.frames), nil
}
func (s *offloadSrc) WriteBatch(fs []Frame) (int, error) { return len(fs), nil }
func (s *offloadSrc) Close() error                       { return nil }
func (s *offloadSrc) Kind() Kind                         { return KindPipe }
func (s *offloadSrc) MTU() int                           { return 1500 }
func (s *offloadSrc) Stats() Stats                       { return Stats{} }
func (s *offloadSrc) ReadsOffload() bool                 { return true }

// offloadDst records what it is given; it takes what partial and gso say.
type offloadDst struct {
	offloadSrc
	partial, gso bool
	got          []Frame
}

func (d *offloadDst) WriteBatch(fs []Frame) (int, error) {
	for _, f := range fs {
		d.got = append(d.got, Frame{Buf: append([]byte(nil), f.Bytes()...), N: f.N, Off: f.Off})
	}
	return len(fs), nil
}
func (d *offloadDst) TakesPartial() bool { return d.partial }
func (d *offloadDst) TakesGSO() bool     { return d.gso }

// Relay carries offloads to a dst that takes them and settles them for
// one that does not: a partial checksum completed, a GSO frame dropped.
func TestRelayOffloads(t *testing.T) {
	payload := make([]byte, 8000)
	gso, gsoOff := tsoFrame(false, payload, 0x10)
	part, partOff := tsoFrame(false, []byte("partial"), 0x80|0x18|0x01)
	sum := csumAdd(0, part[26:34]) + ipProtoTCP + uint64(len(part)-34)
	binary.BigEndian.PutUint16(part[50:], ^csumFold(sum))
	partOff.GSO, partOff.GSOSize = GSONone, 0
	plain := append([]byte(nil), part...)
	for _, c := range []struct {
		partial, gso bool
		want         []bool // per frame kept: plain, partial, gso
	}{
		{false, false, []bool{true, true, false}},
		{true, false, []bool{true, true, false}},
		{true, true, []bool{true, true, true}},
	} {
		src := &offloadSrc{frames: [][]byte{plain, part, gso}, offs: []Offload{{}, partOff, gsoOff}}
		dst := &offloadDst{partial: c.partial, gso: c.gso}
		if err := Relay(context.Background(), src, dst, 8); !errors.Is(err, ErrClosed) {
			t.Fatal(err)
		}
		kept := 0
		for _, k := range c.want {
			if k {
				kept++
			}
		}
		if len(dst.got) != kept {
			t.Fatalf("dst partial %v gso %v: got %d frames, want %d", c.partial, c.gso, len(dst.got), kept)
		}
		p := dst.got[1]
		if p.Off.Partial != c.partial {
			t.Fatalf("dst partial %v: the partial frame arrived with %+v", c.partial, p.Off)
		}
		if !c.partial {
			checkSegments(t, [][]byte{p.Bytes()}, false)
		}
		if c.gso && (dst.got[2].Off != gsoOff || dst.got[2].N != len(gso)) {
			t.Fatalf("the GSO frame arrived as %d bytes with %+v", dst.got[2].N, dst.got[2].Off)
		}
	}
}
