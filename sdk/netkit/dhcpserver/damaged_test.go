package dhcpserver

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A damaged lease database is named, and the message says what to do.
func TestOpenStoreDamaged(t *testing.T) {
	for name, content := range map[string][]byte{
		"garbage":   bytes.Repeat([]byte("not a bolt file "), 1024),
		"zeroes":    make([]byte, 16384),
		"too short": []byte("x"),
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "shared-leases.db")
			if err := os.WriteFile(path, content, 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := OpenStore(path)
			if err == nil {
				s.Close()
				t.Fatal("a damaged lease database opened")
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "move it aside") {
				t.Fatalf("error %q: want the file and what to do", err)
			}
			if got, _ := os.ReadFile(path); !bytes.Equal(got, content) {
				t.Fatal("the damaged file was changed")
			}
		})
	}
}
