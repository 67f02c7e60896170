package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"meshlet.dev/meshlet/admin"
	"meshlet.dev/meshlet/mtls"
	"meshlet.dev/meshlet/proxy"
)

// fileConfig is the whole config file: the proxy's sections at the top level, plus admin, log and shutdown.
type fileConfig struct {
	proxy.Config `yaml:",inline"`
	Admin        admin.Config    `yaml:"admin" json:"admin"`
	Log          logConfig       `yaml:"log" json:"log"`
	Shutdown     shutdownConfig  `yaml:"shutdown" json:"shutdown"`
	Discovery    discoveryConfig `yaml:"discovery" json:"discovery"`
	// TLS is this sidecar's certificate and trust roots (files); empty means no mutual TLS.
	TLS mtls.FilesConfig `yaml:"tls" json:"tls"`
	// SidecarFor is the ID of a service (or of its connect-proxy) registered with the local Consul agent: the
	// service, inbound listener, upstreams and mode are taken from its sidecar's registration and followed
	// (sidecarfor.go); the file's settings win. The -sidecar-for flag overrides it.
	SidecarFor string `yaml:"sidecar_for" json:"sidecar_for"`

	// explicit are the upstreams as the file writes them (with sidecar_for: merged with the registration's),
	// before defaults: Consul's config entries fill only what they leave unset. Kept with discovery.consul only
	// (config entries and sidecar_for, its only readers; keepExplicit): without, nil.
	explicit []proxy.UpstreamConfig
	// fromRegistration names the upstreams that came from the registration (sidecar_for): without a protocol
	// from the registration, the file or the config entries, theirs is Consul's default, tcp.
	fromRegistration map[string]bool
	// expose are the registration's expose paths (sidecar_for), served beside the proxy; set at start only.
	expose []proxy.ExposePath
}

// logConfig is the log section.
type logConfig struct {
	Level     string `yaml:"level" json:"level"`           // debug, info, warn, error; default info
	AccessLog bool   `yaml:"access_log" json:"access_log"` // one line per request; default off
}

// shutdownConfig is what happens on SIGTERM.
type shutdownConfig struct {
	// DrainDelay is how long meshlet keeps accepting new connections after SIGTERM while /ready already fails,
	// so that callers stop picking this instance first. Default 5s.
	DrainDelay *time.Duration `yaml:"drain_delay" json:"drain_delay"`
	// DrainTimeout bounds the wait for in-flight requests after the listeners stop accepting. Default 20s.
	DrainTimeout time.Duration `yaml:"drain_timeout" json:"drain_timeout"`
}

// Defaults of the sections owned here.
const (
	defaultDrainDelay   = 5 * time.Second
	defaultDrainTimeout = 20 * time.Second
)

func (c *fileConfig) setDefaults() {
	c.Config.SetDefaults()
	c.Admin.SetDefaults()
	c.TLS.SetDefaults()
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Shutdown.DrainDelay == nil {
		d := defaultDrainDelay
		c.Shutdown.DrainDelay = &d
	}
	if c.Shutdown.DrainTimeout == 0 {
		c.Shutdown.DrainTimeout = defaultDrainTimeout
	}
	c.setDiscoveryDefaults()
}

func (c *fileConfig) validate() error {
	var errs []error
	if err := c.Config.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Admin.Validate(); err != nil {
		errs = append(errs, err)
	}
	if _, err := parseLevel(c.Log.Level); err != nil {
		errs = append(errs, fmt.Errorf("log.level: %w", err))
	}
	if *c.Shutdown.DrainDelay < 0 {
		errs = append(errs, errors.New("shutdown.drain_delay: must not be negative"))
	}
	if c.Shutdown.DrainTimeout < 0 {
		errs = append(errs, errors.New("shutdown.drain_timeout: must not be negative"))
	}
	errs = append(errs, c.validateDiscovery()...)
	if c.SidecarFor != "" && c.Service.Register {
		errs = append(errs, errors.New("service.register: not with sidecar_for (the sidecar's registration exists already: meshlet only reads it)"))
	}
	if cs := c.Outbound.Transparent.ConsulServices; cs != nil && *cs && c.Discovery.Consul == nil {
		errs = append(errs, errors.New("outbound.transparent.consul_services: needs discovery.consul"))
	}
	errs = append(errs, c.validateTLS()...)
	errs = append(errs, c.adminClashes()...)
	return errors.Join(errs...)
}

// adminClashes reports a listener of the proxy on admin.listen's address: one of the two would fail to bind.
func (c *fileConfig) adminClashes() []error {
	var errs []error
	listens := []struct{ path, addr string }{{"inbound.listen", c.Inbound.Listen}, {"outbound.listen", c.Outbound.Listen}}
	for i, u := range c.Upstreams {
		listens = append(listens, struct{ path, addr string }{fmt.Sprintf("upstreams[%d].listen", i), u.Listen})
	}
	for _, l := range listens {
		if l.addr != "" && !strings.HasSuffix(l.addr, ":0") && sameListen(l.addr, c.Admin.Listen) {
			errs = append(errs, fmt.Errorf("%s: %s is also admin.listen", l.path, l.addr))
		}
	}
	return errs
}

