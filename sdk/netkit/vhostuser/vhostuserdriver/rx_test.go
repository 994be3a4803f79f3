//go:build linux

package vhostuserdriver

import (
	"testing"

	"github.com/anka-net/anka/sdk/netkit/frameio"
	"github.com/anka-net/anka/sdk/netkit/vhostuser/internal/vuproto"
)

// The driver reads a received frame's virtio-net header as a guest's
// driver does: NEEDS_CSUM (with GUEST_CSUM negotiated) makes Off partial,
// DATA_VALID or no flag leaves it zero; a header that says what was not
// negotiated, or whose checksum's place lies outside the frame, drops
// the frame.
func TestRxOffload(t *testing.T) {
	const n = 200 // frame bytes in the slot
	partial := func(start, off uint16) func(h []byte) {
		return func(h []byte) {
			h[0] = vuproto.NetHdrFNeedsCsum
			le.PutUint16(h[6:], start)
			le.PutUint16(h[8:], off)
		}
	}
	for _, tc := range []struct {
		name      string
		guestCsum bool
		hdr       func(h []byte)
		want      frameio.Offload
		ok        bool
	}{
		{"plain", true, func([]byte) {}, frameio.Offload{}, true},
		{"plain without GUEST_CSUM", false, func([]byte) {}, frameio.Offload{}, true},
		{"DATA_VALID", true, func(h []byte) { h[0] = 2 }, frameio.Offload{}, true},
		{"NEEDS_CSUM TCP/IPv4", true, partial(34, 16), frameio.Offload{Partial: true, CsumStart: 34, CsumOffset: 16}, true},
		{"NEEDS_CSUM UDP/IPv6", true, partial(54, 6), frameio.Offload{Partial: true, CsumStart: 54, CsumOffset: 6}, true},
		{"NEEDS_CSUM at the last two bytes", true, partial(n-2, 0), frameio.Offload{Partial: true, CsumStart: n - 2, CsumOffset: 0}, true},
		{"NEEDS_CSUM without GUEST_CSUM", false, partial(34, 16), frameio.Offload{}, false},
		{"NEEDS_CSUM past the end", true, partial(n-1, 0), frameio.Offload{}, false},
		{"NEEDS_CSUM offset past the end", true, partial(34, 0xffff), frameio.Offload{}, false},
		{"NEEDS_CSUM in the Ethernet header", true, partial(4, 0), frameio.Offload{}, false},
		{"GSO (no GUEST_TSO)", true, func(h []byte) { partial(34, 16)(h); h[1] = vuproto.NetHdrGSOTCPv4; le.PutUint16(h[4:], 100) }, frameio.Offload{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &Driver{hdrLen: 12, mem: make([]byte, 4096)}
			if tc.guestCsum {
				d.features = 1 << vuproto.NetFGuestCsum
			}
			q := &queue{reg: slots{bufOff: 1024, size: 1024, n: 2}}
			h := d.mem[q.reg.bufOff+q.reg.size:][:12] // slot 1
			h[10] = 1
			tc.hdr(h)
			off, ok := d.rxOffload(q, 1, n)
			if ok != tc.ok || off != tc.want {
				t.Fatalf("rxOffload = %+v, %v; want %+v, %v", off, ok, tc.want, tc.ok)
			}
		})
	}
}
