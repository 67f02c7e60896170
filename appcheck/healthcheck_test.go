package appcheck

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// fakeHealth is a grpc-go health server that answers what its fields say and records what it was asked.
type fakeHealth struct {
	healthpb.UnimplementedHealthServer
	mu      sync.Mutex
	status  healthpb.HealthCheckResponse_ServingStatus
	err     error
	block   bool // wait until the call's context ends
	service string
	md      metadata.MD
	timeout time.Duration // the call's deadline as the server saw it, 0 without one
}

func (f *fakeHealth) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	f.mu.Lock()
	f.service = req.GetService()
	f.md, _ = metadata.FromIncomingContext(ctx)
	f.timeout = 0
	if d, ok := ctx.Deadline(); ok {
		f.timeout = time.Until(d)
	}
	st, err, block := f.status, f.err, f.block
	f.mu.Unlock()
	if block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, err
	}
	return &healthpb.HealthCheckResponse{Status: st}, nil
}

func startFakeHealth(t *testing.T) (*fakeHealth, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeHealth{status: healthpb.HealthCheckResponse_SERVING}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, f)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return f, ln.Addr().String()
}

// TestGRPCProbeStatuses: each serving status of a grpc-go server, and each gRPC error it answers, is what the probe
// reports; the server receives the service asked for, the check's user agent and its deadline.
func TestGRPCProbeStatuses(t *testing.T) {
	f, addr := startFakeHealth(t)
	for _, tc := range []struct {
		name   string
		status healthpb.HealthCheckResponse_ServingStatus
		err    error
		want   string // "" passes
	}{
		{"serving", healthpb.HealthCheckResponse_SERVING, nil, ""},
		{"not serving", healthpb.HealthCheckResponse_NOT_SERVING, nil, "status NOT_SERVING"},
		{"unknown", healthpb.HealthCheckResponse_UNKNOWN, nil, "status UNKNOWN"},
		{"service unknown", healthpb.HealthCheckResponse_SERVICE_UNKNOWN, nil, "status SERVICE_UNKNOWN"},
		{"a status the proto does not name", 7, nil, "status 7"},
		{"not found", 0, status.Error(codes.NotFound, "unknown service"), "NotFound: unknown service"},
		{"permission denied, message percent-encoded on the wire", 0,
			status.Error(codes.PermissionDenied, "100% denied: ünïcode\nline"), "PermissionDenied: 100% denied: ünïcode\nline"},
		{"unimplemented", 0, status.Error(codes.Unimplemented, "no health here"), "Unimplemented: no health here"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.mu.Lock()
			f.status, f.err = tc.status, tc.err
			f.mu.Unlock()
			c := &Check{GRPC: addr + "/shop.Cart", Timeout: 3 * time.Second}
			err := c.Probe(context.Background())
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("probe: %v, want passing", err)
			case tc.want != "" && (err == nil || err.Error() != "app check grpc "+c.GRPC+": "+tc.want):
				t.Fatalf("probe: %v, want %q", err, "app check grpc "+c.GRPC+": "+tc.want)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.service != "shop.Cart" {
				t.Errorf("server was asked for service %q, want shop.Cart", f.service)
			}
			if ua := strings.Join(f.md.Get("user-agent"), " "); !strings.HasPrefix(ua, "meshlet app check") {
				t.Errorf("user-agent %q", ua)
			}
			if f.timeout <= 2*time.Second || f.timeout > 3*time.Second {
				t.Errorf("server saw a deadline %v away, want the check's timeout (3s)", f.timeout)
			}
		})
	}
	// Without /service: the server's overall health, the empty service name.
	c := &Check{GRPC: addr}
	f.mu.Lock()
	f.status, f.err, f.service = healthpb.HealthCheckResponse_SERVING, nil, "x"
	f.mu.Unlock()
	if err := c.Probe(context.Background()); err != nil {
		t.Fatal(err)
	}
	if f.service != "" {
		t.Errorf("server was asked for service %q, want the overall health (\"\")", f.service)
	}
}

