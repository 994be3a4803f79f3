package macpool

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// FuzzDecodePool feeds arbitrary bytes to the pool file reader. A refusal
// names the file; an accepted pool never gives two owners one MAC, holds
// only locally administered unicast MACs, and reads back unchanged after
// a write.
func FuzzDecodePool(f *testing.F) {
	for _, s := range []string{
		fileHeader + "version: 1\nowners:\n  6f1c0e4e-5c1b-4a4e-9a57-0d1b0c7d2f10: 0e:aa:bb:cc:00:01\n  a2c8e0f2-0b7e-4d7e-8c55-1f9a3b2c4d5e: 0e:aa:bb:cc:00:02\n",
		"version: 1\nowners: {}\n",
		"version: 2\nowners: {}\n",
		"owners: {a: 0e:00:00:00:00:01}\n",
		"version: 1\nowners:\n  a: 0e:00:00:00:00:01\n  b: 0e:00:00:00:00:01\n",
		"version: 1\nowners:\n  a: 01:00:5e:00:00:01\n",
		"version: 1\nowners:\n  a: 0e:00:00:00:00:01\n  a: 0e:00:00:00:00:02\n",
		"version: 1\nowners:\n  \"\": 0e:00:00:00:00:01\n",
		"version: 1\nowners:\n  a: 0e:00:00:00:00:01:02:03\n",
		"version: 1\nowners:\n  a: 0e:00:00:",
	} {
		f.Add([]byte(s))
	}
	const path = "/state/macpool.yaml"
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := decode(path, data)
		if err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error does not name the file: %v", err)
			}
			if errs := err.Error(); strings.Contains(errs, "corrupt") && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("corrupt file error without ErrCorrupt: %v", err)
			}
			return
		}
		if len(s.owners) != len(s.taken) {
			t.Fatalf("%d owners hold %d MACs", len(s.owners), len(s.taken))
		}
		for o, m := range s.owners {
			if o == "" || m[0]&0x01 != 0 || m[0]&0x02 == 0 || s.taken[m] != o {
				t.Fatalf("accepted owner %q with %s", o, m.hw())
			}
		}
		enc, err := encode(s)
		if err != nil {
			t.Fatalf("an accepted pool does not encode: %v", err)
		}
		s2, err := decode(path, enc)
		if err != nil {
			t.Fatalf("a written pool does not read back: %v\n%s", err, enc)
		}
		if !reflect.DeepEqual(s.owners, s2.owners) {
			t.Fatalf("read back %v, wrote %v", s2.owners, s.owners)
		}
	})
}
