package frameio

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A datagram port's socket must not sit on an epoll instance (the Go
// runtime's poller registers its files for EPOLLIN|EPOLLOUT, edge
// triggered): there, every datagram the peer reads from it frees send
// space, and the kernel wakes that poller's thread, on the peer's CPU
// time, once per frame (docs/profiles.md, "Wake-ups a peer pays for").
func TestDgramSocketNotOnAnyPoller(t *testing.T) {
	p, err := ListenDgram(filepath.Join(t.TempDir(), "p.sock"), DgramOptions{PeerCheck: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	assertNotOnAnyPoller(t, "datagram port", p.s.pk.fd)
}

// The same for both ends of a stream connection.
func TestStreamSocketsNotOnAnyPoller(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := ListenStream(path, StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	d, err := DialStream(path, StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for i := 0; l.cur.Load() == nil; i++ {
		if i > 5000 {
			t.Fatal("the listener never took the connection")
		}
		time.Sleep(time.Millisecond)
	}
	assertNotOnAnyPoller(t, "accepted stream connection", l.cur.Load().pk.fd)
	assertNotOnAnyPoller(t, "dialled stream connection", d.c.pk.fd)
}

func assertNotOnAnyPoller(t *testing.T, what string, fd int) {
	t.Helper()
	// Make sure the runtime's poller exists, as it does in any plugin.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	polls := 0
	for _, e := range ents {
		if l, _ := os.Readlink("/proc/self/fd/" + e.Name()); l != "anon_inode:[eventpoll]" {
			continue
		}
		polls++
		info, err := os.ReadFile("/proc/self/fdinfo/" + e.Name())
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(info), "\n") {
			// "tfd: 7 events: 8000201d data: ... pos:0 ino:1c2f sdev:8":
			// the inode names the socket whatever descriptor registered it.
			var tfd int
			var events uint32
			if n, _ := fmt.Sscanf(line, "tfd: %d events: %x", &tfd, &events); n != 2 {
				continue
			}
			for _, f := range strings.Fields(line) {
				if ino, ok := strings.CutPrefix(f, "ino:"); ok && ino == strconv.FormatUint(st.Ino, 16) {
					t.Fatalf("the %s's socket (fd %d, inode %s) is registered with epoll fd %s through fd %d for events %#x", what, fd, ino, e.Name(), tfd, events)
				}
			}
		}
	}
	if polls == 0 {
		t.Fatal("no epoll instance in the process: the check looked at nothing")
	}
}
