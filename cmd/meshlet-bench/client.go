package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

// caller makes one request to a fixed target and checks the answer. call is safe for concurrent use.
type caller interface {
	// call makes one request; it returns nil only for a complete, correct response.
	call(ctx context.Context) error
	// close releases connections; call must not be used afterwards.
	close()
}

// dialFunc makes a caller's connections (net.Dialer.DialContext's signature).
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// newCaller returns a caller speaking p to addr (ip:port). conns sizes the HTTP/1.1 idle pool. dial makes its
// connections (the intercepted path's dial inside the pod); nil is a plain net.Dialer.
func newCaller(p protocol, addr string, conns int, dial dialFunc) (caller, error) {
	switch p {
	case protoHTTP1, protoH2C:
		return newHTTPCaller(p, addr, conns, dial), nil
	case protoGRPC:
		return newGRPCCaller(addr, dial)
	}
	return nil, fmt.Errorf("unknown protocol %q", p)
}

// responseError is a response that arrived but was wrong.
type responseError struct{ msg string }

func (e *responseError) Error() string { return e.msg }

// httpCaller is a caller for HTTP/1.1 or h2c (prior knowledge).
type httpCaller struct {
	client    *http.Client
	tr        *http.Transport
	url       string
	wantMajor int
}

func newHTTPCaller(p protocol, addr string, conns int, dial dialFunc) *httpCaller {
	if dial == nil {
		dial = (&net.Dialer{Timeout: 5 * time.Second}).DialContext
	}
	var protos http.Protocols
	wantMajor := 1
	if p == protoH2C {
		protos.SetUnencryptedHTTP2(true)
		wantMajor = 2
	} else {
		protos.SetHTTP1(true)
	}
	tr := &http.Transport{
		DialContext:         dial,
		Protocols:           &protos,
		MaxIdleConns:        conns + 16,
		MaxIdleConnsPerHost: conns + 16,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	return &httpCaller{
		client:    &http.Client{Transport: tr},
		tr:        tr,
		url:       "http://" + addr + "/bench",
		wantMajor: wantMajor,
	}
}

// requestBody is the body of every HTTP/1.1 and h2c request (-post); empty: GETs without one.
var requestBody []byte

func (c *httpCaller) call(ctx context.Context) error {
	method, body := http.MethodGet, io.Reader(nil)
	if len(requestBody) > 0 {
		method, body = http.MethodPost, bytes.NewReader(requestBody)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url, body)
	if err != nil {
		return err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var buf [bodySize + 1]byte
	n, err := io.ReadFull(resp.Body, buf[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return err
	}
	switch {
	case resp.StatusCode != http.StatusOK:
		return &responseError{fmt.Sprintf("HTTP status %d: %.80q", resp.StatusCode, buf[:n])}
	case resp.ProtoMajor != c.wantMajor:
		return &responseError{fmt.Sprintf("response in %s, want HTTP/%d", resp.Proto, c.wantMajor)}
	case n != bodySize || string(buf[:n]) != string(responseBody):
		return &responseError{fmt.Sprintf("body of %d bytes differs from the backend's %d", n, bodySize)}
	}
	return nil
}

func (c *httpCaller) close() { c.tr.CloseIdleConnections() }

// grpcCaller calls grpc.testing.TestService/UnaryCall over one multiplexed connection.
type grpcCaller struct {
	conn   *grpc.ClientConn
	client testgrpc.TestServiceClient
}

func newGRPCCaller(addr string, dial dialFunc) (*grpcCaller, error) {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if dial != nil {
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return dial(ctx, "tcp", addr)
		}))
	}
	conn, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return nil, err
	}
	return &grpcCaller{conn: conn, client: testgrpc.NewTestServiceClient(conn)}, nil
}

var grpcRequest = &testgrpc.SimpleRequest{}

func (c *grpcCaller) call(ctx context.Context) error {
	resp, err := c.client.UnaryCall(ctx, grpcRequest)
	if err != nil {
		return err
	}
	if b := resp.GetPayload().GetBody(); string(b) != string(responseBody) {
		return &responseError{fmt.Sprintf("payload of %d bytes differs from the backend's %d", len(b), bodySize)}
	}
	return nil
}

func (c *grpcCaller) close() { c.conn.Close() }

// errorKey turns err into a short, stable description for counting: the same cause gives the same key.
func errorKey(err error) string {
	var re *responseError
	switch {
	case errors.As(err, &re):
		return re.msg
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	if st, ok := status.FromError(err); ok {
		return fmt.Sprintf("grpc %s: %.120s", st.Code(), st.Message())
	}
	var ne *net.OpError
	if errors.As(err, &ne) {
		return fmt.Sprintf("%s: %v", ne.Op, ne.Err)
	}
	s := err.Error()
	if len(s) > 160 {
		s = s[:160]
	}
	return s
}
