package proxy

import (
	"sync/atomic"
	"time"
)

// logLimiter lets at most one log line a second through and counts the lines it held back, as refusedLog does
// for refused requests: a client that opens connection after connection must not flood the log. The zero value
// is ready to use; it is safe for concurrent use.
type logLimiter struct {
	last       atomic.Int64 // unix second of the last line let through
	suppressed atomic.Int64
}

// allow reports whether a line may be logged now and, when it may, how many lines were held back since the
// previous one.
func (l *logLimiter) allow() (suppressed int64, ok bool) {
	now := time.Now().Unix()
	last := l.last.Load()
	if last == now || !l.last.CompareAndSwap(last, now) {
		l.suppressed.Add(1)
		return 0, false
	}
	return l.suppressed.Swap(0), true
}
