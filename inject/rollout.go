package inject

// Rollouts without failed calls (issue 12): the registration's app check derived from the app container's
// readinessProbe, the preStop hook that drains the sidecar before the app gets SIGTERM, and the check of the pod's
// terminationGracePeriodSeconds.

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"
)

// AnnotationAppCheck sets the app check registered in Consul (service.check) instead of the one derived from the
// app container's readinessProbe: "none" (no app check), an http:// or https:// URL, tcp:HOST:PORT or
// grpc:HOST:PORT[/SERVICE]. $(POD_IP) may be used as the host (the Consul agent on the node runs the check).
const AnnotationAppCheck = "meshlet.dev/app-check"

// DrainPath is the sidecar's admin endpoint that the injected preStop hook of the app containers calls.
const DrainPath = "/drain"

// Defaults of meshlet's shutdown section (cmd/meshlet), for the grace period check.
const (
	defaultDrainDelay   = 5 * time.Second
	defaultDrainTimeout = 20 * time.Second
	defaultGracePeriod  = 30 // seconds: Kubernetes' terminationGracePeriodSeconds
)

// checkConfig is the service.check section of the generated config (appcheck.Check's fields). ready stays false:
// with ready, meshlet's /ready would wait for the app, but the sidecar's startup probe (native) or `meshlet wait`
// (classic) holds the app's start until /ready passes, so neither would ever start. The Consul agent runs the
// check, and the sidecar's alias check keeps callers away while it fails.
type checkConfig struct {
	HTTP          string `yaml:"http,omitempty"`
	TCP           string `yaml:"tcp,omitempty"`
	GRPC          string `yaml:"grpc,omitempty"`
	TLSSkipVerify bool   `yaml:"tls_skip_verify,omitempty"`
	Interval      string `yaml:"interval,omitempty"`
	Timeout       string `yaml:"timeout,omitempty"`
}

// appCheckFrom is the pod's app check: meshlet.dev/app-check when set, else the one derived from the readinessProbe
// of the app container (the one with the app port, else the first), else none. warnings say why a probe gave no
// check; errors name the annotation or the probe's field.
func appCheckFrom(spec *yaml.Node, ann map[string]string, appPort int) (*checkConfig, []string, []error) {
	if v, ok := ann[AnnotationAppCheck]; ok {
		c, err := parseAppCheck(v)
		if err != nil {
			return nil, nil, []error{fmt.Errorf("%s: %w", AnnotationAppCheck, err)}
		}
		return c, nil, nil
	}
	c, where := appContainer(spec, appPort)
	probe := get(c, "readinessProbe")
	if probe == nil || probe.Kind != yaml.MappingNode {
		return nil, nil, nil
	}
	where += ".readinessProbe"
	check := &checkConfig{Interval: seconds(get(probe, "periodSeconds"), 10), Timeout: seconds(get(probe, "timeoutSeconds"), 1)}
	switch {
	case get(probe, "httpGet") != nil:
		h := get(probe, "httpGet")
		if hs := get(h, "httpHeaders"); hs != nil && len(hs.Content) > 0 {
			return nil, []string{fmt.Sprintf("%s.httpGet has httpHeaders, which the app check cannot send: no app "+
				"check registered in Consul (set %s)", where, AnnotationAppCheck)}, nil
		}
		port, err := resolvePort(c, get(h, "port"))
		if err != nil {
			return nil, nil, []error{fmt.Errorf("%s.httpGet.port %v", where, err)}
		}
		scheme := "http"
		switch s := scalar(get(h, "scheme")); s {
		case "", "HTTP":
		case "HTTPS": // the kubelet does not verify the app's certificate either
			scheme, check.TLSSkipVerify = "https", true
		default:
			return nil, nil, []error{fmt.Errorf("%s.httpGet.scheme %q must be HTTP or HTTPS", where, s)}
		}
		path := scalar(get(h, "path"))
		if !strings.HasPrefix(path, "/") {
			path = "/" + path
		}
		check.HTTP = fmt.Sprintf("%s://%s:%d%s", scheme, probeHost(h), port, path)
	case get(probe, "tcpSocket") != nil:
		h := get(probe, "tcpSocket")
		port, err := resolvePort(c, get(h, "port"))
		if err != nil {
			return nil, nil, []error{fmt.Errorf("%s.tcpSocket.port %v", where, err)}
		}
		check.TCP = fmt.Sprintf("%s:%d", probeHost(h), port)
	case get(probe, "grpc") != nil:
		h := get(probe, "grpc")
		port, err := resolvePort(c, get(h, "port"))
		if err != nil {
			return nil, nil, []error{fmt.Errorf("%s.grpc.port %v", where, err)}
		}
		check.GRPC = fmt.Sprintf("$(POD_IP):%d", port)
		if svc := scalar(get(h, "service")); svc != "" {
			check.GRPC += "/" + svc
		}
	default: // exec
		return nil, []string{fmt.Sprintf("%s runs a command, which Consul cannot: no app check registered in "+
			"Consul, callers may reach the app before it is ready (set %s)", where, AnnotationAppCheck)}, nil
	}
	return check, nil, nil
}

