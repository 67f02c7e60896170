package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
)

// protocol is what the app speaks end to end.
type protocol string

const (
	protoHTTP1 protocol = "http1"
	protoH2C   protocol = "h2c"
	protoGRPC  protocol = "grpc"
)

// protocolInfo maps a protocol to meshlet's name for it and a label for the table.
var protocolInfo = map[protocol]struct{ meshlet, label string }{
	protoHTTP1: {"http", "HTTP/1.1"},
	protoH2C:   {"http2", "h2c"},
	protoGRPC:  {"grpc", "gRPC"},
}

// bodySize is the length of every backend response body.
const bodySize = 64

// responseBody is the fixed body every backend returns.
var responseBody = bytes.Repeat([]byte("m"), bodySize)

// backend is an in-process server answering every request with responseBody: on 127.0.0.1, or for the
// intercepted path at peerAddr in its namespace.
type backend struct {
	addr  string
	conns *atomic.Int64 // connections accepted so far
	close func()
}

// countingListener counts accepted connections, to see whether callers (meshlet) reuse them.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// startBackend starts the backend for p on a free loopback port. The HTTP backends answer any path and
// reject requests that arrive in the wrong HTTP version (status 505), so a proxy that downgrades is noticed.
func startBackend(p protocol) (*backend, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return serveBackend(p, ln)
}

// serveBackend serves p's backend on ln (startBackend) and closes ln on failure.
func serveBackend(p protocol, ln net.Listener) (*backend, error) {
	be := &backend{addr: ln.Addr().String(), conns: new(atomic.Int64)}
	ln = countingListener{ln, be.conns}
	switch p {
	case protoHTTP1, protoH2C:
		be.close = serveHTTP(ln, p)
	case protoGRPC:
		be.close = serveGRPC(ln)
	default:
		ln.Close()
		return nil, fmt.Errorf("unknown protocol %q", p)
	}
	return be, nil
}

// serveHTTP serves httpHandler on ln in HTTP/1.1 only or h2c only; the returned func stops the server.
func serveHTTP(ln net.Listener, p protocol) (stop func()) {
	var protos http.Protocols
	wantMajor := 1
	if p == protoH2C {
		protos.SetUnencryptedHTTP2(true)
		wantMajor = 2
	} else {
		protos.SetHTTP1(true)
	}
	srv := &http.Server{
		Handler:           httpHandler(wantMajor),
		Protocols:         &protos,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(os.Stderr, "backend %s: %v\n", p, err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
		<-done
	}
}

// serveGRPC serves the test service on ln; the returned func stops the server.
func serveGRPC(ln net.Listener) (stop func()) {
	srv := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(srv, testServer{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			fmt.Fprintf(os.Stderr, "backend grpc: %v\n", err)
		}
	}()
	return func() {
		stopped := make(chan struct{})
		go func() { srv.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(2 * time.Second):
			srv.Stop()
		}
		<-done
	}
}

// httpHandler answers every request with responseBody, or 505 if it arrived in another HTTP major version, or
// 400 if its body is not requestBody's length (-post).
func httpHandler(wantMajor int) http.Handler {
	clen := strconv.Itoa(bodySize)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != wantMajor {
			http.Error(w, fmt.Sprintf("backend wants HTTP/%d, got %s", wantMajor, r.Proto), http.StatusHTTPVersionNotSupported)
			return
		}
		if n, err := io.Copy(io.Discard, r.Body); err != nil || n != int64(len(requestBody)) {
			http.Error(w, fmt.Sprintf("backend got a body of %d bytes (%v), want %d", n, err, len(requestBody)), http.StatusBadRequest)
			return
		}
		h := w.Header()
		h["Content-Type"] = []string{"text/plain"}
		h["Content-Length"] = []string{clen}
		w.Write(responseBody)
	})
}

// testServer implements grpc.testing.TestService/UnaryCall with a fixed payload; other methods are unimplemented.
type testServer struct {
	testgrpc.UnimplementedTestServiceServer
}

var grpcResponse = &testgrpc.SimpleResponse{Payload: &testgrpc.Payload{Body: responseBody}}

func (testServer) UnaryCall(context.Context, *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	return grpcResponse, nil
}
