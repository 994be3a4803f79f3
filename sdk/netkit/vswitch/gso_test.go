package vswitch

import (
	"bytes"
	"net"
	"testing"

	"github.com/anka-net/anka/sdk/netkit/frameio"
)

// gsoLink is an offLink that hands GSO frames up whole
// (frameio.GSOReader: its batches get large buffers) and, when takesGSO,
// takes them whole (frameio.GSOWriter), as an uplink TAP with HandGSO
// and a vhost-user guest with TSO do.
type gsoLink struct {
	*offLink
	takesGSO bool
}

func (l *gsoLink) GSOBuffers() int { return 4 }
func (l *gsoLink) TakesGSO() bool  { return l.takesGSO }

var (
	_ frameio.GSOReader = (*gsoLink)(nil)
	_ frameio.GSOWriter = (*gsoLink)(nil)
)

// gsoFrame is a 4,000-byte TCP/IPv4 segment from src to dst as a stack
// with TSO hands it over: checksum partial, to be cut at MSS 1448.
func gsoFrame(t testing.TB, src, dst net.HardwareAddr) frameio.Frame {
	payload := bytes.Repeat([]byte("0123456789abcdef"), 250)
	complete, _ := tcpSegment(t, src, dst, "10.0.0.1", "10.0.0.2", 40000, 5201, 1000, 9, false, payload)
	f := partialOf(complete, frameio.MaxGSOLen)
	f.Off.GSO, f.Off.GSOSize = frameio.GSOTCPv4, 1448
	return f
}

// tagged is f behind a VLAN tag (its checksum's start moved along).
func tagged(f frameio.Frame) frameio.Frame {
	b := f.Bytes()
	buf := make([]byte, frameio.MaxGSOLen)
	n := copy(buf, b[:12])
	n += copy(buf[n:], []byte{0x81, 0x00, 0x00, 0x05})
	n += copy(buf[n:], b[12:])
	off := f.Off
	off.CsumStart += 4
	return frameio.Frame{Buf: buf, N: n, Off: off}
}

// cutRef is what a GSO frame cut to the MTU is, complete: the reference
// the switch's pieces are held to.
func cutRef(t *testing.T, f frameio.Frame) [][]byte {
	var s frameio.Segmenter
	if err := s.Load(f.Bytes(), f.Off); err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for s.Pending() {
		g := frameio.NewBatch(1, frameio.DefaultMTU)[0]
		if !s.Next(&g, false) {
			t.Fatal("the reference cut failed")
		}
		out = append(out, bytes.Clone(g.Bytes()))
	}
	return out
}

// gsoRig: a source that hands GSO frames up whole (src), a port that
// takes them whole (gso), one that takes partial checksums (up), and a
// plain one.
type gsoRig struct {
	sw         *Switch
	src, gso   *gsoLink
	up         *offLink
	plain      *memLink
	srcPort    *Port
	macG, macP net.HardwareAddr
}

func newGSORig(t *testing.T) *gsoRig {
	r := &gsoRig{sw: New(Config{}), src: &gsoLink{offLink: newOffLink(false)}, gso: &gsoLink{offLink: newOffLink(true), takesGSO: true},
		up: newOffLink(true), plain: newMemLink(), macG: net.HardwareAddr{0x02, 0, 0, 0, 0, 0x6}, macP: macC}
	t.Cleanup(func() { r.sw.Close() })
	r.srcPort = attach(t, r.sw, r.src, "src", macA)
	attach(t, r.sw, r.gso, "gso", r.macG)
	attach(t, r.sw, r.up, "up", macU)
	attach(t, r.sw, r.plain, "plain", r.macP)
	return r
}

func (r *gsoRig) send(t *testing.T, fs ...frameio.Frame) {
	t.Helper()
	(&offRig{vm: r.src.offLink, vmPort: r.srcPort}).send(t, fs...)
}

