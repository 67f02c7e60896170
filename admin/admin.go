// Package admin serves meshlet's admin listener: /live, /ready, /metrics and the /debug views.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// DefaultListen is where the admin listener binds when the config names no address: loopback only.
const DefaultListen = "127.0.0.1:15000"

// Config is the admin section of the config file.
type Config struct {
	Listen string `yaml:"listen" json:"listen"` // host:port; default 127.0.0.1:15000
	// EnableQuit turns on POST /quitquitquit (loopback clients only), which shuts meshlet down like SIGTERM.
	// Default true; false answers 404.
	EnableQuit *bool `yaml:"enable_quit" json:"enable_quit"` // callers on the same host or pod only
}

// SetDefaults fills zero fields.
func (c *Config) SetDefaults() {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.EnableQuit == nil {
		on := true
		c.EnableQuit = &on
	}
}

// Validate reports problems with their field paths.
func (c *Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("admin.listen: %q must be host:port", c.Listen)
	}
	return nil
}

// Options are the views and actions the admin server exposes. Nil functions turn their endpoint off (404).
type Options struct {
	Logger    *slog.Logger
	Metrics   http.Handler             // /metrics
	Ready     func() error             // /ready: nil error means ready
	Warnings  func() []string          // /ready: "warning: " lines after "ready" (ready, but degraded); nil: none
	Upstreams func() any               // /debug/upstreams, rendered as JSON
	Config    func() any               // /debug/config, rendered as JSON; must not hold secrets
	Reload    func() ([]string, error) // POST /debug/reload: warnings, or the error that rejected the new config
	// Quit is POST /quitquitquit: it starts a graceful shutdown and must not block. Off when nil or when
	// Config.EnableQuit is false.
	Quit func()
}

// Server is the admin HTTP server.
type Server struct {
	cfg  Config
	opts Options
	log  *slog.Logger
	srv  *http.Server
	ln   net.Listener
	done chan struct{}
}

// New returns an admin server for cfg; call Start to bind it.
func New(cfg Config, opts Options) *Server {
	cfg.SetDefaults()
	s := &Server{cfg: cfg, opts: opts, log: opts.Logger.With("component", "admin"), done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /live", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /ready", s.ready)
	if opts.Metrics != nil {
		mux.Handle("GET /metrics", opts.Metrics)
	}
	if opts.Upstreams != nil {
		mux.HandleFunc("GET /debug/upstreams", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, map[string]any{"upstreams": opts.Upstreams()})
		})
	}
	if opts.Config != nil {
		mux.HandleFunc("GET /debug/config", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, opts.Config()) })
	}
	if opts.Reload != nil {
		mux.HandleFunc("POST /debug/reload", s.reload)
	}
	if opts.Quit != nil && *cfg.EnableQuit {
		mux.HandleFunc("POST /quitquitquit", s.quit)
	}
	mux.HandleFunc("GET /{$}", s.index)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	return s
}

// Start binds the admin listener and serves it in the background until Shutdown.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Err != nil {
			err = oe.Err
		}
		return fmt.Errorf("admin.listen: cannot listen on %s: %w", s.cfg.Listen, err)
	}
	s.ln = ln
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin listener stopped", "error", err)
		}
	}()
	s.log.Info("admin listening", "listen", ln.Addr().String())
	return nil
}

// Addr is the bound address; empty before Start.
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Shutdown stops the server, waiting for in-flight admin requests until ctx ends. Safe to call more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.ln == nil {
		return nil
	}
	err := s.srv.Shutdown(ctx)
	<-s.done
	return err
}

func (s *Server) ready(w http.ResponseWriter, r *http.Request) {
	if s.opts.Ready != nil {
		if err := s.opts.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
	}
	fmt.Fprintln(w, "ready")
	if s.opts.Warnings != nil {
		for _, m := range s.opts.Warnings() {
			fmt.Fprintln(w, "warning: "+m)
		}
	}
}

func (s *Server) reload(w http.ResponseWriter, r *http.Request) {
	warnings, err := s.opts.Reload()
	if err != nil {
		http.Error(w, "reload rejected: "+err.Error(), http.StatusBadRequest)
		return
	}
	writeJSON(w, map[string]any{"reloaded": true, "warnings": warnings})
}

// quit answers local clients only: the admin listener may face the network (in Kubernetes it listens on the pod
// IP, which the kubelet probes and Prometheus scrapes), and only the app next to meshlet should be able to stop it.
func (s *Server) quit(w http.ResponseWriter, r *http.Request) {
	if !localClient(r) {
		http.Error(w, "quitquitquit: local clients only (loopback, or this host's or pod's own address)", http.StatusForbidden)
		return
	}
	s.log.Info("quit requested", "remote", r.RemoteAddr)
	fmt.Fprintln(w, "shutting down")
	s.opts.Quit()
}

// localClient reports whether the request comes from this host or pod: a loopback address, or the very address
// it was sent to (a process in the same network namespace calling the pod IP).
func localClient(r *http.Request) bool {
	host, _, _ := net.SplitHostPort(r.RemoteAddr)
	ip := net.ParseIP(host)
	if ip == nil {
		return false
	}
	if ip.IsLoopback() {
		return true
	}
	local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok {
		return false
	}
	lhost, _, _ := net.SplitHostPort(local.String())
	return ip.Equal(net.ParseIP(lhost))
}

func (s *Server) index(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintln(w, "meshlet admin\n\n/live\n/ready\n/metrics\n/debug/config\n/debug/upstreams\nPOST /debug/reload\nPOST /quitquitquit")
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
