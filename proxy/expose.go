package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"time"
)

// ExposePath is one path of the local app served on a plain HTTP listener of its own, with no mutual TLS and no
// authorization: Consul's expose paths, for probes that cannot present a mesh certificate (the kubelet's, a
// Consul check). Only that exact path is forwarded (the query kept); any other answers 404 without reaching the
// app.
type ExposePath struct {
	Listen   string // host:port of the listener
	Path     string // the exact path, starting with /
	Target   string // the app, ip:port
	Protocol string // ProtocolHTTP (HTTP/1.1 to the app; default) or ProtocolHTTP2 (h2c to the app: gRPC health checks)
}

// Limits of the expose listeners (a probe sends small requests).
const (
	exposeMaxHeaderBytes    = 16 << 10
	exposeReadHeaderTimeout = 10 * time.Second
	exposeIdleTimeout       = time.Minute
)

// Expose serves expose paths until Shutdown; paths that share a listen address share its listener.
type Expose struct {
	log     *slog.Logger
	servers []*http.Server
	addrs   []string
	trs     []*http.Transport
	wg      sync.WaitGroup
}

// StartExpose binds and serves paths. If a listener cannot be bound, none is left open and the error says which.
func StartExpose(paths []ExposePath, log *slog.Logger) (*Expose, error) {
	e := &Expose{log: log.With("component", "expose")}
	byListen := map[string]exactPaths{}
	var order []string
	for i, p := range paths {
		if p.Path == "" || p.Path[0] != '/' {
			return nil, fmt.Errorf("expose path %d: %q must start with /", i, p.Path)
		}
		if byListen[p.Listen] == nil {
			byListen[p.Listen] = exactPaths{}
			order = append(order, p.Listen)
		}
		rp := exposeProxy(p)
		e.trs = append(e.trs, rp.Transport.(*http.Transport))
		byListen[p.Listen][p.Path] = rp
	}
	var lns []net.Listener
	for _, addr := range order {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("expose listener: %w", err)
		}
		lns = append(lns, ln)
	}
	for i, ln := range lns {
		srv := &http.Server{Handler: byListen[order[i]], MaxHeaderBytes: exposeMaxHeaderBytes,
			ReadHeaderTimeout: exposeReadHeaderTimeout, IdleTimeout: exposeIdleTimeout,
			ErrorLog: slog.NewLogLogger(e.log.Handler(), slog.LevelDebug)}
		srv.Protocols = new(http.Protocols)
		srv.Protocols.SetHTTP1(true)
		srv.Protocols.SetUnencryptedHTTP2(true)
		e.servers = append(e.servers, srv)
		e.addrs = append(e.addrs, ln.Addr().String())
		e.wg.Go(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				e.log.Error("expose listener stopped", "listen", ln.Addr().String(), "error", err.Error())
			}
		})
		e.log.Info("expose listener", "listen", ln.Addr().String())
	}
	return e, nil
}

// exactPaths passes a request for one of its paths exactly, as the client wrote it (no escapes, no absolute form
// that would name another host), to that path's handler; others get 404.
type exactPaths map[string]http.Handler

func (m exactPaths) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h, ok := m[r.URL.Path]
	if !ok || r.URL.RawPath != "" || r.URL.Host != "" {
		http.NotFound(w, r)
		return
	}
	h.ServeHTTP(w, r)
}

// exposeProxy forwards to p's target, at p's path exactly.
func exposeProxy(p ExposePath) *httputil.ReverseProxy {
	tr := &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4, IdleConnTimeout: exposeIdleTimeout,
		DialContext: (&net.Dialer{Timeout: DefaultConnectTimeout}).DialContext, ResponseHeaderTimeout: time.Minute}
	tr.Protocols = new(http.Protocols)
	if p.Protocol == ProtocolHTTP2 {
		tr.Protocols.SetUnencryptedHTTP2(true)
	} else {
		tr.Protocols.SetHTTP1(true)
	}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host, pr.Out.URL.Path, pr.Out.URL.RawPath = "http", p.Target, p.Path, ""
			pr.Out.Host = pr.In.Host
		},
		Transport:     tr,
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			w.WriteHeader(http.StatusBadGateway)
		},
	}
}

// Addrs are the bound addresses of the listeners, in the order of their first path.
func (e *Expose) Addrs() []string { return e.addrs }

// Shutdown stops the listeners and waits for their requests until ctx ends, then closes what is left.
func (e *Expose) Shutdown(ctx context.Context) {
	for _, srv := range e.servers {
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close()
		}
	}
	e.wg.Wait()
	for _, tr := range e.trs {
		tr.CloseIdleConnections()
	}
}