// A GSO frame goes whole, offload and bytes untouched, to a port that
// takes GSO frames; it is cut to the MTU for a port that takes partial
// checksums (pieces partial) and for a plain one (pieces complete); and
// a flood sends complete pieces to every other port.
func TestGSOWholeOrCut(t *testing.T) {
	r := newGSORig(t)

	whole := gsoFrame(t, macA, r.macG)
	r.send(t, whole)
	if got := r.gso.got(); len(got) != 1 || got[0].Off != whole.Off || !bytes.Equal(got[0].Bytes(), whole.Bytes()) {
		t.Fatalf("the GSO port got %d frames, want the one whole: %+v", len(got), got)
	}

	toUp := gsoFrame(t, macA, macU)
	ref := cutRef(t, toUp)
	if len(ref) != 3 {
		t.Fatalf("the reference has %d pieces, want 3", len(ref))
	}
	r.send(t, toUp)
	got := r.up.got()
	if len(got) != len(ref) {
		t.Fatalf("the partial port got %d frames, want %d", len(got), len(ref))
	}
	for i := range got {
		if !got[i].Off.Partial || got[i].Off.GSO != frameio.GSONone {
			t.Fatalf("piece %d: offload %+v, want a partial checksum", i, got[i].Off)
		}
		f := frameio.Frame{Buf: bytes.Clone(got[i].Bytes()), N: got[i].N, Off: got[i].Off}
		if !f.Finish() || !bytes.Equal(f.Bytes(), ref[i]) {
			t.Fatalf("piece %d completed differs from the reference", i)
		}
	}

	r.send(t, gsoFrame(t, macA, r.macP))
	if plain := r.plain.received(); len(plain) != len(ref) || !bytes.Equal(bytes.Join(plain, nil), bytes.Join(cutRef(t, gsoFrame(t, macA, r.macP)), nil)) {
		t.Fatalf("the plain port got %d frames, not the complete pieces", len(plain))
	}

	flood := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x77}
	fl := gsoFrame(t, macA, flood)
	flRef := cutRef(t, fl)
	r.plain.reset()
	nGSO, nUp := len(r.gso.got()), len(r.up.got())
	r.send(t, fl)
	for name, got := range map[string][]frameio.Frame{"gso": r.gso.got()[nGSO:], "up": r.up.got()[nUp:]} {
		if len(got) != len(flRef) {
			t.Fatalf("port %s got %d flooded frames, want %d pieces", name, len(got), len(flRef))
		}
		for i := range got {
			if got[i].Off != (frameio.Offload{}) || !bytes.Equal(got[i].Bytes(), flRef[i]) {
				t.Fatalf("port %s: flooded piece %d not the complete reference (offload %+v)", name, i, got[i].Off)
			}
		}
	}
	if plain := r.plain.received(); len(plain) != len(flRef) {
		t.Fatalf("the plain port got %d flooded frames, want %d", len(plain), len(flRef))
	}
	if d := r.srcPort.Stats().Drops[dropOffloadName]; d != 0 {
		t.Fatalf("%d frames dropped", d)
	}
}

// Behind a VLAN tag a piece's checksum cannot stay partial (the
// Segmenter leaves it at the untagged place): the partial port gets it
// complete. A GSO frame whose pieces outgrow the MTU is dropped and
// counted.
func TestGSOTaggedAndOversized(t *testing.T) {
	r := newGSORig(t)
	tg := tagged(gsoFrame(t, macA, macU))
	ref := cutRef(t, tg)
	r.send(t, tg)
	got := r.up.got()
	if len(got) != len(ref) {
		t.Fatalf("got %d pieces, want %d", len(got), len(ref))
	}
	for i := range got {
		if got[i].Off != (frameio.Offload{}) || !bytes.Equal(got[i].Bytes(), ref[i]) {
			t.Fatalf("tagged piece %d: offload %+v or bytes differ from the complete reference", i, got[i].Off)
		}
	}
	big := gsoFrame(t, macA, r.macP)
	big.Off.GSOSize = 3000 // pieces of 3,054 bytes: no MTU-sized buffer holds one
	r.send(t, big)
	if n := len(r.plain.received()); n != 0 {
		t.Fatalf("the plain port got %d frames of an oversized cut", n)
	}
	if d := r.srcPort.Stats().Drops[dropOffloadName]; d != 1 {
		t.Fatalf("%d drops counted, want 1", d)
	}
}

// Cutting allocates nothing once the forwarder's pieces are allocated.
func TestGSOCutAllocatesNothing(t *testing.T) {
	forwardsWithoutAllocs(t, gsoFrame(t, macA, macB), 8, 8, 3)
}
