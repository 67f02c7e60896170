package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"meshlet.dev/meshlet/grpcwire"
	"meshlet.dev/meshlet/metrics"
	"meshlet.dev/meshlet/proxy/h1guard"
)

// Fixed settings of the HTTP listeners (inbound, outbound and per-upstream); the others are ListenerLimits.
const (
	// maxReadFrameSize is the largest HTTP/2 frame meshlet accepts. Go's HTTP/2 client sizes each request's write
	// buffer by the peer's limit (up to 512 KiB for bodies of unknown length, as every gRPC call has), so the
	// default of 1 MiB made the calling sidecar hold half a MiB per request in flight. 16 KiB is HTTP/2's default
	// and what gRPC servers advertise.
	maxReadFrameSize = 16 << 10
)

// listener is a bound listener that serves until shut down.
type listener interface {
	serve()
	// shutdown stops accepting and waits for in-flight work until ctx ends, then closes what is left.
	shutdown(ctx context.Context) error
	// closeUnserved releases a listener that was bound but never served.
	closeUnserved()
	addr() string
}

// httpListener serves HTTP/1.1 and h2c on one socket.
type httpListener struct {
	ln    net.Listener
	guard *h1guard.Listener // ln's guard, whose lingering closes shutdown joins
	srv   *http.Server
	h1    *h1Server // the HTTP/1.1 loop in front of srv (h1serve.go)
	log   *slog.Logger
}

func (p *Proxy) newHTTPListener(ln net.Listener, direction, label string, lim ListenerLimits, h http.Handler) *httpListener {
	open := p.m.ConnectionsOpen.WithLabelValues(direction, label)
	total := p.m.Connections.WithLabelValues(direction, label)
	guard := h1guard.NewListener(ln, h1guard.Options{MaxHead: lim.MaxHeaderBytes, WriteTimeout: lim.WriteTimeout,
		HeadTimeout: lim.ReadHeaderTimeout, Budget: p.heads[direction]})
	srv := &http.Server{
		Handler:           p.guarded(direction, label, lim, h),
		ConnContext:       h1guard.ConnContext,
		ReadHeaderTimeout: lim.ReadHeaderTimeout,
		IdleTimeout:       lim.IdleTimeout,
		MaxHeaderBytes:    lim.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return p.baseCtx },
		// HTTP/2 settings, explicit where they are Go's defaults too so that a Go release does not change them
		// unnoticed (README: Security and limits).
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams:      lim.MaxConcurrentStreams,
			MaxReadFrameSize:          maxReadFrameSize,
			MaxDecoderHeaderTableSize: 4 << 10,
			// Responses without HPACK indexing, as the transports' requests (h2EncoderTableSize): no table of
			// response fields kept per connection (the client's decoder keeps the default 4 KiB one, which it may
			// use before our SETTINGS arrive).
			MaxEncoderHeaderTableSize:     h2EncoderTableSize,
			MaxReceiveBufferPerConnection: 1 << 20,
			MaxReceiveBufferPerStream:     1 << 20,
			WriteByteTimeout:              lim.WriteTimeout,
		},
		ConnState: func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				total.Inc()
				open.Inc()
			case http.StateClosed, http.StateHijacked:
				open.Dec()
			}
		},
	}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	srv.Protocols.SetHTTP2(true) // over the mutual TLS connections the inbound listener hands over (ALPN h2)
	return &httpListener{ln: guard, guard: guard, srv: srv, h1: newH1Server(srv, guard.Addr()), log: p.log}
}

func (l *httpListener) serve() {
	if err := l.h1.serve(l.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		l.log.Error("listener stopped", "listen", l.ln.Addr().String(), "error", err)
	}
}

// shutdown stops the listener's HTTP/1.1 loop and net/http's server behind it (each lets requests under way end
// until ctx ends, then closes what is left), and then waits for the lingering closes of its connections (each at
// most a second).
func (l *httpListener) shutdown(ctx context.Context) error {
	l.h1.closing.Store(true)
	l.ln.Close()
	h1err := make(chan error, 1)
	go func() { h1err <- l.h1.shutdown(ctx) }()
	err := l.srv.Shutdown(ctx)
	if e := <-h1err; err == nil {
		err = e
	}
	if err != nil {
		l.srv.Close()
		l.h1.closeAll()
		ctx = context.WithoutCancel(ctx) // the lingering closes end by themselves, within a second
	}
	_ = l.guard.Wait(ctx)
	return err
}

func (l *httpListener) addr() string   { return l.ln.Addr().String() }
func (l *httpListener) closeUnserved() { l.ln.Close() }
func (t *tcpProxy) addr() string       { return t.ln.Addr().String() }
func (t *tcpProxy) closeUnserved() {
	t.ln.Close()
	t.conns.wg.Done() // the accept loop that will not run
}

// listen binds addr, naming the config field in the error.
func listen(field, addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: cannot listen on %s: %w", field, addr, unwrapOpError(err))
	}
	return ln, nil
}

// unwrapOpError drops the "listen tcp <addr>:" prefix that the field and address already say.
func unwrapOpError(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err
	}
	return err
}

// routeTable finds the upstream an app names in a Host: its name, alone or followed by one of the domains. Its
// names are the proxy's upstreams map itself, which is never changed once published (a reload changes a copy): no
// key per name and domain, no copy of the names (issue 16).
type routeTable struct {
	names   map[string]*upstreamEntry // tcp upstreams too: lookup skips them
	domains []string                  // lowercased
}

func newRouteTable(ups map[string]*upstreamEntry, domains []string) routeTable {
	rt := routeTable{names: ups}
	for _, d := range domains {
		rt.domains = append(rt.domains, strings.ToLower(d))
	}
	return rt
}

// lookup finds the upstream named by a Host or :authority value, with or without port. An upstream's name is a
// DNS label (no dot): what comes before the first dot is the name, what follows must be one of the domains.
func (rt routeTable) lookup(host string) *cluster {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	name, domain, dotted := strings.Cut(host, ".")
	if dotted && !slices.Contains(rt.domains, domain) {
		return nil
	}
	if e := rt.names[name]; e != nil && e.cluster.protocol != ProtocolTCP {
		return e.cluster
	}
	return nil
}

// serveRouted is the handler of the name-routed outbound listener. A name that is no upstream gets 404 (gRPC:
// UNIMPLEMENTED), counted under upstream="".
func (p *Proxy) serveRouted(w http.ResponseWriter, r *http.Request) {
	u := (*p.routes.Load()).lookup(r.Host)
	if u != nil {
		u.ensureActive()
		u.serveHTTP(w, r, p.accessLog)
		return
	}
	start := time.Now()
	p.m.UpstreamErrors.WithLabelValues(metrics.Outbound, "", reasonUnknownUpstream).Inc()
	msg := fmt.Sprintf("meshlet: no upstream named %q", r.Host)
	a := answer{reason: reasonUnknownUpstream, status: http.StatusNotFound, code: grpcCodeForHTTP(http.StatusNotFound), msg: msg}
	code, grpcCode := http.StatusNotFound, notGRPC
	grpc := grpcwire.IsGRPC(r.Header)
	if grpc {
		code, grpcCode = http.StatusOK, int(a.code)
	}
	a.write(w, grpc, false)
	p.unknown.record(code, grpcCode, time.Since(start), 0, 0, "")
	if p.accessLog != nil {
		p.accessLog.Info("access", "direction", metrics.Outbound, "upstream", "", "method", r.Method,
			"authority", r.Host, "path", r.URL.Path, "proto", r.Proto, "status", code,
			"grpc_status", grpcCodeName(grpcCode), "error", reasonUnknownUpstream)
	}
}
