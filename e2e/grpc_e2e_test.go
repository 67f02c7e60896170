package e2e_test

// End-to-end gRPC tests: a real grpc-go client calls a real grpc-go server through one or two meshlet processes.
//
//	sidecar: client → meshlet A (upstream "api", peer: sidecar) → meshlet B (inbound, protocol grpc) → server
//	app:     client → meshlet A (upstream "direct", peer: app) → server
//	named:   client → meshlet A name-routed outbound listener, :authority "api" → meshlet B → server
//
// The server is the interop TestService plus the standard health service. What it does for a call is chosen by
// the request (sizes, statuses) and by request metadata (x-call-id, x-behavior), so one server serves every case.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/proxy"
)

// grpcCallTimeout bounds every single call or stream in these tests.
const grpcCallTimeout = 15 * time.Second

// Metadata keys the backend understands.
const (
	grpcKeyCallID   = "x-call-id"  // names the call so the test can observe it on the server
	grpcKeyBehavior = "x-behavior" // see grpcBackend
)

// Response metadata the backend attaches to every unary and streaming call.
var (
	grpcRespHeader = metadata.MD{
		"x-resp-h":     {"h-one", "h-two"},
		"x-resp-h-bin": {"\x00\x01\x02\xff\xfe\r\n"},
	}
	grpcRespTrailer = metadata.MD{
		"x-resp-t":     {"t-one 100%"},
		"x-resp-t-bin": {"\xfe\x00\x80trailer"},
	}
)

// grpcCallSeq numbers call IDs.
var grpcCallSeq atomic.Int64

func grpcNewCallID() string { return fmt.Sprintf("call-%d", grpcCallSeq.Add(1)) }

// grpcCall is what the backend observed about one call with an x-call-id.
type grpcCall struct {
	mu          sync.Mutex
	md          metadata.MD // incoming metadata of the first invocation
	count       int         // invocations with this ID
	hadDeadline bool
	deadlineIn  time.Duration // time left until the server-side deadline at the start

	startOnce sync.Once
	started   chan struct{} // closed when a handler starts
	done      chan error    // receives ctx.Err() once a handler saw its context end (buffered 1)
}

func (c *grpcCall) invocations() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.count
}

// noteDone waits (bounded) for ctx to end and reports ctx.Err() on c.done.
func (c *grpcCall) noteDone(ctx context.Context) {
	var err error
	select {
	case <-ctx.Done():
		err = ctx.Err()
	case <-time.After(2 * grpcCallTimeout):
		err = errors.New("server context never ended")
	}
	select {
	case c.done <- err:
	default:
	}
}

// grpcBackend is the real gRPC server behind the mesh. Every handler sets the response header grpcRespHeader
// and trailer grpcRespTrailer, so an error status goes out as HEADERS, then HEADERS with the status. Request
// metadata x-behavior changes that:
//   - "trailers-only": no response header metadata, so an error is a trailers-only response (a single HEADERS
//     frame with END_STREAM carrying :status, grpc-status and the trailer metadata);
//   - "header-first": the headers are sent at once, before the handler does anything else;
//   - "block": the handler waits for its context to end (after sending the requested messages, if streaming).
type grpcBackend struct {
	testpb.UnimplementedTestServiceServer
	addr   string
	health *health.Server
	calls  sync.Map // call ID → *grpcCall
}

// grpcStartBackend starts the TestService and health service on a loopback port.
func grpcStartBackend(t testing.TB) *grpcBackend {
	t.Helper()
	b := &grpcBackend{health: health.NewServer()}
	b.addr, _ = meshlettest.StartGRPC(t, b, func(s *grpc.Server) { healthpb.RegisterHealthServer(s, b.health) })
	b.health.SetServingStatus("grpc.testing.TestService", healthpb.HealthCheckResponse_SERVING)
	return b
}

// call returns the record for id, creating it if needed (the test and the handler may get there first).
func (b *grpcBackend) call(id string) *grpcCall {
	c, _ := b.calls.LoadOrStore(id, &grpcCall{started: make(chan struct{}), done: make(chan error, 1)})
	return c.(*grpcCall)
}

// enter records the start of a handler and returns its call record and behavior.
func (b *grpcBackend) enter(ctx context.Context) (*grpcCall, string) {
	md, _ := metadata.FromIncomingContext(ctx)
	id := "anonymous"
	if v := md.Get(grpcKeyCallID); len(v) > 0 {
		id = v[0]
	}
	c := b.call(id)
	c.mu.Lock()
	c.count++
	if c.count == 1 {
		c.md = md.Copy()
		dl, ok := ctx.Deadline()
		c.hadDeadline, c.deadlineIn = ok, time.Until(dl)
	}
	c.mu.Unlock()
	c.startOnce.Do(func() { close(c.started) })
	var behavior string
	if v := md.Get(grpcKeyBehavior); len(v) > 0 {
		behavior = v[0]
	}
	return c, behavior
}

func (b *grpcBackend) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	c, behavior := b.enter(ctx)
	if behavior != "trailers-only" {
		grpc.SetHeader(ctx, grpcRespHeader)
	}
	grpc.SetTrailer(ctx, grpcRespTrailer)
	switch behavior {
	case "block":
		c.noteDone(ctx)
		return nil, status.FromContextError(ctx.Err()).Err()
	case "header-first":
		if err := grpc.SendHeader(ctx, metadata.MD{}); err != nil {
			return nil, err
		}
	}
	if req.ResponseStatus != nil {
		return nil, grpcStatusFor(req.ResponseStatus).Err()
	}
	body := req.GetPayload().GetBody()
	if req.ResponseSize > 0 {
		body = grpcPattern(uint64(req.ResponseSize), int(req.ResponseSize))
	}
	return &testpb.SimpleResponse{Payload: &testpb.Payload{Body: body}}, nil
}

// StreamingOutputCall sends one indexed message per response parameter, then req.ResponseStatus if set.
func (b *grpcBackend) StreamingOutputCall(req *testpb.StreamingOutputCallRequest,
	stream grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	c, behavior := b.enter(stream.Context())
	if behavior != "trailers-only" {
		stream.SetHeader(grpcRespHeader)
	}
	stream.SetTrailer(grpcRespTrailer)
	for i, p := range req.ResponseParameters {
		if err := stream.Send(&testpb.StreamingOutputCallResponse{
			Payload: &testpb.Payload{Body: grpcIndexed(i, int(p.Size))}}); err != nil {
			c.noteDone(stream.Context())
			return err
		}
	}
	if behavior == "block" {
		c.noteDone(stream.Context())
		return status.FromContextError(stream.Context().Err()).Err()
	}
	if req.ResponseStatus != nil {
		return grpcStatusFor(req.ResponseStatus).Err()
	}
	return nil
}

