package inject

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"
)

// ConfigEnv is the environment variable of the injected container that holds its generated meshlet config;
// `meshlet run -config env:MESHLET_CONFIG_YAML` reads it. Kubernetes expands $(POD_IP) and $(HOST_IP) in it.
const ConfigEnv = "MESHLET_CONFIG_YAML"

// Config is what injection needs to know beyond the pod's annotations. Zero fields mean the documented defaults.
type Config struct {
	Image           string // the meshlet image; required
	ImagePullPolicy string // empty: the cluster's default
	AdminPort       int    // admin port (probes, /metrics); default 15000
	InboundPort     int    // default inbound port; default 21000
	Consul          string // Consul agent address; default "$(HOST_IP):8500", an agent per node
	CPURequest      string // default "50m"
	MemoryRequest   string // default "32Mi"
	MemoryLimit     string // default "128Mi"; GOMEMLIMIT is 90% of it
	CPULimit        string // default none
	RunAsUser       int64  // default 65532 (distroless nonroot); transparent pods run the sidecar as ProxyUID
	// Classic injects a regular container (first in containers, with a postStart hook that runs `meshlet wait`)
	// instead of a native sidecar, for clusters older than Kubernetes 1.29. A pod can ask for it with
	// meshlet.dev/native-sidecar: "false".
	Classic bool
	// Transparent injects transparent interception into every pod (an init container running `meshlet
	// redirect-traffic`, the outbound listener taking the redirected connections) unless the pod sets
	// meshlet.dev/transparent: "false"; false: only pods that set it to "true".
	Transparent bool
	// OutboundPort is the outbound listener's port (on 127.0.0.1) in transparent pods, where the redirected
	// connections arrive; default 15001.
	OutboundPort int
	// ProxyUID is the UID (and GID) the sidecar runs as in transparent pods: its connections are never redirected,
	// so no app container may run as it. Default 5995, not RunAsUser: 65532 is distroless's nonroot user, which
	// many app images run as, and their connections would bypass meshlet.
	ProxyUID int64
}

func (c *Config) setDefaults() {
	if c.AdminPort == 0 {
		c.AdminPort = 15000
	}
	if c.InboundPort == 0 {
		c.InboundPort = 21000
	}
	if c.Consul == "" {
		c.Consul = "$(HOST_IP):8500"
	}
	if c.CPURequest == "" {
		c.CPURequest = "50m"
	}
	if c.MemoryRequest == "" {
		c.MemoryRequest = "32Mi"
	}
	if c.MemoryLimit == "" {
		c.MemoryLimit = "128Mi"
	}
	if c.RunAsUser == 0 {
		c.RunAsUser = 65532
	}
	if c.OutboundPort == 0 {
		c.OutboundPort = 15001
	}
	if c.ProxyUID == 0 {
		c.ProxyUID = 5995
	}
}

func (c *Config) validate() error {
	c.setDefaults()
	var errs []error
	if c.Image == "" {
		errs = append(errs, errors.New("image: required"))
	}
	for name, p := range map[string]int{"admin port": c.AdminPort, "inbound port": c.InboundPort, "outbound port": c.OutboundPort} {
		if p < 1 || p > 65535 {
			errs = append(errs, fmt.Errorf("%s: %d must be 1..65535", name, p))
		}
	}
	if c.ProxyUID < 1 || c.ProxyUID > 1<<31-1 {
		errs = append(errs, errNoProxyUID)
	}
	for _, r := range []struct{ name, v string }{{"proxy cpu request", c.CPURequest}, {"proxy memory request", c.MemoryRequest},
		{"proxy memory limit", c.MemoryLimit}, {"proxy cpu limit", c.CPULimit}} {
		if r.v != "" {
			if _, err := parseQuantity(r.v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", r.name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// upstream is one entry of meshlet.dev/upstreams.
type upstream struct {
	Name     string `yaml:"name"`
	Listen   string `yaml:"listen"`
	Protocol string `yaml:"protocol,omitempty"`
}

// podParams is what the sidecar of one pod is built from.
type podParams struct {
	service     string
	appPort     int // 0: no inbound
	appProtocol string
	inboundPort int
	upstreams   []upstream
	consul      string
	native      bool
	logLevel    string
	tlsSecret   string             // a Secret with the certificate files
	tlsConsul   bool               // the certificate from Consul's Connect CA
	transparent *transparentParams // nil: no transparent interception
	// The sidecar's resources (quantities as written; cpuLimit "" for none) and its GOMEMLIMIT.
	cpuRequest, cpuLimit, memoryRequest, memoryLimit string
	goMemLimit                                       string
	accessLog                                        bool
	drainDelay, drainTimeout                         string       // Go durations; "": meshlet's defaults
	check                                            *checkConfig // service.check; nil: none
	warnings                                         []string     // what injection does not do, and why
	// drainToken is admin.drain_token, which the app containers' preStop hook sends to /drain; "" without an app
	// port (no registration, no hook).
	drainToken string
}

// newDrainToken makes a pod's drain token: 128 random bits in hex. Tests replace it to compare golden files.
var newDrainToken = func() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)
}

var dnsLabel = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`) })

var dnsSubdomain = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`) })

