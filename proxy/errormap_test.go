package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/codes"

	"meshlet.dev/meshlet/metrics"
)

// TestProxyErrorMapping runs the reverse proxy's error handler in process over every kind of failed round trip,
// for plain HTTP and gRPC callers: the status, X-Meshlet-Error, the gRPC status of the trailers-only answer, the
// error counted, and what the access log gets.
func TestProxyErrorMapping(t *testing.T) {
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	idle, stop := context.WithCancelCause(context.Background())
	stop(errStreamIdle)
	connErr := &connectError{addr: "127.0.0.1:1", err: errors.New("connection refused")}
	cases := []struct {
		name      string
		direction string
		err       error
		ctx       context.Context // the outbound request's context; nil: Background
		clientCtx context.Context // the client's context in the exchange; nil: Background
		fault     *clientFault    // a fault the client's body recorded
		status    int             // 0: nothing written (the client went away)
		reason    string          // X-Meshlet-Error and, but for refused, the error counted
		code      codes.Code
		logged    string // the access log's error; "": err.Error()
	}{
		{name: "no endpoint", direction: metrics.Outbound, err: fmt.Errorf("upstream api: %w", ErrNoEndpoint),
			status: http.StatusServiceUnavailable, reason: reasonNoEndpoint, code: codes.Unavailable},
		{name: "deadline", direction: metrics.Outbound, err: context.DeadlineExceeded,
			status: http.StatusGatewayTimeout, reason: reasonTimeout, code: codes.DeadlineExceeded},
		{name: "response headers too large", direction: metrics.Outbound,
			err:    &headersTooLargeError{limit: 1024, err: errors.New("too long")},
			status: http.StatusBadGateway, reason: reasonHeadersTooLarge, code: codes.Unavailable},
		{name: "connect outbound", direction: metrics.Outbound, err: connErr,
			status: http.StatusBadGateway, reason: reasonConnect, code: codes.Unavailable},
		{name: "connect inbound: the local app is down", direction: metrics.Inbound, err: connErr,
			status: http.StatusServiceUnavailable, reason: reasonConnect, code: codes.Unavailable},
		{name: "broken connection", direction: metrics.Outbound, err: io.ErrUnexpectedEOF,
			status: http.StatusBadGateway, reason: reasonOther, code: codes.Unavailable},
		{name: "client fault as the error", direction: metrics.Outbound, err: errMalformedBody,
			status: http.StatusBadRequest, reason: errMalformedBody.(*clientFault).reason, code: codes.Internal,
			logged: errMalformedBody.(*clientFault).msg},
		{name: "client fault in the body wins over the error", direction: metrics.Inbound, err: connErr,
			fault: errMalformedBody.(*clientFault), status: http.StatusBadRequest,
			reason: errMalformedBody.(*clientFault).reason, code: codes.Internal, logged: errMalformedBody.(*clientFault).msg},
		{name: "client went away", direction: metrics.Outbound, err: connErr, clientCtx: gone, reason: reasonCanceled},
		{name: "stream idle", direction: metrics.Outbound, err: context.Canceled, ctx: idle,
			status: http.StatusRequestTimeout, reason: reasonIdle, code: codes.DeadlineExceeded,
			logged: "upstream api: no byte either way for 0s (stream_idle_timeout)"},
	}
	for _, tc := range cases {
		for _, grpc := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/grpc=%v", tc.name, grpc), func(t *testing.T) {
				m := metrics.New(prometheus.NewRegistry(), "test")
				c := newCluster(&UpstreamConfig{Name: "api", Protocol: ProtocolHTTP}, tc.direction, m,
					slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
				t.Cleanup(c.close)
				ex := &exchange{clientCtx: context.Background()}
				if tc.clientCtx != nil {
					ex.clientCtx = tc.clientCtx
				}
				if tc.fault != nil {
					ex.body = &countingBody{ReadCloser: io.NopCloser(strings.NewReader(""))}
					ex.body.fault.Store(tc.fault)
				}
				ctx := tc.ctx
				if ctx == nil {
					ctx = context.Background()
				}
				r := httptest.NewRequest(http.MethodPost, "http://api/x", nil)
				if grpc {
					r.Header.Set("Content-Type", "application/grpc")
				}
				r = r.WithContext(context.WithValue(ctx, exchangeKey{}, ex))
				rec := httptest.NewRecorder()
				rw := &responseWriter{ResponseWriter: rec}
				c.proxyError(rw, r, tc.err)

				if tc.status == 0 {
					if rec.Body.Len() != 0 || rec.Header().Get("X-Meshlet-Error") != "" {
						t.Fatalf("answered a client that went away: %d %q", rec.Code, rec.Body.String())
					}
					if rw.code != StatusClientClosedRequest {
						t.Fatalf("recorded status %d, want %d", rw.code, StatusClientClosedRequest)
					}
				} else {
					if got := rec.Header().Get("X-Meshlet-Error"); got != tc.reason {
						t.Fatalf("X-Meshlet-Error %q, want %q", got, tc.reason)
					}
					if grpc {
						if rec.Code != http.StatusOK {
							t.Fatalf("gRPC answer with HTTP status %d, want 200 (trailers-only)", rec.Code)
						}
						if got := rec.Header().Get("Grpc-Status"); got != strconv.Itoa(int(tc.code)) {
							t.Fatalf("grpc-status %q, want %d (%s)", got, tc.code, tc.code)
						}
						if rec.Header().Get("Grpc-Message") == "" {
							t.Fatal("no grpc-message")
						}
					} else {
						if rec.Code != tc.status {
							t.Fatalf("status %d, want %d", rec.Code, tc.status)
						}
						if !strings.HasPrefix(rec.Body.String(), "meshlet: ") {
							t.Fatalf("body %q does not say meshlet answered", rec.Body.String())
						}
						if strings.Contains(rec.Body.String(), "127.0.0.1") {
							t.Fatalf("body %q names an endpoint address", rec.Body.String())
						}
					}
				}
				if tc.reason != reasonRefused && tc.fault == nil && tc.err != errMalformedBody {
					if n := testutil.ToFloat64(m.UpstreamErrors.WithLabelValues(tc.direction, "api", tc.reason)); n != 1 {
						t.Fatalf("meshlet_upstream_errors_total{reason=%q} = %v, want 1", tc.reason, n)
					}
				}
				want := tc.logged
				if want == "" {
					want = tc.err.Error()
				}
				if rw.errMsg != want {
					t.Fatalf("access log error %q, want %q", rw.errMsg, want)
				}
			})
		}
	}
}

// TestCallerLabel: inbound requests count under their verified caller's service, at most callersCap distinct
// callers per cluster, then under "other"; requests without one under "".
func TestCallerLabel(t *testing.T) {
	m := metrics.New(prometheus.NewRegistry(), "test")
	o := newObserver(m, metrics.Inbound, "api")
	o.callersCap = 2
	for _, caller := range []string{"web", "web", "batch", "billing", "ledger", "", "billing"} {
		o.record(200, notGRPC, time.Millisecond, 0, 0, caller)
	}
	for caller, want := range map[string]float64{"web": 2, "batch": 1, "other": 3, "": 1, "billing": 0, "ledger": 0} {
		if n := testutil.ToFloat64(m.Requests.WithLabelValues(metrics.Inbound, "api", "2xx", "", caller)); n != want {
			t.Errorf("meshlet_requests_total{caller=%q} = %v, want %v", caller, n, want)
		}
	}
}
