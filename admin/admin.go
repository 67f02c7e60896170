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
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"meshlet.dev/meshlet/metrics"
)

// DefaultListen is where the admin listener binds when the config names no address: loopback only.
const DefaultListen = "127.0.0.1:15000"

// Config is the admin section of the config file.
type Config struct {
	Listen string `yaml:"listen" json:"listen"` // host:port; default 127.0.0.1:15000
	// EnableQuit turns on POST /quitquitquit (loopback clients only), which shuts meshlet down like SIGTERM.
	// Default true; false answers 404.
	EnableQuit *bool `yaml:"enable_quit" json:"enable_quit"` // callers on the same host or pod only
	// AllowedHosts are host names (no port) that /debug/* and the POST endpoints accept in the Host header besides
	// IP addresses, localhost (and names under .localhost) and admin.listen's host. Any other name is refused with
	// 403, so that a web page cannot reach the admin listener by DNS rebinding. Default none.
	AllowedHosts []string `yaml:"allowed_hosts" json:"allowed_hosts"`
	// Pprof serves Go's profiles under /debug/pprof/ (local clients only), for measuring a running sidecar.
	// Default false: 404.
	Pprof bool `yaml:"pprof" json:"pprof"`
	// DrainToken lets a remote client (the kubelet running the app's preStop hook from the node) call /drain
	// when it sends it in the X-Meshlet-Drain-Token header; injection sets a random one per pod, in the hook and
	// here. Empty (default): /drain answers local clients only. Redacted in /debug/config.
	DrainToken string `yaml:"drain_token" json:"drain_token"`
}

// MinDrainToken is the shortest admin.drain_token accepted: 16 characters (injection writes 32 hex digits).
const MinDrainToken = 16

// HeaderDrainToken carries admin.drain_token on a remote /drain request.
const HeaderDrainToken = "X-Meshlet-Drain-Token"

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
	var errs []error
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("admin.listen: %q must be host:port", c.Listen))
	}
	for i, h := range c.AllowedHosts {
		if !hostName().MatchString(h) {
			errs = append(errs, fmt.Errorf("admin.allowed_hosts[%d]: %q must be a host name without a port (IP addresses and localhost are always allowed)", i, h))
		}
	}
	if t := c.DrainToken; t != "" && (len(t) < MinDrainToken || strings.ContainsAny(t, " \t\r\n")) {
		errs = append(errs, fmt.Errorf("admin.drain_token: must be at least %d characters, without spaces (injection makes a random one)", MinDrainToken))
	}
	return errors.Join(errs...)
}