// sameListen reports whether two listen addresses take the same port on a common address (0.0.0.0 and [::] take
// every address).
func sameListen(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa != pb {
		return false
	}
	wildcard := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	return ha == hb || wildcard(ha) || wildcard(hb) || (ha == "localhost" && hb == "127.0.0.1") || (ha == "127.0.0.1" && hb == "localhost")
}

// endpointsProblems are check's findings on upstreams without endpoints: without discovery and without an endpoint
// list, every call gets 503 (an error for check); an explicit empty list (endpoints: []) says it is meant (a
// warning).
func (c *fileConfig) endpointsProblems() (warnings []string, errs []error) {
	if c.Discovery.Consul != nil {
		return nil, nil
	}
	for i, u := range c.Upstreams { // (defaults leave endpoints as written)
		switch {
		case u.Endpoints == nil:
			errs = append(errs, fmt.Errorf("upstreams[%d]: %s has no endpoints and there is no discovery: every call would get 503 (list endpoints, configure discovery.consul, or write endpoints: [] if that is meant)", i, u.Name))
		case len(u.Endpoints) == 0:
			warnings = append(warnings, fmt.Sprintf("upstreams[%d]: %s has no endpoints (endpoints: []): every call gets 503", i, u.Name))
		}
	}
	return warnings, errs
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("%q must be debug, info, warn or error", s)
	}
	return l, nil
}

// loadConfig reads, decodes (strictly), applies environment overrides and defaults, and validates the file.
func loadConfig(path string) (*fileConfig, error) {
	data, err := readConfigSource(path)
	if err != nil {
		return nil, err
	}
	cfg, err := decodeConfig(data)
	if err != nil {
		return nil, perLine(path, err)
	}
	return finishConfig(path, cfg)
}

// finishConfig applies environment overrides and defaults to a decoded config, and validates it.
func finishConfig(path string, cfg *fileConfig) (*fileConfig, error) {
	applyEnv(cfg, os.Getenv)
	cfg.keepExplicit()
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, perLine(path, err)
	}
	return cfg, nil
}

// keepExplicit keeps the upstreams as written (explicit), before setDefaults, when something reads them later:
// Consul's config entries and sidecar_for, both with discovery.consul. Without, a second copy of every
// upstream's settings would live on for nothing (issue 16).
func (c *fileConfig) keepExplicit() {
	if c.Discovery.Consul != nil {
		c.explicit = writtenUpstreams(c.Upstreams)
	}
}

// writtenUpstreams is a copy of the upstreams a file writes, never nil: a file with none has an empty list, which
// withEntries must not take for a config not read from a file (whose running upstreams, Consul's implicit ones
// among them after a merge, it would take for written ones).
func writtenUpstreams(ups []proxy.UpstreamConfig) []proxy.UpstreamConfig {
	if ups == nil {
		return []proxy.UpstreamConfig{}
	}
	return slices.Clone(ups)
}

var yamlNotFound = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`field (\S+) not found in type \S+`) })

// decodeConfig decodes YAML strictly: unknown fields are errors that name the field and its line.
func decodeConfig(data []byte) (*fileConfig, error) {
	var cfg fileConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("config is empty")
		}
		var te *yaml.TypeError
		if errors.As(err, &te) {
			return nil, errors.New(strings.Join(typeErrors(data, te.Errors), "\n"))
		}
		return nil, fmt.Errorf("bad YAML: %w", err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("config must be a single YAML document")
	}
	return &cfg, nil
}

// applyEnv lets MESHLET_* variables override the file.
func applyEnv(cfg *fileConfig, getenv func(string) string) {
	if v := getenv("MESHLET_LOG_LEVEL"); v != "" {
		cfg.Log.Level = v
	}
	if v := getenv("MESHLET_ADMIN_LISTEN"); v != "" {
		cfg.Admin.Listen = v
	}
	applyDiscoveryEnv(cfg, getenv)
}

// view renders the effective config as JSON-ready data, with durations as strings ("2s"). Secrets are redacted
// by redactTree: the value of every key that looks secret (the Consul token, service.meta entries such as
// db_password), and the userinfo and secret query parameters of URLs (service.check.http, discovery.consul.address).
func (c *fileConfig) view() any {
	y, err := yaml.Marshal(c)
	if err != nil {
		return map[string]string{"error": err.Error()}
	}
	var v map[string]any
	if err := yaml.Unmarshal(y, &v); err != nil {
		return map[string]string{"error": err.Error()}
	}
	redactTree(v)
	if _, err := json.Marshal(v); err != nil {
		return map[string]string{"error": err.Error()}
	}
	return v
}
