package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"meshlet.dev/meshlet/admin"
	"meshlet.dev/meshlet/appcheck"
	"meshlet.dev/meshlet/consul"
	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/metrics"
	"meshlet.dev/meshlet/mtls"
	"meshlet.dev/meshlet/proxy"
)

// sidecar is a running meshlet: the proxy, the admin server and the config they were built from.
type sidecar struct {
	path  string
	log   *slog.Logger
	level *slog.LevelVar
	m     *metrics.Metrics
	proxy *proxy.Proxy
	admin *admin.Server

	// parts are the background parts, in the order /ready asks them: config entries, certificates,
	// intentions, registration, the app check (those configured).
	parts runGroup

	consul       *consul.Source                   // nil without discovery.consul
	registrar    atomic.Pointer[consul.Registrar] // nil unless service.register, until the listeners are bound
	mustRegister bool                             // service.register with discovery.consul: not ready until registered
	entries      *consul.ConfigEntries            // nil without discovery.consul
	mesh         *consul.Mesh                     // nil unless outbound.transparent.consul_services

	tls        mtls.Source        // nil without a tls section
	intentions *consul.Intentions // nil unless mutual TLS inbound with Consul

	mu  sync.Mutex // serializes reloads and guards cfg and base
	cfg *fileConfig
	// base is the config as loaded (loadConfigFor), before the registration of sidecar_for is merged in.
	base *fileConfig

	sidecarForFlag string             // -sidecar-for
	sidecarFor     *consul.SidecarFor // nil without sidecar_for
	expose         *proxy.Expose      // the registration's expose paths; nil without

	drainOnce  sync.Once
	drainStart atomic.Pointer[time.Time] // when the drain began (GET /drain or a signal); nil before
}

// runSidecar runs meshlet on the config at path (with sidecarFor, the -sidecar-for flag: path may be "") until
// SIGTERM or SIGINT, and returns the exit code.
func runSidecar(path, sidecarFor string, stderr io.Writer) int {
	level := new(slog.LevelVar)
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	cfg, err := loadConfigFor(path, sidecarFor)
	if err != nil {
		log.Error("invalid config", "config", path, "error", err.Error())
		return 1
	}
	lv, _ := parseLevel(cfg.Log.Level)
	level.Set(lv)

	s := &sidecar{path: path, log: log, level: level, cfg: cfg, base: cfg, sidecarForFlag: sidecarFor, parts: runGroup{log: log}}
	s.m = metrics.New(prometheus.NewRegistry(), buildVersion())
	if err := s.startDiscovery(); err != nil {
		log.Error("invalid config", "config", path, "error", err.Error())
		return 1
	}
	defer s.stopDiscovery()
	defer s.parts.stopAll() // (before the Consul client closes)
	if cfg.SidecarFor != "" {
		if s.cfg, err = s.resolveSidecar(); err != nil {
			log.Error("invalid config", "config", path, "error", err.Error())
			return 1
		}
		cfg = s.cfg
	}
	s.startMesh()
	s.mustRegister = cfg.Service.Register && s.consul != nil
	var src discovery.Source // stays a nil interface without Consul
	if s.consul != nil {
		src = s.consul
		s.parts.add(partEntries, entriesPart{s})
		if s.mesh != nil {
			s.parts.add(partMesh, meshPart{s})
		}
		if s.sidecarFor != nil {
			s.parts.add(partSidecarFor, sidecarForPart{s})
		}
	}
	tlsSrc, err := s.startTLS()
	if err != nil {
		log.Error("invalid certificate", "config", path, "error", err.Error())
		return 1
	}
	var authz proxy.Authorizer // stays a nil interface without intentions
	if it := s.startIntentions(); it != nil {
		authz = it
	}
	s.addLateParts()
	var inboundTLS, outboundTLS func() mtls.MeshTLS // Consul's mesh config entry, when meshlet reads Consul's entries
	if s.entries != nil {
		inboundTLS, outboundTLS = s.entries.InboundTLS, s.entries.OutboundTLS
	}
	s.proxy, err = proxy.New(cfg.Config, proxy.Options{Logger: log, Metrics: s.m, AccessLog: cfg.Log.AccessLog,
		Discovery: src, TLS: tlsSrc, TLSMinVersion: cfg.TLS.MinVersion, InboundTLS: inboundTLS, OutboundTLS: outboundTLS,
		Authorizer: authz})
	if err != nil {
		log.Error("invalid config", "config", path, "error", err.Error())
		return 1
	}
	cfg.Upstreams = s.proxy.UpstreamConfigs() // the same settings (defaults and tls.mode resolved), held once
	// Signals are caught before anything binds, so that a SIGTERM during start-up still drains cleanly.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	s.admin = admin.New(cfg.Admin, admin.Options{
		Logger:    log,
		Metrics:   s.m.Handler(),
		Ready:     s.ready,
		Warnings:  s.readyWarnings,
		Upstreams: func() any { return redactedView(s.proxy.Upstreams()) }, // endpoint meta from Consul
		Config:    s.configView,
		Reload:    s.reload,
		Quit:      func() { notify(sigs, syscall.SIGTERM) }, // POST /quitquitquit: as if signalled
		Drain:     s.drainRequest,                           // GET/POST /drain: the app's preStop hook
		LogLevel:  s.level,
		Refused:   s.m.AdminRefused,
	})

	if err := s.admin.Start(); err != nil {
		log.Error("cannot start", "error", err.Error())
		return 1
	}
	if err := s.proxy.Start(); err != nil {
		log.Error("cannot start", "error", err.Error())
		s.admin.Shutdown(context.Background())
		return 1
	}
	if err := s.startExpose(); err != nil {
		log.Error("cannot start", "error", err.Error())
		s.proxy.Shutdown(context.Background())
		s.admin.Shutdown(context.Background())
		return 1
	}
	s.prepareRegistration()
	s.parts.startRest()
	log.Info("meshlet started", "version", buildVersion(), "service", cfg.Service.Name, "admin", s.admin.Addr())

	for sig := range sigs {
		if sig == syscall.SIGHUP {
			if _, err := s.reload(); err != nil {
				continue // reload logged it
			}
			continue
		}
		log.Info("shutting down", "signal", sig.String())
		break
	}
	return s.shutdown(sigs)
}