var protocols = map[string]bool{"http": true, "http2": true, "grpc": true, "tcp": true}

// podParamsFrom reads the pod's annotations, labels and containers. Errors name the annotation.
func podParamsFrom(meta, spec *yaml.Node, ann map[string]string, workload string, cfg Config) (podParams, error) {
	p := podParams{appProtocol: "http", inboundPort: cfg.InboundPort, consul: cfg.Consul, native: !cfg.Classic, logLevel: "info"}
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{key}, args...)...))
	}
	labels := get(meta, "labels")
	p.service = firstNonEmpty(ann[AnnotationService], scalar(get(labels, "app.kubernetes.io/name")), scalar(get(labels, "app")), workload)
	if !dnsLabel().MatchString(p.service) {
		bad(AnnotationService, "%q must be a lowercase DNS label (set the annotation)", p.service)
	}
	switch v := ann[AnnotationAppPort]; v {
	case "none":
	case "":
		port, err := firstContainerPort(spec)
		if err != nil {
			bad(AnnotationAppPort, "not set, and %v", err)
		}
		p.appPort = port
	default:
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 65535 {
			bad(AnnotationAppPort, "%q must be a port (1..65535) or none", v)
		}
		p.appPort = n
	}
	if v := ann[AnnotationAppProtocol]; v != "" {
		if !protocols[v] {
			bad(AnnotationAppProtocol, "%q must be http, http2, grpc or tcp", v)
		}
		p.appProtocol = v
	}
	if v := ann[AnnotationInboundPort]; v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 65535 {
			bad(AnnotationInboundPort, "%q must be a port (1..65535)", v)
		}
		p.inboundPort = n
	}
	if v := ann[AnnotationUpstreams]; v != "" {
		ups, err := parseUpstreams(v)
		if err != nil {
			bad(AnnotationUpstreams, "%v", err)
		}
		p.upstreams = ups
	}
	if v := ann[AnnotationConsul]; v != "" {
		p.consul = v
	}
	if v := ann[AnnotationNative]; v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			bad(AnnotationNative, "%q must be true or false", v)
		}
		p.native = b
	}
	if v := ann[AnnotationTLSSecret]; v != "" {
		if !dnsSubdomain().MatchString(v) {
			bad(AnnotationTLSSecret, "%q must be a Secret name", v)
		}
		p.tlsSecret = v
	}
	switch v := ann[AnnotationTLS]; v {
	case "", "none":
	case "consul":
		p.tlsConsul = true
		if p.tlsSecret != "" {
			bad(AnnotationTLS, "consul and %s are exclusive", AnnotationTLSSecret)
		}
	default:
		bad(AnnotationTLS, "%q must be consul or none", v)
	}
	if v := ann[AnnotationLogLevel]; v != "" {
		if v != "debug" && v != "info" && v != "warn" && v != "error" {
			bad(AnnotationLogLevel, "%q must be debug, info, warn or error", v)
		}
		p.logLevel = v
	}
	errs = append(errs, p.resourcesFrom(ann, cfg)...)
	if v := ann[AnnotationAccessLog]; v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			bad(AnnotationAccessLog, "%q must be true or false", v)
		}
		p.accessLog = b
	}
	for _, d := range []struct {
		key string
		to  *string
	}{{AnnotationDrainDelay, &p.drainDelay}, {AnnotationDrainTimeout, &p.drainTimeout}} {
		v := ann[d.key]
		if v == "" {
			continue
		}
		if dur, err := time.ParseDuration(v); err != nil || dur < 0 {
			bad(d.key, "%q must be a duration such as 5s or 1m30s, not negative", v)
			continue
		}
		*d.to = v
	}
	if p.appPort != 0 {
		check, warnings, cerrs := appCheckFrom(spec, ann, p.appPort)
		p.check, p.warnings = check, warnings
		errs = append(errs, cerrs...)
	} else if _, ok := ann[AnnotationAppCheck]; ok {
		bad(AnnotationAppCheck, "needs an app port (%s is none): nothing is registered in Consul", AnnotationAppPort)
	}
	t, terrs := transparentFrom(spec, ann, cfg)
	errs = append(errs, terrs...)
	if p.transparent = t; t != nil && p.appPort != 0 {
		errs = append(errs, t.checkInbound(p.inboundPort)...)
	}
	errs = append(errs, p.portClashes(cfg)...)
	return p, errors.Join(errs...)
}

