package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
)

const (
	requestTimeout = 5 * time.Second // per request, client side
	maxInFlight    = 256             // requests in flight at most
)

// kinds of request, in the order the load cycles through them: half gRPC, a quarter each HTTP GET and POST.
var kinds = []string{"grpc", "http-get", "grpc", "http-post"}

// window is what the load saw during one report interval.
type window struct {
	requests map[string]int             // by kind
	errors   map[string]int             // by cause
	first    map[string]time.Time       // when each cause was first seen
	lat      map[string][]time.Duration // successful requests' latencies, by kind
}

func newWindow() *window {
	return &window{requests: map[string]int{}, errors: map[string]int{}, first: map[string]time.Time{},
		lat: map[string][]time.Duration{}}
}

// all returns the latencies of every kind, sorted.
func (w *window) all() []time.Duration {
	var out []time.Duration
	for _, l := range w.lat {
		out = append(out, l...)
	}
	slices.Sort(out)
	return out
}

func (w *window) total() (req, errs int) {
	for _, n := range w.requests {
		req += n
	}
	for _, n := range w.errors {
		errs += n
	}
	return req, errs
}

// percentile of sorted durations (nearest rank); 0 for none.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p/100+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// load sends steady mixed traffic to meshlet A's two upstream listeners and records it per window.
type load struct {
	httpURL string
	http    *http.Client
	tr      *http.Transport
	conn    *grpc.ClientConn
	grpc    testgrpc.TestServiceClient
	seq     atomic.Uint64
	skipped atomic.Int64 // requests not sent: maxInFlight were in flight, or the generator stalled

	mu  sync.Mutex
	cur *window
}

func newLoad(httpAddr, grpcAddr string) (*load, error) {
	var protos http.Protocols
	protos.SetHTTP1(true)
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		Protocols:           &protos,
		MaxIdleConns:        64,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     time.Minute, // shorter than meshlet's idle_timeout (5m): the client closes first
		DisableCompression:  true,
	}
	conn, err := grpc.NewClient("passthrough:///"+grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	return &load{
		httpURL: "http://" + httpAddr + "/soak",
		http:    &http.Client{Transport: tr, Timeout: requestTimeout},
		tr:      tr,
		conn:    conn,
		grpc:    testgrpc.NewTestServiceClient(conn),
		cur:     newWindow(),
	}, nil
}

func (l *load) close() {
	l.tr.CloseIdleConnections()
	l.conn.Close()
}

// take returns the current window and starts a new one.
func (l *load) take() *window {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.cur
	l.cur = newWindow()
	return w
}

func (l *load) record(kind string, d time.Duration, cause string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cur.requests[kind]++
	if cause != "" {
		if l.cur.errors[cause] == 0 {
			l.cur.first[cause] = time.Now()
		}
		l.cur.errors[cause]++
		return
	}
	l.cur.lat[kind] = append(l.cur.lat[kind], d)
}

// run starts rate requests per second in all until ctx ends, then waits for those in flight. Requests start on
// schedule whatever the latency (open loop), at most maxInFlight at a time: a request due while that many are
// in flight, or more than a quarter second's worth due at once (the generator itself stalled), is skipped and
// counted, so the load never queues up without bound.
func (l *load) run(ctx context.Context, rate int) {
	const tick = 10 * time.Millisecond
	sem := make(chan struct{}, maxInFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	start := time.Now()
	var sent int64
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		due := int64(time.Since(start).Seconds()*float64(rate)) - sent
		sent += due
		if limit := int64(rate / 4); due > limit {
			l.skipped.Add(due - limit)
			due = limit
		}
		for ; due > 0; due-- {
			select {
			case sem <- struct{}{}:
				wg.Go(func() {
					defer func() { <-sem }()
					l.one()
				})
			default:
				l.skipped.Add(1)
			}
		}
	}
}

// one sends one request of the next kind and records its outcome. Requests are not cancelled when the load
// stops: those in flight complete (within requestTimeout) and count, and meshlet never sees a client go away.
func (l *load) one() {
	ctx := context.Background()
	n := l.seq.Add(1)
	kind := kinds[n%uint64(len(kinds))]
	id := strconv.FormatUint(n, 10)
	start := time.Now()
	var cause string
	switch kind {
	case "grpc":
		cause = l.callGRPC(ctx, id)
	case "http-get":
		cause = l.callHTTP(ctx, http.MethodGet, id)
	case "http-post":
		cause = l.callHTTP(ctx, http.MethodPost, id)
	}
	l.record(kind, time.Since(start), cause)
}

// payload is a request body that differs per request, so an echo from the wrong request is noticed.
func payload(id string) []byte {
	return append(bytes.Repeat([]byte("soak-"), 40), id...)
}

// callHTTP makes one HTTP/1.1 request and returns "" or the cause of its failure.
func (l *load) callHTTP(ctx context.Context, method, id string) string {
	var body io.Reader
	want := []byte("pong " + id)
	url := l.httpURL + "?id=" + id
	if method == http.MethodPost {
		want = payload(id)
		body = bytes.NewReader(want)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return "http request: " + err.Error()
	}
	resp, err := l.http.Do(req)
	if err != nil {
		return "http transport: " + transportCause(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	switch {
	case resp.StatusCode != http.StatusOK:
		return fmt.Sprintf("http %d %s", resp.StatusCode, resp.Header.Get("X-Meshlet-Error"))
	case err != nil:
		return "http body: " + transportCause(err)
	case !bytes.Equal(got, want):
		return "http wrong body"
	}
	return ""
}

// callGRPC makes one unary gRPC call and returns "" or the cause of its failure.
func (l *load) callGRPC(ctx context.Context, id string) string {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	want := payload(id)
	resp, err := l.grpc.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: want}})
	if err != nil {
		st := status.Convert(err)
		msg := st.Message()
		if len(msg) > 100 {
			msg = msg[:100]
		}
		return fmt.Sprintf("grpc %s: %s", st.Code(), msg)
	}
	if !bytes.Equal(resp.GetPayload().GetBody(), want) {
		return "grpc wrong payload"
	}
	return ""
}

// transportCause is a short, stable description of a client-side transport error.
func transportCause(err error) string {
	var ne *net.OpError
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.As(err, &ne):
		return fmt.Sprintf("%s: %v", ne.Op, ne.Err)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed early (EOF)"
	}
	s := err.Error()
	if len(s) > 120 {
		s = s[:120]
	}
	return s
}
