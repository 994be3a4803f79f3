//go:build linux

package vhostuser

// IndirectUsed is how many indirect tables the port has walked since
// Listen, on the guest's receive queue (frames to the guest) and on its
// transmit queue (frames from it): tests check with it that a driver
// really used them.
func IndirectUsed(p *Port) (toGuest, fromGuest uint64) {
	return p.q[rxQ].indirectCount(), p.q[txQ].indirectCount()
}

func (q *vring) indirectCount() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.indirectUsed
}

// GSOFrames is how many GSO frames the port has taken from the guest
// (each cut into segments) since Listen.
func GSOFrames(p *Port) uint64 {
	q := &p.q[txQ]
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.gsoFrames
}

// GuestCsum says whether the current front-end negotiated
// VIRTIO_NET_F_GUEST_CSUM.
func GuestCsum(p *Port) bool {
	q := &p.q[rxQ]
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.guestCsum
}

// GuestTSO says whether the current front-end negotiated
// VIRTIO_NET_F_GUEST_TSO4 and GUEST_TSO6.
func GuestTSO(p *Port) (v4, v6 bool) {
	q := &p.q[rxQ]
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.guestTSO4, q.guestTSO6
}

// WholeFrames is how many of the GSO frames taken from the guest were
// handed up whole (into a large buffer, frameio.GSOReader).
func WholeFrames(p *Port) uint64 {
	q := &p.q[txQ]
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.wholeFrames
}