// resourcesFrom reads the resource annotations over cfg's defaults: each a positive Kubernetes quantity, no
// request above its limit (the API server would refuse the pod). GOMEMLIMIT is 90% of the memory limit.
func (p *podParams) resourcesFrom(ann map[string]string, cfg Config) []error {
	var errs []error
	vals := map[string]*big.Rat{}
	for _, r := range []struct {
		key, def string
		to       *string
	}{
		{AnnotationCPURequest, cfg.CPURequest, &p.cpuRequest}, {AnnotationCPULimit, cfg.CPULimit, &p.cpuLimit},
		{AnnotationMemoryRequest, cfg.MemoryRequest, &p.memoryRequest}, {AnnotationMemoryLimit, cfg.MemoryLimit, &p.memoryLimit},
	} {
		v := ann[r.key]
		if v == "" {
			v = r.def
		}
		*r.to = v
		if v == "" {
			continue
		}
		q, err := parseQuantity(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.key, err))
			continue
		}
		vals[r.key] = q
	}
	for _, rl := range [][2]string{{AnnotationCPURequest, AnnotationCPULimit}, {AnnotationMemoryRequest, AnnotationMemoryLimit}} {
		req, lim := vals[rl[0]], vals[rl[1]]
		if req != nil && lim != nil && req.Cmp(lim) > 0 {
			errs = append(errs, fmt.Errorf("%s: %s is more than the limit %s (%s)", rl[0], *pick(p, rl[0]), *pick(p, rl[1]), rl[1]))
		}
	}
	if lim := vals[AnnotationMemoryLimit]; lim != nil {
		p.goMemLimit = goMemLimit(lim)
	}
	return errs
}

// pick is the field of p that holds the resource annotation key.
func pick(p *podParams, key string) *string {
	switch key {
	case AnnotationCPURequest:
		return &p.cpuRequest
	case AnnotationCPULimit:
		return &p.cpuLimit
	case AnnotationMemoryRequest:
		return &p.memoryRequest
	}
	return &p.memoryLimit
}

// portClashes reports two of meshlet's ports (or the app's) that are the same.
func (p podParams) portClashes(cfg Config) []error {
	used := map[int]string{cfg.AdminPort: "the admin port"}
	var errs []error
	claim := func(port int, what string) {
		if prev, ok := used[port]; ok {
			errs = append(errs, fmt.Errorf("%s %d is also %s", what, port, prev))
			return
		}
		used[port] = what
	}
	if p.appPort != 0 {
		claim(p.appPort, "the app port")
		claim(p.inboundPort, "the inbound port")
	}
	if p.transparent != nil {
		claim(p.transparent.outboundPort, "the outbound port")
	}
	for _, u := range p.upstreams {
		port, _ := strconv.Atoi(u.Listen[strings.LastIndexByte(u.Listen, ':')+1:])
		claim(port, "upstream "+u.Name+"'s port")
	}
	return errs
}

