// Command reqpath measures which of meshlet's files and functions one request runs through: an outbound HTTP/1.1
// call from an app through two sidecars (app → sidecar A → sidecar B → app), in process, on loopback. It is a
// measurement of the architecture, not a check. Built with coverage counters (`make reqpath`), it clears them
// after a warm-up request, makes exactly one more, and writes the counters to the directory it is given, for
// `go tool covdata` to read.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime/coverage"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"meshlet.dev/meshlet/metrics"
	"meshlet.dev/meshlet/proxy"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: reqpath COVERDIR (build with -cover -covermode=atomic)")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "reqpath:", err)
		os.Exit(1)
	}
}

func run(dir string) error {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "hello")
	}))
	defer app.Close()
	bIn, err := freeAddr()
	if err != nil {
		return err
	}
	b, err := start(proxy.Config{Service: proxy.ServiceConfig{Name: "api", Address: strings.TrimPrefix(app.URL, "http://")},
		Inbound: proxy.InboundConfig{Listen: bIn}})
	if err != nil {
		return err
	}
	defer stop(b)
	aOut, err := freeAddr()
	if err != nil {
		return err
	}
	a, err := start(proxy.Config{Service: proxy.ServiceConfig{Name: "web"}, Upstreams: []proxy.UpstreamConfig{{
		Name: "api", Listen: aOut, Peer: proxy.PeerSidecar, Endpoints: []string{bIn}}}})
	if err != nil {
		return err
	}
	defer stop(a)
	url := "http://" + a.Addrs()["upstream/api"] + "/hello"
	client := &http.Client{Transport: &http.Transport{}}
	call := func() error {
		resp, err := client.Post(url, "text/plain", strings.NewReader("ping"))
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "hello" {
			return fmt.Errorf("answer %d %q", resp.StatusCode, body)
		}
		return nil
	}
	if err := call(); err != nil { // warm up: connections dialled and pooled, metric children made
		return err
	}
	time.Sleep(100 * time.Millisecond)
	if err := coverage.ClearCounters(); err != nil {
		return err
	}
	if err := call(); err != nil {
		return err
	}
	time.Sleep(100 * time.Millisecond) // the endpoint's outcome is recorded when the response body is done
	if err := coverage.WriteMetaDir(dir); err != nil {
		return err
	}
	return coverage.WriteCountersDir(dir)
}

func start(cfg proxy.Config) (*proxy.Proxy, error) {
	p, err := proxy.New(cfg, proxy.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Metrics: metrics.New(prometheus.NewRegistry(), "reqpath")})
	if err != nil {
		return nil, err
	}
	if err := p.Start(); err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(5 * time.Second); p.Ready() != nil; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			return nil, errors.Join(errors.New("proxy not ready"), p.Ready())
		}
	}
	return p, nil
}

func stop(p *proxy.Proxy) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	p.Shutdown(ctx)
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