// probeHost is where the Consul agent (on the node) reaches a probe's port: the probe's host, else the pod's IP,
// as the kubelet does.
func probeHost(handler *yaml.Node) string {
	if h := scalar(get(handler, "host")); h != "" {
		return h
	}
	return "$(POD_IP)"
}

// seconds reads a probe's periodSeconds or timeoutSeconds as a duration ("10s"), def when absent or not a
// positive number (the API server refuses those).
func seconds(n *yaml.Node, def int) string {
	if v, err := strconv.Atoi(scalar(n)); err == nil && v > 0 {
		def = v
	}
	return strconv.Itoa(def) + "s"
}

// parseAppCheck reads meshlet.dev/app-check; nil for "none".
func parseAppCheck(v string) (*checkConfig, error) {
	c := &checkConfig{}
	switch {
	case v == "none":
		return nil, nil
	case strings.HasPrefix(v, "http://") || strings.HasPrefix(v, "https://"):
		c.HTTP = v
	case strings.HasPrefix(v, "tcp:"):
		c.TCP = strings.TrimPrefix(v, "tcp:")
	case strings.HasPrefix(v, "grpc:"):
		c.GRPC = strings.TrimPrefix(v, "grpc:")
	default:
		return nil, fmt.Errorf("%q must be none, an http:// or https:// URL, tcp:HOST:PORT or grpc:HOST:PORT[/SERVICE]", v)
	}
	addr := c.TCP + c.GRPC
	if c.GRPC != "" {
		addr, _, _ = strings.Cut(addr, "/")
	}
	if addr != "" {
		i := strings.LastIndexByte(addr, ':')
		if n, err := strconv.Atoi(addr[i+1:]); i <= 0 || err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("%q: want HOST:PORT with a port 1..65535", v)
		}
	}
	return c, nil
}

// appContainer is the app container the app check is derived from: the first of spec.containers (not meshlet's)
// with the app port among its ports, else the first; and where it is, for messages.
func appContainer(spec *yaml.Node, appPort int) (*yaml.Node, string) {
	cs := get(spec, "containers")
	if cs == nil || cs.Kind != yaml.SequenceNode {
		return nil, ""
	}
	var first *yaml.Node
	where := ""
	for i, c := range cs.Content {
		name := scalar(get(c, "name"))
		if name == ContainerName {
			continue
		}
		at := fmt.Sprintf("containers[%d] (%s)", i, name)
		if first == nil {
			first, where = c, at
		}
		if ps := get(c, "ports"); appPort != 0 && ps != nil && ps.Kind == yaml.SequenceNode {
			for _, p := range ps.Content {
				if n, ok := portNumber(get(p, "containerPort")); ok && n == appPort {
					return c, at
				}
			}
		}
	}
	return first, where
}

// drainHook is the preStop handler injected into the app containers: GET /drain on the sidecar's admin port (on
// the pod IP, which the kubelet calls), with the pod's drain token (a remote /drain without it is refused). It
// answers after the drain delay, and the kubelet sends the app SIGTERM only then.
type drainHook struct {
	HTTPGet struct {
		Path        string       `yaml:"path"`
		Port        int          `yaml:"port"`
		HTTPHeaders []hookHeader `yaml:"httpHeaders"`
	} `yaml:"httpGet"`
}

type hookHeader struct {
	Name  string `yaml:"name"`
	Value string `yaml:"value"`
}

// HeaderDrainToken is the header of the drain token (admin.HeaderDrainToken; inject does not import admin).
const HeaderDrainToken = "X-Meshlet-Drain-Token"

