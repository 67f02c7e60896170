package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/mtls"
)

// CASource serves the leaf certificate that the local Consul agent issues for a service and the Connect CA
// roots, both watched with blocking queries: the agent renews the leaf before it expires and a CA rotation
// publishes the new root beside the old one (both are trusted while both are listed), so rotation needs nothing
// from meshlet but to follow. Create it with NewCASource and run it with Run.
type CASource struct {
	client  *api.Client
	service string
	log     *slog.Logger

	cur     atomic.Pointer[mtls.Bundle]
	lastErr atomic.Pointer[string]

	mu    sync.Mutex // guards leaf and roots
	leaf  *api.LeafCert
	roots *api.CARootList

	// OnReload, when set before Run, is called after every change attempt (nil error: a new bundle is in use).
	OnReload func(*mtls.Bundle, error)
}

// NewCASource returns a source for service's certificate from the agent behind client.
func NewCASource(client *api.Client, service string, log *slog.Logger) *CASource {
	return &CASource{client: client, service: service, log: log}
}

// Bundle implements mtls.Source; nil until the first leaf and roots have arrived.
func (s *CASource) Bundle() *mtls.Bundle { return s.cur.Load() }

// Ready is the readiness of the certificate: not ready before the first leaf and roots have arrived (with the
// last error fetching them, if any), or once the leaf has expired (or before it is valid).
func (s *CASource) Ready() error {
	return mtls.BundleReady(s.Bundle(), func() error {
		if err := s.Err(); err != nil {
			return fmt.Errorf("waiting for the certificate from consul: %w", err)
		}
		return errors.New("waiting for the certificate from consul")
	})
}

// Err is the last error fetching or building the bundle, or nil.
func (s *CASource) Err() error {
	if p := s.lastErr.Load(); p != nil {
		return errors.New(*p)
	}
	return nil
}

// Run watches the leaf and the roots until ctx ends.
func (s *CASource) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() {
		s.watch(ctx, "roots", func(q *api.QueryOptions) (uint64, error) {
			roots, meta, err := s.client.Agent().ConnectCARoots(q)
			if err != nil {
				return 0, err
			}
			s.mu.Lock()
			s.roots = roots
			s.mu.Unlock()
			return meta.LastIndex, nil
		})
	})
	wg.Go(func() {
		s.watch(ctx, "leaf", func(q *api.QueryOptions) (uint64, error) {
			leaf, meta, err := s.client.Agent().ConnectCALeaf(s.service, q)
			if err != nil {
				return 0, err
			}
			s.mu.Lock()
			s.leaf = leaf
			s.mu.Unlock()
			return meta.LastIndex, nil
		})
	})
	wg.Wait()
	return nil
}

// watch runs the blocking queries of one part of the bundle (what: roots or leaf); every change rebuilds it.
func (s *CASource) watch(ctx context.Context, what string, fetch func(*api.QueryOptions) (uint64, error)) {
	watchChanges(ctx, fetch, s.rebuild, func(err error) {
		msg := fmt.Sprintf("consul connect CA %s: %v", what, err)
		if p := s.lastErr.Swap(&msg); p == nil || *p != msg {
			s.log.Error("cannot fetch the certificate from consul; retrying", "what", what, "error", err.Error())
		}
		if s.OnReload != nil {
			s.OnReload(nil, errors.New(msg))
		}
	})
}

// rebuild makes a bundle of the latest leaf and all the roots listed (during a CA rotation, old and new).
func (s *CASource) rebuild() {
	s.mu.Lock()
	leaf, roots := s.leaf, s.roots
	s.mu.Unlock()
	if leaf == nil || roots == nil || len(roots.Roots) == 0 {
		return
	}
	b, err := mtls.ConsulBundle(leaf, roots)
	if err != nil {
		// A leaf signed by a root that has not arrived yet (mid-rotation): the next answer fixes it.
		msg := "consul connect CA: " + err.Error()
		s.lastErr.Store(&msg)
		s.log.Warn("consul certificate does not verify yet; keeping the current one", "error", err.Error())
		if s.OnReload != nil {
			s.OnReload(nil, err)
		}
		return
	}
	prev := s.cur.Swap(b)
	s.lastErr.Store(nil)
	if prev == nil || prev.Leaf.SerialNumber.Cmp(b.Leaf.SerialNumber) != 0 || len(prev.Roots) != len(b.Roots) ||
		len(prev.Warnings) != len(b.Warnings) {
		s.log.Info("certificate from consul in use", "id", b.ID.String(), "not_after", b.Leaf.NotAfter,
			"roots", len(b.Roots))
		mtls.LogWarnings(s.log, b, "source", mtls.SourceConsul)
	}
	if s.OnReload != nil {
		s.OnReload(b, nil)
	}
}
