package vswitch

import (
	"sync"
	"sync/atomic"
)

// MAC is an Ethernet address as a comparable value, so the table needs no
// string keys and no allocation per lookup.
type MAC [6]byte

// IsMulticast covers broadcast too.
func (m MAC) IsMulticast() bool { return m[0]&1 == 1 }

// IsZero is the unset address.
func (m MAC) IsZero() bool { return m == MAC{} }

func macAt(b []byte) (m MAC) {
	copy(m[:], b[:6])
	return m
}

type entry struct {
	port   *Port
	pinned bool         // a port's own MAC: never moved by learning
	seen   atomic.Int64 // last time a frame came from it (ns)
}

// table maps MACs to ports. Lookups read an immutable map through one
// atomic load, so forwarding takes no lock that every port contends for;
// the rare changes (a new or moved MAC, aging) copy the map under a mutex.
type table struct {
	mu sync.Mutex
	m  atomic.Pointer[map[MAC]*entry]
}

func newTable() *table {
	t := &table{}
	m := map[MAC]*entry{}
	t.m.Store(&m)
	return t
}

func (t *table) lookup(mac MAC) *entry { return (*t.m.Load())[mac] }

// update replaces the map with a modified copy.
func (t *table) update(fn func(m map[MAC]*entry)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := *t.m.Load()
	m := make(map[MAC]*entry, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	fn(m)
	t.m.Store(&m)
}

// learn records that mac was seen on p at now. The common case, a known
// MAC on the same port, costs a load and, at most once a second, a store.
func (t *table) learn(mac MAC, p *Port, now int64) {
	if e := t.lookup(mac); e != nil {
		if e.port == p {
			if now-e.seen.Load() > int64(1e9) {
				e.seen.Store(now)
			}
			return
		}
		if e.pinned {
			return // a VM's own MAC is never taken over by another port
		}
	}
	t.update(func(m map[MAC]*entry) {
		if e := m[mac]; e != nil && e.pinned {
			return
		}
		e := &entry{port: p}
		e.seen.Store(now)
		m[mac] = e
	})
}

func (t *table) pin(mac MAC, p *Port) {
	t.update(func(m map[MAC]*entry) { m[mac] = &entry{port: p, pinned: true} })
}

// forget drops every entry of p (a detached port).
func (t *table) forget(p *Port) {
	t.update(func(m map[MAC]*entry) {
		for k, e := range m {
			if e.port == p {
				delete(m, k)
			}
		}
	})
}

// expire drops learned entries not seen since before.
func (t *table) expire(before int64) int {
	n := 0
	for _, e := range *t.m.Load() {
		if !e.pinned && e.seen.Load() < before {
			n++
		}
	}
	if n == 0 {
		return 0
	}
	t.update(func(m map[MAC]*entry) {
		for k, e := range m {
			if !e.pinned && e.seen.Load() < before {
				delete(m, k)
			}
		}
	})
	return n
}

func (t *table) len() int { return len(*t.m.Load()) }
