package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestProcResources(t *testing.T) {
	if _, err := os.Stat("/proc/self/fd"); err != nil {
		t.Skip("no /proc")
	}
	before, err := procResources(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if before.FDs < 3 || before.Threads < 1 || before.RSS < 1<<20 {
		t.Fatalf("implausible reading of this process: %+v", before)
	}
	// Other goroutines of the test binary open and close files too: take
	// the reading again until one round sees only this test's files.
	var dDuring, dAfter int
	for range 10 {
		before, _ := procResources(os.Getpid())
		var files []*os.File
		for i := 0; i < 5; i++ {
			f, err := os.Create(filepath.Join(t.TempDir(), "f"))
			if err != nil {
				t.Fatal(err)
			}
			files = append(files, f)
		}
		during, _ := procResources(os.Getpid())
		for _, f := range files {
			f.Close()
		}
		after, _ := procResources(os.Getpid())
		dDuring, dAfter = during.FDs-before.FDs, after.FDs-before.FDs
		if dDuring == 5 && dAfter == 0 {
			break
		}
	}
	if dDuring != 5 || dAfter != 0 {
		t.Errorf("5 open files moved the count by %d, and closing them left it %+d, in every one of 10 rounds", dDuring, dAfter)
	}
	if _, err := procResources(1 << 30); err == nil {
		t.Error("a pid that cannot exist gave no error")
	}
	self := selfResources()
	if self.Goroutines < 1 || self.HeapAlloc == 0 || self.FDs == 0 {
		t.Fatalf("selfResources: %+v", self)
	}
	if s := FormatResources(&self); !strings.Contains(s, "goroutines") || !strings.Contains(s, "MiB") {
		t.Errorf("FormatResources: %q", s)
	}
	if s := FormatResources(&Resources{FDs: 3, Threads: 2, RSS: 3 << 20}); s != "fds 3, threads 2, rss 3.0 MiB" {
		t.Errorf("FormatResources of a plugin: %q", s)
	}
	if FormatResources(nil) != "-" {
		t.Error("FormatResources(nil)")
	}
}