// addLateParts declares the parts that start once the listeners are bound: registration (service.register with
// Consul) and the app check (service.check.ready). The app check is not part of routable(): registration does
// not wait for the app, and an app outage only fails /ready (the sidecar's Consul check follows it), it never
// deregisters.
func (s *sidecar) addLateParts() {
	if s.mustRegister {
		s.parts.add(partRegistration, registration{s})
	}
	if c := s.cfg.Service.Check; c != nil && c.Ready {
		s.parts.add(partAppCheck, appcheck.NewRunner(*c, s.log))
	}
}

// notify delivers sig as if the process had received it; it never blocks (a full queue already holds a signal).
func notify(sigs chan<- os.Signal, sig os.Signal) {
	select {
	case sigs <- sig:
	default:
	}
}

// ready is /ready: the proxy can route, meshlet is not draining, and every part is ready (config entries known,
// a valid certificate, intentions loaded, with service.register the instance registered with Consul, with
// service.check.ready the app's check passed its latest run).
func (s *sidecar) ready() error {
	err := s.readyReason(s.proxy.Ready())
	if err == nil {
		err = s.parts.ready()
	}
	if err != nil {
		s.m.Ready.Set(0)
	} else {
		s.m.Ready.Set(1)
	}
	return err
}

// routable is the proxy's readiness with what Consul said: every upstream has its first endpoints and meshlet is
// not draining. It is the state the sidecar's /ready check starts in when it registers.
func (s *sidecar) routable() error {
	if err := s.readyReason(s.proxy.Ready()); err != nil {
		return err
	}
	return s.entriesErr()
}

// startDrain begins the drain, once (GET /drain, the app's preStop hook, or a signal, whichever comes first):
// /ready fails, the instance leaves Consul at once and meshlet stops running the app check, while the listeners
// keep serving in-flight and new requests (callers may still hold this endpoint for a moment). Nothing turns it
// back. Concurrent callers return once it has begun.
func (s *sidecar) startDrain(cause string) {
	s.drainOnce.Do(func() {
		now := time.Now()
		s.drainStart.Store(&now)
		s.log.Info("draining: leaving Consul, /ready fails, listeners keep serving", "cause", cause)
		s.proxy.Drain()
		s.m.Ready.Set(0)
		s.deregister()
		s.parts.stop(partAppCheck)
	})
}

// drainLeft is how much of the drain delay is left since the drain began; 0 when it has passed (or not begun).
func (s *sidecar) drainLeft(delay time.Duration) time.Duration {
	start := s.drainStart.Load()
	if start == nil {
		return 0
	}
	return max(0, delay-time.Since(*start))
}

// drainRequest is GET/POST /drain: it starts the drain and answers once the drain delay since the drain began has
// passed (the kubelet holds the app's SIGTERM until the preStop hook answers, so the app keeps serving while callers
// move away), or when the request ends. Calling it again waits for the same delay; SIGTERM later continues the
// shutdown from there.
func (s *sidecar) drainRequest(ctx context.Context) string {
	s.startDrain("GET /drain")
	s.mu.Lock()
	delay := *s.cfg.Shutdown.DrainDelay
	s.mu.Unlock()
	if left := s.drainLeft(delay); left > 0 {
		t := time.NewTimer(left)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return "draining: the request ended before the drain delay did"
		}
	}
	return "drained: out of Consul and not ready for " + delay.String() + "; still serving until SIGTERM"
}