// hostName is a DNS name: labels of letters, digits and hyphens (underscores too, as some DNS names have them).
var hostName = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$`)
})

// Options are the views and actions the admin server exposes. Nil functions turn their endpoint off (404).
type Options struct {
	Logger    *slog.Logger
	Metrics   http.Handler    // /metrics
	Ready     func() error    // /ready: nil error means ready
	Warnings  func() []string // /ready: "warning: " lines after "ready" (ready, but degraded); nil: none
	Upstreams func() any      // /debug/upstreams, rendered as JSON
	Config    func() any      // /debug/config, rendered as JSON; must not hold secrets
	// Reload is POST /debug/reload (local clients only): warnings, or the error that rejected the new config.
	Reload func() ([]string, error)
	// Quit is POST /quitquitquit (local clients only): it starts a graceful shutdown and must not block. Off when
	// nil or when Config.EnableQuit is false.
	Quit func()
	// Drain is GET and POST /drain, for the preStop hook of the app's containers (the kubelet calls it from the
	// node, so any client may: see guard.go's accessDrain). It starts the drain that SIGTERM starts (idempotent, no
	// way back), blocks until the drain delay since the drain began has passed or ctx (the request's) ends, and
	// returns the answer's text. Nil: 404.
	Drain func(ctx context.Context) string
	// LogLevel is the log's level: GET /debug/log-level reads it and POST /debug/log-level?level=debug sets it
	// (local clients only) until the next config reload sets log.level again. Nil: 404.
	LogLevel *slog.LevelVar
	// Refused counts refused requests by reason (meshlet_admin_requests_refused_total, metrics.Metrics'
	// AdminRefused); nil: refusals are logged but not exported.
	Refused *prometheus.CounterVec
}

// Server is the admin HTTP server.
type Server struct {
	cfg  Config
	opts Options
	log  *slog.Logger
	srv  *http.Server
	ln   net.Listener
	done chan struct{}

	hosts    map[string]bool        // lower-case names accepted in Host besides IP literals and localhost
	refused  *prometheus.CounterVec // reason
	logLimit logLimiter
}

// New returns an admin server for cfg; call Start to bind it.
func New(cfg Config, opts Options) *Server {
	cfg.SetDefaults()
	s := &Server{cfg: cfg, opts: opts, log: opts.Logger.With("component", "admin"), done: make(chan struct{}),
		hosts: map[string]bool{}}
	s.refused = opts.Refused
	if s.refused == nil {
		s.refused = metrics.NewAdminRefused()
	}
	if h, _, err := net.SplitHostPort(cfg.Listen); err == nil && h != "" {
		s.hosts[strings.TrimSuffix(strings.ToLower(h), ".")] = true
	}
	for _, h := range cfg.AllowedHosts {
		s.hosts[strings.TrimSuffix(strings.ToLower(h), ".")] = true
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /live", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /ready", s.ready)
	if opts.Metrics != nil {
		mux.Handle("GET /metrics", opts.Metrics)
	}
	if opts.Upstreams != nil {
		mux.HandleFunc("GET /debug/upstreams", s.guard(accessView, func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, map[string]any{"upstreams": opts.Upstreams()})
		}))
	}
	if opts.Config != nil {
		mux.HandleFunc("GET /debug/config", s.guard(accessView, func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, opts.Config())
		}))
	}
	if opts.Reload != nil {
		mux.HandleFunc("POST /debug/reload", s.guard(accessMutate, s.reload))
	}
	if opts.Quit != nil && *cfg.EnableQuit {
		mux.HandleFunc("POST /quitquitquit", s.guard(accessMutate, s.quit))
	}
	if opts.Drain != nil {
		mux.HandleFunc("GET /drain", s.guard(accessDrain, s.drain))
		mux.HandleFunc("POST /drain", s.guard(accessDrain, s.drain))
	}
	if opts.LogLevel != nil {
		mux.HandleFunc("GET /debug/log-level", s.guard(accessLocalView, s.logLevel))
		mux.HandleFunc("POST /debug/log-level", s.guard(accessMutate, s.setLogLevel))
	}
	if cfg.Pprof {
		mux.HandleFunc("GET /debug/pprof/{$}", s.guard(accessLocalView, pprofIndex))
		mux.HandleFunc("GET /debug/pprof/profile", s.guard(accessLocalView, pprofCPU))
		mux.HandleFunc("GET /debug/pprof/trace", s.guard(accessLocalView, pprofTrace))
		mux.HandleFunc("GET /debug/pprof/{name}", s.guard(accessLocalView, pprofNamed))
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

// reload answers what guard let through (accessMutate).
func (s *Server) reload(w http.ResponseWriter, r *http.Request) {
	s.log.Info("reload requested", "remote", r.RemoteAddr)
	warnings, err := s.opts.Reload()
	if err != nil {
		http.Error(w, "reload rejected: "+err.Error(), http.StatusBadRequest)
		return
	}
	writeJSON(w, map[string]any{"reloaded": true, "warnings": warnings})
}

// quit answers what guard let through (accessMutate): only the app next to meshlet should be able to stop it.
func (s *Server) quit(w http.ResponseWriter, r *http.Request) {
	s.log.Info("quit requested", "remote", r.RemoteAddr)
	fmt.Fprintln(w, "shutting down")
	s.opts.Quit()
}

// drain answers what guard let through (accessDrain), once the drain delay has passed.
func (s *Server) drain(w http.ResponseWriter, r *http.Request) {
	s.log.Info("drain requested", "remote", r.RemoteAddr, "user_agent", r.UserAgent())
	fmt.Fprintln(w, s.opts.Drain(r.Context()))
}

func (s *Server) index(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintln(w, "meshlet admin\n\n/live\n/ready\n/metrics\n/debug/config\n/debug/upstreams\n/debug/log-level\n"+
		"POST /debug/log-level?level=debug\nPOST /debug/reload\nPOST /quitquitquit\nGET or POST /drain")
	if s.cfg.Pprof {
		fmt.Fprintln(w, "/debug/pprof/")
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// logLevel answers GET /debug/log-level: the level, one line.
func (s *Server) logLevel(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintln(w, strings.ToLower(s.opts.LogLevel.Level().String()))
}

// setLogLevel answers POST /debug/log-level?level=L (debug, info, warn, error): the log's level until the next
// config reload.
func (s *Server) setLogLevel(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query().Get("level")
	var l slog.Level
	switch v {
	case "debug", "info", "warn", "error":
		_ = l.UnmarshalText([]byte(v))
	default:
		http.Error(w, fmt.Sprintf("level %q: want ?level=debug, info, warn or error", v), http.StatusBadRequest)
		return
	}
	old := s.opts.LogLevel.Level()
	s.opts.LogLevel.Set(l)
	s.log.Warn("log level changed at run time", "from", strings.ToLower(old.String()), "to", v,
		"remote", r.RemoteAddr)
	fmt.Fprintln(w, v)
}