// StreamingInputCall checks that the messages arrive indexed 0, 1, 2, ... with intact bodies and answers the
// total size; trailers x-count and x-digest (sha256 of the bodies in order) let the client check the rest.
func (b *grpcBackend) StreamingInputCall(stream grpc.ClientStreamingServer[testpb.StreamingInputCallRequest,
	testpb.StreamingInputCallResponse]) error {
	b.enter(stream.Context())
	h := sha256.New()
	n, total := 0, 0
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		body := req.GetPayload().GetBody()
		if want := grpcIndexed(n, len(body)-4); len(body) < 4 || !bytes.Equal(body, want) {
			return status.Errorf(codes.FailedPrecondition, "message %d: got %d bytes not matching the pattern", n, len(body))
		}
		h.Write(body)
		n++
		total += len(body)
	}
	stream.SetTrailer(metadata.Pairs("x-count", strconv.Itoa(n), "x-digest", hex.EncodeToString(h.Sum(nil))))
	return stream.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: int32(total)})
}

// FullDuplexCall echoes every message as soon as it arrives. A message with ResponseStatus ends the call with
// that status (code OK: a clean end).
func (b *grpcBackend) FullDuplexCall(stream grpc.BidiStreamingServer[testpb.StreamingOutputCallRequest,
	testpb.StreamingOutputCallResponse]) error {
	ctx := stream.Context()
	c, _ := b.enter(ctx)
	stream.SetHeader(grpcRespHeader)
	stream.SetTrailer(grpcRespTrailer)
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			c.noteDone(ctx)
			return err
		}
		if req.ResponseStatus != nil {
			if codes.Code(req.ResponseStatus.Code) == codes.OK {
				return nil
			}
			return grpcStatusFor(req.ResponseStatus).Err()
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: req.Payload}); err != nil {
			c.noteDone(ctx)
			return err
		}
	}
}

// grpcStatusFor builds the status (with details) the backend returns for es; tests build the expectation with
// the same function.
func grpcStatusFor(es *testpb.EchoStatus) *status.Status {
	code := codes.Code(es.Code)
	st, err := status.New(code, es.Message).WithDetails(
		&errdetails.ErrorInfo{Reason: strings.ToUpper(code.String()), Domain: "meshlet.test",
			Metadata: map[string]string{"message": es.Message, "percent": "100% %41 %zz"}},
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "payload.body", Description: "ünïcödé ☃ " + es.Message}}},
	)
	if err != nil {
		panic(err)
	}
	return st
}

// grpcPattern returns n deterministic pseudo-random bytes for seed.
func grpcPattern(seed uint64, n int) []byte {
	b := make([]byte, n)
	x := seed*0x9E3779B97F4A7C15 + 1
	for i := range b {
		x = x*6364136223846793005 + 1442695040888963407
		b[i] = byte(x >> 56)
	}
	return b
}

// grpcIndexed returns a message body for message i: i as 4 big-endian bytes, then n pattern bytes.
func grpcIndexed(i, n int) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(i))
	return append(b, grpcPattern(uint64(i)+1000, n)...)
}

// grpcRoute is one way into the mesh for a client.
type grpcRoute struct {
	name      string
	target    string // host:port of a meshlet listener
	authority string // "" for the default
}

// grpcMesh is a started topology: backend, B (inbound for service "api") and A (service "web").
type grpcMesh struct {
	backend  *grpcBackend
	a, b     *meshlettest.Proc
	inbound  string            // B's inbound listener
	outbound string            // A's name-routed listener
	listen   map[string]string // A's per-upstream listeners by upstream name
	routes   []grpcRoute       // sidecar, app, named
}

// grpcUpstream is an extra upstream on A; in endpoints, {backend} and {inbound} stand for the backend's and B's
// inbound addresses.
type grpcUpstream struct {
	name, peer string
	endpoints  []string
	timeout    time.Duration
}

// grpcStartMesh starts the backend, B and A. A has upstreams "api" (peer sidecar → B), "direct" (peer app →
// backend), the extra ones, and a name-routed outbound listener.
func grpcStartMesh(t testing.TB, extra ...grpcUpstream) *grpcMesh {
	t.Helper()
	addrs := meshlettest.FreeAddrs(t, 6+len(extra))
	m := &grpcMesh{backend: grpcStartBackend(t), inbound: addrs[0], outbound: addrs[1],
		listen: map[string]string{}}
	adminB, adminA := addrs[2], addrs[3]
	addrs = addrs[4:]
	var b meshlettest.File
	b.Service.Name, b.Service.Address, b.Service.Protocol = "api", m.backend.addr, "grpc"
	b.Inbound.Listen = m.inbound
	b.Admin.Listen = adminB
	b.Shutdown = meshlettest.Shutdown{DrainDelay: meshlettest.Duration(0), DrainTimeout: 5 * time.Second}
	m.b = meshlettest.Start(t, adminB, b.MustYAML(t))

	ups := append([]grpcUpstream{
		{name: "api", peer: "sidecar", endpoints: []string{"{inbound}"}},
		{name: "direct", peer: "app", endpoints: []string{"{backend}"}},
	}, extra...)
	var a meshlettest.File
	a.Service.Name = "web"
	a.Outbound.Listen = m.outbound
	placeholders := strings.NewReplacer("{backend}", m.backend.addr, "{inbound}", m.inbound)
	for _, u := range ups {
		m.listen[u.name], addrs = addrs[0], addrs[1:]
		eps := []string{}
		for _, e := range u.endpoints {
			eps = append(eps, placeholders.Replace(e))
		}
		a.Upstreams = append(a.Upstreams, proxy.UpstreamConfig{Name: u.name, Listen: m.listen[u.name],
			Protocol: "grpc", Peer: u.peer, Endpoints: eps, Timeout: u.timeout})
	}
	a.Admin.Listen = adminA
	a.Shutdown = b.Shutdown
	m.a = meshlettest.Start(t, adminA, a.MustYAML(t))
	grpcFailOnRace(t, "A", m.a)
	grpcFailOnRace(t, "B", m.b)
	m.routes = []grpcRoute{
		{name: "sidecar", target: m.listen["api"]},
		{name: "app", target: m.listen["direct"]},
		{name: "named", target: m.outbound, authority: "api"},
	}
	return m
}

// grpcFailOnRace makes the test fail if the race detector in meshlet p reported a data race by the end of it.
func grpcFailOnRace(t testing.TB, name string, p *meshlettest.Proc) {
	t.Cleanup(func() {
		out := p.Log()
		i := strings.Index(out, "WARNING: DATA RACE")
		if i < 0 {
			return
		}
		race := out[i:]
		if j := strings.Index(race, "\n=================="); j > 0 {
			race = race[:j]
		}
		t.Errorf("meshlet %s reported a data race:\n%s", name, race)
	})
}