// addDrainHooks gives every app container of spec.containers the preStop hook that drains the sidecar, and
// returns a warning for each container that has a preStop hook of its own: it is kept (it may be what lets the
// app stop cleanly), and the sidecar then drains only at its own SIGTERM, after the app has exited.
func addDrainHooks(spec *yaml.Node, cfg Config, token string) ([]string, error) {
	cs := get(spec, "containers")
	if cs == nil || cs.Kind != yaml.SequenceNode {
		return nil, nil
	}
	var hook drainHook
	hook.HTTPGet.Path, hook.HTTPGet.Port = DrainPath, cfg.AdminPort
	hook.HTTPGet.HTTPHeaders = []hookHeader{{Name: HeaderDrainToken, Value: token}}
	var warnings []string
	for i, c := range cs.Content {
		name := scalar(get(c, "name"))
		if name == ContainerName || c.Kind != yaml.MappingNode {
			continue
		}
		lc := get(c, "lifecycle")
		if pre := get(lc, "preStop"); pre != nil && !isDrainHook(pre, cfg) {
			warnings = append(warnings, fmt.Sprintf("containers[%d] (%s) has a preStop hook of its own: kept, so "+
				"the sidecar is not drained before the app gets SIGTERM and callers may reach the app while it "+
				"stops; make the hook call http://localhost:%d%s first (it answers after the drain delay), or "+
				"remove it to get meshlet's", i, name, cfg.AdminPort, DrainPath))
			continue
		}
		var n yaml.Node
		if err := n.Encode(&hook); err != nil {
			return nil, err
		}
		set(ensureMap(c, "lifecycle"), "preStop", &n)
	}
	return warnings, nil
}

// existingDrainToken is the drain token of a pod injected before (its app containers' drain hook), so that
// injecting again changes nothing; "" when there is none.
func existingDrainToken(spec *yaml.Node, cfg Config) string {
	cs := get(spec, "containers")
	if cs == nil || cs.Kind != yaml.SequenceNode {
		return ""
	}
	for _, c := range cs.Content {
		pre := get(get(c, "lifecycle"), "preStop")
		if pre == nil || !isDrainHook(pre, cfg) {
			continue
		}
		if hs := get(get(pre, "httpGet"), "httpHeaders"); hs != nil && hs.Kind == yaml.SequenceNode {
			for _, h := range hs.Content {
				if v := scalar(get(h, "value")); strings.EqualFold(scalar(get(h, "name")), HeaderDrainToken) && drainTokenRE().MatchString(v) {
					return v
				}
			}
		}
	}
	return ""
}

// drainTokenRE is a token injection made (32 hex digits), or one as long and as plain.
var drainTokenRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9A-Za-z_-]{16,256}$`) })

// isDrainHook reports whether a preStop handler is the one injection adds: GET /drain on the admin port.
func isDrainHook(pre *yaml.Node, cfg Config) bool {
	h := get(pre, "httpGet")
	n, ok := portNumber(get(h, "port"))
	return h != nil && scalar(get(h, "path")) == DrainPath && ok && n == cfg.AdminPort && get(pre, "exec") == nil
}

// gracePeriodWarning says when the pod's terminationGracePeriodSeconds (default 30) is shorter than what
// meshlet's shutdown takes at most: the drain delay (the preStop hook holds the app's SIGTERM that long) plus
// the drain timeout (in-flight requests after the listeners close). The kubelet kills what still runs then.
func gracePeriodWarning(spec *yaml.Node, p podParams) string {
	grace := defaultGracePeriod
	if v := get(spec, "terminationGracePeriodSeconds"); v != nil {
		n, err := strconv.Atoi(scalar(v))
		if err != nil {
			return "" // the API server judges it
		}
		grace = n
	}
	delay, timeout := defaultDrainDelay, defaultDrainTimeout
	if d, err := time.ParseDuration(p.drainDelay); err == nil {
		delay = d
	}
	if d, err := time.ParseDuration(p.drainTimeout); err == nil {
		timeout = d
	}
	need := delay + timeout
	if time.Duration(grace)*time.Second >= need {
		return ""
	}
	return fmt.Sprintf("terminationGracePeriodSeconds %d is shorter than meshlet's drain delay (%s) + drain timeout "+
		"(%s) = %s: the kubelet kills the pod before in-flight calls finish; set it to at least %d plus the app's "+
		"own shutdown time, or lower %s or %s", grace, delay, timeout, need, int((need+time.Second-1)/time.Second),
		AnnotationDrainDelay, AnnotationDrainTimeout)
}
