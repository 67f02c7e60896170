package e2e_test

// Fault tests (issue 7): real meshlet processes while the things around them die.
//
//   - an endpoint's app killed mid-request and mid-stream (HTTP/1.1, h2c, gRPC) through two sidecars, with a
//     second healthy endpoint: a clean error at once, traffic moves to the healthy one, the killed one is used
//     again when it comes back;
//   - a meshlet SIGKILLed under load and started again, with static endpoints and with Consul registration;
//   - the local app down: what the inbound side answers, and /ready with service.check.ready.
//
// "Killed" is abrupt: the app's listener is closed and every connection it accepted is reset (SO_LINGER 0), as
// the kernel does for a process that dies; meshlet processes get SIGKILL.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"meshlet.dev/meshlet/appcheck"
	"meshlet.dev/meshlet/discovery/discoverytest"
	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/proxy"
	"meshlet.dev/meshlet/resilience"
)

// faultWait bounds every wait of these tests for something that should take milliseconds: far longer than
// expected, so that only a hang trips it.
const faultWait = 20 * time.Second

// faultBackend is an app that the test can kill (listener closed, connections reset) and start again on the same
// address (meshlettest.Restartable). proto is "http" (HTTP/1.1), "http2" (h2c) or "grpc".
//
// HTTP: GET /stream sends 64 KiB of a longer body (Content-Length 1 MiB over HTTP/1.1, unknown length over h2c),
// then waits; POST /upload reads 1 KiB of the request body, then waits; any other path answers the backend's
// name. gRPC: UnaryCall answers the name in ServerId; StreamingOutputCall sends two messages, then waits;
// StreamingInputCall reads one message, then waits. Each waiting handler first reports its backend's name on
// started.
type faultBackend struct {
	*meshlettest.Restartable
	name, proto string
	started     chan faultReport
	seen        *sync.Map // call IDs some backend of the mesh held: a retry of one is answered at once
	hits        atomic.Int64
}

func newFaultBackend(t testing.TB, name, proto string, started chan faultReport, seen *sync.Map) *faultBackend {
	b := &faultBackend{name: name, proto: proto, started: started, seen: seen}
	b.Restartable = meshlettest.NewRestartable(t, "", b.serve)
	b.Start(t)
	return b
}

// serve serves l until the returned function is called.
func (b *faultBackend) serve(l net.Listener) (stop func()) {
	done := make(chan struct{})
	if b.proto == "grpc" {
		srv := grpc.NewServer()
		testpb.RegisterTestServiceServer(srv, &faultGRPC{b: b})
		go func() { defer close(done); srv.Serve(l) }()
		return func() { srv.Stop(); <-done }
	}
	srv := &http.Server{Handler: http.HandlerFunc(b.serveHTTP)}
	if b.proto == "http2" {
		srv.Protocols = meshlettest.H2CProtocols()
	}
	go func() { defer close(done); srv.Serve(l) }()
	return func() { srv.Close(); <-done }
}

// report tells the test that a waiting handler of b has started the call id; it never blocks. It returns false
// for a call that a backend has held before (meshlet retried it): that one is not to be held again.
func (b *faultBackend) report(id string) bool {
	if _, loaded := b.seen.LoadOrStore(id, true); loaded {
		return false
	}
	select {
	case b.started <- faultReport{b.name, id}:
	default:
	}
	return true
}

// faultReport says which backend holds which call.
type faultReport struct{ backend, call string }

// faultCallSeq numbers the calls that backends report (header X-Call, gRPC metadata x-call).
var faultCallSeq atomic.Int64

// hold waits until ctx ends (the connection died, or the client went away), bounded.
func hold(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(faultWait):
	}
}

func (b *faultBackend) serveHTTP(w http.ResponseWriter, r *http.Request) {
	b.hits.Add(1)
	switch r.URL.Path {
	case "/stream":
		if r.ProtoMajor == 1 {
			w.Header().Set("Content-Length", "1048576")
		}
		w.Write(bytes.Repeat([]byte("s"), 64<<10))
		http.NewResponseController(w).Flush()
		if b.report(r.Header.Get("X-Call")) {
			hold(r.Context())
		}
	case "/upload":
		if _, err := io.ReadFull(r.Body, make([]byte, 1024)); err != nil {
			return
		}
		if b.report(r.Header.Get("X-Call")) {
			hold(r.Context())
			return
		}
		io.WriteString(w, "retried on "+b.name)
	default:
		io.WriteString(w, b.name)
	}
}