// grpcDial returns a client connection to target (with authority if not empty), closed when the test ends.
func grpcDial(t testing.TB, target, authority string) *grpc.ClientConn {
	t.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if authority != "" {
		opts = append(opts, grpc.WithAuthority(authority))
	}
	cc, err := grpc.NewClient("passthrough:///"+target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func (m *grpcMesh) client(t testing.TB, r grpcRoute) testpb.TestServiceClient {
	return testpb.NewTestServiceClient(grpcDial(t, r.target, r.authority))
}

// grpcCallCtx returns a context bounded by grpcCallTimeout carrying the call ID and behavior (if not empty) and
// extra metadata pairs.
func grpcCallCtx(t testing.TB, id, behavior string, kv ...string) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), grpcCallTimeout)
	t.Cleanup(cancel)
	kv = append(kv, grpcKeyCallID, id)
	if behavior != "" {
		kv = append(kv, grpcKeyBehavior, behavior)
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}

// grpcWaitDone waits for the server-side context of call c to end and returns its error.
func grpcWaitDone(t testing.TB, c *grpcCall, within time.Duration) error {
	t.Helper()
	select {
	case err := <-c.done:
		return err
	case <-time.After(within):
		t.Fatalf("server context not cancelled within %v", within)
		return nil
	}
}

// grpcWaitStarted waits until a handler for c has started.
func grpcWaitStarted(t testing.TB, c *grpcCall) {
	t.Helper()
	select {
	case <-c.started:
	case <-time.After(grpcCallTimeout):
		t.Fatal("call never reached the server")
	}
}

// grpcCheckMD fails unless got has exactly want's values for each of want's keys.
func grpcCheckMD(t testing.TB, what string, got, want metadata.MD) {
	t.Helper()
	if diff := grpcMDDiff(what, got, want); diff != "" {
		t.Error(diff)
	}
}

// grpcMDDiff describes how got differs from want's values for want's keys; "" if it does not.
func grpcMDDiff(what string, got, want metadata.MD) string {
	var b strings.Builder
	for k, wv := range want {
		if gv := got.Get(k); !slices.Equal(gv, wv) {
			fmt.Fprintf(&b, "%s %q: got %q, want %q; ", what, k, gv, wv)
		}
	}
	return b.String()
}

// grpcCheckStatus fails unless err is exactly the status want (code, message and details).
func grpcCheckStatus(t testing.TB, err error, want *status.Status) {
	t.Helper()
	if diff := grpcStatusDiff(err, want); diff != "" {
		t.Fatal(diff)
	}
}

// grpcStatusDiff describes how err differs from the status want (code, message and details); "" if it does not.
func grpcStatusDiff(err error, want *status.Status) string {
	got, ok := status.FromError(err)
	if !ok {
		return fmt.Sprintf("error %v is not a gRPC status", err)
	}
	if got.Code() != want.Code() || got.Message() != want.Message() {
		return fmt.Sprintf("status: got %v %q, want %v %q", got.Code(), got.Message(), want.Code(), want.Message())
	}
	// Compare unpacked details: Any bytes of messages with maps are not deterministic.
	gd, wd := got.Details(), want.Details()
	if len(gd) != len(wd) {
		return fmt.Sprintf("status details: got %d %v, want %d %v", len(gd), gd, len(wd), wd)
	}
	for i := range wd {
		gm, ok := gd[i].(proto.Message)
		if !ok || !proto.Equal(gm, wd[i].(proto.Message)) {
			return fmt.Sprintf("status detail %d differs:\ngot  %v\nwant %v", i, gd[i], wd[i])
		}
	}
	return ""
}

