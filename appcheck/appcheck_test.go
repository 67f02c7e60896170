package appcheck

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// TestErrorHidesCredentials: the error of a failing app check (shown by /ready and logged) names the
// check's URL without its userinfo and query, which may hold credentials.
func TestErrorHidesCredentials(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	defer app.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()
	for _, base := range []string{app.URL, closedURL} {
		u := strings.Replace(base, "http://", "http://probe:pw-s3cr3t@", 1) + "/health?token=q-s3cr3t"
		c := &Check{HTTP: u}
		err := c.Probe(context.Background())
		if err == nil {
			t.Fatalf("%s: no error", u)
		}
		if strings.Contains(err.Error(), "s3cr3t") || strings.Contains(err.Error(), "probe") ||
			!strings.Contains(err.Error(), "/health") {
			t.Errorf("error %q shows the credentials or not the check", err)
		}
	}
}

// TestGRPCProbe: a gRPC check passes only while the server answers SERVING for the service it names, and says
// why otherwise.
func TestGRPCProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go srv.Serve(ln)
	defer srv.Stop()
	hs.SetServingStatus("shop.Cart", healthpb.HealthCheckResponse_SERVING)
	addr := ln.Addr().String()
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := closed.Addr().String()
	closed.Close()

	for _, tc := range []struct {
		name, grpc string
		setup      func()
		want       string // "" passes
	}{
		{"server serving", addr, nil, ""},
		{"service serving", addr + "/shop.Cart", nil, ""},
		{"service not serving", addr + "/shop.Cart", func() {
			hs.SetServingStatus("shop.Cart", healthpb.HealthCheckResponse_NOT_SERVING)
		}, "status NOT_SERVING"},
		{"unknown service", addr + "/shop.Nope", nil, "NotFound"},
		{"no server", closedAddr, nil, "Unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup()
			}
			c := &Check{GRPC: tc.grpc, Timeout: 2 * time.Second}
			if err := c.Validate("service.check"); err != nil {
				t.Fatal(err)
			}
			err := c.Probe(context.Background())
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("probe: %v, want passing", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("probe: %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// TestTLSSkipVerify: an https check of a server whose certificate does not verify fails, unless tls_skip_verify
// (what the kubelet's HTTPS probes do).
func TestTLSSkipVerify(t *testing.T) {
	app := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer app.Close()
	c := &Check{HTTP: app.URL + "/ready"}
	if err := c.Probe(context.Background()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("verified probe of a self-signed server: %v, want a certificate error", err)
	}
	c.TLSSkipVerify = true
	if err := c.Probe(context.Background()); err != nil {
		t.Fatalf("tls_skip_verify probe: %v", err)
	}
}

// TestValidate: the check's mistakes, each with its field path.
func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		c    Check
		want string // "" valid
	}{
		{Check{GRPC: "127.0.0.1:9090"}, ""},
		{Check{GRPC: "127.0.0.1:9090/shop.Cart"}, ""},
		{Check{HTTP: "https://127.0.0.1:8443/ready", TLSSkipVerify: true}, ""},
		{Check{}, "service.check: set one of http, tcp and grpc (0 set)"},
		{Check{TCP: "127.0.0.1:1", GRPC: "127.0.0.1:2"}, "(2 set)"},
		{Check{GRPC: "9090/shop.Cart"}, "service.check.grpc: \"9090/shop.Cart\" must be host:port or host:port/service"},
		{Check{HTTP: "http://127.0.0.1:8080/ready", TLSSkipVerify: true}, "service.check.tls_skip_verify: only for an https:// http check"},
	} {
		err := tc.c.Validate("service.check")
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v, want valid", tc.c, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%+v: %v, want %q", tc.c, err, tc.want)
		}
	}
}
