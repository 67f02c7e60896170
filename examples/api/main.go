// Command api is the "api" service of the meshlet demo (see examples/README.md).
//
// It serves, on one cleartext port that speaks HTTP/1.1 and HTTP/2 (h2c):
//   - gRPC: demo.Greeter/SayHello (google.protobuf.StringValue in and out) and grpc.health.v1.Health;
//   - HTTP: GET /price?item=NAME, answered with JSON.
//
// Requests with a gRPC content type over HTTP/2 go to the gRPC server, everything else to the HTTP mux, so one
// meshlet inbound listener (service.protocol http2) fronts both.
package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18081", "address (host:port) to serve gRPC and HTTP on, h2c and HTTP/1.1")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("service", "api")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", *listen)
	if err == nil {
		err = run(ctx, ln, log)
	}
	if err != nil {
		log.Error("exiting", "error", err)
		os.Exit(1)
	}
}

// run serves on ln until ctx ends, then shuts down gracefully.
func run(ctx context.Context, ln net.Listener, log *slog.Logger) error {
	gs := grpc.NewServer()
	gs.RegisterService(&greeterServiceDesc, greeter{})
	hs := health.NewServer() // reports SERVING for "" and every registered service by default
	healthpb.RegisterHealthServer(gs, hs)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /price", handlePrice)

	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           splitGRPC(gs, mux),
		Protocols:         &protocols,
		ReadHeaderTimeout: 5 * time.Second,
	}

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("serving", "addr", ln.Addr().String(),
		"grpc", "demo.Greeter/SayHello, grpc.health.v1.Health", "http", "GET /price?item=NAME")

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	hs.Shutdown() // health checks now answer NOT_SERVING
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}

// splitGRPC sends gRPC calls (HTTP/2 with an application/grpc content type) to grpcHandler and all other requests
// to httpHandler.
func splitGRPC(grpcHandler, httpHandler http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			grpcHandler.ServeHTTP(w, r)
			return
		}
		httpHandler.ServeHTTP(w, r)
	})
}