// TestGRPCUnary checks payloads byte for byte, request metadata, and response headers and trailers.
func TestGRPCUnary(t *testing.T) {
	m := grpcStartMesh(t)
	const maxBody = 4<<20 - 1024 // under grpc's default 4 MiB receive limit with room for framing
	sizes := []struct {
		name          string
		req, respSize int // respSize 0: echo
	}{
		{"empty", 0, 0},
		{"one byte", 1, 0},
		{"1000 bytes", 1000, 0},
		{"frame boundary 16KiB+1", 16<<10 + 1, 0},
		{"64KiB+3", 64<<10 + 3, 0},
		{"1MiB", 1 << 20, 0},
		{"almost 4MiB echo", maxBody, 0},
		{"small request, almost 4MiB response", 10, maxBody},
		{"almost 4MiB request, small response", maxBody, 7},
	}
	sentMD := metadata.MD{
		"x-custom":      {"hello, world; a=b"},
		"x-multi":       {"one", "two", "three"},
		"x-percent":     {"100%25 %zz %"},
		"x-empty":       {""},
		"x-long":        {strings.Repeat("abcdefgh", 1000)},
		"authorization": {"Bearer secret-token"},
		"x-trace-bin":   {"\x00\x01\x02\x03\xff\xfe\n\r\x80"},
		"x-multi-bin":   {"\x00first", "\xffsecond"},
	}
	for _, r := range m.routes {
		c := m.client(t, r)
		t.Run(r.name, func(t *testing.T) {
			for _, s := range sizes {
				t.Run(s.name, func(t *testing.T) {
					id := grpcNewCallID()
					ctx := grpcCallCtx(t, id, "")
					ctx = metadata.NewOutgoingContext(ctx, metadata.Join(grpcMustOutgoing(ctx), sentMD))
					body := grpcPattern(uint64(s.req), s.req)
					var hdr, trl metadata.MD
					resp, err := c.UnaryCall(ctx, &testpb.SimpleRequest{
						Payload: &testpb.Payload{Body: body}, ResponseSize: int32(s.respSize)},
						grpc.Header(&hdr), grpc.Trailer(&trl))
					if err != nil {
						t.Fatalf("UnaryCall: %v", err)
					}
					want := body
					if s.respSize > 0 {
						want = grpcPattern(uint64(s.respSize), s.respSize)
					}
					if got := resp.GetPayload().GetBody(); !bytes.Equal(got, want) {
						t.Fatalf("response body: got %d bytes (sha %x), want %d bytes (sha %x)",
							len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
					}
					call := m.backend.call(id)
					call.mu.Lock()
					serverMD := call.md
					call.mu.Unlock()
					grpcCheckMD(t, "request metadata at server", serverMD, sentMD)
					grpcCheckMD(t, "response header", hdr, grpcRespHeader)
					grpcCheckMD(t, "response trailer", trl, grpcRespTrailer)
					if n := call.invocations(); n != 1 {
						t.Errorf("server saw the call %d times, want 1", n)
					}
				})
			}
		})
	}
}

// grpcMustOutgoing returns the outgoing metadata of ctx.
func grpcMustOutgoing(ctx context.Context) metadata.MD {
	md, _ := metadata.FromOutgoingContext(ctx)
	return md
}

// TestGRPCStreaming checks server-, client- and bidi-streaming order and counts, and that bidi streams are not
// buffered (strict ping-pong).
func TestGRPCStreaming(t *testing.T) {
	m := grpcStartMesh(t)
	for _, r := range m.routes {
		c := m.client(t, r)
		t.Run(r.name+"/server-streaming", func(t *testing.T) {
			const n = 200
			var params []*testpb.ResponseParameters
			for i := range n {
				params = append(params, &testpb.ResponseParameters{Size: int32(i * 97 % 5000)})
			}
			stream, err := c.StreamingOutputCall(grpcCallCtx(t, grpcNewCallID(), ""),
				&testpb.StreamingOutputCallRequest{ResponseParameters: params})
			if err != nil {
				t.Fatal(err)
			}
			for i := range n {
				resp, err := stream.Recv()
				if err != nil {
					t.Fatalf("Recv %d: %v", i, err)
				}
				if want := grpcIndexed(i, int(params[i].Size)); !bytes.Equal(resp.GetPayload().GetBody(), want) {
					t.Fatalf("message %d: got %d bytes, not the %d expected (out of order or corrupted)",
						i, len(resp.GetPayload().GetBody()), len(want))
				}
			}
			if _, err := stream.Recv(); err != io.EOF {
				t.Fatalf("after %d messages: got %v, want io.EOF", n, err)
			}
			grpcCheckMD(t, "trailer", stream.Trailer(), grpcRespTrailer)
		})

		t.Run(r.name+"/client-streaming", func(t *testing.T) {
			const n = 200
			stream, err := c.StreamingInputCall(grpcCallCtx(t, grpcNewCallID(), ""))
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			total := 0
			for i := range n {
				body := grpcIndexed(i, i*131%7000)
				h.Write(body)
				total += len(body)
				if err := stream.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: body}}); err != nil {
					t.Fatalf("Send %d: %v", i, err)
				}
			}
			resp, err := stream.CloseAndRecv()
			if err != nil {
				t.Fatalf("CloseAndRecv: %v", err)
			}
			if int(resp.AggregatedPayloadSize) != total {
				t.Errorf("aggregated size: got %d, want %d", resp.AggregatedPayloadSize, total)
			}
			trl := stream.Trailer()
			grpcCheckMD(t, "trailer", trl, metadata.Pairs("x-count", strconv.Itoa(n),
				"x-digest", hex.EncodeToString(h.Sum(nil))))
		})

		t.Run(r.name+"/bidi-ping-pong", func(t *testing.T) {
			const rounds = 100
			ctx, cancel := context.WithTimeout(grpcCallCtx(t, grpcNewCallID(), ""), 10*time.Second)
			defer cancel()
			stream, err := c.FullDuplexCall(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for i := range rounds {
				body := grpcIndexed(i, i%300)
				if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: body}}); err != nil {
					t.Fatalf("round %d Send: %v", i, err)
				}
				// The reply must come while the client still has the stream open and nothing else in flight:
				// a proxy that buffers requests or responses makes this Recv wait until the deadline.
				resp, err := stream.Recv()
				if err != nil {
					t.Fatalf("round %d Recv: %v (a buffering proxy never delivers the reply)", i, err)
				}
				if !bytes.Equal(resp.GetPayload().GetBody(), body) {
					t.Fatalf("round %d: reply differs from the ping", i)
				}
			}
			if err := stream.CloseSend(); err != nil {
				t.Fatal(err)
			}
			if _, err := stream.Recv(); err != io.EOF {
				t.Fatalf("after CloseSend: got %v, want io.EOF", err)
			}
			grpcCheckMD(t, "trailer", stream.Trailer(), grpcRespTrailer)
		})

		t.Run(r.name+"/bidi-bulk", func(t *testing.T) {
			const n = 300
			stream, err := c.FullDuplexCall(grpcCallCtx(t, grpcNewCallID(), ""))
			if err != nil {
				t.Fatal(err)
			}
			sendErr := make(chan error, 1)
			go func() {
				for i := range n {
					body := grpcIndexed(i, i*53%9000)
					if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: body}}); err != nil {
						sendErr <- fmt.Errorf("Send %d: %w", i, err)
						return
					}
				}
				sendErr <- stream.CloseSend()
			}()
			for i := range n {
				resp, err := stream.Recv()
				if err != nil {
					t.Fatalf("Recv %d: %v", i, err)
				}
				if !bytes.Equal(resp.GetPayload().GetBody(), grpcIndexed(i, i*53%9000)) {
					t.Fatalf("message %d out of order or corrupted", i)
				}
			}
			if _, err := stream.Recv(); err != io.EOF {
				t.Fatalf("after %d messages: got %v, want io.EOF", n, err)
			}
			if err := <-sendErr; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// grpcStatusCodes are the codes the backend returns in TestGRPCStatus.
var grpcStatusCodes = []codes.Code{codes.InvalidArgument, codes.NotFound, codes.PermissionDenied,
	codes.Unavailable, codes.Internal, codes.ResourceExhausted}

// grpcStatusMessage is a message with unicode, percent signs and escapes that a proxy must not touch.
func grpcStatusMessage(code codes.Code, rep int) string {
	return fmt.Sprintf("%v #%d: 100%% ünïcödé ☃ 日本語 %%41 %%zz %%%% trailing %%\nsecond line\ttab", code, rep)
}

