package macpool

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"sort"

	"go.yaml.in/yaml/v3"

	"github.com/anka-net/anka/core/errs"
)

// fileVersion is the schema this code reads and writes. A newer number
// means a newer anka wrote the file; guessing its meaning could lose
// allocations, so it is refused.
const fileVersion = 1

// ErrCorrupt is in the chain of every error about an unreadable pool file,
// so a caller can offer repair instead of a generic failure.
var ErrCorrupt = errors.New("macpool: pool file is corrupt")

const fileHeader = `# Dynamic MAC addresses handed out by anka, one per VM (key: VM uuid).
# Managed by anka under the .lock file beside this one; edit only while no
# anka process runs.
`

// fileV1 is the on-disk form. A map keeps owners unique by construction
// (the decoder refuses duplicate keys) and yaml sorts it, so diffs stay
// small.
type fileV1 struct {
	Version int               `yaml:"version"`
	Owners  map[string]string `yaml:"owners"`
}

// mac is a comparable MAC, usable as a map key.
type mac [6]byte

func (m mac) hw() net.HardwareAddr {
	out := make(net.HardwareAddr, 6)
	copy(out, m[:])
	return out
}

func macAt(prefix [4]byte, index int) mac {
	return mac{prefix[0], prefix[1], prefix[2], prefix[3], byte(index >> 8), byte(index)}
}

// state is the decoded pool: owner -> MAC, with the reverse index that
// makes "never two owners with one MAC" cheap to check.
type state struct {
	owners map[string]mac
	taken  map[mac]string
}

func newState() *state {
	return &state{owners: map[string]mac{}, taken: map[mac]string{}}
}

// lowestFree returns the lowest index not held by anyone. Entries with a
// different prefix (written before the host identity changed) keep their
// MACs and simply do not occupy this prefix's indexes.
func (s *state) lowestFree(prefix [4]byte, maxIndex int) (mac, bool) {
	for i := 1; i <= maxIndex; i++ {
		m := macAt(prefix, i)
		if _, used := s.taken[m]; !used {
			return m, true
		}
	}
	return mac{}, false
}

func (s *state) set(owner string, m mac) {
	if old, ok := s.owners[owner]; ok {
		delete(s.taken, old)
	}
	s.owners[owner] = m
	s.taken[m] = owner
}

func (s *state) remove(owner string) bool {
	m, ok := s.owners[owner]
	if !ok {
		return false
	}
	delete(s.owners, owner)
	delete(s.taken, m)
	return true
}

func encode(s *state) ([]byte, error) {
	f := fileV1{Version: fileVersion, Owners: make(map[string]string, len(s.owners))}
	for o, m := range s.owners {
		f.Owners[o] = m.hw().String()
	}
	var b bytes.Buffer
	b.WriteString(fileHeader)
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(&f); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// decode parses and checks the pool file. Anything unexpected is an error
// rather than an empty pool: starting over would hand out MACs that
// running VMs still use.
func decode(path string, data []byte) (*state, error) {
	var head struct {
		Version int `yaml:"version"`
	}
	if err := yaml.Unmarshal(data, &head); err != nil {
		return nil, corrupt(path, err)
	}
	switch {
	case head.Version > fileVersion:
		return nil, errs.Unavailablef(
			"macpool: %s has format version %d but this anka reads version %d; "+
				"it was written by a newer anka: upgrade anka instead of editing the file",
			path, head.Version, fileVersion)
	case head.Version != fileVersion:
		return nil, corrupt(path, fmt.Errorf("missing or bad \"version: %d\"", fileVersion))
	}
	var f fileV1
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, corrupt(path, err)
	}
	s := newState()
	owners := make([]string, 0, len(f.Owners))
	for o := range f.Owners {
		owners = append(owners, o)
	}
	sort.Strings(owners) // deterministic messages
	for _, o := range owners {
		if o == "" {
			return nil, corrupt(path, errors.New("an entry has an empty owner"))
		}
		hw, err := net.ParseMAC(f.Owners[o])
		if err != nil || len(hw) != 6 {
			return nil, corrupt(path, fmt.Errorf("owner %s: %q is not a 6-byte MAC", o, f.Owners[o]))
		}
		var m mac
		copy(m[:], hw)
		if m[0]&0x01 != 0 || m[0]&0x02 == 0 {
			return nil, corrupt(path, fmt.Errorf("owner %s: %s is not a locally administered unicast MAC", o, hw))
		}
		if other, dup := s.taken[m]; dup {
			return nil, corrupt(path, fmt.Errorf("owners %s and %s both hold %s", other, o, hw))
		}
		s.set(o, m)
	}
	return s, nil
}

func corrupt(path string, cause error) error {
	return &errs.Error{
		Kind: errs.Internal,
		Msg: fmt.Sprintf("macpool: the MAC pool file %s is corrupt (%v). anka will not guess "+
			"which MACs are in use, as that could give two VMs one MAC: restore the file "+
			"from a backup or repair it by hand (version: %d, then owners: VM uuid -> MAC), "+
			"or remove it only if no VM exists on this host", path, cause, fileVersion),
		Err: fmt.Errorf("%w: %w", ErrCorrupt, cause),
	}
}
