package dhcpserver

import (
	"encoding/binary"

	bolt "go.etcd.io/bbolt"
)

// txn is one change to the index that must reach the disk before its
// reply leaves. The values written are read from the index when the bbolt
// transaction runs, not when the change is made, so batches that run out
// of order (bbolt retries a failed function alone) still leave the disk
// equal to memory.
type txn struct {
	leaseIDs []string
	resvIDs  []string
	quarIPs  []uint32
	saved    []saved
	undo     []func()
	notify   []notice
	stale    []string
	staleQ   []uint32
}

// notice is a lease change for OnLease, stamped in the order the changes
// were made (under Server.mu).
type notice struct {
	lease Lease
	seq   uint64
}

// tell queues l for OnLease once t is durable; s.mu is held.
func (t *txn) tell(s *Server, l Lease) {
	t.notify = append(t.notify, notice{lease: l, seq: s.nextSeq()})
}

type saved struct {
	id   string
	prev *lease // copy before the change; nil if there was no lease
	seq  uint64 // seq after the change; 0 if the change removed the lease
}

// touch records id's lease before it changes, for the write and the undo.
func (t *txn) touch(s *Server, id string) {
	for _, sv := range t.saved {
		if sv.id == id {
			return
		}
	}
	var prev *lease
	if l := s.leases[id]; l != nil {
		c := *l
		prev = &c
	}
	t.saved = append(t.saved, saved{id: id, prev: prev})
	t.leaseIDs = append(t.leaseIDs, id)
}

// finish stamps the touched leases and takes over the stale keys.
func (s *Server) finish(t *txn) {
	for i := range t.saved {
		if l := s.leases[t.saved[i].id]; l != nil {
			l.seq = s.nextSeq()
			t.saved[i].seq = l.seq
		}
	}
	for id := range s.stale {
		t.stale = append(t.stale, id)
		t.leaseIDs = append(t.leaseIDs, id)
	}
	clear(s.stale)
	for ip := range s.staleQ {
		t.staleQ = append(t.staleQ, ip)
		t.quarIPs = append(t.quarIPs, ip)
	}
	clear(s.staleQ)
}

// snapshot encodes the current state of t's keys. Called with mu held.
func (s *Server) snapshot(t *txn) *write {
	w := &write{}
	for _, id := range t.leaseIDs {
		v := appendJournal(make([]byte, 0, 48+len(id)), id, nil)
		if l := s.leases[id]; l != nil && l.ip != 0 && l.state != StateOffered {
			r := l.record()
			v = r.appendTo(v)
		}
		w.journal = append(w.journal, v)
	}
	for _, id := range t.resvIDs {
		var v []byte
		if ip, ok := s.resv[id]; ok {
			v = binary.BigEndian.AppendUint32(nil, ip)
		}
		w.reservations = append(w.reservations, kv{[]byte(id), v})
	}
	for _, ip := range t.quarIPs {
		var v []byte
		if until, ok := s.quar[ip]; ok {
			v = binary.BigEndian.AppendUint64(nil, uint64(until))
		}
		w.quarantine = append(w.quarantine, kv{binary.BigEndian.AppendUint32(nil, ip), v})
	}
	return w
}

// commit makes t durable. On failure it undoes t in memory; the caller
// then sends no reply, so a client never holds what the disk does not.
func (s *Server) commit(t *txn) error {
	err := s.st.batch(func(tx *bolt.Tx) error {
		s.mu.Lock()
		w := s.snapshot(t)
		s.mu.Unlock()
		return w.apply(tx)
	}, len(t.leaseIDs))
	if err != nil {
		s.stats.commitErrs.Add(1)
		s.mu.Lock()
		s.rollback(t)
		s.mu.Unlock()
		return err
	}
	if s.cfg.OnLease != nil && len(t.notify) > 0 {
		// Commits finish in any order (two in one batch return at
		// once): a RELEASE told after the REQUEST that followed it
		// would leave the plugin thinking the lease ended, and pin the
		// guest's port away from the address it was just ACKed. Per
		// identity, a change older than one already told is dropped.
		s.nmu.Lock()
		for _, n := range t.notify {
			id := n.lease.Identity
			if n.seq < s.told[id] {
				continue
			}
			s.told[id] = n.seq
			s.cfg.OnLease(n.lease)
		}
		s.nmu.Unlock()
	}
	return nil
}

// rollback undoes t, except where a later change already replaced it.
func (s *Server) rollback(t *txn) {
	var restore []*lease
	for _, sv := range t.saved {
		cur := s.leases[sv.id]
		var seq uint64
		if cur != nil {
			seq = cur.seq
		}
		if seq != sv.seq {
			continue
		}
		if cur != nil {
			s.removeLease(cur)
		}
		if sv.prev != nil {
			restore = append(restore, sv.prev)
		}
	}
	for _, p := range restore {
		if p.ip == 0 || s.byIP[p.ip] != nil || s.leases[p.identity] != nil {
			s.stale[p.identity] = struct{}{}
			continue
		}
		l := *p
		l.seq = s.nextSeq()
		s.leases[l.identity] = &l
		s.byIP[l.ip] = &l
		s.pushExpiry(l.expiry, l.ip)
	}
	for i := len(t.undo) - 1; i >= 0; i-- {
		t.undo[i]()
	}
	for _, id := range t.stale {
		s.stale[id] = struct{}{}
	}
	for _, ip := range t.staleQ {
		s.staleQ[ip] = struct{}{}
	}
}
