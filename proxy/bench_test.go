package proxy

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
)

// BenchmarkProxy measures one request through one in-process proxy to a loopback backend, per protocol between
// the client and the proxy and between the proxy and the backend. Compare runs with benchstat; the figures are
// the cost of meshlet's hot path plus two loopback hops.
func BenchmarkProxy(b *testing.B) {
	payload := strings.Repeat("x", 128)
	backendAddr := startH2CBackend(b, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, payload)
	})

	h1 := &http.Transport{MaxIdleConnsPerHost: 64}
	h2 := &http.Transport{Protocols: new(http.Protocols)}
	h2.Protocols.SetUnencryptedHTTP2(true)
	for _, bc := range []struct {
		name     string
		client   *http.Transport
		protocol string // upstream protocol: what the proxy speaks to the backend
	}{
		{"http1-http1", h1, ProtocolHTTP},
		{"h2c-h2c", h2, ProtocolHTTP2},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := Config{Service: ServiceConfig{Name: "bench"}, Upstreams: []UpstreamConfig{{
				Name: "api", Listen: "127.0.0.1:0", Protocol: bc.protocol, Endpoints: []string{backendAddr}}}}
			p, _ := startProxy(b, cfg)
			// Before the proxy shuts down (cleanups run last first): a connection the client dialled but never
			// used is new to the server, which Shutdown counts as idle only after 5 s, as long as its deadline.
			b.Cleanup(bc.client.CloseIdleConnections)
			url := "http://" + p.Addrs()["upstream/api"] + "/bench"
			client := &http.Client{Transport: bc.client}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req, _ := http.NewRequestWithContext(context.Background(), "GET", url, nil)
					resp, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
		})
	}
}