// shutdown drains: /ready fails at once and the instance leaves Consul (unless /drain began that already);
// listeners keep accepting for what is left of the drain delay, then stop accepting and in-flight requests get
// the drain timeout to finish. A second signal skips the rest of the delay.
func (s *sidecar) shutdown(sigs <-chan os.Signal) int {
	s.mu.Lock()
	cfg := s.cfg
	s.mu.Unlock()
	s.startDrain("signal")
	if d := s.drainLeft(*cfg.Shutdown.DrainDelay); d > 0 {
		s.log.Info("draining: still accepting", "drain_delay_left", d.Round(time.Millisecond).String())
		select {
		case <-time.After(d):
		case sig := <-sigs:
			s.log.Info("drain delay cut short", "signal", sig.String())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Shutdown.DrainTimeout)
	defer cancel()
	code := 0
	if err := s.proxy.Shutdown(ctx); err != nil {
		s.log.Warn("drain timeout: closed connections still in use", "drain_timeout", cfg.Shutdown.DrainTimeout.String(), "error", err.Error())
	}
	if s.expose != nil {
		s.expose.Shutdown(ctx)
	}
	actx, acancel := context.WithTimeout(context.Background(), time.Second)
	defer acancel()
	s.admin.Shutdown(actx)
	s.parts.stopAll()
	s.log.Info("meshlet stopped")
	return code
}

// reload re-reads the config file (with sidecar_for: merged with the latest registration) and applies it. A bad
// file changes nothing.
func (s *sidecar) reload() ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fail := func(err error) ([]string, error) {
		s.m.ConfigReloads.WithLabelValues("failure").Inc()
		s.log.Error("config reload rejected; the running config stays", "config", s.path, "error", err.Error())
		return nil, err
	}
	base, err := loadConfigFor(s.path, s.sidecarForFlag)
	if err != nil {
		return fail(err)
	}
	if base.SidecarFor != s.base.SidecarFor {
		return fail(fmt.Errorf("sidecar_for changes only on restart (running: %q)", s.base.SidecarFor))
	}
	cfg, warnings := base, []string(nil)
	if s.sidecarFor != nil {
		if cfg, warnings, err = withRegistration(base, s.sidecarFor.Config()); err != nil {
			return fail(err)
		}
	}
	if warnings, err = s.applyLocked(cfg, warnings); err != nil {
		return fail(err)
	}
	s.base = base
	s.m.ConfigReloads.WithLabelValues("success").Inc()
	s.log.Info("config reloaded", "config", s.path)
	return warnings, nil
}

// applyLocked applies cfg (with the config entries merged) to the running proxy and makes it the running
// config, less what changes only on restart; it returns the warnings (before, and the restart-only changes
// kept), and logs them. Call with s.mu held.
func (s *sidecar) applyLocked(cfg *fileConfig, before []string) ([]string, error) {
	merged := s.withEntries(cfg)
	warnings, err := s.proxy.Reload(merged)
	if err != nil {
		return nil, err
	}
	if s.entries == nil { // merged's upstreams are cfg's: the proxy's copy is the same settings, held once
		cfg.Upstreams = s.proxy.UpstreamConfigs()
	}
	warnings = append(before, warnings...)
	if !reflect.DeepEqual(cfg.expose, s.cfg.expose) {
		warnings = append(warnings, "expose paths change only on restart; keeping the running ones")
		cfg.expose = s.cfg.expose
	}
	if cfg.Admin.Listen != s.cfg.Admin.Listen {
		warnings = append(warnings, "admin.listen changes only on restart")
	}
	if *cfg.Admin.EnableQuit != *s.cfg.Admin.EnableQuit {
		warnings = append(warnings, "admin.enable_quit changes only on restart")
	}
	if !slices.Equal(cfg.Admin.AllowedHosts, s.cfg.Admin.AllowedHosts) {
		warnings = append(warnings, "admin.allowed_hosts changes only on restart")
	}
	cfg.Admin = s.cfg.Admin
	if discoveryChanged(s.cfg, cfg) {
		warnings = append(warnings, "discovery changes only on restart")
		cfg.Discovery = s.cfg.Discovery
	}
	// The proxy kept these (and warned): the effective config shows what runs.
	cfg.Service, cfg.Inbound, cfg.Outbound.Listen = s.cfg.Service, s.cfg.Inbound, s.cfg.Outbound.Listen
	if cfg.Log.AccessLog != s.cfg.Log.AccessLog {
		warnings = append(warnings, "log.access_log changes only on restart")
		cfg.Log.AccessLog = s.cfg.Log.AccessLog
	}
	lv, _ := parseLevel(cfg.Log.Level)
	s.level.Set(lv)
	s.cfg = cfg
	for _, w := range warnings {
		s.log.Warn("config reload: " + w)
	}
	return warnings, nil
}

func (s *sidecar) configView() any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg.view()
}