// parseUpstreams parses "api:9001,billing:9002:grpc".
func parseUpstreams(v string) ([]upstream, error) {
	var ups []upstream
	seen := map[string]bool{}
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		parts := strings.Split(item, ":")
		if len(parts) < 2 || len(parts) > 3 {
			return nil, fmt.Errorf("%q must be name:port or name:port:protocol", item)
		}
		name := parts[0]
		if !dnsLabel().MatchString(name) {
			return nil, fmt.Errorf("%q: name must be a lowercase DNS label", item)
		}
		if seen[name] {
			return nil, fmt.Errorf("%q: upstream %s listed twice", item, name)
		}
		seen[name] = true
		port, err := strconv.Atoi(parts[1])
		if err != nil || port < 1 || port > 65535 {
			return nil, fmt.Errorf("%q: port must be 1..65535", item)
		}
		u := upstream{Name: name, Listen: fmt.Sprintf("127.0.0.1:%d", port)}
		if len(parts) == 3 {
			if !protocols[parts[2]] {
				return nil, fmt.Errorf("%q: protocol must be http, http2, grpc or tcp", item)
			}
			u.Protocol = parts[2]
		}
		ups = append(ups, u)
	}
	return ups, nil
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// firstContainerPort is the first containerPort of the first app container that has ports, or 0 when none has.
// That port must be a decimal number 1..65535 as written (no quotes, sign, leading zero, hex or underscores, which
// kubectl's YAML 1.1 reader would read otherwise): anything else is an error, not a sidecar that crash-loops.
func firstContainerPort(spec *yaml.Node) (int, error) {
	cs := get(spec, "containers")
	if cs == nil || cs.Kind != yaml.SequenceNode {
		return 0, nil
	}
	for i, c := range cs.Content {
		if scalar(get(c, "name")) == ContainerName {
			continue
		}
		ports := get(c, "ports")
		if ports == nil || ports.Kind != yaml.SequenceNode || len(ports.Content) == 0 {
			continue
		}
		v := get(ports.Content[0], "containerPort")
		n, ok := portNumber(v)
		switch {
		case !ok && n > 65535:
			return 0, fmt.Errorf("containers[%d].ports[0].containerPort %d must be a port number 1..65535 (or set the annotation)", i, n)
		case !ok:
			return 0, fmt.Errorf("containers[%d].ports[0].containerPort %s must be a port number 1..65535 (or set the annotation)", i, describe(v))
		}
		return n, nil
	}
	return 0, nil
}

