package mactrans

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var updateSeeds = flag.Bool("update-seeds", false, "rewrite testdata/fuzz/FuzzTranslate from the test cases")

// FuzzTranslate feeds arbitrary bytes through both directions. Whatever
// the input: no panic, no length change, and nothing but MAC fields and
// one checksum changes. Inputs that do not already hold the target MAC
// must survive a round trip.
func FuzzTranslate(f *testing.F) {
	f.Fuzz(func(t *testing.T, frame []byte) {
		tr := newT(t)
		for _, dir := range []struct {
			name        string
			there, back func([]byte)
			from, to    []byte
		}{
			{"ToNetwork", tr.ToNetwork, tr.ToGuest, internal, dynamic},
			{"ToGuest", tr.ToGuest, tr.ToNetwork, dynamic, internal},
		} {
			b := bytes.Clone(frame)
			dir.there(b)
			if len(b) != len(frame) {
				t.Fatalf("%s changed the length", dir.name)
			}
			if err := onlyMACsAndChecksum(frame, b, dir.from, dir.to); err != nil {
				t.Fatalf("%s: %v", dir.name, err)
			}
			dir.back(b)
			if bytes.Contains(frame, dir.to) {
				continue // the way back would rewrite those too
			}
			if err := sameModZero(frame, b); err != nil {
				t.Fatalf("%s round trip: %v", dir.name, err)
			}
		}
	})
}

// onlyMACsAndChecksum explains every changed byte as part of a window that
// went from `from` to `to`, except for at most one 16-bit checksum.
func onlyMACsAndChecksum(before, after, from, to []byte) error {
	explained := make([]bool, len(before))
	for i := 0; i+6 <= len(before); i++ {
		if bytes.Equal(before[i:i+6], from) && bytes.Equal(after[i:i+6], to) {
			for j := i; j < i+6; j++ {
				explained[j] = true
			}
		}
	}
	first := -1
	for i := range before {
		if before[i] == after[i] || explained[i] {
			continue
		}
		switch {
		case first < 0:
			first = i
		case i > first+1:
			return fmt.Errorf("bytes %d and %d changed outside MAC fields", first, i)
		}
	}
	return nil
}

// sameModZero compares a round-tripped frame with its original. The only
// allowed difference is a 16-bit word going from 0xffff to 0x0000: both
// are zero in ones' complement, and an ICMPv6 checksum is always written in
// the 0x0000 form a sender computes.
func sameModZero(orig, got []byte) error {
	for i := 0; i < len(orig); i++ {
		if orig[i] == got[i] {
			continue
		}
		if i+1 < len(orig) && orig[i] == 0xff && orig[i+1] == 0xff && got[i] == 0 && got[i+1] == 0 {
			i++
			continue
		}
		return fmt.Errorf("byte %d is %#02x, was %#02x", i, got[i], orig[i])
	}
	return nil
}

// TestFuzzSeeds keeps the committed corpus in step with the cases: run
// with -update-seeds after adding one.
func TestFuzzSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzTranslate")
	seeds := map[string][]byte{
		"empty":     {},
		"eth-only":  tcpFrame(t, internal, server, 100)[:14],
		"vlan-only": arpFrame(t, internal, bcast, 1, internal, other, true)[:18],
	}
	for _, c := range cases() {
		name := strings.NewReplacer(" ", "-", "(", "", ")", "", "'", "").Replace(c.name)
		seeds[name+"-guest"] = c.build(t, internal)
		seeds[name+"-network"] = c.build(t, dynamic)
	}
	for name, b := range seeds {
		path := filepath.Join(dir, name)
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		if *updateSeeds {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != want {
			t.Errorf("seed %s is missing or stale; run go test -run TestFuzzSeeds -update-seeds", path)
		}
	}
}
