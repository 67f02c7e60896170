package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/metrics"
)

// Discovery modes (Config.Mode): which instances of a service an upstream's endpoints are.
const (
	// ModeAuto uses the service's sidecars (Consul connect-proxy instances, what a meshlet with
	// register: true registers) and, for a caller that does not require mutual TLS
	// (discovery.WatchOptions.MutualTLS false), the plain service instances of a service that has no sidecar
	// registered at all. A service with sidecars, none of them healthy, has no endpoint: its plain instances
	// would skip its sidecars' mutual TLS and intentions.
	ModeAuto = "auto"
	// ModeConnect uses only the sidecars: /v1/health/connect/<service>.
	ModeConnect = "connect"
	// ModeService uses only the plain instances: /v1/health/service/<service>.
	ModeService = "service"
)

// Defaults of Config (DefaultWaitTime is the config's; a Watch without a wait time uses Consul's, DefaultWait).
// The registration settings default to the Registration's, DefaultCheckInterval and DefaultResyncInterval.
const (
	DefaultAddress  = "127.0.0.1:8500"
	DefaultWaitTime = 60 * time.Second
)

// Config is the discovery.consul section of the config file.
type Config struct {
	// Address of the Consul agent's HTTP API: host:port, or http://host:port, https://host:port. Empty:
	// $CONSUL_HTTP_ADDR, else 127.0.0.1:8500.
	Address string `yaml:"address" json:"address"`
	// Token is the ACL token. Empty: the contents of TokenFile, else $CONSUL_HTTP_TOKEN, else
	// $CONSUL_HTTP_TOKEN_FILE. Never logged; redacted in /debug/config.
	Token     string `yaml:"token" json:"token"`
	TokenFile string `yaml:"token_file" json:"token_file"`
	// Datacenter to query; empty means the agent's own.
	Datacenter string `yaml:"datacenter" json:"datacenter"`
	// Namespace and Partition (Consul Enterprise) are sent with every request to the agent (?ns=, ?partition=):
	// queries, registration, certificates, intentions, config entries. Empty: not sent (the token's, else
	// default). Consul's open-source agent refuses any request that names one, "default" included.
	Namespace string `yaml:"namespace" json:"namespace"`
	Partition string `yaml:"partition" json:"partition"`
	// Mode is auto (default), connect or service; see ModeAuto.
	Mode string `yaml:"mode" json:"mode"`
	// Tag, when set, keeps only instances that carry it.
	Tag string    `yaml:"tag" json:"tag"`
	TLS TLSConfig `yaml:"tls" json:"tls"`
	// WaitTime is the longest a blocking query waits for a change (Consul caps it at 10m). Default 60s.
	WaitTime time.Duration `yaml:"wait_time" json:"wait_time"`
	// CheckInterval is how often Consul checks a registered sidecar's /ready. Default 10s. A registration
	// setting: the Source does not read it, the Registrar gets it as Registration.CheckInterval.
	CheckInterval time.Duration `yaml:"check_interval" json:"check_interval"`
	// ResyncInterval is how often a registered instance checks that the agent still has it (an agent restarted
	// without its state forgets it) and registers again. Default 10s. A registration setting, as
	// Registration.ResyncInterval.
	ResyncInterval time.Duration `yaml:"resync_interval" json:"resync_interval"`
}

// TLSConfig is how meshlet talks TLS to the Consul agent (https:// addresses only).
type TLSConfig struct {
	CAFile             string `yaml:"ca_file" json:"ca_file"`
	CertFile           string `yaml:"cert_file" json:"cert_file"`
	KeyFile            string `yaml:"key_file" json:"key_file"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify" json:"insecure_skip_verify"`
}

// ApplyEnv fills empty fields from Consul's own environment variables (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN,
// CONSUL_HTTP_TOKEN_FILE, CONSUL_CACERT, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY), the way Consul's tools do,
// except that what the config file says wins.
func (c *Config) ApplyEnv(getenv func(string) string) {
	fill := func(dst *string, env string) {
		if *dst == "" {
			*dst = getenv(env)
		}
	}
	fill(&c.Address, api.HTTPAddrEnvName)
	fill(&c.Namespace, api.HTTPNamespaceEnvName)
	fill(&c.Partition, api.HTTPPartitionEnvName)
	if c.Token == "" && c.TokenFile == "" {
		fill(&c.Token, api.HTTPTokenEnvName)
		if c.Token == "" {
			fill(&c.TokenFile, api.HTTPTokenFileEnvName)
		}
	}
	fill(&c.TLS.CAFile, api.HTTPCAFile)
	fill(&c.TLS.CertFile, api.HTTPClientCert)
	fill(&c.TLS.KeyFile, api.HTTPClientKey)
}