type faultGRPC struct {
	testpb.UnimplementedTestServiceServer
	b *faultBackend
}

func (s *faultGRPC) UnaryCall(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.b.hits.Add(1)
	return &testpb.SimpleResponse{ServerId: s.b.name}, nil
}

func (s *faultGRPC) StreamingOutputCall(_ *testpb.StreamingOutputCallRequest,
	stream grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	s.b.hits.Add(1)
	for range 2 {
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: make([]byte, 1024)}}); err != nil {
			return err
		}
	}
	if s.b.report(callID(stream.Context())) {
		hold(stream.Context())
	}
	return status.FromContextError(stream.Context().Err()).Err()
}

func callID(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("x-call"); len(v) > 0 {
		return v[0]
	}
	return ""
}

func (s *faultGRPC) StreamingInputCall(stream grpc.ClientStreamingServer[testpb.StreamingInputCallRequest,
	testpb.StreamingInputCallResponse]) error {
	s.b.hits.Add(1)
	if _, err := stream.Recv(); err != nil {
		return err
	}
	if !s.b.report(callID(stream.Context())) {
		return stream.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: 1})
	}
	hold(stream.Context())
	return status.FromContextError(stream.Context().Err()).Err()
}

// faultMesh is client → A → {B1 → b1, B2 → b2}: A's upstream api (peer: sidecar, round robin) has both sidecars
// as endpoints, with a breaker that opens after 3 failures and half-opens after 1 s.
type faultMesh struct {
	proto      string
	b1, b2     *faultBackend
	A, B1, B2  *meshlettest.Proc
	listen     string // A's listener for api
	in1, in2   string // B1's and B2's inbound listeners
	started    chan faultReport
	httpClient *http.Client
	grpcClient testpb.TestServiceClient
}

func startFaultMesh(t *testing.T, proto string) *faultMesh {
	t.Helper()
	m := &faultMesh{proto: proto, started: make(chan faultReport, 16), listen: meshlettest.FreeAddr(t)}
	seen := new(sync.Map)
	m.b1 = newFaultBackend(t, "b1", proto, m.started, seen)
	m.b2 = newFaultBackend(t, "b2", proto, m.started, seen)
	startB := func(app string) (*meshlettest.Proc, string) {
		in := meshlettest.FreeAddr(t)
		c := e2eConfig{Name: "api", Address: app, Protocol: proto, InboundListen: in, Admin: meshlettest.FreeAddr(t)}
		if os.Getenv("FAULT_DEBUG") != "" {
			c.LogLevel, c.AccessLog = "debug", true
		}
		return meshlettest.Start(t, c.Admin, c.yaml()), in
	}
	m.B1, m.in1 = startB(m.b1.Addr())
	m.B2, m.in2 = startB(m.b2.Addr())
	admin := meshlettest.FreeAddr(t)
	a := meshlettest.Sidecar("web", admin, proxy.UpstreamConfig{Name: "api", Listen: m.listen, Protocol: proto, Peer: "sidecar",
		LB: "round_robin", Endpoints: []string{m.in1, m.in2},
		Resilience: resilience.Config{Breaker: resilience.BreakerConfig{ConsecutiveFailures: 3, OpenTimeout: time.Second}}})
	a.Log.Level = "info"
	if os.Getenv("FAULT_DEBUG") != "" {
		a.Log = meshlettest.Log{Level: "debug", AccessLog: true}
	}
	m.A = meshlettest.StartFile(t, a)
	switch proto {
	case "http":
		m.httpClient = meshlettest.H1Client(nil)
	case "http2":
		m.httpClient = meshlettest.H2CClient(nil)
	case "grpc":
		m.grpcClient = testpb.NewTestServiceClient(grpcDial(t, m.listen, ""))
	}
	return m
}

// call makes one short call through A and returns the name of the backend that answered, or the error.
func (m *faultMesh) call(t testing.TB) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), faultWait)
	defer cancel()
	if m.grpcClient != nil {
		resp, err := m.grpcClient.UnaryCall(ctx, &testpb.SimpleRequest{})
		if err != nil {
			return "", err
		}
		return resp.ServerId, nil
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m.listen+"/", nil)
	resp, err := m.httpClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%d %s (X-Meshlet-Error %q)", resp.StatusCode, strings.TrimSpace(string(b)),
			resp.Header.Get("X-Meshlet-Error"))
	}
	return string(b), nil
}

