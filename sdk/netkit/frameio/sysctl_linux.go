//go:build linux

package frameio

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// maxDgramQlenPath is per network namespace: /proc/sys/net shows the
// namespace of the thread that opens it.
const maxDgramQlenPath = "/proc/sys/net/unix/max_dgram_qlen"

// RecommendedMaxDgramQlen is what a plugin sets max_dgram_qlen to in its
// network namespace: several bursts of 64 frames, so a sender that nobody
// connected back to still gets a burst queued while the reader sleeps.
const RecommendedMaxDgramQlen = 512

// MaxDgramQlen reads net.unix.max_dgram_qlen of the calling thread's
// network namespace.
func MaxDgramQlen() (int, error) {
	b, err := os.ReadFile(maxDgramQlenPath)
	if err != nil {
		return 0, fmt.Errorf("frameio: reading net.unix.max_dgram_qlen: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("frameio: net.unix.max_dgram_qlen is %q: %w", b, err)
	}
	return n, nil
}

// SetMaxDgramQlen sets net.unix.max_dgram_qlen in the calling thread's
// network namespace (root in that namespace). A socket takes the value
// when it is created, so set it before opening ports and before the
// hypervisor opens its own. Lock the goroutine to its thread
// (runtime.LockOSThread) if threads of the process live in different
// namespaces.
func SetMaxDgramQlen(n int) error {
	if n < 0 {
		return fmt.Errorf("frameio: max_dgram_qlen %d is negative", n)
	}
	if err := os.WriteFile(maxDgramQlenPath, []byte(strconv.Itoa(n)), 0o644); err != nil {
		return fmt.Errorf("frameio: setting net.unix.max_dgram_qlen to %d (needs root in the network namespace): %w", n, err)
	}
	return nil
}
