package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sync"
	"testing"
)

// fakePart records when its Run starts and ends; ready is its readiness.
type fakePart struct {
	name    string
	ready   error
	started chan struct{}
	ended   *[]string
	mu      *sync.Mutex
}

func (p *fakePart) Run(ctx context.Context) error {
	close(p.started)
	<-ctx.Done()
	p.mu.Lock()
	*p.ended = append(*p.ended, p.name)
	p.mu.Unlock()
	return nil
}

func (p *fakePart) Ready() error { return p.ready }

// TestRunGroup: ready asks every part added, started or not, in order; stop ends one part and waits for it;
// stopAll ends the others, the last added first, each joined before the next; a part never started is skipped.
func TestRunGroup(t *testing.T) {
	var mu sync.Mutex
	var ended []string
	mk := func(name string, ready error) *fakePart {
		return &fakePart{name: name, ready: ready, started: make(chan struct{}), ended: &ended, mu: &mu}
	}
	a, b, c, d := mk("a", nil), mk("b", errors.New("b not ready")), mk("c", errors.New("c not ready")), mk("d", nil)
	g := &runGroup{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, p := range []*fakePart{a, b, c, d} {
		g.add(p.name, p)
	}
	if err := g.ready(); err == nil || err.Error() != "b not ready" {
		t.Fatalf("ready() = %v, want b's reason (the first part not ready, started or not)", err)
	}
	for _, name := range []string{"a", "b", "d"} {
		g.start(name)
	}
	<-a.started
	<-b.started
	<-d.started
	g.stop("b")
	mu.Lock()
	if !slices.Equal(ended, []string{"b"}) {
		t.Fatalf("after stop(b): ended %v", ended)
	}
	mu.Unlock()
	b.ready, c.ready = nil, nil
	if err := g.ready(); err != nil {
		t.Fatalf("ready() = %v, want nil", err)
	}
	g.stopAll()
	if !slices.Equal(ended, []string{"b", "d", "a"}) {
		t.Fatalf("after stopAll: ended %v, want b, then d and a (last added first; c never started)", ended)
	}
	g.stopAll() // twice: nothing left to stop
}

// TestRunGroupStartRest starts the parts not started yet, and only those.
func TestRunGroupStartRest(t *testing.T) {
	var mu sync.Mutex
	var ended []string
	mk := func(name string) *fakePart {
		return &fakePart{name: name, started: make(chan struct{}), ended: &ended, mu: &mu}
	}
	a, b, c := mk("a"), mk("b"), mk("c")
	g := &runGroup{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	g.add("a", a)
	g.add("b", b)
	g.start("a")
	g.add("c", c)
	g.startRest() // b and c; a again would panic
	<-a.started
	<-b.started
	<-c.started
	g.stopAll()
	if !slices.Equal(ended, []string{"c", "b", "a"}) {
		t.Fatalf("ended %v, want c, b, a", ended)
	}
}