// waitStarted returns the name of the backend whose handler reported call id, or "" if none did in time.
func (m *faultMesh) waitStarted(id string) string {
	timeout := time.After(faultWait)
	for {
		select {
		case r := <-m.started:
			if r.call == id {
				return r.backend
			}
		case <-timeout:
			return ""
		}
	}
}

// faultCall is one call in progress on b1: kill b1, then finish reads what the client gets.
type faultCall struct {
	finish func() (outcome string, err error) // err: a client-side failure of the test's expectation
	cancel func()
}

// startOnB1 starts a long call of kind ("stream": the response is streaming; "request": the request is in
// progress, no response yet) and returns it once b1's handler holds it; calls that land on b2 are abandoned and
// tried again (round robin alternates).
func (m *faultMesh) startOnB1(t *testing.T, kind string) *faultCall {
	t.Helper()
	for attempt := 0; attempt < 8; attempt++ {
		id := fmt.Sprint(faultCallSeq.Add(1))
		fc, err := m.begin(kind, id)
		if err != nil {
			t.Fatalf("%s call: %v", kind, err)
		}
		switch who := m.waitStarted(id); who {
		case "b1":
			return fc
		case "":
			fc.cancel()
			t.Fatalf("%s call reached no backend within %v", kind, faultWait)
		default:
			fc.cancel()
		}
	}
	t.Fatalf("8 %s calls in a row did not land on b1", kind)
	return nil
}

