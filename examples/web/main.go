// Command web is the "web" service of the meshlet demo (see examples/README.md).
//
// GET / calls the api service twice, through web's own meshlet: demo.Greeter/SayHello over gRPC (-api-grpc) and
// GET /price over HTTP/1.1 (-api-http), and answers with both results as JSON. Query parameters: name (default
// "world") and item (default "coffee"). GET /healthz answers ok.
package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18080", "address (host:port) to serve HTTP on")
	apiGRPC := flag.String("api-grpc", "127.0.0.1:9001", "host:port where api's gRPC is reached (web's meshlet upstream listener)")
	apiHTTP := flag.String("api-http", "127.0.0.1:9002", "host:port where api's HTTP is reached (web's meshlet upstream listener)")
	timeout := flag.Duration("timeout", 2*time.Second, "deadline of each call to api")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("service", "web")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *listen, *apiGRPC, *apiHTTP, *timeout, log); err != nil {
		log.Error("exiting", "error", err)
		os.Exit(1)
	}
}

// run serves on addr until ctx ends, then shuts down gracefully.
func run(ctx context.Context, addr, apiGRPC, apiHTTP string, timeout time.Duration, log *slog.Logger) error {
	// The gRPC client connects lazily and keeps one HTTP/2 connection to the meshlet listener.
	conn, err := grpc.NewClient("passthrough:///"+apiGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()

	h := &handler{
		greeter:  conn,
		priceURL: "http://" + apiHTTP + "/price",
		client:   &http.Client{Transport: http.DefaultTransport}, // HTTP/1.1 to the meshlet listener
		timeout:  timeout,
		log:      log,
	}
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", h)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}

	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Info("serving", "addr", addr, "api_grpc", apiGRPC, "api_http", apiHTTP)

	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}