// SetDefaults fills the zero fields with their defaults.
func (c *Config) SetDefaults() {
	if c.Address == "" {
		c.Address = DefaultAddress
	}
	if c.Mode == "" {
		c.Mode = ModeAuto
	}
	if c.WaitTime == 0 {
		c.WaitTime = DefaultWaitTime
	}
	if c.CheckInterval == 0 {
		c.CheckInterval = DefaultCheckInterval
	}
	if c.ResyncInterval == 0 {
		c.ResyncInterval = DefaultResyncInterval
	}
}

// Validate reports every problem, each with its field path under prefix (e.g. "discovery.consul").
func (c *Config) Validate(prefix string) error {
	var errs []error
	bad := func(field, msg string) { errs = append(errs, fmt.Errorf("%s.%s: %s", prefix, field, msg)) }
	switch c.Mode {
	case ModeAuto, ModeConnect, ModeService:
	default:
		bad("mode", fmt.Sprintf("%q must be auto, connect or service", c.Mode))
	}
	if c.Token != "" && c.TokenFile != "" {
		bad("token_file", "set token or token_file, not both")
	}
	for _, f := range []struct{ name, v string }{{"namespace", c.Namespace}, {"partition", c.Partition}} {
		if f.v != "" && !consulName().MatchString(f.v) {
			bad(f.name, fmt.Sprintf("%q is not a Consul %s name (letters, digits and '-', at most 64, starting and ending with a letter or digit)", f.v, f.name))
		}
	}
	if c.WaitTime < time.Second || c.WaitTime > 10*time.Minute {
		bad("wait_time", "must be between 1s and 10m")
	}
	if c.CheckInterval < time.Second {
		bad("check_interval", "must be at least 1s (Consul's shortest check interval)")
	}
	if c.ResyncInterval < 100*time.Millisecond {
		bad("resync_interval", "must be at least 100ms")
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		bad("tls", "cert_file and key_file go together")
	}
	// Userinfo in the address is not sent as credentials by Consul's client (it would dial "user:pass@host" as a
	// host name) and would be printed in every error: refused, without echoing it (issue 11).
	if authority, _, _ := strings.Cut(strings.TrimPrefix(strings.TrimPrefix(c.Address, "https://"), "http://"), "/"); strings.Contains(authority, "@") {
		bad("address", "must not hold credentials (user:password@host); Consul takes an ACL token (token, token_file, $CONSUL_HTTP_TOKEN)")
	}
	return errors.Join(errs...)
}

