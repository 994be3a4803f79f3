package frameio

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	fd := p.s.pk.fd
	// Make sure the runtime's poller exists, as it does in any plugin.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
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
			var tfd int
			var events uint32
			if n, _ := fmt.Sscanf(line, "tfd: %d events: %x", &tfd, &events); n == 2 && tfd == fd {
				t.Fatalf("the port's socket (fd %d) is registered with epoll fd %s for events %#x", fd, e.Name(), events)
			}
		}
	}
	if polls == 0 {
		t.Fatal("no epoll instance in the process: the check looked at nothing")
	}
}