// TestGRPCProbeTimeout: a server that does not answer fails the probe with DeadlineExceeded once Timeout passes.
func TestGRPCProbeTimeout(t *testing.T) {
	f, addr := startFakeHealth(t)
	f.block = true
	c := &Check{GRPC: addr, Timeout: 300 * time.Millisecond}
	start := time.Now()
	err := c.Probe(context.Background())
	if err == nil || !strings.Contains(err.Error(), "DeadlineExceeded") {
		t.Fatalf("probe: %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("probe took %v with a timeout of 300ms", d)
	}
	// A listener that accepts and never speaks HTTP/2: the same.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			defer conn.Close()
		}
	}()
	c = &Check{GRPC: ln.Addr().String(), Timeout: 300 * time.Millisecond}
	if err := c.Probe(context.Background()); err == nil || !strings.Contains(err.Error(), "DeadlineExceeded") {
		t.Fatalf("probe of a silent server: %v, want DeadlineExceeded", err)
	}
}

// h2cServer serves h on plaintext HTTP/2 and counts the connections it has closed.
func h2cServer(t *testing.T, h http.HandlerFunc) (addr string, closed func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	n := 0
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &protos, ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			mu.Lock()
			n++
			mu.Unlock()
		}
	}}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), func() int { mu.Lock(); defer mu.Unlock(); return n }
}

// grpcFrame is msg with gRPC's length prefix.
func grpcFrame(flag byte, msg []byte) []byte {
	b := []byte{flag, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(len(msg)))
	return append(b, msg...)
}

func healthResponse(t *testing.T, st healthpb.HealthCheckResponse_ServingStatus) []byte {
	t.Helper()
	b, err := proto.Marshal(&healthpb.HealthCheckResponse{Status: st})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// answerOK answers with content type ct, the bytes of each of bodies written in turn, and grpc-status 0 in the
// trailers.
func answerOK(ct string, bodies ...[]byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", ct)
		w.Header().Set("Trailer", "Grpc-Status")
		for _, b := range bodies {
			w.Write(b)
		}
		w.Header().Set("Grpc-Status", "0")
	}
}

// TestGRPCProbeWire: answers a grpc-go server would not give, each read as a gRPC client reads it; every probe
// closes its connection.
func TestGRPCProbeWire(t *testing.T) {
	serving := healthResponse(t, healthpb.HealthCheckResponse_SERVING)
	// A newer server's response: an unknown field of each wire type around the status.
	extended := append([]byte{2<<3 | 0, 5, 3<<3 | 1, 1, 2, 3, 4, 5, 6, 7, 8, 4<<3 | 2, 2, 'h', 'i', 5<<3 | 5, 1, 2, 3, 4}, serving...)
	for _, tc := range []struct {
		name string
		h    http.HandlerFunc
		want string // "" passes
	}{
		{"serving", answerOK("application/grpc", grpcFrame(0, serving)), ""},
		{"unknown fields are skipped", answerOK("application/grpc+proto", grpcFrame(0, extended)), ""},
		{"trailers-only error", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Grpc-Status", "14")
			w.Header().Set("Grpc-Message", "app%20is%20starting")
		}, "Unavailable: app is starting"},
		{"trailers-only OK without a message", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Grpc-Status", "0")
		}, "Internal: received no response message"},
		{"error status in the trailers after a message", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Trailer", "Grpc-Status, Grpc-Message")
			w.Write(grpcFrame(0, serving))
			w.Header().Set("Grpc-Status", "13")
			w.Header().Set("Grpc-Message", "oops")
		}, "Internal: oops"},
		{"no trailers", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/grpc")
			w.Write(grpcFrame(0, serving))
		}, "Internal: server closed the stream without sending trailers"},
		{"HTTP 404", func(w http.ResponseWriter, r *http.Request) {
			http.NotFound(w, r)
		}, "Unimplemented: unexpected HTTP status code received from server: 404 (Not Found)"},
		{"HTTP 503", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusServiceUnavailable)
		}, "Unavailable: unexpected HTTP status code received from server: 503"},
		{"HTTP 500", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusInternalServerError)
		}, "Unknown: unexpected HTTP status code received from server: 500"},
		{"not gRPC", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			w.Write([]byte("hello"))
		}, `Unknown: unexpected content-type "text/plain"`},
		{"compressed message", answerOK("application/grpc", grpcFrame(1, serving)), "Internal: compressed response message"},
		{"two messages", answerOK("application/grpc", grpcFrame(0, serving), grpcFrame(0, serving)),
			"Internal: received more than one response message"},
		{"truncated message", answerOK("application/grpc", grpcFrame(0, serving)[:6]), "Internal: response ends inside a message"},
		{"malformed message", answerOK("application/grpc", grpcFrame(0, []byte{1<<3 | 0, 0x80})),
			"Internal: failed to unmarshal the response"},
		{"oversized message", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/grpc")
			w.Write([]byte{0, 0xff, 0xff, 0xff, 0xff})
		}, "ResourceExhausted: response message of 4294967295 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			type seen struct {
				r    *http.Request
				body []byte
			}
			got := make(chan seen, 1)
			addr, closed := h2cServer(t, func(w http.ResponseWriter, r *http.Request) {
				var buf bytes.Buffer
				buf.ReadFrom(r.Body)
				got <- seen{r.Clone(context.Background()), buf.Bytes()}
				tc.h(w, r)
			})
			c := &Check{GRPC: addr + "/shop.Cart", Timeout: 2 * time.Second}
			err := c.Probe(context.Background())
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("probe: %v, want passing", err)
			case tc.want != "" && (err == nil || !strings.HasPrefix(err.Error(), "app check grpc "+c.GRPC+": "+tc.want)):
				t.Fatalf("probe: %v, want %q", err, "app check grpc "+c.GRPC+": "+tc.want)
			}
			var req *http.Request
			var body []byte
			select {
			case s := <-got:
				req, body = s.r, s.body
			default:
				t.Fatal("the server got no request")
			}
			if req.Method != http.MethodPost || req.URL.Path != "/grpc.health.v1.Health/Check" || req.ProtoMajor != 2 ||
				req.Header.Get("Content-Type") != "application/grpc" || req.Header.Get("Te") != "trailers" ||
				req.Header.Get("Grpc-Timeout") == "" {
				t.Errorf("request %s %s %s, header %v", req.Method, req.URL.Path, req.Proto, req.Header)
			}
			var hreq healthpb.HealthCheckRequest
			if len(body) < 5 || int(binary.BigEndian.Uint32(body[1:5])) != len(body)-5 || proto.Unmarshal(body[5:], &hreq) != nil ||
				hreq.GetService() != "shop.Cart" {
				t.Errorf("request body %x, want HealthCheckRequest{service: shop.Cart}", body)
			}
			deadline := time.Now().Add(2 * time.Second)
			for closed() == 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if closed() != 1 {
				t.Errorf("server saw %d closed connections after the probe, want 1", closed())
			}
		})
	}
}