// TestGRPCStatus checks that statuses (code, message, details) from the server reach the client exactly, in
// trailers-only responses, after headers, and after streamed messages; many times over.
func TestGRPCStatus(t *testing.T) {
	m := grpcStartMesh(t)
	const reps = 12 // 6 codes × 12 × 3 routes = 216 unary calls (a third of them trailers-only), plus streams
	for _, r := range m.routes {
		c := m.client(t, r)
		t.Run(r.name+"/unary", func(t *testing.T) {
			// Count the wrong answers per response shape rather than stop at the first: the rate tells apart a
			// race from a systematic fault.
			wrong, calls, first := map[string]int{}, map[string]int{}, map[string]string{}
			defer func() {
				for shape, n := range wrong {
					t.Errorf("%q responses: %d of %d calls wrong; first: %s", shape, n, calls[shape], first[shape])
				}
			}()
			for rep := range reps {
				for _, code := range grpcStatusCodes {
					es := &testpb.EchoStatus{Code: int32(code), Message: grpcStatusMessage(code, rep)}
					// Each shape of an error response: trailers-only; headers then trailers; headers flushed
					// before the handler runs, then trailers.
					behavior := []string{"trailers-only", "", "header-first"}[rep%3]
					id := grpcNewCallID()
					var hdr, trl metadata.MD
					_, err := c.UnaryCall(grpcCallCtx(t, id, behavior),
						&testpb.SimpleRequest{ResponseStatus: es}, grpc.Header(&hdr), grpc.Trailer(&trl))
					diff := grpcStatusDiff(err, grpcStatusFor(es))
					if diff != "" {
						diff += "; "
					}
					diff += grpcMDDiff("trailer", trl, grpcRespTrailer)
					if behavior != "trailers-only" {
						diff += grpcMDDiff("header", hdr, grpcRespHeader)
					}
					// meshlet retries a trailers-only UNAVAILABLE by default (3 attempts in all); nothing else.
					want := 1
					if behavior == "trailers-only" && code == codes.Unavailable {
						want = 3
					}
					if n := m.backend.call(id).invocations(); n != want {
						diff += fmt.Sprintf("server saw the call %d times, want %d", n, want)
					}
					shape := behavior
					if shape == "" {
						shape = "headers+trailers"
					}
					calls[shape]++
					if diff != "" {
						if wrong[shape]++; wrong[shape] == 1 {
							first[shape] = diff
						}
					}
				}
			}
		})
		t.Run(r.name+"/server-stream-then-status", func(t *testing.T) {
			for rep := range 3 {
				for _, code := range grpcStatusCodes {
					es := &testpb.EchoStatus{Code: int32(code), Message: grpcStatusMessage(code, rep)}
					params := []*testpb.ResponseParameters{{Size: 10}, {Size: 20000}, {Size: 0}, {Size: 5}}
					behavior := ""
					if rep == 0 {
						params, behavior = nil, "trailers-only" // no messages: a trailers-only response
					}
					stream, err := c.StreamingOutputCall(grpcCallCtx(t, grpcNewCallID(), behavior),
						&testpb.StreamingOutputCallRequest{ResponseParameters: params, ResponseStatus: es})
					if err != nil {
						t.Fatal(err)
					}
					for i, p := range params {
						resp, err := stream.Recv()
						if err != nil {
							t.Fatalf("%v: Recv %d: %v", code, i, err)
						}
						if !bytes.Equal(resp.GetPayload().GetBody(), grpcIndexed(i, int(p.Size))) {
							t.Fatalf("%v: message %d corrupted", code, i)
						}
					}
					_, err = stream.Recv()
					grpcCheckStatus(t, err, grpcStatusFor(es))
					grpcCheckMD(t, "trailer", stream.Trailer(), grpcRespTrailer)
				}
			}
		})
		t.Run(r.name+"/bidi-then-status", func(t *testing.T) {
			for _, code := range grpcStatusCodes {
				es := &testpb.EchoStatus{Code: int32(code), Message: grpcStatusMessage(code, 0)}
				// The answer takes milliseconds; a short deadline keeps a hang from eating the time budget.
				ctx, cancel := context.WithTimeout(grpcCallCtx(t, grpcNewCallID(), ""), 3*time.Second)
				defer cancel()
				stream, err := c.FullDuplexCall(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for i := range 3 {
					body := grpcIndexed(i, 100)
					if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: body}}); err != nil {
						t.Fatal(err)
					}
					if resp, err := stream.Recv(); err != nil || !bytes.Equal(resp.GetPayload().GetBody(), body) {
						t.Fatalf("%v: echo %d: %v", code, i, err)
					}
				}
				if err := stream.Send(&testpb.StreamingOutputCallRequest{ResponseStatus: es}); err != nil {
					t.Fatal(err)
				}
				_, err = stream.Recv()
				if status.Code(err) == codes.DeadlineExceeded {
					t.Fatalf("%v: the server's status never reached the client while the client's side was open "+
						"(got %v after 3s)", code, err)
				}
				grpcCheckStatus(t, err, grpcStatusFor(es))
			}
		})
	}
}

// TestGRPCCancellation checks deadlines and cancellation in both directions through the mesh.
func TestGRPCCancellation(t *testing.T) {
	m := grpcStartMesh(t)
	for _, r := range m.routes {
		c := m.client(t, r)
		t.Run(r.name+"/client-deadline", func(t *testing.T) {
			id := grpcNewCallID()
			ctx, cancel := context.WithTimeout(grpcCallCtx(t, id, "block"), 200*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
			elapsed := time.Since(start)
			if status.Code(err) != codes.DeadlineExceeded {
				t.Fatalf("got %v, want DeadlineExceeded", err)
			}
			if elapsed > 3*time.Second {
				t.Errorf("DeadlineExceeded after %v, want about 200ms", elapsed)
			}
			call := m.backend.call(id)
			if err := grpcWaitDone(t, call, 5*time.Second); err == nil {
				t.Fatal("server context ended without error")
			}
			call.mu.Lock()
			had, left := call.hadDeadline, call.deadlineIn
			call.mu.Unlock()
			if !had || left > 250*time.Millisecond {
				t.Errorf("server-side deadline: present %v, %v left at start; want grpc-timeout of ~200ms propagated",
					had, left)
			}
		})

		t.Run(r.name+"/client-cancels-unary", func(t *testing.T) {
			id := grpcNewCallID()
			ctx, cancel := context.WithCancel(grpcCallCtx(t, id, "block"))
			defer cancel()
			errc := make(chan error, 1)
			go func() {
				_, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
				errc <- err
			}()
			call := m.backend.call(id)
			grpcWaitStarted(t, call)
			cancel()
			select {
			case err := <-errc:
				if status.Code(err) != codes.Canceled {
					t.Fatalf("client got %v, want Canceled", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("client call did not return after cancel")
			}
			// No deadline was set, so only a propagated RST_STREAM can end the server's context.
			if err := grpcWaitDone(t, call, 5*time.Second); !errors.Is(err, context.Canceled) {
				t.Fatalf("server context ended with %v, want context.Canceled", err)
			}
		})

		t.Run(r.name+"/client-cancels-bidi", func(t *testing.T) {
			id := grpcNewCallID()
			ctx, cancel := context.WithCancel(grpcCallCtx(t, id, ""))
			defer cancel()
			stream, err := c.FullDuplexCall(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 5 {
				body := grpcIndexed(i, 50)
				if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: body}}); err != nil {
					t.Fatal(err)
				}
				if _, err := stream.Recv(); err != nil {
					t.Fatalf("Recv %d: %v", i, err)
				}
			}
			cancel()
			if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
				t.Fatalf("client Recv after cancel: got %v, want Canceled", err)
			}
			if err := grpcWaitDone(t, m.backend.call(id), 5*time.Second); !errors.Is(err, context.Canceled) {
				t.Fatalf("server context ended with %v, want context.Canceled", err)
			}
		})

		t.Run(r.name+"/client-cancels-server-stream", func(t *testing.T) {
			id := grpcNewCallID()
			ctx, cancel := context.WithCancel(grpcCallCtx(t, id, "block"))
			defer cancel()
			stream, err := c.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
				ResponseParameters: []*testpb.ResponseParameters{{Size: 10}, {Size: 10}}})
			if err != nil {
				t.Fatal(err)
			}
			for i := range 2 {
				if _, err := stream.Recv(); err != nil {
					t.Fatalf("Recv %d: %v", i, err)
				}
			}
			cancel()
			if err := grpcWaitDone(t, m.backend.call(id), 5*time.Second); !errors.Is(err, context.Canceled) {
				t.Fatalf("server context ended with %v, want context.Canceled", err)
			}
		})

		t.Run(r.name+"/server-ends-bidi-early", func(t *testing.T) {
			for _, end := range []codes.Code{codes.OK, codes.Aborted} {
				// The answer takes milliseconds; a short deadline keeps a hang from eating the time budget.
				ctx, cancel := context.WithTimeout(grpcCallCtx(t, grpcNewCallID(), ""), 3*time.Second)
				defer cancel()
				stream, err := c.FullDuplexCall(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for i := range 3 {
					if err := stream.Send(&testpb.StreamingOutputCallRequest{
						Payload: &testpb.Payload{Body: grpcIndexed(i, 10)}}); err != nil {
						t.Fatal(err)
					}
					if _, err := stream.Recv(); err != nil {
						t.Fatalf("Recv %d: %v", i, err)
					}
				}
				// The server returns while the client still has its side open.
				es := &testpb.EchoStatus{Code: int32(end), Message: "ended early"}
				if err := stream.Send(&testpb.StreamingOutputCallRequest{ResponseStatus: es}); err != nil {
					t.Fatal(err)
				}
				_, err = stream.Recv()
				if end == codes.OK {
					if err != io.EOF {
						t.Fatalf("server ended the stream cleanly while the client's side was open: client got %v "+
							"(after up to 3s), want io.EOF", err)
					}
				} else {
					if status.Code(err) == codes.DeadlineExceeded {
						t.Fatalf("server ended the stream with %v while the client's side was open: client got %v "+
							"(after up to 3s)", end, err)
					}
					grpcCheckStatus(t, err, grpcStatusFor(es))
				}
			}
		})
	}
}

