package consul

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// TestWatchIndexRules runs Watch over a scripted sequence of answers and checks the WaitIndex of each query:
// the last index carried on, an index that went backwards and an error both start over from 0, an answer of 0
// is asked again from 1;
// failed is told of each error with a wait within the backoff bounds; every query has a deadline.
func TestWatchIndexRules(t *testing.T) {
	type answer struct {
		index uint64
		err   error
	}
	boom := errors.New("agent away")
	script := []answer{{index: 5}, {index: 5}, {index: 9}, {index: 3}, {index: 0}, {index: 7}, {err: boom}, {index: 4}, {index: 6}}
	want := []uint64{0, 5, 5, 9, 0, 1, 7, 0, 4}
	var got []uint64
	var fails []time.Duration
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	Watch(ctx, Options{Wait: time.Minute, Datacenter: "dc2"}, func(q *api.QueryOptions) (uint64, error) {
		if q.Datacenter != "dc2" || q.WaitTime != time.Minute {
			t.Errorf("query options %+v", q)
		}
		if _, ok := q.Context().Deadline(); !ok {
			t.Error("a query without a deadline")
		}
		got = append(got, q.WaitIndex)
		a := script[len(got)-1]
		if len(got) == len(script) {
			cancel()
		}
		return a.index, a.err
	}, func(err error, retryIn time.Duration) {
		if !errors.Is(err, boom) {
			t.Errorf("failed(%v)", err)
		}
		fails = append(fails, retryIn)
	})
	if len(got) != len(want) {
		t.Fatalf("WaitIndex sequence %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("WaitIndex sequence %v, want %v", got, want)
		}
	}
	if len(fails) != 1 || fails[0] < BackoffMin/2 || fails[0] > BackoffMin {
		t.Errorf("failed was told %v; want one wait within [%v, %v]", fails, BackoffMin/2, BackoffMin)
	}
}

// TestBackoffBounds: exponential from BackoffMin to BackoffMax, the upper half jittered, for any n.
func TestBackoffBounds(t *testing.T) {
	for _, n := range []int{-1, 0, 1, 2, 3, 5, 8, 15, 16, 100, 1 << 30} {
		want := BackoffMax
		if n < 16 {
			want = min(BackoffMin<<(max(n, 1)-1), BackoffMax)
		}
		for range 50 {
			if d := Backoff(n); d < want/2 || d > want {
				t.Fatalf("Backoff(%d) = %v, want within [%v, %v]", n, d, want/2, want)
			}
		}
	}
}
