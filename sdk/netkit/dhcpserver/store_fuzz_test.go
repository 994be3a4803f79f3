package dhcpserver

import (
	"bytes"
	"context"
	"fmt"
	"reflect"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	bolt "go.etcd.io/bbolt"
)

// A bound lease as the server writes it, and the journal entry around it.
func seedRecord() []byte {
	r := record{ip: 0xc0a84005, state: StateBound, expiry: 1_790_000_000_000_000_000,
		mac: mac(1), clientID: []byte{1, 0x52, 0x54, 0, 0, 0, 1}, hostname: "guest"}
	return r.appendTo(nil)
}

// FuzzLeaseRecord decodes arbitrary lease records and journal entries, as
// a plugin does for every entry of its lease database at start. What
// decodes encodes back to the same bytes and decodes to the same lease.
func FuzzLeaseRecord(f *testing.F) {
	rec := seedRecord()
	f.Add(rec)
	f.Add(rec[:13])
	f.Add(appendJournal(nil, "6f1c0e4e-5c1b-4a4e-9a57-0d1b0c7d2f10", rec))
	f.Add(appendJournal(nil, "vm", nil))
	f.Add([]byte{0xff, 0xff, 'x'})
	released := append([]byte(nil), rec...)
	released[1] = byte(StateReleased)
	f.Add(released)
	f.Fuzz(func(t *testing.T, b []byte) {
		var r record
		if r.decode(b) == nil {
			if r.state != StateBound && r.state != StateReleased {
				t.Fatalf("accepted state %d", r.state)
			}
			enc := r.appendTo(nil)
			if !bytes.HasPrefix(b, enc) {
				t.Fatalf("re-encoded %x, read %x", enc, b)
			}
			var r2 record
			if err := r2.decode(enc); err != nil || !reflect.DeepEqual(r, r2) {
				t.Fatalf("round trip: %+v -> %+v (%v)", r, r2, err)
			}
		}
		if id, rec, ok := splitJournal(b); ok {
			if len(id) == 0 {
				t.Fatal("journal entry without an identity accepted")
			}
			if again := appendJournal(nil, string(id), rec); !bytes.Equal(again, b) {
				t.Fatalf("journal entry %x re-encoded as %x", b, again)
			}
		}
	})
}

// fillStore replaces the database's content with entries cut from data:
// a kind byte, a length byte, then the entry (a lease record, a journal
// entry, a reservation or a quarantine entry).
func fillStore(st *Store, data []byte) error {
	return st.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketLeases, bucketJournal, bucketReservations, bucketQuarantine} {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
			if _, err := tx.CreateBucket(b); err != nil {
				return err
			}
		}
		for i := 0; len(data) >= 2; i++ {
			kind, n := data[0], min(int(data[1]), len(data)-2)
			v := data[2 : 2+n]
			data = data[2+n:]
			id := []byte(fmt.Sprintf("id-%d", i%7)) // repeats, so entries clash
			var err error
			switch kind % 4 {
			case 0:
				err = tx.Bucket(bucketLeases).Put(id, v)
			case 1:
				seq, _ := tx.Bucket(bucketJournal).NextSequence()
				err = tx.Bucket(bucketJournal).Put([]byte(fmt.Sprintf("%016x", seq)), v)
			case 2:
				err = tx.Bucket(bucketReservations).Put(id, v)
			case 3:
				if len(v) < 4 {
					continue
				}
				err = tx.Bucket(bucketQuarantine).Put(v[:4], v[4:])
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// checkIndex verifies what a server rebuilt from disk: one holder per
// address, every lease on a host address of the subnet, reservations
// unique both ways.
func checkIndex(t *testing.T, s *Server) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, l := range s.leases {
		if l.identity != id || s.byIP[l.ip] != l || !s.hostAddr(l.ip) {
			t.Fatalf("lease %q on %08x: index %+v, host address %v", id, l.ip, s.byIP[l.ip], s.hostAddr(l.ip))
		}
	}
	if len(s.byIP) != len(s.leases) {
		t.Fatalf("%d leases, %d addresses held", len(s.leases), len(s.byIP))
	}
	for id, ip := range s.resv {
		if s.resvIP[ip] != id {
			t.Fatalf("reservation %q -> %08x, back to %q", id, ip, s.resvIP[ip])
		}
	}
	if len(s.resv) != len(s.resvIP) {
		t.Fatalf("%d reservations, %d reserved addresses", len(s.resv), len(s.resvIP))
	}
}

// FuzzLeaseStore starts a server on a lease database of arbitrary
// records, as after disk damage or a crash: it must start, hold each
// address once, and hand a new client an address nobody else holds;
// after a restart the same holds.
func FuzzLeaseStore(f *testing.F) {
	rec := seedRecord()
	other := append([]byte(nil), rec...)
	other[5] = 6 // 192.168.64.6
	entry := func(kind byte, v []byte) []byte { return append([]byte{kind, byte(len(v))}, v...) }
	f.Add(bytes.Join([][]byte{entry(0, rec), entry(0, other)}, nil))
	f.Add(bytes.Join([][]byte{entry(0, rec), entry(1, appendJournal(nil, "id-0", other)), entry(1, appendJournal(nil, "id-1", nil))}, nil))
	f.Add(bytes.Join([][]byte{entry(2, []byte{192, 168, 64, 5}), entry(0, rec), entry(3, []byte{192, 168, 64, 9, 0x7f, 0, 0, 0, 0, 0, 0, 0})}, nil))
	f.Add(bytes.Join([][]byte{entry(0, rec[:10]), entry(2, []byte{1, 2}), entry(1, []byte{0, 9, 'x'})}, nil))
	e := newEnv(f, nil)
	e.st.db.NoSync, e.st.db.MaxBatchDelay = true, 0
	e.s.Close()
	e.s = nil
	f.Cleanup(func() { e.st.Close() }) // e.stop closes it only with a server
	const newcomer = "fuzz-newcomer"
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := fillStore(e.st, data); err != nil {
			t.Fatal(err)
		}
		for round := 0; round < 2; round++ {
			s, err := New(e.cfg, e.st)
			if err != nil {
				t.Fatalf("start on a damaged database: %v", err)
			}
			checkIndex(t, s)
			reply, err := s.Handle(context.Background(), newcomer, discover(t, mac(0xabcdef)))
			if err != nil {
				s.Close()
				t.Fatal(err)
			}
			if reply != nil && reply.MessageType() == dhcpv4.MessageTypeOffer {
				ip := addrU32FromIP(t, reply.YourIPAddr)
				s.mu.Lock()
				holder, reserved := s.byIP[ip], s.resvIP[ip]
				s.mu.Unlock()
				if !s.hostAddr(ip) || (holder != nil && holder.identity != newcomer) || (reserved != "" && reserved != newcomer) {
					s.Close()
					t.Fatalf("offered %s, held by %+v, reserved for %q", reply.YourIPAddr, holder, reserved)
				}
			}
			checkIndex(t, s)
			s.Close()
		}
	})
}

func addrU32FromIP(t *testing.T, ip []byte) uint32 {
	t.Helper()
	ip4 := [4]byte{}
	if len(ip) == 16 {
		ip = ip[12:]
	}
	if len(ip) != 4 {
		t.Fatalf("offered address %v", ip)
	}
	copy(ip4[:], ip)
	return uint32(ip4[0])<<24 | uint32(ip4[1])<<16 | uint32(ip4[2])<<8 | uint32(ip4[3])
}