// grpcFromMeshlet fails if st looks synthesized by the grpc client from a non-gRPC response rather than being a
// grpc-status that meshlet wrote.
func grpcFromMeshlet(t testing.TB, st *status.Status) {
	t.Helper()
	msg := st.Message()
	if msg == "" {
		t.Errorf("%v with an empty message; want a grpc-message from meshlet", st.Code())
	}
	for _, synthesized := range []string{"unexpected HTTP status code", "malformed header", "transport: ",
		"connection error", "received prior goaway"} {
		if strings.Contains(msg, synthesized) {
			t.Errorf("status %v %q was synthesized by the grpc client, not written by meshlet", st.Code(), msg)
		}
	}
}

// TestGRPCMeshletErrors checks the gRPC statuses meshlet produces itself and the metric labels they get.
func TestGRPCMeshletErrors(t *testing.T) {
	refused := meshlettest.FreeAddr(t) // nothing listens here
	m := grpcStartMesh(t,
		grpcUpstream{name: "empty", peer: "app", endpoints: []string{}},
		grpcUpstream{name: "refused", peer: "app", endpoints: []string{refused}},
		grpcUpstream{name: "slow", peer: "app", endpoints: []string{"{backend}"}, timeout: 200 * time.Millisecond},
		grpcUpstream{name: "slowsidecar", peer: "sidecar", endpoints: []string{"{inbound}"}, timeout: 200 * time.Millisecond},
	)
	cases := []struct {
		name      string
		upstream  string // A's per-upstream listener; "" for the name-routed listener
		authority string
		behavior  string
		want      codes.Code
		minTime   time.Duration
		cancelled bool // the server must see its context end
	}{
		{name: "no endpoints", upstream: "empty", want: codes.Unavailable},
		{name: "connection refused", upstream: "refused", want: codes.Unavailable},
		{name: "upstream timeout to app", upstream: "slow", behavior: "block", want: codes.DeadlineExceeded,
			minTime: 150 * time.Millisecond, cancelled: true},
		{name: "upstream timeout to sidecar", upstream: "slowsidecar", behavior: "block",
			want: codes.DeadlineExceeded, minTime: 150 * time.Millisecond, cancelled: true},
		{name: "unknown authority", authority: "nosuch", want: codes.Unimplemented},
		{name: "unknown authority with domain", authority: "nosuch.mesh", want: codes.Unimplemented},
	}
	// Open the connections on the paths that time out, so that a call's 200ms are not spent on connection set-up
	// (the server must see the call for the cancellation check).
	for _, up := range []string{"slow", "slowsidecar"} {
		c := testpb.NewTestServiceClient(grpcDial(t, m.listen[up], ""))
		if _, err := c.UnaryCall(grpcCallCtx(t, grpcNewCallID(), ""), &testpb.SimpleRequest{}); err != nil {
			t.Fatalf("warm-up call through %s: %v", up, err)
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			target := m.outbound
			if tc.upstream != "" {
				target = m.listen[tc.upstream]
			}
			c := testpb.NewTestServiceClient(grpcDial(t, target, tc.authority))
			id := grpcNewCallID()
			start := time.Now()
			_, err := c.UnaryCall(grpcCallCtx(t, id, tc.behavior), &testpb.SimpleRequest{ResponseSize: 10})
			elapsed := time.Since(start)
			st, _ := status.FromError(err)
			if st.Code() != tc.want {
				t.Fatalf("got %v %q, want %v", st.Code(), st.Message(), tc.want)
			}
			grpcFromMeshlet(t, st)
			if elapsed < tc.minTime || elapsed > 3*time.Second {
				t.Errorf("answered after %v, want between %v and 3s", elapsed, tc.minTime)
			}
			call := m.backend.call(id)
			if tc.cancelled {
				select {
				case <-call.started:
				default:
					t.Fatal("the call never reached the server")
				}
				if err := grpcWaitDone(t, call, 5*time.Second); err == nil {
					t.Fatal("server context ended without error")
				}
			} else if n := call.invocations(); n != 0 {
				t.Errorf("the backend saw the call %d times, want 0", n)
			}
		})
	}

	t.Run("known authorities", func(t *testing.T) {
		for _, auth := range []string{"api", "api.mesh", "api:80", "direct", "direct.mesh"} {
			c := testpb.NewTestServiceClient(grpcDial(t, m.outbound, auth))
			resp, err := c.UnaryCall(grpcCallCtx(t, grpcNewCallID(), ""), &testpb.SimpleRequest{ResponseSize: 33})
			if err != nil {
				t.Fatalf("authority %q: %v", auth, err)
			}
			if !bytes.Equal(resp.GetPayload().GetBody(), grpcPattern(33, 33)) {
				t.Fatalf("authority %q: wrong body", auth)
			}
		}
	})

	t.Run("trailers-only on the wire", func(t *testing.T) {
		hc := meshlettest.H2CClient(nil)
		hc.Timeout = grpcCallTimeout
		defer hc.CloseIdleConnections()
		req, err := http.NewRequest("POST", "http://"+m.listen["empty"]+"/grpc.testing.TestService/UnaryCall",
			bytes.NewReader([]byte{0, 0, 0, 0, 0}))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("TE", "trailers")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("HTTP status %d, want 200", resp.StatusCode)
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/grpc") {
			t.Errorf("content-type %q, want application/grpc", ct)
		}
		if len(body) != 0 {
			t.Errorf("body of %d bytes, want none", len(body))
		}
		if got := resp.Header.Get("Grpc-Status"); got != "14" {
			t.Errorf("grpc-status in the (trailers-only) headers: %q, want 14; trailers: %v", got, resp.Trailer)
		}
		if resp.Header.Get("Grpc-Message") == "" {
			t.Error("no grpc-message in the trailers-only response")
		}
	})

	t.Run("metrics", func(t *testing.T) {
		checks := []struct {
			labels map[string]string
			want   float64 // at least
		}{
			{map[string]string{"direction": "outbound", "upstream": "empty", "grpc_code": "Unavailable"}, 2},
			{map[string]string{"direction": "outbound", "upstream": "refused", "grpc_code": "Unavailable"}, 1},
			{map[string]string{"direction": "outbound", "upstream": "slow", "grpc_code": "DeadlineExceeded"}, 1},
			{map[string]string{"direction": "outbound", "upstream": "slowsidecar", "grpc_code": "DeadlineExceeded"}, 1},
		}
		for _, c := range checks {
			if got := m.a.WaitMetric(t, 5*time.Second, "meshlet_requests_total", c.labels, c.want); got != c.want {
				t.Errorf("meshlet_requests_total%v = %v, want %v; have:%s", c.labels, got, c.want,
					m.a.Metrics(t).Lines("meshlet_requests_total"))
			}
		}
		// The two calls to an unknown authority were answered by meshlet, so they are requests too.
		unimpl := map[string]string{"direction": "outbound", "grpc_code": "Unimplemented"}
		if got := m.a.WaitMetric(t, 5*time.Second, "meshlet_requests_total", unimpl, 2); got != 2 {
			t.Errorf("unknown authority: meshlet_requests_total%v = %v, want 2; have:%s", unimpl, got,
				m.a.Metrics(t).Lines("meshlet_requests_total"))
		}
		// The slow upstream is not checked here: meshlet hands the app its deadline (grpc-timeout), and the app
		// may answer DEADLINE_EXCEEDED itself a moment before meshlet's timer fires; the client gets
		// DeadlineExceeded either way (checked above).
		errs := []map[string]string{
			{"direction": "outbound", "upstream": "empty", "reason": "no_endpoint"},
			{"direction": "outbound", "upstream": "refused", "reason": "connect"},
		}
		for _, l := range errs {
			if got := m.a.WaitMetric(t, 5*time.Second, "meshlet_upstream_errors_total", l, 1); got < 1 {
				t.Errorf("meshlet_upstream_errors_total%v = %v, want >= 1; have:%s", l, got,
					m.a.Metrics(t).Lines("meshlet_upstream_errors_total"))
			}
		}
	})
}