// begin starts a call of kind and returns once it is under way.
func (m *faultMesh) begin(kind, id string) (*faultCall, error) {
	ctx, cancel := context.WithTimeout(context.Background(), faultWait)
	if m.grpcClient != nil {
		ctx = metadata.AppendToOutgoingContext(ctx, "x-call", id)
	}
	switch {
	case m.grpcClient != nil && kind == "stream":
		// The two messages are read before the kill: the response has started, so nothing may retry the call.
		s, err := m.grpcClient.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{})
		for i := 0; i < 2 && err == nil; i++ {
			_, err = s.Recv()
		}
		if err != nil {
			cancel()
			return nil, err
		}
		return &faultCall{cancel: cancel, finish: func() (string, error) {
			defer cancel()
			n := 2
			for ; n < 10; n++ { // the third Recv sees the kill
				if _, err := s.Recv(); err != nil {
					if ctx.Err() != nil {
						return "", fmt.Errorf("no error until the test's timeout (%v): %v", faultWait, err)
					}
					st := status.Convert(err)
					if st.Code() != codes.Unavailable && st.Code() != codes.Internal {
						return "", fmt.Errorf("stream ended with %v, want UNAVAILABLE or INTERNAL", err)
					}
					return fmt.Sprintf("%d messages, then %v: %s", n, st.Code(), st.Message()), nil
				}
			}
			return "", fmt.Errorf("stream went on after the kill")
		}}, nil
	case m.grpcClient != nil:
		s, err := m.grpcClient.StreamingInputCall(ctx)
		if err == nil {
			err = s.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: make([]byte, 1024)}})
		}
		if err != nil {
			cancel()
			return nil, err
		}
		return &faultCall{cancel: cancel, finish: func() (string, error) {
			defer cancel()
			_, err := s.CloseAndRecv()
			if ctx.Err() != nil {
				return "", fmt.Errorf("no answer until the test's timeout (%v): %v", faultWait, err)
			}
			if err == nil {
				// B1 answered UNAVAILABLE, which A retries for gRPC (README: a status the server answered with);
				// b2 answered the replayed call.
				return "OK: retried on b2", nil
			}
			st := status.Convert(err)
			if st.Code() != codes.Unavailable && st.Code() != codes.Internal {
				return "", fmt.Errorf("call ended with %v, want UNAVAILABLE or INTERNAL", err)
			}
			return fmt.Sprintf("%v: %s", st.Code(), st.Message()), nil
		}}, nil
	case kind == "stream":
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m.listen+"/stream", nil)
		req.Header.Set("X-Call", id)
		resp, err := m.httpClient.Do(req)
		if err == nil && resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if err == nil { // 8 KiB read before the kill: the response is under way
			if _, err = io.ReadFull(resp.Body, make([]byte, 8<<10)); err != nil {
				resp.Body.Close()
			}
		}
		if err != nil {
			cancel()
			return nil, err
		}
		return &faultCall{cancel: cancel, finish: func() (string, error) {
			defer cancel()
			defer resp.Body.Close()
			n, err := io.Copy(io.Discard, resp.Body)
			n += 8 << 10
			switch {
			case err == nil:
				return "", fmt.Errorf("body ended cleanly after %d bytes; want an error (truncated)", n)
			case ctx.Err() != nil:
				return "", fmt.Errorf("no error until the test's timeout (%v): %v", faultWait, err)
			case n >= 1<<20:
				return "", fmt.Errorf("got %d bytes before the error %v; want at most the 64 KiB sent before the kill", n, err)
			case m.proto == "http" && !errors.Is(err, io.ErrUnexpectedEOF):
				return "", fmt.Errorf("HTTP/1.1 body error %v, want unexpected EOF (truncated body)", err)
			}
			return fmt.Sprintf("%d bytes, then %v", n, err), nil
		}}, nil
	default: // an HTTP request whose body is still being sent
		// 16 KiB of the body now, then (h2c) nothing more, the pipe open until the call ends (a Close by the
		// client's transport ends a Read on it, as for a real streaming body), or (HTTP/1.1) 1 KiB every 20 ms: an
		// HTTP/1.1 client that stalls is bounded by read_body_timeout only (see the README).
		pr, pw := io.Pipe()
		go func() {
			pw.Write(make([]byte, 16<<10))
			for i := 0; i < 1000 && m.proto == "http"; i++ {
				select {
				case <-ctx.Done():
				case <-time.After(20 * time.Millisecond):
					if _, err := pw.Write(make([]byte, 1024)); err == nil {
						continue
					}
				}
				break
			}
			<-ctx.Done()
			pw.CloseWithError(ctx.Err())
		}()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+m.listen+"/upload", pr)
		req.Header.Set("X-Call", id)
		type result struct {
			resp *http.Response
			err  error
		}
		done := make(chan result, 1)
		go func() {
			resp, err := m.httpClient.Do(req)
			done <- result{resp, err}
		}()
		return &faultCall{cancel: func() { cancel(); <-done }, finish: func() (string, error) {
			defer cancel()
			r := <-done
			if ctx.Err() != nil {
				return "", fmt.Errorf("no answer until the test's timeout (%v): %v", faultWait, r.err)
			}
			if r.err != nil {
				if ctx.Err() != nil {
					return "", fmt.Errorf("no answer until the test's timeout (%v): %v", faultWait, r.err)
				}
				return "", fmt.Errorf("request failed with %v, want a 5xx answer from meshlet", r.err)
			}
			defer r.resp.Body.Close()
			b, _ := io.ReadAll(r.resp.Body)
			kind := r.resp.Header.Get("X-Meshlet-Error")
			if r.resp.StatusCode != http.StatusBadGateway && r.resp.StatusCode != http.StatusServiceUnavailable || kind == "" {
				return "", fmt.Errorf("answer %d %q (X-Meshlet-Error %q), want meshlet's 502 or 503", r.resp.StatusCode, b, kind)
			}
			return fmt.Sprintf("%d %s (%s)", r.resp.StatusCode, strings.TrimSpace(string(b)), kind), nil
		}}, nil
	}
}

// TestFaultEndpointKilled kills the app behind one of two sidecars while a call is in progress on it, three
// times mid-stream and three times mid-request, for each protocol. Each time: the client gets a clean error at
// once (truncated body, stream reset, gRPC UNAVAILABLE/INTERNAL, meshlet's 502/503; never a hang); the next calls
// succeed on the other endpoint while A's breaker opens for the dead one and its sidecar counts the refused
// connections; the app starts again on its address and A uses it again (the breaker closes).
func TestFaultEndpointKilled(t *testing.T) {
	for _, proto := range []string{"http", "http2", "grpc"} {
		t.Run(proto, func(t *testing.T) {
			m := startFaultMesh(t, proto)
			for round := range 6 {
				kind := []string{"stream", "request"}[round%2]
				t.Run(fmt.Sprintf("%d-%s", round, kind), func(t *testing.T) { m.killAndRecover(t, kind) })
				if t.Failed() {
					return
				}
			}
		})
	}
}

