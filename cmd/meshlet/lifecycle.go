package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
)

// Names of the sidecar's parts (runGroup), in the order /ready asks them.
const (
	partEntries      = "config entries"
	partMesh         = "mesh services"
	partSidecarFor   = "sidecar registration"
	partCertificates = "certificates"
	partIntentions   = "intentions"
	partRegistration = "registration"
	partAppCheck     = "app check"
)

// part is a background part of the sidecar (the certificate source, intentions, config entries, the app check,
// registration). Run works until ctx ends and returns nil then (an error ends it early: it is logged); Ready says
// why the part is not ready, nil once it is. Ready must not block.
type part interface {
	Run(ctx context.Context) error
	Ready() error
}

// runGroup runs the sidecar's parts. add declares a part, in the order /ready asks them; start runs it in a
// goroutine of its own; stop ends one and waits for it (some end early in a shutdown: registration, the app
// check); stopAll ends the others, the last added first, and waits for each, so that no goroutine of a part
// outlives the sidecar. ready asks every part added, started or not, in order. Safe for concurrent use.
type runGroup struct {
	log *slog.Logger

	mu    sync.Mutex
	parts []*runningPart
}

// runningPart is one part of a runGroup and its goroutine.
type runningPart struct {
	name   string
	p      part
	cancel context.CancelFunc // nil until started
	done   chan struct{}      // closed when Run has returned
}

// add declares part p under name; it does not start it.
func (g *runGroup) add(name string, p part) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.parts = append(g.parts, &runningPart{name: name, p: p, done: make(chan struct{})})
}

// start runs the part added under name (a part runs once; an unknown name is a programming error).
func (g *runGroup) start(name string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	rp := g.find(name)
	if rp == nil || rp.cancel != nil {
		panic(fmt.Sprintf("meshlet: part %q unknown or already started", name))
	}
	ctx, cancel := context.WithCancel(context.Background())
	rp.cancel = cancel
	go func() {
		defer close(rp.done)
		if err := rp.p.Run(ctx); err != nil && ctx.Err() == nil {
			g.log.Error("part stopped", "part", rp.name, "error", err.Error())
		}
	}()
}

// startRest starts every part added and not started yet, in order.
func (g *runGroup) startRest() {
	g.mu.Lock()
	var names []string
	for _, rp := range g.parts {
		if rp.cancel == nil {
			names = append(names, rp.name)
		}
	}
	g.mu.Unlock()
	for _, name := range names {
		g.start(name)
	}
}

// stop ends the part added under name, if it was started, and waits until its Run has returned.
func (g *runGroup) stop(name string) {
	g.mu.Lock()
	rp := g.find(name)
	g.mu.Unlock()
	if rp != nil {
		g.stopPart(rp)
	}
}

// stopAll ends every started part, the last added first, waiting for each.
func (g *runGroup) stopAll() {
	g.mu.Lock()
	parts := slices.Clone(g.parts)
	g.mu.Unlock()
	for _, rp := range slices.Backward(parts) {
		g.stopPart(rp)
	}
}

// stopPart cancels a started part and waits for it; a part never started, or already stopped, returns at once.
func (g *runGroup) stopPart(rp *runningPart) {
	g.mu.Lock()
	cancel := rp.cancel
	g.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-rp.done
}

// ready is nil when every part added is ready, else the first one's reason.
func (g *runGroup) ready() error {
	g.mu.Lock()
	parts := slices.Clone(g.parts)
	g.mu.Unlock()
	for _, rp := range parts {
		if err := rp.p.Ready(); err != nil {
			return err
		}
	}
	return nil
}

func (g *runGroup) find(name string) *runningPart {
	for _, rp := range g.parts {
		if rp.name == name {
			return rp
		}
	}
	return nil
}