// TestGRPCHealth checks the standard health service through the mesh, including a Watch stream.
func TestGRPCHealth(t *testing.T) {
	m := grpcStartMesh(t)
	const svc = "grpc.testing.TestService"
	for _, r := range m.routes {
		hc := healthpb.NewHealthClient(grpcDial(t, r.target, r.authority))
		t.Run(r.name+"/check", func(t *testing.T) {
			for _, s := range []string{"", svc} {
				resp, err := hc.Check(grpcCallCtx(t, grpcNewCallID(), ""), &healthpb.HealthCheckRequest{Service: s})
				if err != nil {
					t.Fatalf("Check(%q): %v", s, err)
				}
				if resp.Status != healthpb.HealthCheckResponse_SERVING {
					t.Fatalf("Check(%q) = %v, want SERVING", s, resp.Status)
				}
			}
		})
		t.Run(r.name+"/unknown-service", func(t *testing.T) {
			// NotFound without response metadata: a trailers-only response.
			for range 20 {
				_, err := hc.Check(grpcCallCtx(t, grpcNewCallID(), ""), &healthpb.HealthCheckRequest{Service: "nosuch"})
				if st := status.Convert(err); st.Code() != codes.NotFound || st.Message() != "unknown service" {
					t.Fatalf("Check(nosuch): got %v, want NotFound \"unknown service\"", err)
				}
			}
		})
		t.Run(r.name+"/watch", func(t *testing.T) {
			ctx, cancel := context.WithCancel(grpcCallCtx(t, grpcNewCallID(), ""))
			defer cancel()
			w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: svc})
			if err != nil {
				t.Fatal(err)
			}
			expect := func(want healthpb.HealthCheckResponse_ServingStatus) {
				t.Helper()
				resp, err := w.Recv()
				if err != nil {
					t.Fatalf("Watch Recv: %v", err)
				}
				if resp.Status != want {
					t.Fatalf("Watch: got %v, want %v", resp.Status, want)
				}
			}
			expect(healthpb.HealthCheckResponse_SERVING)
			m.backend.health.SetServingStatus(svc, healthpb.HealthCheckResponse_NOT_SERVING)
			expect(healthpb.HealthCheckResponse_NOT_SERVING)
			m.backend.health.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
			expect(healthpb.HealthCheckResponse_SERVING)
		})
	}
}

