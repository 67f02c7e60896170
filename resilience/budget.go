package resilience

import (
	"sync"
	"sync/atomic"
	"time"
)

// budgetBuckets is the number of slices a budget's window is counted in.
const budgetBuckets = 10

// Budget limits retries to a share of recent traffic: within the window, retries may add at most Ratio of the
// requests, plus MinPerSecond for every second of the window (so a quiet upstream can still retry a little).
// It is safe for concurrent use; counts are kept in a ring of buckets with atomics. Counting a request never
// blocks; taking a retry is serialized (retries are the failure path), so that concurrent failures cannot all pass
// the check before any of them is counted and overspend the budget.
type Budget struct {
	retryMu   sync.Mutex
	ratio     float64
	reserve   float64 // MinPerSecond * window seconds
	bucketDur int64   // nanoseconds
	now       func() time.Time
	buckets   [budgetBuckets]budgetBucket
}

type budgetBucket struct {
	epoch    atomic.Int64 // which bucket period the counts belong to
	requests atomic.Int64
	retries  atomic.Int64
}

// Reserve is what a budget of cfg allows without traffic: MinPerSecond for every second of the window (what
// Remaining gives before any request).
func (cfg BudgetConfig) Reserve() float64 { return cfg.MinPerSecond * cfg.Window.Seconds() }

// NewBudget returns a budget for cfg (defaults applied).
func NewBudget(cfg BudgetConfig) *Budget {
	return &Budget{
		ratio:     cfg.Ratio,
		reserve:   cfg.Reserve(),
		bucketDur: int64(cfg.Window) / budgetBuckets,
		now:       time.Now,
	}
}

func (b *Budget) bucket() *budgetBucket {
	epoch := b.now().UnixNano() / b.bucketDur
	bk := &b.buckets[epoch%budgetBuckets]
	if old := bk.epoch.Load(); old != epoch && bk.epoch.CompareAndSwap(old, epoch) {
		bk.requests.Store(0)
		bk.retries.Store(0)
	}
	return bk
}

// sums returns the requests and retries counted in the window.
func (b *Budget) sums() (requests, retries int64) {
	epoch := b.now().UnixNano() / b.bucketDur
	for i := range b.buckets {
		bk := &b.buckets[i]
		if e := bk.epoch.Load(); e > epoch-budgetBuckets && e <= epoch {
			requests += bk.requests.Load()
			retries += bk.retries.Load()
		}
	}
	return requests, retries
}

// Request counts one request (first attempts only).
func (b *Budget) Request() { b.bucket().requests.Add(1) }

// TryRetry takes one retry from the budget; false means it is spent and the failure must stand.
func (b *Budget) TryRetry() bool {
	b.retryMu.Lock()
	defer b.retryMu.Unlock()
	req, ret := b.sums()
	if float64(ret+1) > b.ratio*float64(req)+b.reserve {
		return false
	}
	b.bucket().retries.Add(1)
	return true
}

// Remaining is how many retries the budget allows now.
func (b *Budget) Remaining() float64 {
	req, ret := b.sums()
	return max(0, b.ratio*float64(req)+b.reserve-float64(ret))
}
