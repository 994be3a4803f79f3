package mactrans

import "encoding/binary"

// csum collects what rewrites did to a checksummed region, so the checksum
// is patched once (RFC 1624, eqn. 3) instead of recomputed over the whole
// datagram.
type csum struct {
	old, new uint32
	n        int
}

// swap rewrites b like the package-level swap. off is b's offset from the
// start of the payload that follows an even-length header (UDP 8, ICMPv6
// 4), which is all the alignment the ones' complement sum needs.
func (c *csum) swap(b []byte, off int, from, to *[6]byte) {
	if !swap(b, from, to) {
		return
	}
	odd := off&1 == 1
	c.old += uint32(sum16(from[:], odd))
	c.new += uint32(sum16(to[:], odd))
	c.n++
}

// apply patches the checksum at f. A UDP checksum of 0 means the sender
// did not compute one; it stays 0, and a result of 0 is sent as 0xffff
// (RFC 768).
func (c *csum) apply(f []byte, udp bool) {
	if c.n == 0 || len(f) != 2 {
		return
	}
	hc := binary.BigEndian.Uint16(f)
	if udp && hc == 0 {
		return
	}
	s := uint32(^hc) + uint32(^fold(c.old)) + uint32(fold(c.new))
	r := ^fold(s)
	if udp && r == 0 {
		r = 0xffff
	}
	binary.BigEndian.PutUint16(f, r)
}

// sum16 is the ones' complement sum of b as 16-bit big-endian words. At an
// odd offset every byte sits in the other half of its word, which is the
// same as rotating the aligned sum by 8 bits (RFC 1071, 2(B)).
func sum16(b []byte, odd bool) uint16 {
	var s uint32
	i := 0
	for ; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if i < len(b) {
		s += uint32(b[i]) << 8
	}
	r := fold(s)
	if odd {
		r = r<<8 | r>>8
	}
	return r
}

func fold(s uint32) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}