// TestGRPCConcurrentStreams runs 50 bidi streams at once on one client connection per route.
func TestGRPCConcurrentStreams(t *testing.T) {
	m := grpcStartMesh(t)
	const streams, msgs = 50, 20
	for _, r := range m.routes {
		c := m.client(t, r)
		t.Run(r.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			errc := make(chan error, streams)
			var wg sync.WaitGroup
			for s := range streams {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errc <- grpcRunStream(ctx, c, s, msgs)
				}()
			}
			wg.Wait()
			close(errc)
			for err := range errc {
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
}

// grpcStreamBody is message i of stream s.
func grpcStreamBody(s, i int) []byte {
	return append([]byte(fmt.Sprintf("stream %d message %d|", s, i)), grpcPattern(uint64(s*1000+i), 100+s*37+i)...)
}

// grpcRunStream sends msgs messages on a new bidi stream while receiving their echoes, and checks them.
func grpcRunStream(ctx context.Context, c testpb.TestServiceClient, s, msgs int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.FullDuplexCall(ctx)
	if err != nil {
		return fmt.Errorf("stream %d: %w", s, err)
	}
	sendErr := make(chan error, 1)
	go func() {
		for i := range msgs {
			if err := stream.Send(&testpb.StreamingOutputCallRequest{
				Payload: &testpb.Payload{Body: grpcStreamBody(s, i)}}); err != nil {
				sendErr <- fmt.Errorf("stream %d: Send %d: %w", s, i, err)
				return
			}
		}
		sendErr <- stream.CloseSend()
	}()
	for i := range msgs {
		resp, err := stream.Recv()
		if err != nil {
			cancel()
			<-sendErr
			return fmt.Errorf("stream %d: Recv %d: %w", s, i, err)
		}
		if !bytes.Equal(resp.GetPayload().GetBody(), grpcStreamBody(s, i)) {
			cancel()
			<-sendErr
			return fmt.Errorf("stream %d: message %d: got %.30q..., want %.30q...", s, i,
				resp.GetPayload().GetBody(), grpcStreamBody(s, i))
		}
	}
	if _, err := stream.Recv(); err != io.EOF {
		cancel()
		<-sendErr
		return fmt.Errorf("stream %d: after %d messages: got %v, want io.EOF", s, msgs, err)
	}
	return <-sendErr
}

// TestGRPCMetrics checks that meshlet_requests_total counts gRPC calls exactly on both sidecars, with the
// gRPC code read from trailers.
func TestGRPCMetrics(t *testing.T) {
	m := grpcStartMesh(t)
	const name = "meshlet_requests_total"
	okOut := map[string]string{"direction": "outbound", "upstream": "api", "code_class": "2xx", "grpc_code": "OK"}
	okIn := map[string]string{"direction": "inbound", "upstream": "api", "code_class": "2xx", "grpc_code": "OK"}

	// exact runs calls, then waits for each metric to grow by its delta and checks it grew by exactly that.
	exact := func(t *testing.T, calls func(), deltas map[*meshlettest.Proc][]struct {
		labels map[string]string
		delta  float64
	}) {
		t.Helper()
		before := map[*meshlettest.Proc][]float64{}
		for p, ds := range deltas {
			for _, d := range ds {
				before[p] = append(before[p], p.MetricSum(t, name, d.labels))
			}
		}
		calls()
		for p, ds := range deltas {
			for i, d := range ds {
				want := before[p][i] + d.delta
				if got := p.WaitMetric(t, 5*time.Second, name, d.labels, want); got != want {
					t.Errorf("%s%v on %s: got %v, want %v (+%v); have:%s", name, d.labels, p.Admin, got, want,
						d.delta, p.Metrics(t).Lines(name))
				}
			}
		}
	}
	type delta = struct {
		labels map[string]string
		delta  float64
	}
	const n = 25
	unary := func(t *testing.T, c testpb.TestServiceClient, count int, es *testpb.EchoStatus) func() {
		return func() {
			for range count {
				_, err := c.UnaryCall(grpcCallCtx(t, grpcNewCallID(), ""),
					&testpb.SimpleRequest{ResponseSize: 100, ResponseStatus: es})
				if es == nil && err != nil {
					t.Fatalf("UnaryCall: %v", err)
				}
				if es != nil && status.Code(err) != codes.Code(es.Code) {
					t.Fatalf("UnaryCall: got %v, want %v", err, codes.Code(es.Code))
				}
			}
		}
	}
	sidecar, app, named := m.client(t, m.routes[0]), m.client(t, m.routes[1]), m.client(t, m.routes[2])

	t.Run("ok via sidecar", func(t *testing.T) {
		exact(t, unary(t, sidecar, n, nil), map[*meshlettest.Proc][]delta{m.a: {{okOut, n}}, m.b: {{okIn, n}}})
	})
	t.Run("ok via name-routed listener", func(t *testing.T) {
		exact(t, unary(t, named, n, nil), map[*meshlettest.Proc][]delta{m.a: {{okOut, n}}, m.b: {{okIn, n}}})
	})
	t.Run("ok via app peer", func(t *testing.T) {
		l := map[string]string{"direction": "outbound", "upstream": "direct", "code_class": "2xx", "grpc_code": "OK"}
		exact(t, unary(t, app, n, nil), map[*meshlettest.Proc][]delta{m.a: {{l, n}}})
	})
	t.Run("server error status", func(t *testing.T) {
		es := &testpb.EchoStatus{Code: int32(codes.NotFound), Message: "gone"}
		out := map[string]string{"direction": "outbound", "upstream": "api", "grpc_code": "NotFound"}
		in := map[string]string{"direction": "inbound", "upstream": "api", "grpc_code": "NotFound"}
		exact(t, unary(t, sidecar, 10, es), map[*meshlettest.Proc][]delta{m.a: {{out, 10}}, m.b: {{in, 10}}})
	})
	t.Run("server status in trailers after data", func(t *testing.T) {
		const k = 5
		out := map[string]string{"direction": "outbound", "upstream": "api", "grpc_code": "Internal"}
		in := map[string]string{"direction": "inbound", "upstream": "api", "grpc_code": "Internal"}
		exact(t, func() {
			for range k {
				stream, err := sidecar.StreamingOutputCall(grpcCallCtx(t, grpcNewCallID(), ""),
					&testpb.StreamingOutputCallRequest{
						ResponseParameters: []*testpb.ResponseParameters{{Size: 10}, {Size: 10}},
						ResponseStatus:     &testpb.EchoStatus{Code: int32(codes.Internal), Message: "late"}})
				if err != nil {
					t.Fatal(err)
				}
				for i := range 3 {
					_, err = stream.Recv()
					if i < 2 && err != nil {
						t.Fatalf("Recv %d: %v", i, err)
					}
				}
				if status.Code(err) != codes.Internal {
					t.Fatalf("got %v, want Internal", err)
				}
			}
		}, map[*meshlettest.Proc][]delta{m.a: {{out, k}}, m.b: {{in, k}}})
	})
	t.Run("nothing left in flight", func(t *testing.T) {
		for _, p := range []*meshlettest.Proc{m.a, m.b} {
			deadline := time.Now().Add(5 * time.Second)
			for {
				v := p.MetricSum(t, "meshlet_requests_in_flight", nil)
				if v == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("meshlet_requests_in_flight = %v on %s, want 0", v, p.Admin)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	})
}
