package proxy

import (
	"sync"
	"time"
)

// handlerPool runs the HTTP/2 handlers of a server's connections on goroutines that stay, parked, for the next
// handler once theirs has returned. A goroutine started for each stream (as net/http's server does) starts with a
// small stack and grows it to what the request path needs, copying its frames each time, and the runtime frees
// the grown stack when the goroutine ends: that was 4% of meshlet's CPU per h2c request (presizeStack and
// runtime.newstack in a profile). A parked worker keeps its stack (the garbage collector may shrink it).
//
// The pool is its server's: at most maxIdleHandlers workers are parked, a worker parked for a whole
// handlerIdleSweep interval (so idle between one and two intervals) exits, and close makes every worker exit
// (the parked ones at once, the busy ones when their handler returns).
type handlerPool struct {
	handle func(*h2Writer) // nil: h2Conn.runHandler (the tests' own otherwise)
	every  time.Duration   // the sweep interval; 0: handlerIdleSweep

	mu      sync.Mutex
	idle    []*handlerWorker // parked, the longest parked first
	epoch   uint64           // sweeps so far
	sweep   *time.Timer      // runs sweepIdle; armed while pending
	pending bool
	closed  bool
}

// handlerWorker is a parked worker: run hands it the next handler, close a nil one (exit).
type handlerWorker struct {
	next  chan *h2Writer // capacity 1: one send per time the worker is taken from idle
	epoch uint64         // the pool's epoch when it parked
}

const (
	maxIdleHandlers  = 256
	handlerIdleSweep = time.Second
)

// run runs w's handler (h2Conn.runHandler) on a parked worker, or on a new one.
func (p *handlerPool) run(w *h2Writer) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		hw := p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		hw.next <- w
		return
	}
	p.mu.Unlock()
	go p.work(w)
}

// work runs w's handler, then the ones it is handed while parked, until it is told to exit or not kept.
func (p *handlerPool) work(w *h2Writer) {
	presizeStack(2) // grown once, near the stack's bottom, to what the request path needs
	hw := &handlerWorker{next: make(chan *h2Writer, 1)}
	for w != nil {
		if p.handle != nil {
			p.handle(w)
		} else {
			w.st.c.runHandler(w)
		}
		if !p.park(hw) {
			return
		}
		w = <-hw.next
	}
}

// park puts hw on the idle list; false when the pool is closed or holds enough parked workers.
func (p *handlerPool) park(hw *handlerWorker) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || len(p.idle) >= maxIdleHandlers {
		return false
	}
	hw.epoch = p.epoch
	p.idle = append(p.idle, hw)
	if !p.pending {
		p.pending = true
		if p.sweep == nil {
			p.sweep = time.AfterFunc(p.interval(), p.sweepIdle)
		} else {
			p.sweep.Reset(p.interval())
		}
	}
	return true
}

// sweepIdle makes the workers parked since before the previous sweep exit, and comes again while some are
// parked.
func (p *handlerPool) sweepIdle() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.epoch++
	n := 0
	for n < len(p.idle) && p.idle[n].epoch+2 <= p.epoch {
		p.idle[n].next <- nil
		n++
	}
	if n > 0 {
		k := copy(p.idle, p.idle[n:])
		clear(p.idle[k:])
		p.idle = p.idle[:k]
	}
	if len(p.idle) == 0 || p.closed {
		p.pending = false
		return
	}
	p.sweep.Reset(p.interval())
}

func (p *handlerPool) interval() time.Duration {
	if p.every > 0 {
		return p.every
	}
	return handlerIdleSweep
}

// close makes the parked workers exit, and the others when their handler returns.
func (p *handlerPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for i, hw := range p.idle {
		hw.next <- nil
		p.idle[i] = nil
	}
	p.idle = nil
	if p.sweep != nil {
		p.sweep.Stop()
	}
	p.pending = false
}
