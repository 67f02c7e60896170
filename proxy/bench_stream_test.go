package proxy

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strconv"
	"testing"
)

// BenchmarkProxyStream measures 64 MiB through one in-process proxy to a loopback backend, per protocol: up (a
// request body of unknown length, streamed in 32 KiB writes) and down (a response body of unknown length). Issue 16
// asks that large bodies cost no more than before its changes: run it on both commits and compare (benchstat).
func BenchmarkProxyStream(b *testing.B) {
	const size = 64 << 20
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 2<<10)
	backendAddr := startH2CBackend(b, func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			n, err := io.Copy(io.Discard, r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			io.WriteString(w, strconv.FormatInt(n, 10))
			return
		}
		for n := 0; n < size; n += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	h1 := &http.Transport{}
	h2 := &http.Transport{Protocols: new(http.Protocols)}
	h2.Protocols.SetUnencryptedHTTP2(true)
	for _, bc := range []struct {
		name     string
		client   *http.Transport
		protocol string
	}{
		{"http1-http1", h1, ProtocolHTTP},
		{"h2c-h2c", h2, ProtocolHTTP2},
	} {
		cfg := Config{Service: ServiceConfig{Name: "bench"}, Upstreams: []UpstreamConfig{{
			Name: "api", Listen: "127.0.0.1:0", Protocol: bc.protocol, Endpoints: []string{backendAddr}}}}
		for _, dir := range []string{"up", "down"} {
			b.Run(bc.name+"/"+dir, func(b *testing.B) {
				p, _ := startProxy(b, cfg)
				b.Cleanup(bc.client.CloseIdleConnections)
				url := "http://" + p.Addrs()["upstream/api"] + "/stream"
				client := &http.Client{Transport: bc.client}
				b.SetBytes(size)
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					var req *http.Request
					if dir == "up" {
						req, _ = http.NewRequestWithContext(context.Background(), "POST", url,
							io.LimitReader(repeatReader(chunk), size)) // no length: streamed
					} else {
						req, _ = http.NewRequestWithContext(context.Background(), "GET", url, nil)
					}
					resp, err := client.Do(req)
					if err != nil {
						b.Fatal(err)
					}
					var got bytes.Buffer // up: the backend's count
					var w io.Writer = &got
					if dir == "down" {
						w = io.Discard
					}
					n, err := io.Copy(w, resp.Body)
					resp.Body.Close()
					if err != nil || resp.StatusCode != http.StatusOK {
						b.Fatalf("status %d, %v", resp.StatusCode, err)
					}
					if dir == "up" && got.String() != strconv.Itoa(size) {
						b.Fatalf("the backend read %q bytes, want %d", got.String(), size)
					}
					if dir == "down" && n != size {
						b.Fatalf("read %d bytes, want %d", n, size)
					}
				}
			})
		}
	}
}

// repeatReader reads chunk again and again.
type repeatReader []byte

func (r repeatReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		n += copy(p[n:], r)
	}
	return n, nil
}
