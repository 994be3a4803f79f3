//go:build linux

package vhostuserdriver

import (
	"testing"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/vhostuser/internal/vuproto"
)

// The driver reads a received frame's virtio-net header as a guest's
// driver does: NEEDS_CSUM (with GUEST_CSUM negotiated) makes Off partial,
// DATA_VALID or no flag leaves it zero; GSO_TCPV4/TCPV6 (with the
// matching GUEST_TSO) makes it a GSO frame; a header that says what was
// not negotiated, or whose checksum's place lies outside the frame, and a
// frame larger than the MTU that is not GSO, drops the frame.
func TestRxOffload(t *testing.T) {
	const n = 200 // frame bytes in the slot
	const tso4, tso6 = 1 << vuproto.NetFGuestTSO4, 1 << vuproto.NetFGuestTSO6
	partial := func(start, off uint16) func(h []byte) {
		return func(h []byte) {
			h[0] = vuproto.NetHdrFNeedsCsum
			le.PutUint16(h[6:], start)
			le.PutUint16(h[8:], off)
		}
	}
	gsoHdr := func(start uint16, typ byte) func(h []byte) {
		return func(h []byte) {
			partial(start, 16)(h)
			h[1] = typ
			le.PutUint16(h[4:], 1448)
		}
	}
	gso4, gso6 := gsoHdr(34, vuproto.NetHdrGSOTCPv4), gsoHdr(54, vuproto.NetHdrGSOTCPv6)
	for _, tc := range []struct {
		name      string
		guestCsum bool
		tso       uint64 // GUEST_TSO bits negotiated
		n         int    // frame bytes (0: n)
		hdr       func(h []byte)
		want      frameio.Offload
		ok        bool
	}{
		{"plain", true, 0, 0, func([]byte) {}, frameio.Offload{}, true},
		{"plain without GUEST_CSUM", false, 0, 0, func([]byte) {}, frameio.Offload{}, true},
		{"DATA_VALID", true, 0, 0, func(h []byte) { h[0] = 2 }, frameio.Offload{}, true},
		{"NEEDS_CSUM TCP/IPv4", true, 0, 0, partial(34, 16), frameio.Offload{Partial: true, CsumStart: 34, CsumOffset: 16}, true},
		{"NEEDS_CSUM UDP/IPv6", true, 0, 0, partial(54, 6), frameio.Offload{Partial: true, CsumStart: 54, CsumOffset: 6}, true},
		{"NEEDS_CSUM at the last two bytes", true, 0, 0, partial(n-2, 0), frameio.Offload{Partial: true, CsumStart: n - 2, CsumOffset: 0}, true},
		{"NEEDS_CSUM without GUEST_CSUM", false, 0, 0, partial(34, 16), frameio.Offload{}, false},
		{"NEEDS_CSUM past the end", true, 0, 0, partial(n-1, 0), frameio.Offload{}, false},
		{"NEEDS_CSUM offset past the end", true, 0, 0, partial(34, 0xffff), frameio.Offload{}, false},
		{"NEEDS_CSUM in the Ethernet header", true, 0, 0, partial(4, 0), frameio.Offload{}, false},
		{"GSO (no GUEST_TSO)", true, 0, 0, func(h []byte) { partial(34, 16)(h); h[1] = vuproto.NetHdrGSOTCPv4; le.PutUint16(h[4:], 100) }, frameio.Offload{}, false},
		{"GSO TCPv4 with GUEST_TSO4", true, tso4, 60000, gso4, frameio.Offload{Partial: true, CsumStart: 34, CsumOffset: 16, GSO: frameio.GSOTCPv4, GSOSize: 1448}, true},
		{"GSO TCPv6 with GUEST_TSO6", true, tso6, 60000, gso6, frameio.Offload{Partial: true, CsumStart: 54, CsumOffset: 16, GSO: frameio.GSOTCPv6, GSOSize: 1448}, true},
		{"GSO TCPv6 with GUEST_TSO4 only", true, tso4, 60000, gso6, frameio.Offload{}, false},
		{"GSO TCPv4 with GUEST_TSO6 only", true, tso6, 60000, gso4, frameio.Offload{}, false},
		{"GSO without NEEDS_CSUM", true, tso4, 60000, func(h []byte) { h[1] = vuproto.NetHdrGSOTCPv4; le.PutUint16(h[4:], 1448) }, frameio.Offload{}, false},
		{"GSO with gso_size 0", true, tso4, 60000, func(h []byte) {
			gso4(h)
			le.PutUint16(h[4:], 0)
		}, frameio.Offload{}, false},
		{"GSO with the ECN bit", true, tso4, 60000, func(h []byte) {
			gso4(h)
			h[1] |= vuproto.NetHdrGSOECN
		}, frameio.Offload{}, false},
		{"GSO UDP", true, tso4 | tso6, 6000, func(h []byte) {
			gso4(h)
			h[1] = vuproto.NetHdrGSOUDP
		}, frameio.Offload{}, false},
		{"plain, larger than the MTU", true, tso4 | tso6, 1600, func([]byte) {}, frameio.Offload{}, false},
		{"plain, as large as the MTU", true, tso4 | tso6, 1518, func([]byte) {}, frameio.Offload{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &Driver{hdrLen: 12, frameSize: frameio.FrameSize(1500), mem: make([]byte, 4096)}
			if tc.guestCsum {
				d.features = 1<<vuproto.NetFGuestCsum | tc.tso
			}
			if tc.n == 0 {
				tc.n = n
			}
			q := &queue{reg: slots{bufOff: 1024, size: 1024, n: 2}}
			h := d.mem[q.reg.bufOff+q.reg.size:][:12] // slot 1
			h[10] = 1
			tc.hdr(h)
			off, ok := d.rxOffload(q, 1, tc.n)
			if ok != tc.ok || off != tc.want {
				t.Fatalf("rxOffload = %+v, %v; want %+v, %v", off, ok, tc.want, tc.ok)
			}
		})
	}
}