var decimalPort = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[1-9][0-9]{0,4}$`) })

// portNumber reads v as a port written as a plain decimal number (no quotes, sign, leading zero, hex or
// underscores, which kubectl's YAML 1.1 reader would read otherwise) in 1..65535; false otherwise, with the number
// when it is one but too large.
func portNumber(v *yaml.Node) (int, bool) {
	if v == nil || v.Kind != yaml.ScalarNode || v.Tag != "!!int" || !decimalPort().MatchString(v.Value) {
		return 0, false
	}
	n, err := strconv.Atoi(v.Value)
	return n, err == nil && n <= 65535
}

// describe shows a scalar's value for an error, or says it is missing or not a scalar.
func describe(n *yaml.Node) string {
	switch {
	case n == nil:
		return "(missing)"
	case n.Kind != yaml.ScalarNode:
		return "(not a number)"
	}
	return strconv.Quote(n.Value)
}

// meshletConfig is the generated config file (a subset of meshlet's schema; `meshlet check` accepts it once
// Kubernetes has expanded $(POD_IP)).
type meshletConfig struct {
	Service struct {
		Name     string       `yaml:"name"`
		Address  string       `yaml:"address,omitempty"`
		Ports    []int        `yaml:"ports,omitempty,flow"` // transparent pods: the app's other ports (service.ports)
		Protocol string       `yaml:"protocol,omitempty"`
		Register bool         `yaml:"register,omitempty"`
		Check    *checkConfig `yaml:"check,omitempty"`
	} `yaml:"service"`
	Inbound *struct {
		Listen string `yaml:"listen"`
	} `yaml:"inbound,omitempty"`
	Outbound  *outboundConfig `yaml:"outbound,omitempty"`
	Upstreams []upstream      `yaml:"upstreams,omitempty"`
	Discovery struct {
		Consul struct{} `yaml:"consul"` // the address comes from CONSUL_HTTP_ADDR
	} `yaml:"discovery"`
	TLS *tlsConfig `yaml:"tls,omitempty"`
	Log struct {
		Level     string `yaml:"level"`
		AccessLog bool   `yaml:"access_log,omitempty"`
	} `yaml:"log"`
	Shutdown *shutdownConfig `yaml:"shutdown,omitempty"`
	Admin    *adminConfig    `yaml:"admin,omitempty"`
}

// adminConfig is the admin section: the drain token of the preStop hook.
type adminConfig struct {
	DrainToken string `yaml:"drain_token"`
}

// shutdownConfig is the shutdown section, written only when an annotation sets it.
type shutdownConfig struct {
	DrainDelay   string `yaml:"drain_delay,omitempty"`
	DrainTimeout string `yaml:"drain_timeout,omitempty"`
}

// outboundConfig is the outbound section of a transparent pod.
type outboundConfig struct {
	Listen      string `yaml:"listen"`
	Transparent struct {
		Enabled bool `yaml:"enabled"`
	} `yaml:"transparent"`
}

// tlsConfig is the tls section: files from a mounted Secret, or the Consul CA.
type tlsConfig struct {
	Source   string `yaml:"source,omitempty"`
	CertFile string `yaml:"cert_file,omitempty"`
	KeyFile  string `yaml:"key_file,omitempty"`
	CAFile   string `yaml:"ca_file,omitempty"`
}

// render is the meshlet config of the pod.
func (p podParams) render(cfg Config) (string, error) {
	var c meshletConfig
	c.Service.Name = p.service
	if p.appPort != 0 {
		c.Service.Address = fmt.Sprintf("127.0.0.1:%d", p.appPort)
		c.Service.Protocol = p.appProtocol
		c.Service.Register = true
		c.Service.Check = p.check
		c.Inbound = &struct {
			Listen string `yaml:"listen"`
		}{Listen: fmt.Sprintf("$(POD_IP):%d", p.inboundPort)}
	}
	if p.transparent != nil { // redirected connections arrive at 127.0.0.1 (and [::1]); the inbound listener is on the pod IP
		c.Outbound = &outboundConfig{Listen: fmt.Sprintf("127.0.0.1:%d", p.transparent.outboundPort)}
		c.Outbound.Transparent.Enabled = true
		if p.appPort != 0 {
			c.Service.Ports = p.transparent.servicePorts(p.appPort, cfg, p.inboundPort)
		}
	}
	c.Upstreams = p.upstreams
	switch {
	case p.tlsSecret != "":
		c.TLS = &tlsConfig{CertFile: TLSDir + "/tls.crt", KeyFile: TLSDir + "/tls.key", CAFile: TLSDir + "/ca.crt"}
	case p.tlsConsul:
		c.TLS = &tlsConfig{Source: "consul"}
	}
	c.Log.Level = p.logLevel
	c.Log.AccessLog = p.accessLog
	if p.drainDelay != "" || p.drainTimeout != "" {
		c.Shutdown = &shutdownConfig{DrainDelay: p.drainDelay, DrainTimeout: p.drainTimeout}
	}
	if p.drainToken != "" {
		c.Admin = &adminConfig{DrainToken: p.drainToken}
	}
	var b strings.Builder
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	enc.CompactSeqIndent()
	if err := enc.Encode(&c); err != nil {
		return "", err
	}
	err := enc.Close()
	return b.String(), err
}
