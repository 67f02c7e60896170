package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

// backend is an in-process app on one loopback port speaking HTTP/1.1 and h2c, with gRPC
// (grpc.testing.TestService/UnaryCall, echoing the payload) on the same port, like examples/api.
// HTTP: GET /soak?id=X answers "pong X"; POST /soak echoes the body.
type backend struct {
	addr   string
	served *atomic.Int64 // requests answered, over all generations of the instance
	srv    *http.Server
	done   chan struct{}
}

// startBackend listens on addr ("127.0.0.1:0" for any port) and serves until stop.
func startBackend(addr string, served *atomic.Int64) (*backend, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	gs := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(gs, echoServer{served: served})
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	b := &backend{addr: ln.Addr().String(), served: served, done: make(chan struct{})}
	b.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
				gs.ServeHTTP(w, r)
				return
			}
			b.serveHTTP(w, r)
		}),
		Protocols:         &protos,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	go func() {
		defer close(b.done)
		if err := b.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(os.Stderr, "backend %s: %v\n", b.addr, err)
		}
	}()
	return b, nil
}

func (b *backend) serveHTTP(w http.ResponseWriter, r *http.Request) {
	b.served.Add(1)
	switch r.Method {
	case http.MethodGet:
		io.WriteString(w, "pong "+r.URL.Query().Get("id"))
	case http.MethodPost:
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
			return
		}
		w.Write(body)
	default:
		http.Error(w, "method", http.StatusMethodNotAllowed)
	}
}

// stop shuts the server down gracefully (bounded), then closes what is left.
func (b *backend) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if b.srv.Shutdown(ctx) != nil {
		b.srv.Close()
	}
	<-b.done
}

// echoServer answers UnaryCall with the request's payload.
type echoServer struct {
	testgrpc.UnimplementedTestServiceServer
	served *atomic.Int64
}

func (s echoServer) UnaryCall(_ context.Context, req *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	s.served.Add(1)
	return &testgrpc.SimpleResponse{Payload: req.GetPayload()}, nil
}