func (m *faultMesh) killAndRecover(t *testing.T, kind string) {
	api := map[string]string{"upstream": "api"}
	opened := m.A.MetricSum(t, "meshlet_breaker_transitions_total", map[string]string{"upstream": "api", "to": "open"})
	refused := m.B1.MetricSum(t, "meshlet_upstream_errors_total", map[string]string{"direction": "inbound", "reason": "connect"})

	fc := m.startOnB1(t, kind)
	m.b1.Kill()
	killed := time.Now()
	outcome, err := fc.finish()
	took := time.Since(killed)
	if err != nil {
		t.Fatalf("%s call when b1 died: %v", kind, err)
	}
	t.Logf("%s call when b1 died: %s, %v after the kill", kind, outcome, took.Round(time.Millisecond))

	// Calls keep working on b2. GETs and gRPC calls that B1 answers with its failure are retried by A on B2;
	// a few may still fail until the breaker opens, but 20 in a row must succeed, all on b2.
	failures, streak := 0, 0
	var lastErr error
	deadline := time.Now().Add(faultWait)
	for i := 0; streak < 20; i++ {
		if i == 300 || time.Now().After(deadline) {
			t.Fatalf("no 20 successful calls in a row after %d calls (%d failed, last: %v)", i, failures, lastErr)
		}
		who, err := m.call(t)
		switch {
		case err != nil:
			failures++
			streak = 0
			lastErr = err
		case who != "b2":
			t.Fatalf("call answered by %q while b1 is dead", who)
		default:
			streak++
		}
	}
	if failures > 0 {
		t.Logf("%d calls failed before 20 succeeded in a row (last: %v)", failures, lastErr)
	}
	meshlettest.Eventually(t, faultWait, "A's breaker opens for B1", func() bool {
		return m.A.MetricSum(t, "meshlet_breaker_transitions_total", map[string]string{"upstream": "api", "to": "open"}) > opened
	})
	if got := m.B1.MetricSum(t, "meshlet_upstream_errors_total", map[string]string{"direction": "inbound", "reason": "connect"}); got <= refused {
		t.Errorf("B1's meshlet_upstream_errors_total{inbound,connect} = %v, want more than %v (its app refuses)", got, refused)
	}
	if got := m.A.MetricSum(t, "meshlet_outlier_ejected_endpoints", api); got != 1 {
		t.Errorf("meshlet_outlier_ejected_endpoints = %v while b1 is dead, want 1", got)
	}

	// b1 comes back: A uses B1 again once its breaker half-opens (open_timeout 1 s) and a probe succeeds.
	m.b1.Start(t)
	back := time.Now()
	for i := 0; ; i++ {
		who, _ := m.call(t)
		if who == "b1" {
			break
		}
		if i == 2000 || time.Since(back) > faultWait {
			t.Fatalf("b1 not used again %v after it came back (%d calls)", time.Since(back), i)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("b1 used again %v after it came back", time.Since(back).Round(time.Millisecond))
	meshlettest.Eventually(t, faultWait, "both breakers closed", func() bool {
		m.call(t)
		return m.A.MetricSum(t, "meshlet_breaker_endpoints", map[string]string{"upstream": "api", "state": "closed"}) == 2
	})
}

// faultLoad calls url from two goroutines until stop is called, counting answers.
type faultLoad struct {
	ok, failed atomic.Int64
	lastOK     atomic.Int64 // unix nanos of the latest 200
	stop       func()
}

func startFaultLoad(url string) *faultLoad {
	l := &faultLoad{}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			c := &http.Client{Timeout: 5 * time.Second}
			for i := 0; i < 200000; i++ { // bounded; stopped long before
				select {
				case <-done:
					return
				default:
				}
				resp, err := c.Get(url)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				if err == nil && resp.StatusCode == http.StatusOK {
					l.ok.Add(1)
					l.lastOK.Store(time.Now().UnixNano())
				} else {
					l.failed.Add(1)
					time.Sleep(5 * time.Millisecond)
				}
			}
		})
	}
	var once sync.Once
	l.stop = func() { once.Do(func() { close(done); wg.Wait() }) }
	return l
}

// resumed waits until the load has had n more successes after since, and returns when the first came.
func (l *faultLoad) resumed(t *testing.T, since time.Time, what string) time.Duration {
	t.Helper()
	base := l.ok.Load()
	meshlettest.Eventually(t, faultWait, what, func() bool {
		return l.ok.Load() > base+50 && l.lastOK.Load() > since.UnixNano()
	})
	return time.Duration(l.lastOK.Load() - since.UnixNano())
}

