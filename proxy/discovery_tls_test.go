package proxy

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/metrics"
	"meshlet.dev/meshlet/mtls"
)

// optionsRecorder is a discovery source that passes the options of every watch on watched and sends one empty
// snapshot.
type optionsRecorder struct{ watched chan discovery.WatchOptions }

func (r *optionsRecorder) Watch(ctx context.Context, service string) (<-chan discovery.Snapshot, error) {
	return r.WatchWith(ctx, service, discovery.WatchOptions{})
}

func (r *optionsRecorder) WatchWith(ctx context.Context, service string, opts discovery.WatchOptions) (<-chan discovery.Snapshot, error) {
	r.watched <- opts
	ch := make(chan discovery.Snapshot, 1)
	ch <- discovery.Snapshot{Service: service, Index: 1}
	go func() {
		<-ctx.Done()
		close(ch)
	}()
	return ch, nil
}

// next returns the options of the next watch (5s at most).
func (r *optionsRecorder) next(t *testing.T) discovery.WatchOptions {
	t.Helper()
	select {
	case o := <-r.watched:
		return o
	case <-time.After(5 * time.Second):
		t.Fatal("no watch started")
		return discovery.WatchOptions{}
	}
}

// TestDiscoveryWatchRequiresTLS: a discovered upstream whose endpoints are reached over mutual TLS (tls.mode mtls,
// the default when this meshlet has TLS) asks discovery for sidecars only (WatchOptions.MutualTLS), so that
// Consul's auto mode never offers it plain instances; tls.mode disabled, or no TLS at all, does not; and a reload
// that changes the mode restarts the watch with the new options.
func TestDiscoveryWatchRequiresTLS(t *testing.T) {
	pki := newTestPKI(t)
	for _, tc := range []struct {
		name     string
		withTLS  bool
		mode     string
		wantMTLS bool
	}{
		{"tls configured, mode by default", true, "", true},
		{"tls configured, mode mtls", true, mtls.ModeMTLS, true},
		{"tls configured, mode disabled", true, mtls.ModeDisabled, false},
		{"no tls", false, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &optionsRecorder{watched: make(chan discovery.WatchOptions, 4)}
			opts := Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: metrics.New(prometheus.NewRegistry(), "test"),
				Discovery: src}
			if tc.withTLS {
				opts.TLS = pki.source(t, "web")
			}
			cfg := Config{Service: ServiceConfig{Name: "web"}, Outbound: OutboundConfig{Listen: "127.0.0.1:0"},
				Upstreams: []UpstreamConfig{{Name: "api", TLS: UpstreamTLSConfig{Mode: tc.mode}}}}
			p, err := New(cfg, opts)
			if err != nil {
				t.Fatal(err)
			}
			runProxy(t, p)
			if got := src.next(t).MutualTLS; got != tc.wantMTLS {
				t.Fatalf("WatchOptions.MutualTLS = %v, want %v", got, tc.wantMTLS)
			}
			if !tc.withTLS {
				return
			}
			flipped := mtls.ModeDisabled
			if !tc.wantMTLS {
				flipped = mtls.ModeMTLS
			}
			cfg.Upstreams[0].TLS.Mode = flipped
			if _, err := p.Reload(cfg); err != nil {
				t.Fatal(err)
			}
			if got := src.next(t).MutualTLS; got == tc.wantMTLS {
				t.Fatalf("after a reload to tls.mode %s: WatchOptions.MutualTLS still %v", flipped, got)
			}
		})
	}
}
