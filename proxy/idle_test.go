package proxy

import (
	"fmt"
	"runtime"
	"testing"
)

// TestStaticUpstreamsNoGoroutine: an upstream whose endpoints the config lists has them from Start and from each
// reload, without a watch: no goroutine per upstream (issue 16: an idle upstream costs memory, and a goroutine's
// stack is most of it).
func TestStaticUpstreamsNoGoroutine(t *testing.T) {
	const n = 100
	cfgWith := func(k int, port int) Config {
		cfg := Config{Service: ServiceConfig{Name: "web"}, Outbound: OutboundConfig{Listen: "127.0.0.1:0"}}
		for i := range k {
			cfg.Upstreams = append(cfg.Upstreams, UpstreamConfig{Name: fmt.Sprintf("up%d", i),
				Endpoints: []string{fmt.Sprintf("127.0.0.1:%d", port+i)}})
		}
		return cfg
	}
	startProxy(t, cfgWith(1, 20000))
	before := runtime.NumGoroutine()
	p, _ := startProxy(t, cfgWith(n, 20000))
	if grown := runtime.NumGoroutine() - before; grown >= n {
		t.Fatalf("%d more goroutines with %d more upstreams of static endpoints, want fewer than one each", grown, n)
	}
	if _, err := p.Reload(cfgWith(n, 30000)); err != nil {
		t.Fatal(err)
	}
	// Applied by Reload itself: nothing to wait for.
	if eps := upstreamInfo(t, p, "up7").Endpoints; len(eps) != 1 || eps[0].Address != "127.0.0.1:30007" {
		t.Fatalf("up7 right after the reload: %+v, want 127.0.0.1:30007", eps)
	}
}
