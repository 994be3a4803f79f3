package main

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// A SIGUSR1 ends the adapter's profile and starts the next file, so one
// phase of a session can be cut out; stop ends the last one. Every file
// is a whole profile (gzip-compressed protobuf, as pprof reads it).
func TestProfileBySignal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "adapter.pprof")
	stop, err := profileBySignal(path)
	if err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= 2; n++ {
		if err := syscall.Kill(os.Getpid(), syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		next := path + "." + string(rune('0'+n))
		deadline := time.Now().Add(5 * time.Second)
		for {
			if _, err := os.Stat(next); err == nil {
				break
			}
			if time.Now().After(deadline) {
				stop()
				t.Fatalf("SIGUSR1 number %d did not start %s", n, next)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	stop()
	for _, p := range []string{path, path + ".1", path + ".2"} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
			t.Errorf("%s is not a finished profile (%d bytes, no gzip header)", p, len(b))
		}
	}
	if _, err := os.Stat(path + ".3"); err == nil {
		t.Errorf("stop started another profile")
	}
}

// A profile path that cannot be created is an error at once, naming the
// variable to fix.
func TestProfileBySignalBadPath(t *testing.T) {
	_, err := profileBySignal(filepath.Join(t.TempDir(), "missing", "adapter.pprof"))
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte(adapterProfileEnv)) {
		t.Fatalf("got %v, want an error naming %s", err, adapterProfileEnv)
	}
}
