package proxy

import (
	"errors"
	"io"
	"math"
	"net"
	"os"
	"sync/atomic"
	"time"
)

// idleWatch closes a proxied TCP connection pair once no byte has been read from either side for its timeout
// (limits.tcp_idle_timeout): an idle connection must not hold a max_connections slot forever. The copies report
// their progress with touch; so that a long zero-copy transfer (splice) reports too, each copy reads under a
// deadline of half the timeout and carries on after it (tick).
type idleWatch struct {
	timeout time.Duration
	last    atomic.Int64 // unix nanoseconds of the latest progress
	expired atomic.Bool  // the watch closed the connections
	timer   *time.Timer
	close   func()
}

// newIdleWatch starts watching; closeBoth closes the two connections when they have been idle for timeout.
func newIdleWatch(timeout time.Duration, closeBoth func()) *idleWatch {
	w := &idleWatch{timeout: timeout, close: closeBoth}
	w.touch()
	w.timer = time.AfterFunc(math.MaxInt64, w.check) // armed below, once w.timer is set
	w.timer.Reset(timeout)
	return w
}

// touch records progress now.
func (w *idleWatch) touch() { w.last.Store(time.Now().UnixNano()) }

// check closes the connections if they have been idle for the timeout, else looks again when they would be.
func (w *idleWatch) check() {
	idle := time.Since(time.Unix(0, w.last.Load()))
	if idle < w.timeout {
		w.timer.Reset(w.timeout - idle)
		return
	}
	w.expired.Store(true)
	w.close()
}

// stop ends the watch.
func (w *idleWatch) stop() { w.timer.Stop() }

// tick is how long one read of a copy may take before it reports its progress.
func (w *idleWatch) tick() time.Duration { return max(w.timeout/2, time.Millisecond) }

// pipe copies src to dst until src ends, then closes dst's write half so the far end sees the half-close. When
// the copy fails (a reset, a write error, the idle watch w closed them), both connections are closed: the stream
// is broken both ways. w may be nil (no idle timeout). It returns the bytes copied.
func pipe(dst, src net.Conn, w *idleWatch) int64 {
	buf := copyBuffers.Get()
	defer copyBuffers.Put(buf)
	// The limit's wrapper is looked through, so that a copy between two TCP connections can splice.
	d, s := unlimited(dst), unlimited(src)
	var total int64
	for {
		if w != nil {
			s.SetReadDeadline(time.Now().Add(w.tick()))
		}
		n, err := io.CopyBuffer(d, s, buf)
		total += n
		if w != nil && n > 0 {
			w.touch()
		}
		if w != nil && errors.Is(err, os.ErrDeadlineExceeded) && !w.expired.Load() {
			continue // a tick: report progress and carry on
		}
		cw, ok := dst.(interface{ CloseWrite() error })
		if err != nil || !ok {
			dst.Close()
			src.Close()
			return total
		}
		cw.CloseWrite()
		return total
	}
}