// relaunch starts p's config again in a new process (same ports) and waits until it is ready.
func relaunch(t *testing.T, p *meshlettest.Proc, config string) *meshlettest.Proc {
	t.Helper()
	q := meshlettest.Launch(t, config)
	q.Admin = p.Admin
	if err := q.WaitReady(context.Background(), faultWait); err != nil {
		t.Fatalf("restarted meshlet not ready: %v\n%s", err, q.Log())
	}
	return q
}

// TestFaultSidecarKilledUnderLoad: under load through client → A → B → app, B and then A are killed with
// SIGKILL (three times each) and started again on the same config: calls fail while it is down, and the
// service resumes once it is back, with no help from the test beyond the restart.
func TestFaultSidecarKilledUnderLoad(t *testing.T) {
	app := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }), false, nil)
	m := startMesh(t, topoSidecar, meshlettest.HostOf(app), "http", meshOpts{})
	load := startFaultLoad(m.URL() + "/")
	defer load.stop()
	meshlettest.Eventually(t, faultWait, "traffic flows", func() bool { return load.ok.Load() > 50 })
	for round := range 6 {
		who, cfg := "B (server side)", m.BCfg.yaml()
		p := &m.B
		if round%2 == 1 {
			who, cfg, p = "A (client side)", m.ACfg.yaml(), &m.A
		}
		failedBefore := load.failed.Load()
		(*p).Cmd.Process.Signal(syscall.SIGKILL)
		<-(*p).Exited()
		meshlettest.Eventually(t, faultWait, "calls fail while "+who+" is down", func() bool { return load.failed.Load() > failedBefore })
		restarted := time.Now()
		*p = relaunch(t, *p, cfg)
		took := load.resumed(t, restarted, "traffic resumes after "+who+" restarted")
		t.Logf("%s killed and restarted: first success %v after the restart (ready at %v); %d calls failed meanwhile",
			who, took.Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond), load.failed.Load()-failedBefore)
	}
	load.stop()
	for i := range 20 {
		if code, body := meshlettest.GetBody(t, meshlettest.H1Client(nil), m.URL()+"/"); code != 200 {
			t.Fatalf("call %d after the restarts: %d %s", i, code, body)
		}
	}
}

// TestFaultSidecarKilledConsul: api's sidecar registers with Consul (check_interval 1s) and web finds it there.
// Under load, api's sidecar is SIGKILLed: its /ready check goes critical and web drops it (503 no_endpoint). It
// is started again with one more tag: the registration is replaced (the new tag is in the catalog), the sidecar
// passes its checks again and traffic resumes.
func TestFaultSidecarKilledConsul(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	app := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "api") }), false, nil)
	inbound, admin := meshlettest.FreeAddr(t), meshlettest.FreeAddr(t)
	config := func(tags ...string) string {
		f := registeredFile("api", meshlettest.HostOf(app), inbound, admin, agent.HTTPAddr)
		f.Service.Tags, f.Discovery.Consul.CheckInterval, f.Discovery.Consul.ResyncInterval = tags, time.Second, time.Second
		return f.MustYAML(t)
	}
	api := meshlettest.Start(t, admin, config("v1"))
	web, listen := startCaller(t, agent.HTTPAddr, "api")
	meshlettest.Eventually(t, faultWait, "web finds api's sidecar", func() bool { return len(upstreamState(t, web, "api").Endpoints) == 1 })
	load := startFaultLoad("http://" + listen["api"] + "/")
	defer load.stop()
	meshlettest.Eventually(t, faultWait, "traffic flows", func() bool { return load.ok.Load() > 50 })

	health := agent.Client().Health()
	passing := func() int {
		entries, _, err := health.Connect("api", "", true, nil)
		if err != nil {
			return -1
		}
		return len(entries)
	}
	for round := range 3 {
		api.Cmd.Process.Signal(syscall.SIGKILL)
		<-api.Exited()
		killed := time.Now()
		meshlettest.Eventually(t, faultWait, "the killed sidecar's /ready check goes critical", func() bool { return passing() == 0 })
		t.Logf("round %d: sidecar critical in Consul %v after SIGKILL", round, time.Since(killed).Round(time.Millisecond))
		meshlettest.Eventually(t, faultWait, "web drops it", func() bool { return len(upstreamState(t, web, "api").Endpoints) == 0 })
		code, _, kind := call("http://" + listen["api"] + "/")
		if code != http.StatusServiceUnavailable || kind != "no_endpoint" {
			t.Errorf("with api's sidecar down: %d %s, want 503 no_endpoint", code, kind)
		}

		tag := fmt.Sprintf("v%d", round+2)
		restarted := time.Now()
		api = relaunch(t, api, config("v1", tag))
		meshlettest.Eventually(t, faultWait, "the sidecar passes its checks again", func() bool { return passing() == 1 })
		t.Logf("round %d: passing in Consul %v after the restart", round, time.Since(restarted).Round(time.Millisecond))
		services, err := agent.Client().Agent().Services()
		if err != nil {
			t.Fatal(err)
		}
		var proxies, instances int
		for _, s := range services {
			switch {
			case s.Service == "api-sidecar-proxy" && slices.Contains(s.Tags, tag):
				proxies++
			case s.Service == "api" && slices.Contains(s.Tags, tag):
				instances++
			}
		}
		if proxies != 1 || instances != 1 {
			t.Errorf("after the restart with tag %s: %d sidecars and %d instances carry it, want 1 and 1 (the "+
				"registration of the killed process must be replaced): %+v", tag, proxies, instances, services)
		}
		took := load.resumed(t, restarted, "traffic resumes through Consul")
		t.Logf("round %d: traffic resumed %v after the restart", round, took.Round(time.Millisecond))
	}
}

