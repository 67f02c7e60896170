package proxy

import (
	"context"
	"errors"
	"sync/atomic"
	"time"
)

// errStreamIdle is the cause with which a request's context ends when no byte moved either way for
// stream_idle_timeout.
var errStreamIdle = errors.New("stream idle")

// streamIdle ends a request on which no byte has moved either way (request body read, response written) for d,
// as Envoy's stream_idle_timeout. touch only stores the time; the timer, when it fires before d has passed since
// then, waits for the rest, so that traffic costs no timer operation.
type streamIdle struct {
	d      time.Duration
	last   atomic.Int64 // Unix nanoseconds of the latest byte either way
	timer  *time.Timer
	cancel context.CancelCauseFunc
	onIdle func() // run when the stream is found idle, after its context is cancelled; nil: nothing more
}

// newStreamIdle starts the idle timer of a request; the returned context ends with cause errStreamIdle when it
// fires, and then onIdle (nil: nothing) runs. Call stop when the request ends.
func newStreamIdle(ctx context.Context, d time.Duration, onIdle func()) (*streamIdle, context.Context) {
	ctx, cancel := context.WithCancelCause(ctx)
	s := &streamIdle{d: d, cancel: cancel, onIdle: onIdle}
	s.touch()
	s.timer = time.AfterFunc(d, s.expire)
	return s, ctx
}

// touch records a byte moving now. Safe on a nil *streamIdle.
func (s *streamIdle) touch() {
	if s != nil {
		s.last.Store(time.Now().UnixNano())
	}
}

func (s *streamIdle) expire() {
	if idle := time.Duration(time.Now().UnixNano() - s.last.Load()); idle < s.d {
		s.timer.Reset(s.d - idle)
		return
	}
	s.cancel(errStreamIdle)
	if s.onIdle != nil {
		s.onIdle()
	}
}

// pause stops the timer for good without ending the context: the connection switched protocols (101) and the
// tunnel lives on. Safe on a nil *streamIdle.
func (s *streamIdle) pause() {
	if s != nil {
		s.timer.Stop()
	}
}

// stop ends the timer and the context at the end of the request.
func (s *streamIdle) stop() {
	s.timer.Stop()
	s.cancel(nil)
}

// idleFired reports whether ctx ended because its stream was idle.
func idleFired(ctx context.Context) bool { return context.Cause(ctx) == errStreamIdle }
