package frameio

import (
	"log/slog"
	"sync/atomic"
	"time"
)

// Defaults shared by the socket kinds.
const (
	// DefaultSocketBuffer is SO_SNDBUF and SO_RCVBUF when none is set:
	// several bursts of 64 full frames, so a receiver that wakes late
	// still finds the sender's last bursts queued rather than dropped.
	DefaultSocketBuffer = 4 << 20
	// DefaultWriteTimeout is how long WriteBatch waits for room in a full
	// socket before it drops the rest of the batch. Short, because one
	// stalled VM must not hold up a switch serving the others.
	DefaultWriteTimeout = 10 * time.Millisecond
)

func mtuOrDefault(mtu int) (int, error) {
	if mtu == 0 {
		return DefaultMTU, nil
	}
	return mtu, checkMTU(mtu)
}

func loggerOrDefault(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.Default()
	}
	return l
}

func timeoutOrDefault(d time.Duration) time.Duration {
	if d == 0 {
		return DefaultWriteTimeout
	}
	return d
}

// logLimiter keeps a flood of bad frames from becoming a flood of log
// lines: one line a second at most, saying how many were suppressed.
type logLimiter struct {
	next       atomic.Int64 // unix nanoseconds before which lines are suppressed
	suppressed atomic.Uint64
}

// allow reports whether a line may be logged now and how many were
// suppressed since the last one.
func (l *logLimiter) allow() (bool, uint64) {
	now := time.Now().UnixNano()
	next := l.next.Load()
	if now < next || !l.next.CompareAndSwap(next, now+int64(time.Second)) {
		l.suppressed.Add(1)
		return false, 0
	}
	return true, l.suppressed.Swap(0)
}

// warn logs msg unless the limiter holds it back.
func (l *logLimiter) warn(log *slog.Logger, msg string, args ...any) {
	ok, suppressed := l.allow()
	if !ok {
		return
	}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	log.Warn(msg, args...)
}