// TestFaultLocalAppDown: B's local app is killed. B's inbound answers 503 (X-Meshlet-Error connect) to HTTP and
// UNAVAILABLE to gRPC, directly and through A; B's /ready stays 200 (no service.check.ready); the app comes back
// and calls succeed again.
func TestFaultLocalAppDown(t *testing.T) {
	for _, proto := range []string{"http", "grpc"} {
		t.Run(proto, func(t *testing.T) {
			app := newFaultBackend(t, "app", proto, make(chan faultReport, 16), new(sync.Map))
			m := startMesh(t, topoSidecar, app.Addr(), proto, meshOpts{})
			callVia := func(addr string) (int, string, error) {
				ctx, cancel := context.WithTimeout(context.Background(), faultWait)
				defer cancel()
				if proto == "grpc" {
					_, err := testpb.NewTestServiceClient(grpcDial(t, addr, "")).UnaryCall(ctx, &testpb.SimpleRequest{})
					return int(status.Code(err)), status.Convert(err).Message(), nil
				}
				resp, err := meshlettest.H1Client(nil).Get("http://" + addr + "/")
				if err != nil {
					return 0, "", err
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, resp.Header.Get("X-Meshlet-Error") + " " + strings.TrimSpace(string(b)), nil
			}
			want := map[string]int{"http": http.StatusOK, "grpc": int(codes.OK)}[proto]
			down := map[string]int{"http": http.StatusServiceUnavailable, "grpc": int(codes.Unavailable)}[proto]
			for round := range 3 {
				app.Kill()
				for _, via := range []struct{ name, addr string }{{"B's inbound", m.Inbound}, {"A", m.Listen}} {
					code, msg, err := callVia(via.addr)
					if err != nil || code != down {
						t.Fatalf("round %d, app down, via %s: %d %q %v, want %d", round, via.name, code, msg, err, down)
					}
					if round == 0 {
						t.Logf("app down, via %s: %d %s", via.name, code, msg)
					}
				}
				if code, body := m.B.AdminGet(t, "/ready"); code != http.StatusOK {
					t.Errorf("B's /ready with its app down and no service.check.ready: %d %s, want 200", code, body)
				}
				app.Start(t)
				for _, via := range []string{m.Inbound, m.Listen} {
					if code, msg, err := callVia(via); err != nil || code != want {
						t.Fatalf("round %d, app back, via %s: %d %q %v", round, via, code, msg, err)
					}
				}
			}
			if v := m.B.MetricSum(t, "meshlet_upstream_errors_total", map[string]string{"direction": "inbound", "reason": "connect"}); v < 3 {
				t.Errorf("B's meshlet_upstream_errors_total{inbound,connect} = %v, want at least 3", v)
			}
		})
	}
}

// TestFaultAppCheckReady: with service.check.ready, meshlet runs the app's check itself (tcp, every 1s): while
// the app is down /ready answers 503 and says why, the instance stays registered in Consul (its sidecar's /ready
// check goes critical), and all of it passes again when the app is back.
func TestFaultAppCheckReady(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	app := newFaultBackend(t, "app", "http", make(chan faultReport, 16), new(sync.Map))
	admin := meshlettest.FreeAddr(t)
	f := registeredFile("api", app.Addr(), meshlettest.FreeAddr(t), admin, agent.HTTPAddr)
	f.Service.Check = &appcheck.Check{TCP: app.Addr(), Interval: time.Second, Ready: true}
	f.Discovery.Consul.CheckInterval = time.Second
	p := meshlettest.StartFile(t, f)
	health := agent.Client().Health()
	sidecarPassing := func() int {
		entries, _, err := health.Connect("api", "", true, nil)
		if err != nil {
			return -1
		}
		return len(entries)
	}
	meshlettest.Eventually(t, faultWait, "api passing in Consul", func() bool { return sidecarPassing() == 1 })
	for round := range 3 {
		app.Kill()
		killed := time.Now()
		var body string
		meshlettest.Eventually(t, faultWait, "/ready fails with the app check's reason", func() bool {
			var code int
			code, body = p.AdminGet(t, "/ready")
			return code == http.StatusServiceUnavailable && strings.Contains(body, "app check tcp "+app.Addr())
		})
		t.Logf("round %d: /ready 503 %v after the app died: %s", round, time.Since(killed).Round(time.Millisecond), strings.TrimSpace(body))
		meshlettest.Eventually(t, faultWait, "the sidecar leaves Consul's passing set", func() bool { return sidecarPassing() == 0 })
		services, err := agent.Client().Agent().Services()
		if err != nil {
			t.Fatal(err)
		}
		if n := len(services); n != 2 {
			t.Errorf("with the app down the agent has %d services, want both registrations kept: %v", n, services)
		}
		if v := p.MetricSum(t, "meshlet_ready", nil); v != 0 {
			t.Errorf("meshlet_ready = %v with the app down, want 0", v)
		}

		app.Start(t)
		back := time.Now()
		if err := p.WaitReady(context.Background(), faultWait); err != nil {
			t.Fatalf("/ready after the app came back: %v", err)
		}
		meshlettest.Eventually(t, faultWait, "passing in Consul again", func() bool { return sidecarPassing() == 1 })
		t.Logf("round %d: ready and passing again %v after the app came back", round, time.Since(back).Round(time.Millisecond))
	}
	if !strings.Contains(p.Log(), "app check failing: not ready") || !strings.Contains(p.Log(), "app check passing again") {
		t.Errorf("the log does not show the app check's transitions")
	}
}

// TestFaultAppCheckReadyConfig: service.check.ready is a strict bool; errors name the field path.
func TestFaultAppCheckReadyConfig(t *testing.T) {
	base := "service: {name: api, address: 127.0.0.1:8080, register: true, check: %s}\ninbound: {listen: 127.0.0.1:21001}\ndiscovery: {consul: {address: 127.0.0.1:8500}}\n"
	for _, tc := range []struct {
		name, check string
		code        int
		want        string
	}{
		{"ready tcp", "{tcp: '127.0.0.1:8080', ready: true}", 0, ""},
		{"ready http", "{http: 'http://127.0.0.1:8080/health', interval: 2s, ready: true}", 0, ""},
		{"not a bool", "{tcp: '127.0.0.1:8080', ready: maybe}", 1, "service.check.ready: maybe must be true or false (line 1)"},
		{"misspelt", "{tcp: '127.0.0.1:8080', readiness: true}", 1, "readiness"},
		{"url without host", "{http: 'http:///health', ready: true}", 1, `service.check.http: "http:///health" must be a URL with a host`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "meshlet.yaml")
			if err := os.WriteFile(path, []byte(fmt.Sprintf(base, tc.check)), 0o600); err != nil {
				t.Fatal(err)
			}
			out, code := meshlettest.Exec(t, "check", "-config", path)
			if code != tc.code || !strings.Contains(out, tc.want) {
				t.Errorf("meshlet check: exit %d, output %q; want exit %d and %q", code, out, tc.code, tc.want)
			}
		})
	}
}
