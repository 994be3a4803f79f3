package dhcpserver

// The pool never scans the range: a /16 with thousands of leases must
// still allocate in constant time. Entries in the heaps are hints checked
// against the index when they surface, so a renewal just pushes a new
// entry instead of finding the old one.

type timed struct {
	t  int64
	ip uint32
}

// timeHeap is a min-heap on t.
type timeHeap struct{ h []timed }

func (q *timeHeap) len() int    { return len(q.h) }
func (q *timeHeap) peek() timed { return q.h[0] }
func (q *timeHeap) push(t int64, ip uint32) {
	q.h = append(q.h, timed{t, ip})
	i := len(q.h) - 1
	for i > 0 {
		p := (i - 1) / 2
		if q.h[p].t <= q.h[i].t {
			break
		}
		q.h[p], q.h[i] = q.h[i], q.h[p]
		i = p
	}
}

func (q *timeHeap) pop() timed {
	top := q.h[0]
	n := len(q.h) - 1
	q.h[0] = q.h[n]
	q.h = q.h[:n]
	i := 0
	for {
		l, r, m := 2*i+1, 2*i+2, i
		if l < n && q.h[l].t < q.h[m].t {
			m = l
		}
		if r < n && q.h[r].t < q.h[m].t {
			m = r
		}
		if m == i {
			break
		}
		q.h[m], q.h[i] = q.h[i], q.h[m]
		i = m
	}
	return top
}

// fifo is a queue of addresses, oldest first.
type fifo struct {
	q    []uint32
	head int
}

func (f *fifo) len() int { return len(f.q) - f.head }

func (f *fifo) push(ip uint32) { f.q = append(f.q, ip) }

func (f *fifo) pop() uint32 {
	ip := f.q[f.head]
	f.head++
	if f.head > 1024 && f.head*2 > len(f.q) {
		f.q = append(f.q[:0], f.q[f.head:]...)
		f.head = 0
	}
	return ip
}

// hostAddr reports whether ip may be given to a guest at all.
func (s *Server) hostAddr(ip uint32) bool {
	return ip > s.network && ip < s.broadcast && ip != s.serverIP && ip != s.routerIP &&
		ip&^(s.broadcast^s.network) == s.network
}

func (s *Server) inPool(ip uint32) bool { return ip >= s.first && ip <= s.last }

func (s *Server) quarantined(ip uint32, now int64) bool {
	until, ok := s.quar[ip]
	return ok && until > now
}

// usable reports whether the pool address ip may go to id at now: not
// reserved, not quarantined, and free, already id's, or expired.
func (s *Server) usable(id string, ip uint32, now int64) bool {
	if !s.inPool(ip) || s.quarantined(ip, now) {
		return false
	}
	if _, r := s.resvIP[ip]; r {
		return false
	}
	h := s.byIP[ip]
	return h == nil || h.identity == id || h.expiry <= now
}

// canBind decides a REQUEST: may id have ip now?
func (s *Server) canBind(id string, l *lease, ip uint32, now int64) bool {
	if !s.hostAddr(ip) {
		return false
	}
	if r, ok := s.resv[id]; ok {
		h := s.byIP[ip]
		return ip == r && (h == nil || h == l || h.expiry <= now)
	}
	if l != nil && l.ip != 0 && l.ip != ip && l.state != StateOffered {
		// The identity's address is elsewhere: NAK, so the client
		// starts over and gets its own address back.
		return false
	}
	return s.usable(id, ip, now)
}

// pick chooses the address to offer id: its reservation, its previous
// address, the one it asks for, a never-used one, the longest-free one,
// and last the longest-expired lease of someone else. Zero means none.
func (s *Server) pick(id string, l *lease, requested uint32, now int64) uint32 {
	if r, ok := s.resv[id]; ok {
		if h := s.byIP[r]; h != nil && h != l && h.expiry > now {
			return 0 // still leased to someone else; SetReservation refuses that, a stale disk may not
		}
		return r
	}
	if l != nil && l.ip != 0 && s.usable(id, l.ip, now) {
		return l.ip
	}
	if requested != 0 && s.usable(id, requested, now) {
		return requested
	}
	s.sweepQuarantine(now)
	for s.cursor != 0 {
		c := s.cursor
		if c == s.last {
			s.cursor = 0
		} else {
			s.cursor++
		}
		if s.byIP[c] == nil && s.usable(id, c, now) {
			return c
		}
	}
	for s.freed.len() > 0 {
		if c := s.freed.pop(); s.byIP[c] == nil && s.usable(id, c, now) {
			return c
		}
	}
	for s.eheap.len() > 0 {
		e := s.eheap.peek()
		h := s.byIP[e.ip]
		if h == nil || h.expiry != e.t {
			s.eheap.pop() // superseded by a later push
			continue
		}
		if e.t > now {
			return 0 // the oldest lease is still active: the pool is full
		}
		s.eheap.pop()
		if s.usable(id, e.ip, now) {
			return e.ip
		}
	}
	return 0
}

// sweepQuarantine returns addresses whose quarantine ended to the pool.
func (s *Server) sweepQuarantine(now int64) {
	for s.qheap.len() > 0 && s.qheap.peek().t <= now {
		e := s.qheap.pop()
		if until, ok := s.quar[e.ip]; !ok || until != e.t {
			continue
		}
		delete(s.quar, e.ip)
		s.staleQ[e.ip] = struct{}{}
		s.recycle(e.ip)
	}
}

// recycle queues a pool address that just became free.
func (s *Server) recycle(ip uint32) {
	if _, r := s.resvIP[ip]; r || !s.inPool(ip) || s.byIP[ip] != nil {
		return
	}
	if _, q := s.quar[ip]; q {
		return
	}
	s.freed.push(ip)
}

// assign moves l to ip, taking ip from an expired holder if need be.
func (s *Server) assign(t *txn, l *lease, ip uint32) {
	if l.ip == ip {
		return
	}
	if h := s.byIP[ip]; h != nil && h != l {
		if t != nil {
			t.touch(s, h.identity)
		}
		s.removeLease(h)
		s.stale[h.identity] = struct{}{}
	}
	if _, q := s.quar[ip]; q {
		delete(s.quar, ip)
		s.staleQ[ip] = struct{}{}
	}
	if old := l.ip; old != 0 && s.byIP[old] == l {
		delete(s.byIP, old)
		l.ip = 0
		s.recycle(old)
	}
	s.byIP[ip] = l
	l.ip = ip
}

// pushExpiry notes when the lease on ip ends. Renewals leave superseded
// entries behind; rebuilding the heap now and then keeps it near the
// number of leases.
func (s *Server) pushExpiry(t int64, ip uint32) {
	s.eheap.push(t, ip)
	if s.eheap.len() > 2*len(s.byIP)+1024 {
		s.eheap.h = s.eheap.h[:0]
		for ip, l := range s.byIP {
			s.eheap.push(l.expiry, ip)
		}
	}
}

func (s *Server) removeLease(l *lease) {
	if s.leases[l.identity] == l {
		delete(s.leases, l.identity)
	}
	if l.ip != 0 && s.byIP[l.ip] == l {
		delete(s.byIP, l.ip)
		ip := l.ip
		l.ip = 0
		s.recycle(ip)
	}
	l.ip = 0
}

func (s *Server) nextSeq() uint64 {
	s.seq++
	return s.seq
}
