package dhcpserver

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// SchemaVersion is the layout of the lease database this build writes.
// A database with a newer version is refused rather than misread.
const SchemaVersion = 1

// Group commit tuning. Every ACK waits for an fsync; bbolt's Batch lets
// the writers that arrive within batchDelay of the first share one
// transaction. Shorter than a commit, the delay splits the writers waiting
// behind it into several batches paying one fsync each; longer, it only
// adds latency. 5ms measured best here (2ms and 10ms within 10%, 30ms half
// the rate); a lone REQUEST waits it out, far below any client's
// retransmit timer. batchSize only caps a transaction's size.
const (
	batchDelay = 5 * time.Millisecond
	batchSize  = 2000
	// openTimeout bounds the wait for bbolt's file lock, so a second
	// plugin instance fails at once instead of hanging.
	openTimeout = 500 * time.Millisecond
)

var (
	bucketMeta         = []byte("meta")
	bucketLeases       = []byte("leases")
	bucketReservations = []byte("reservations")
	bucketQuarantine   = []byte("quarantine")
	bucketJournal      = []byte("journal")
	keySchemaVersion   = []byte("schema_version")
)

// Store is the durable half of a Server: leases, reservations and the
// quarantine, in a bbolt file in the plugin's data directory. One Store
// serves one Server at a time.
//
// Schema 1 has five buckets. meta holds schema_version. leases maps an
// identity to its lease record; journal holds lease records written
// since, under increasing sequence numbers, and wins over leases.
// reservations maps an identity to an address, quarantine an address to
// the end of its quarantine (unix nanoseconds), all big-endian.
//
// The journal exists because identities are random uuids: writing each
// ACK's lease under its own key dirties one B+tree page per lease, and on
// this project's reference machine that capped durable ACKs near 7,000 a
// second. Appending under sequential keys dirties a handful of pages per
// commit; a compaction folds the journal into leases once it is long,
// rewriting each page once for many leases.
type Store struct {
	db         *bolt.DB
	path       string
	inUse      atomic.Bool
	journalLen atomic.Uint64
	compacting atomic.Bool
	bg         sync.WaitGroup
}

// compactAt is the journal length that starts a compaction. Longer means
// fewer, longer compactions (writers wait for one), and a longer replay at
// start.
const compactAt = 16384

// OpenStore opens or creates the lease database at path (mode 0600).
// Another process holding it makes OpenStore fail within a second.
func OpenStore(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout: openTimeout,
		// The freelist is rebuilt at open instead of written at every
		// commit: less to write per ACK, a slower open we can afford.
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("dhcp: lease database %s is locked by another process; is another instance of this plugin running?", path)
	}
	if errors.Is(err, bolterrors.ErrInvalid) || errors.Is(err, bolterrors.ErrVersionMismatch) || errors.Is(err, bolterrors.ErrChecksum) {
		return nil, fmt.Errorf("dhcp: lease database %s is damaged (%w); move it aside to start with no leases (its VMs then get fresh addresses)", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("dhcp: open lease database %s: %w", path, err)
	}
	db.MaxBatchDelay = batchDelay
	db.MaxBatchSize = batchSize
	err = db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			var err error
			if meta, err = tx.CreateBucket(bucketMeta); err != nil {
				return err
			}
			var v [4]byte
			binary.BigEndian.PutUint32(v[:], SchemaVersion)
			if err := meta.Put(keySchemaVersion, v[:]); err != nil {
				return err
			}
		}
		v := meta.Get(keySchemaVersion)
		if len(v) != 4 {
			return fmt.Errorf("dhcp: lease database %s has no readable schema version; move it aside to start with no leases", path)
		}
		if got := binary.BigEndian.Uint32(v); got > SchemaVersion {
			return fmt.Errorf("dhcp: lease database %s has schema version %d but this plugin understands up to %d; upgrade the plugin", path, got, SchemaVersion)
		}
		for _, b := range [][]byte{bucketLeases, bucketReservations, bucketQuarantine, bucketJournal} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = db.Update(compact)
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	return &Store{db: db, path: path}, nil
}

// Path is where the database lives.
func (st *Store) Path() string { return st.path }

// Close releases the file. Close the Server first.
func (st *Store) Close() error {
	st.bg.Wait()
	return st.db.Close()
}

// compact folds the journal into leases.
func compact(tx *bolt.Tx) error {
	j, l := tx.Bucket(bucketJournal), tx.Bucket(bucketLeases)
	if j.Stats().KeyN == 0 {
		return nil
	}
	err := j.ForEach(func(_, v []byte) error {
		id, rec, ok := splitJournal(v)
		switch {
		case !ok:
			return nil // counted when loaded; dropped here
		case rec == nil:
			return l.Delete(id)
		default:
			return l.Put(id, rec)
		}
	})
	if err != nil {
		return err
	}
	if err := tx.DeleteBucket(bucketJournal); err != nil {
		return err
	}
	_, err = tx.CreateBucket(bucketJournal)
	return err
}

// maybeCompact starts a compaction in the background when the journal is
// long. Commits wait while it runs.
func (st *Store) maybeCompact() {
	if st.journalLen.Load() < compactAt || !st.compacting.CompareAndSwap(false, true) {
		return
	}
	st.bg.Add(1)
	go func() {
		defer st.bg.Done()
		defer st.compacting.Store(false)
		if st.db.Update(compact) == nil {
			st.journalLen.Store(0)
		}
	}()
}

// Journal entries: a two-byte identity length, the identity, then the
// lease record, or nothing when the lease was deleted.
func appendJournal(b []byte, id string, rec []byte) []byte {
	b = append(b, byte(len(id)>>8), byte(len(id)))
	b = append(b, id...)
	return append(b, rec...)
}