// consulName is the form of a Consul namespace or admin partition name.
var consulName = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,62}[a-zA-Z0-9])?$`)
})

// apiConfig turns c into the client library's config, reading the token file.
func (c *Config) apiConfig() (*api.Config, error) {
	ac := &api.Config{Address: c.Address, Datacenter: c.Datacenter, Token: c.Token, Scheme: "http",
		Namespace: c.Namespace, Partition: c.Partition}
	if rest, ok := strings.CutPrefix(c.Address, "https://"); ok {
		ac.Address, ac.Scheme = rest, "https"
	} else if rest, ok := strings.CutPrefix(c.Address, "http://"); ok {
		ac.Address = rest
	}
	if c.TokenFile != "" {
		b, err := os.ReadFile(c.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("discovery.consul.token_file: %w", err)
		}
		ac.Token = strings.TrimSpace(string(b))
	}
	ac.TLSConfig = api.TLSConfig{CAFile: c.TLS.CAFile, CertFile: c.TLS.CertFile, KeyFile: c.TLS.KeyFile,
		InsecureSkipVerify: c.TLS.InsecureSkipVerify}
	return ac, nil
}

// SourceOptions are a Consul source's collaborators.
type SourceOptions struct {
	Logger *slog.Logger // required
	// Metrics are the discovery collectors to fill (metrics.Metrics.Discovery); nil: they are not exported.
	Metrics *metrics.Discovery
}

// Source is a discovery.Source backed by Consul's health API with blocking queries. Each service is watched by
// one goroutine however many callers watch it; each caller gets its own one-slot channel that always holds the
// latest snapshot. Source is safe for concurrent use. Close stops every watch.
type Source struct {
	cfg    Config
	client *api.Client
	log    *slog.Logger
	m      *sourceMetrics

	ctx    context.Context // parent of every watch; cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	watches map[watchKey]*serviceWatch
	trust   string // SPIFFE trust domain, once known
}

// NewSource returns a Consul source for cfg (after defaults). It does not contact Consul.
func NewSource(cfg Config, opts SourceOptions) (*Source, error) {
	cfg.SetDefaults()
	if err := cfg.Validate("discovery.consul"); err != nil {
		return nil, err
	}
	ac, err := cfg.apiConfig()
	if err != nil {
		return nil, err
	}
	client, err := api.NewClient(ac)
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Source{cfg: cfg, client: client, log: opts.Logger.With("component", "consul"),
		m: newSourceMetrics(opts.Metrics), ctx: ctx, cancel: cancel, watches: map[watchKey]*serviceWatch{}}, nil
}

// Client returns the Consul API client.
func (c *Source) Client() *api.Client { return c.client }

// Watch implements discovery.Source. The first snapshot arrives once the first query has answered; an empty
// answer (no healthy instance) is a snapshot too. While Consul cannot be reached the last snapshot is sent again
// with Stale set, and watching resumes by itself when Consul answers again.
func (c *Source) Watch(ctx context.Context, service string) (<-chan discovery.Snapshot, error) {
	return c.WatchWith(ctx, service, discovery.WatchOptions{})
}

// watchKey names one shared watch: a service with the tag and datacenter it is narrowed to, and whether its
// callers require mutual TLS (auto mode offers them no plain instances).
type watchKey struct {
	service, tag, dc string
	mtls             bool
	filter, subset   string // a service-resolver subset's filter and its name
}

// label is how metrics, logs and errors name the watch: the service, with the tag and datacenter when they are
// not the source's defaults ("api", "api[tag=v2,dc=dc2]"). Two watches that differ only in mtls share a label
// (and their metric series).
func (k watchKey) label(cfg Config) string {
	var parts []string
	if k.tag != cfg.Tag {
		parts = append(parts, "tag="+k.tag)
	}
	if k.dc != cfg.Datacenter {
		parts = append(parts, "dc="+k.dc)
	}
	if k.filter != "" {
		parts = append(parts, "subset="+k.subset)
	}
	if len(parts) == 0 {
		return k.service
	}
	return k.service + "[" + strings.Join(parts, ",") + "]"
}

// WatchWith implements discovery.OptionsSource: Watch with the tag and datacenter of opts in place of the config's
// (discovery.consul.tag, discovery.consul.datacenter) where set, and, in auto mode, no plain instances when
// opts.MutualTLS is set. Watches with the same service, tag, datacenter and MutualTLS share one blocking-query
// loop.
func (c *Source) WatchWith(ctx context.Context, service string, opts discovery.WatchOptions) (<-chan discovery.Snapshot, error) {
	key := watchKey{service: service, tag: opts.Tag, dc: opts.Datacenter, mtls: opts.MutualTLS, filter: opts.Filter, subset: opts.Subset}
	if key.tag == "" {
		key.tag = c.cfg.Tag
	}
	if key.dc == "" {
		key.dc = c.cfg.Datacenter
	}
	if service == "" {
		return nil, errors.New("consul: empty service name")
	}
	ch := make(chan discovery.Snapshot, 1)
	c.mu.Lock()
	if c.ctx.Err() != nil {
		c.mu.Unlock()
		return nil, errors.New("consul: source closed")
	}
	w := c.watches[key]
	if w == nil {
		w = newServiceWatch(c, key)
		c.watches[key] = w
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			w.run()
		}()
	}
	w.add(ch)
	c.mu.Unlock()
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		select {
		case <-ctx.Done():
		case <-c.ctx.Done():
		}
		c.mu.Lock()
		last := w.remove(ch)
		if last && c.watches[key] == w {
			delete(c.watches, key)
			w.stop()
		}
		c.mu.Unlock()
	}()
	return ch, nil
}

// Err returns why some watched service has no snapshot yet, or is stale (Consul unreachable, ACL denied, ...);
// nil when every watch is current or still waiting for its first answer. It is meant for /ready.
func (c *Source) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for _, w := range c.watches {
		if err := w.err(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// forget drops the metric series of stopped's label unless another watch still publishes under it. A stopped
// watch calls it once its loops have ended.
func (c *Source) forget(stopped *serviceWatch) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, w := range c.watches {
		if w != stopped && w.label == stopped.label {
			return
		}
	}
	c.m.forget(stopped.label)
}

// Close stops every watch and closes the channels; it is idempotent and waits.
func (c *Source) Close() {
	c.cancel()
	c.mu.Lock()
	for _, w := range c.watches {
		w.stop()
	}
	c.mu.Unlock()
	c.wg.Wait()
}

// trustDomain returns the SPIFFE trust domain of Consul's Connect CA, asking once it is known; "" while unknown.
func (c *Source) trustDomain(ctx context.Context) string {
	c.mu.Lock()
	td := c.trust
	c.mu.Unlock()
	if td != "" {
		return td
	}
	roots, _, err := c.client.Agent().ConnectCARoots((&api.QueryOptions{}).WithContext(ctx))
	if err != nil || roots == nil || roots.TrustDomain == "" {
		return ""
	}
	c.mu.Lock()
	c.trust = roots.TrustDomain
	c.mu.Unlock()
	return roots.TrustDomain
}

// SPIFFEID is Consul's SPIFFE ID of a service: spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<service>.
func SPIFFEID(trustDomain, datacenter, service string) string {
	return "spiffe://" + trustDomain + "/ns/default/dc/" + datacenter + "/svc/" + service
}
