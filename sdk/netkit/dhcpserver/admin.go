package dhcpserver

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"
)

func (s *Server) checkIdentity(identity string) error {
	if identity == "" || len(identity) > maxIdentityLen {
		return fmt.Errorf("dhcp: identity %q must be 1 to %d bytes", identity, maxIdentityLen)
	}
	return nil
}

// SetReservation pins ip to identity: only identity gets it, from now on
// and across restarts, and it leaves the dynamic pool. ip may be any host
// address of the subnet except the server's and the router's. It fails,
// changing nothing, when ip is reserved for or actively leased to another
// identity. An identity whose current lease is elsewhere is NAKed at its
// next renewal and comes back for the reserved address.
func (s *Server) SetReservation(identity string, ip netip.Addr) error {
	if err := s.checkIdentity(identity); err != nil {
		return err
	}
	if !ip.Is4() || !s.hostAddr(addrU32(ip)) {
		return fmt.Errorf("dhcp: cannot reserve %v: it is not a free host address of %v (the server is %v)", ip, s.cfg.Subnet, s.cfg.ServerIP)
	}
	u := addrU32(ip)
	now := s.cfg.Now().UnixNano()
	s.mu.Lock()
	if other, ok := s.resvIP[u]; ok {
		s.mu.Unlock()
		if other == identity {
			return nil
		}
		return fmt.Errorf("dhcp: cannot reserve %v for %s: it is already reserved for %s", ip, identity, other)
	}
	if h := s.byIP[u]; h != nil && h.identity != identity && h.state == StateBound && h.expiry > now {
		s.mu.Unlock()
		return fmt.Errorf("dhcp: cannot reserve %v for %s: it is leased to %s until %s; release that VM first", ip, identity, h.identity, time.Unix(0, h.expiry).UTC().Format(time.RFC3339))
	}
	t := &txn{resvIDs: []string{identity}}
	prev, hadPrev := s.resv[identity]
	if hadPrev {
		delete(s.resvIP, prev)
	}
	s.resv[identity], s.resvIP[u] = u, identity
	if h := s.byIP[u]; h != nil && h.identity != identity {
		t.touch(s, h.identity)
		s.removeLease(h) // an offer or an expired lease: not a promise
	}
	if until, q := s.quar[u]; q {
		delete(s.quar, u)
		t.quarIPs = append(t.quarIPs, u)
		t.undo = append(t.undo, func() { s.quar[u] = until })
	}
	if hadPrev {
		s.recycle(prev)
	}
	t.undo = append(t.undo, func() {
		if s.resv[identity] != u {
			return
		}
		delete(s.resv, identity)
		delete(s.resvIP, u)
		if _, taken := s.resvIP[prev]; hadPrev && !taken {
			s.resv[identity], s.resvIP[prev] = prev, identity
		}
	})
	s.finish(t)
	s.mu.Unlock()
	return s.commit(t)
}

// RemoveReservation returns identity's reserved address to the pool (if
// it lies in the range). A lease on it lasts until the next renewal.
func (s *Server) RemoveReservation(identity string) error {
	s.mu.Lock()
	r, ok := s.resv[identity]
	if !ok {
		s.mu.Unlock()
		return nil
	}
	delete(s.resv, identity)
	delete(s.resvIP, r)
	s.recycle(r)
	t := &txn{resvIDs: []string{identity}}
	t.undo = append(t.undo, func() {
		if _, taken := s.resvIP[r]; !taken {
			if _, has := s.resv[identity]; !has {
				s.resv[identity], s.resvIP[r] = r, identity
			}
		}
	})
	s.finish(t)
	s.mu.Unlock()
	return s.commit(t)
}

// Release forgets identity entirely: lease, reservation and hostname. The
// plugin calls it when the VM is deleted or its card removed. The address
// returns to the pool behind the never-used ones.
func (s *Server) Release(identity string) error {
	s.mu.Lock()
	t := &txn{}
	if l := s.leases[identity]; l != nil {
		t.touch(s, identity)
		s.removeLease(l)
		t.tell(s, Lease{Identity: identity})
	}
	if r, ok := s.resv[identity]; ok {
		delete(s.resv, identity)
		delete(s.resvIP, r)
		s.recycle(r)
		t.resvIDs = append(t.resvIDs, identity)
		t.undo = append(t.undo, func() {
			if _, taken := s.resvIP[r]; !taken {
				s.resv[identity], s.resvIP[r] = r, identity
			}
		})
	}
	delete(s.names, identity)
	if len(t.leaseIDs) == 0 && len(t.resvIDs) == 0 {
		s.mu.Unlock()
		return nil
	}
	s.finish(t)
	s.mu.Unlock()
	return s.commit(t)
}

// SetHostname makes the server send name as option 12 to identity,
// overriding what the client says. An empty name removes it. The name is
// not stored: the plugin sets it again when it attaches the VM.
func (s *Server) SetHostname(identity, name string) error {
	if err := s.checkIdentity(identity); err != nil {
		return err
	}
	if len(name) > 255 || strings.ContainsRune(name, 0) {
		return fmt.Errorf("dhcp: hostname %q is longer than 255 bytes or holds a NUL", name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if name == "" {
		delete(s.names, identity)
	} else {
		s.names[identity] = name
	}
	return nil
}

// Lease returns what the server knows of identity, including an
// outstanding offer (State tells).
func (s *Server) Lease(identity string) (Lease, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.leases[identity]
	if l == nil {
		return Lease{}, false
	}
	return l.public(), true
}

// Leases lists every identity's lease, ordered by address.
func (s *Server) Leases() []Lease {
	s.mu.Lock()
	out := make([]Lease, 0, len(s.leases))
	for _, l := range s.leases {
		out = append(out, l.public())
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].IP.Less(out[j].IP) })
	return out
}

// Reservation returns identity's reserved address.
func (s *Server) Reservation(identity string) (netip.Addr, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.resv[identity]
	if !ok {
		return netip.Addr{}, false
	}
	return u32Addr(r), true
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	c := &s.stats
	return Stats{
		Discovers: c.discovers.Load(), Offers: c.offers.Load(), Requests: c.requests.Load(),
		Acks: c.acks.Load(), Naks: c.naks.Load(), Declines: c.declines.Load(),
		Releases: c.releases.Load(), Informs: c.informs.Load(), NoAddress: c.noAddress.Load(),
		Ignored: c.ignored.Load(), Dropped: c.dropped.Load(), CommitErrors: c.commitErrs.Load(),
		CorruptRecords: c.corrupt.Load(), DeclinesRefused: c.declinesRefused.Load(),
	}
}