func splitJournal(v []byte) (id, rec []byte, ok bool) {
	if len(v) < 2 {
		return nil, nil, false
	}
	n := int(v[0])<<8 | int(v[1])
	if n == 0 || len(v) < 2+n {
		return nil, nil, false
	}
	id, rec = v[2:2+n], v[2+n:]
	if len(rec) == 0 {
		rec = nil
	}
	return id, rec, true
}

// record is one lease as stored: the identity is its key.
type record struct {
	ip       uint32
	state    LeaseState
	expiry   int64 // unix nanoseconds
	mac      []byte
	clientID []byte
	hostname string
}

// recordVersion starts every value so a record can change shape without a
// schema bump for the whole file.
const recordVersion = 1

// Layout: version, state, ip[4], expiry[8], then mac, client id and
// hostname, each behind a one-byte length.
func (r *record) appendTo(b []byte) []byte {
	b = append(b, recordVersion, byte(r.state))
	b = binary.BigEndian.AppendUint32(b, r.ip)
	b = binary.BigEndian.AppendUint64(b, uint64(r.expiry))
	for _, f := range [][]byte{r.mac, r.clientID, []byte(r.hostname)} {
		if len(f) > 255 {
			f = f[:255]
		}
		b = append(b, byte(len(f)))
		b = append(b, f...)
	}
	return b
}

var errBadRecord = errors.New("malformed lease record")

func (r *record) decode(b []byte) error {
	if len(b) < 14 || b[0] != recordVersion {
		return errBadRecord
	}
	r.state = LeaseState(b[1])
	r.ip = binary.BigEndian.Uint32(b[2:])
	r.expiry = int64(binary.BigEndian.Uint64(b[6:]))
	b = b[14:]
	var fields [3][]byte
	for i := range fields {
		if len(b) < 1 || len(b) < 1+int(b[0]) {
			return errBadRecord
		}
		n := int(b[0])
		fields[i] = append([]byte(nil), b[1:1+n]...)
		b = b[1+n:]
	}
	r.mac, r.clientID, r.hostname = fields[0], fields[1], string(fields[2])
	if r.state != StateBound && r.state != StateReleased {
		return errBadRecord
	}
	return nil
}

// loaded is the whole database, read once when a Server starts.
type loaded struct {
	leases       map[string]record
	reservations map[string]uint32
	quarantine   map[uint32]time.Time
	corrupt      int
}

func (st *Store) load() (*loaded, error) {
	l := &loaded{
		leases:       make(map[string]record),
		reservations: make(map[string]uint32),
		quarantine:   make(map[uint32]time.Time),
	}
	err := st.db.View(func(tx *bolt.Tx) error {
		err := tx.Bucket(bucketLeases).ForEach(func(k, v []byte) error {
			var r record
			if r.decode(v) != nil {
				l.corrupt++
				return nil
			}
			l.leases[string(k)] = r
			return nil
		})
		if err != nil {
			return err
		}
		err = tx.Bucket(bucketJournal).ForEach(func(_, v []byte) error {
			id, rec, ok := splitJournal(v)
			if !ok {
				l.corrupt++
				return nil
			}
			if rec == nil {
				delete(l.leases, string(id))
				return nil
			}
			var r record
			if r.decode(rec) != nil {
				l.corrupt++
				return nil
			}
			l.leases[string(id)] = r
			return nil
		})
		if err != nil {
			return err
		}
		err = tx.Bucket(bucketReservations).ForEach(func(k, v []byte) error {
			if len(v) != 4 {
				l.corrupt++
				return nil
			}
			l.reservations[string(k)] = binary.BigEndian.Uint32(v)
			return nil
		})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketQuarantine).ForEach(func(k, v []byte) error {
			if len(k) != 4 || len(v) != 8 {
				l.corrupt++
				return nil
			}
			l.quarantine[binary.BigEndian.Uint32(k)] = time.Unix(0, int64(binary.BigEndian.Uint64(v)))
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("dhcp: read lease database %s: %w", st.path, err)
	}
	return l, nil
}

// write is what one commit puts on disk, captured from the index when the
// transaction runs (see Server.commit). A nil value deletes the key.
type write struct {
	journal      [][]byte // lease records, see appendJournal
	reservations []kv
	quarantine   []kv
}

type kv struct {
	k, v []byte
}

func (w *write) apply(tx *bolt.Tx) error {
	if len(w.journal) > 0 {
		j := tx.Bucket(bucketJournal)
		for _, e := range w.journal {
			seq, err := j.NextSequence()
			if err != nil {
				return err
			}
			if err := j.Put(binary.BigEndian.AppendUint64(make([]byte, 0, 8), seq), e); err != nil {
				return err
			}
		}
	}
	for _, s := range []struct {
		name []byte
		kvs  []kv
	}{{bucketReservations, w.reservations}, {bucketQuarantine, w.quarantine}} {
		b := tx.Bucket(s.name)
		for _, e := range s.kvs {
			var err error
			if e.v == nil {
				err = b.Delete(e.k)
			} else {
				err = b.Put(e.k, e.v)
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// batch commits fn together with every other writer waiting at the same
// moment, and returns once the data is fsynced. fn may run more than once.
func (st *Store) batch(fn func(*bolt.Tx) error, journaled int) error {
	if err := st.db.Batch(fn); err != nil {
		return fmt.Errorf("dhcp: write lease database %s: %w", st.path, err)
	}
	if journaled > 0 {
		st.journalLen.Add(uint64(journaled))
		st.maybeCompact()
	}
	return nil
}

func cloneBytes(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}

func cloneMAC(m net.HardwareAddr) net.HardwareAddr { return net.HardwareAddr(cloneBytes(m)) }
