package proxy

import (
	"bytes"
	"runtime"
	"sync"
	"testing"
	"time"
)

// goroutineID is the calling goroutine's number, from its stack's first line.
func goroutineID() string {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	return string(b[:bytes.IndexByte(b, ' ')])
}

func idleWorkers(p *handlerPool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

// One handler after another runs on one goroutine; handlers at once each have one, and the workers they leave
// park, at most maxIdleHandlers of them, until the sweep finds them unused or the pool closes.
func TestHandlerPool(t *testing.T) {
	var mu sync.Mutex
	ids := map[string]int{}
	release := make(chan struct{})
	var ran sync.WaitGroup
	p := &handlerPool{every: 20 * time.Millisecond, handle: func(w *h2Writer) {
		defer ran.Done()
		mu.Lock()
		ids[goroutineID()]++
		mu.Unlock()
		if w != nil && w.status == 1 {
			<-release
		}
	}}
	defer p.close()
	seq := &h2Writer{}
	for range 50 {
		ran.Add(1)
		p.run(seq)
		ran.Wait()
		for idleWorkers(p) != 1 { // the worker parks after its handler returned
			runtime.Gosched()
		}
	}
	if len(ids) != 1 {
		t.Fatalf("50 handlers one after another ran on %d goroutines, want 1", len(ids))
	}

	blocked := &h2Writer{status: 1}
	n := maxIdleHandlers + 20
	ran.Add(n)
	for range n {
		p.run(blocked)
	}
	close(release)
	ran.Wait()
	if len(ids) < n {
		t.Fatalf("%d handlers at once ran on %d goroutines", n, len(ids))
	}
	deadline := time.Now().Add(5 * time.Second)
	for idleWorkers(p) != maxIdleHandlers && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if k := idleWorkers(p); k != maxIdleHandlers {
		t.Fatalf("%d workers parked, want the most kept, %d", k, maxIdleHandlers)
	}
	for idleWorkers(p) != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if k := idleWorkers(p); k != 0 {
		t.Fatalf("%d workers still parked after the sweeps", k)
	}

	ran.Add(3)
	for range 3 {
		p.run(seq)
	}
	ran.Wait()
	p.close() // the parked ones exit now (goleak checks at the package's end), the next handler starts its own
	if k := idleWorkers(p); k != 0 {
		t.Fatalf("%d workers parked after close", k)
	}
	ran.Add(1)
	p.run(seq)
	ran.Wait()
	time.Sleep(10 * time.Millisecond)
	if k := idleWorkers(p); k != 0 {
		t.Fatalf("a worker parked in a closed pool")
	}
}