// TestHealthRequestEncoding: the hand-encoded request is what protobuf encodes, for the empty service, a short one
// and one longer than a one-byte length.
func TestHealthRequestEncoding(t *testing.T) {
	for _, s := range []string{"", "shop.Cart", strings.Repeat("s", 300)} {
		want, err := proto.Marshal(&healthpb.HealthCheckRequest{Service: s})
		if err != nil {
			t.Fatal(err)
		}
		got := healthRequest(s)
		if got[0] != 0 || int(binary.BigEndian.Uint32(got[1:5])) != len(want) || !bytes.Equal(got[5:], want) {
			t.Errorf("healthRequest(%d bytes) = %x, want the prefix and %x", len(s), got, want)
		}
	}
}

// FuzzParseHealthResponse: the hand-written decoder agrees with protobuf's on every input protobuf accepts, and
// never panics.
func FuzzParseHealthResponse(f *testing.F) {
	for _, st := range []healthpb.HealthCheckResponse_ServingStatus{0, 1, 2, 3, 7, -1} {
		b, _ := proto.Marshal(&healthpb.HealthCheckResponse{Status: st})
		f.Add(b)
	}
	f.Add([]byte{2<<3 | 2, 1, 'x', 1 << 3, 1})
	f.Add([]byte{1 << 3, 0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := parseHealthResponse(b)
		var want healthpb.HealthCheckResponse
		if perr := (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, &want); perr != nil {
			return // protobuf refuses it; ours may refuse or read it, as long as it does not panic
		}
		if err != nil {
			// Groups (wire types 3 and 4) are valid protobuf that a health response never holds.
			for _, c := range b {
				if c&7 == 3 || c&7 == 4 {
					return
				}
			}
			t.Fatalf("parseHealthResponse(%x): %v; protobuf reads status %v", b, err, want.GetStatus())
		}
		if int32(got) != int32(want.GetStatus()) {
			t.Fatalf("parseHealthResponse(%x) = %v, protobuf reads %v", b, got, want.GetStatus())
		}
	})
}
