package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// startAPI runs the api server on a loopback port until the test ends and returns its address.
func startAPI(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, ln, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	return ln.Addr().String()
}

func TestGRPC(t *testing.T) {
	addr := startAPI(t)
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := t.Context()

	tests := []struct {
		name, method, in, want string
		code                   codes.Code
	}{
		{"hello", "/demo.Greeter/SayHello", "ann", "hello, ann", codes.OK},
		{"empty name", "/demo.Greeter/SayHello", "", "hello, stranger", codes.OK},
		{"unknown method", "/demo.Greeter/Nope", "ann", "", codes.Unimplemented},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := new(wrapperspb.StringValue)
			err := conn.Invoke(ctx, tt.method, wrapperspb.String(tt.in), out)
			if status.Code(err) != tt.code || out.GetValue() != tt.want {
				t.Errorf("got %q, %v; want %q, %v", out.GetValue(), err, tt.want, tt.code)
			}
		})
	}

	t.Run("health", func(t *testing.T) {
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("got %v, %v; want SERVING", resp.GetStatus(), err)
		}
	})
}

func TestPrice(t *testing.T) {
	addr := startAPI(t)
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	clients := map[string]*http.Client{
		"HTTP/1.1": {},
		"h2c":      {Transport: &http.Transport{Protocols: &h2c}},
	}
	tests := []struct {
		name, query string
		code        int
		body        string
	}{
		{"item", "?item=tea", 200, `{"item":"tea","price_cents":537,"currency":"EUR"}`},
		{"no item", "", 400, "missing query parameter item"},
	}
	for proto, client := range clients {
		for _, tt := range tests {
			t.Run(proto+"/"+tt.name, func(t *testing.T) {
				resp, err := client.Get("http://" + addr + "/price" + tt.query)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				body, _ := io.ReadAll(resp.Body)
				if resp.Proto != proto && !(proto == "h2c" && resp.ProtoMajor == 2) {
					t.Errorf("answered in %s, want %s", resp.Proto, proto)
				}
				if resp.StatusCode != tt.code || strings.TrimSpace(string(body)) != tt.body {
					t.Errorf("got %d %q; want %d %q", resp.StatusCode, body, tt.code, tt.body)
				}
			})
		}
	}
}
