package inject

// Transparent interception (issue 14): an init container runs `meshlet redirect-traffic` in the pod's network
// namespace before anything else of the pod, and the sidecar's outbound listener takes the redirected connections.

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"meshlet.dev/meshlet/redirect"
)

// InitContainerName is the name of the init container injected for transparent interception.
const InitContainerName = "meshlet-init"

// redirectCommand is the subcommand the init container runs; an init container named meshlet-init whose args
// start with it is one injection made.
const redirectCommand = "redirect-traffic"

// transparentParams is what the init container of one pod is built from.
type transparentParams struct {
	proxyUID        int64
	outboundPort    int
	excludeInbound  []uint16 // meshlet.dev/exclude-inbound-ports
	excludeOutbound []uint16 // meshlet.dev/exclude-outbound-ports
	excludeCIDRs    []netip.Prefix
	excludeUIDs     []uint32
	probePorts      []int // the ports the kubelet calls the app containers on (probes, lifecycle hooks)
	containerPorts  []int // the app containers' TCP containerPorts
}

// transparentFrom reads meshlet.dev/transparent and the exclusion annotations. The exclusions are checked even
// when transparent interception is off (a typo is an error either way) and used only when it is on. Errors name
// the annotation.
func transparentFrom(spec *yaml.Node, ann map[string]string, cfg Config) (*transparentParams, []error) {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{key}, args...)...))
	}
	on := cfg.Transparent
	if v := ann[AnnotationTransparent]; v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			bad(AnnotationTransparent, "%q must be true or false", v)
		}
		on = b
	}
	t := &transparentParams{proxyUID: cfg.ProxyUID, outboundPort: cfg.OutboundPort}
	list := func(key string, parse func(string) error) {
		if v, ok := ann[key]; ok {
			if err := parse(v); err != nil {
				bad(key, "%v", err)
			}
		}
	}
	list(AnnotationExcludeInboundPorts, func(v string) (err error) { t.excludeInbound, err = redirect.ParsePorts(v); return })
	list(AnnotationExcludeOutboundPorts, func(v string) (err error) { t.excludeOutbound, err = redirect.ParsePorts(v); return })
	list(AnnotationExcludeOutboundCIDRs, func(v string) (err error) { t.excludeCIDRs, err = redirect.ParseCIDRs(v); return })
	list(AnnotationExcludeUIDs, func(v string) (err error) { t.excludeUIDs, err = redirect.ParseUIDs(v); return })
	if slices.Contains(t.excludeOutbound, uint16(cfg.OutboundPort)) {
		bad(AnnotationExcludeOutboundPorts, "%d is meshlet's outbound port", cfg.OutboundPort)
	}
	if !on {
		return nil, errs
	}
	ports, perrs := kubeletPorts(spec)
	t.probePorts = ports
	t.containerPorts = appContainerPorts(spec)
	errs = append(errs, perrs...)
	errs = append(errs, proxyUIDClashes(spec, cfg.ProxyUID)...)
	return t, errs
}

// checkInbound reports an excluded inbound port that is meshlet's inbound port: its connections would never
// reach meshlet, and redirect-traffic refuses it.
func (t *transparentParams) checkInbound(inboundPort int) []error {
	var errs []error
	if slices.Contains(t.excludeInbound, uint16(inboundPort)) {
		errs = append(errs, fmt.Errorf("%s: %d is meshlet's inbound port", AnnotationExcludeInboundPorts, inboundPort))
	}
	if slices.Contains(t.probePorts, inboundPort) {
		errs = append(errs, fmt.Errorf("a probe of an app container uses port %d, meshlet's inbound port (set %s)", inboundPort, AnnotationInboundPort))
	}
	return errs
}

// probeKeys are the fields of a container whose handlers the kubelet runs against the pod's IP.
var probeKeys = []string{"startupProbe", "readinessProbe", "livenessProbe", "lifecycle.postStart", "lifecycle.preStop"}

// kubeletPorts are the ports of the app containers (containers and the pod's own init containers, which may be
// native sidecars with probes) that the kubelet connects to: the httpGet, tcpSocket and grpc handlers of their
// probes and lifecycle hooks, named ports resolved through the container's ports, in order, each once. Exec
// handlers run inside the container and need nothing.
func kubeletPorts(spec *yaml.Node) ([]int, []error) {
	var ports []int
	var errs []error
	for _, key := range []string{"initContainers", "containers"} {
		seq := get(spec, key)
		if seq == nil || seq.Kind != yaml.SequenceNode {
			continue
		}
		for i, c := range seq.Content {
			name := scalar(get(c, "name"))
			if name == ContainerName || name == InitContainerName {
				continue
			}
			for _, pk := range probeKeys {
				var h *yaml.Node = c
				for _, k := range strings.Split(pk, ".") {
					h = get(h, k)
				}
				for _, kind := range []string{"httpGet", "tcpSocket", "grpc"} {
					port := get(get(h, kind), "port")
					if port == nil {
						continue
					}
					n, err := resolvePort(c, port)
					if err != nil {
						errs = append(errs, fmt.Errorf("%s[%d] (%s): %s.%s.port %v", key, i, name, pk, kind, err))
						continue
					}
					if !slices.Contains(ports, n) {
						ports = append(ports, n)
					}
				}
			}
		}
	}
	return ports, errs
}

// appContainerPorts are the TCP containerPorts of the pod's app containers (not meshlet's), each once, in order;
// ports written otherwise than as a plain number are left out (firstContainerPort reports the app port's).
func appContainerPorts(spec *yaml.Node) []int {
	var ports []int
	cs := get(spec, "containers")
	if cs == nil || cs.Kind != yaml.SequenceNode {
		return nil
	}
	for _, c := range cs.Content {
		if scalar(get(c, "name")) == ContainerName {
			continue
		}
		ps := get(c, "ports")
		if ps == nil || ps.Kind != yaml.SequenceNode {
			continue
		}
		for _, p := range ps.Content {
			if proto := scalar(get(p, "protocol")); proto != "" && proto != "TCP" {
				continue
			}
			n, ok := portNumber(get(p, "containerPort"))
			if !ok {
				continue
			}
			if !slices.Contains(ports, n) {
				ports = append(ports, n)
			}
		}
	}
	return ports
}

// servicePorts are the app's ports besides appPort that redirected inbound connections reach through meshlet
// (service.ports): the app containers' ports but those left out of inbound redirection (the kubelet's, the
// excluded ones) and meshlet's own.
func (t *transparentParams) servicePorts(appPort int, cfg Config, inboundPort int) []int {
	var out []int
	for _, p := range t.containerPorts {
		if p == appPort || p == cfg.AdminPort || p == inboundPort || slices.Contains(t.probePorts, p) ||
			slices.Contains(t.excludeInbound, uint16(p)) {
			continue
		}
		out = append(out, p)
	}
	return out
}

// resolvePort reads a probe's port: a number, or the name of one of container c's ports.
func resolvePort(c, port *yaml.Node) (int, error) {
	if port.Kind == yaml.ScalarNode && port.Tag == "!!int" {
		n, ok := portNumber(port)
		if !ok {
			return 0, fmt.Errorf("%s must be a port number 1..65535 or a port name", describe(port))
		}
		return n, nil
	}
	name := scalar(port)
	if ps := get(c, "ports"); name != "" && ps != nil && ps.Kind == yaml.SequenceNode {
		for _, p := range ps.Content {
			if scalar(get(p, "name")) != name {
				continue
			}
			v := get(p, "containerPort")
			n, ok := portNumber(v)
			if !ok {
				return 0, fmt.Errorf("%q: its containerPort %s must be a port number 1..65535", name, describe(v))
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("%s names no port of the container", describe(port))
}

// proxyUIDClashes reports the pod's or an app container's runAsUser that is the proxy UID: that process's
// connections would bypass the redirection, as meshlet's own do.
func proxyUIDClashes(spec *yaml.Node, uid int64) []error {
	var errs []error
	clash := func(where string, sc *yaml.Node) {
		if v := get(sc, "runAsUser"); v != nil && scalar(v) == strconv.FormatInt(uid, 10) {
			errs = append(errs, fmt.Errorf("%s.securityContext.runAsUser %d is meshlet's UID, whose connections are "+
				"never redirected: the app's would bypass meshlet (run the app as another user)", where, uid))
		}
	}
	clash("spec", get(spec, "securityContext"))
	for _, key := range []string{"initContainers", "containers"} {
		seq := get(spec, key)
		if seq == nil || seq.Kind != yaml.SequenceNode {
			continue
		}
		for i, c := range seq.Content {
			if name := scalar(get(c, "name")); name != ContainerName && name != InitContainerName {
				clash(fmt.Sprintf("%s[%d] (%s)", key, i, name), get(c, "securityContext"))
			}
		}
	}
	return errs
}

// initContainer builds the meshlet-init container of a transparent pod: `meshlet redirect-traffic` as root with
// NET_ADMIN only (it programs nftables over netlink, which needs no NET_RAW), once, before every other container.
func initContainer(p podParams, cfg Config) *initContainerSpec {
	t := p.transparent
	args := []string{redirectCommand,
		"-proxy-uid", strconv.FormatInt(t.proxyUID, 10),
		"-proxy-outbound-port", strconv.Itoa(t.outboundPort)}
	if p.appPort != 0 { // inbound redirection only when meshlet has an inbound listener
		args = append(args, "-proxy-inbound-port", strconv.Itoa(p.inboundPort))
		excl := []string{strconv.Itoa(cfg.AdminPort)}
		for _, n := range t.excludeInbound {
			excl = appendNew(excl, strconv.Itoa(int(n)))
		}
		for _, n := range t.probePorts {
			excl = appendNew(excl, strconv.Itoa(n))
		}
		args = append(args, "-exclude-inbound-port", strings.Join(excl, ","))
	}
	if len(t.excludeOutbound) > 0 {
		args = append(args, "-exclude-outbound-port", joinList(t.excludeOutbound))
	}
	if len(t.excludeCIDRs) > 0 {
		args = append(args, "-exclude-outbound-cidr", joinList(t.excludeCIDRs))
	}
	if len(t.excludeUIDs) > 0 {
		args = append(args, "-exclude-uid", joinList(t.excludeUIDs))
	}
	c := &initContainerSpec{
		Name:            InitContainerName,
		Image:           cfg.Image,
		ImagePullPolicy: cfg.ImagePullPolicy,
		Args:            args,
		Resources: resources{
			Requests: map[string]string{"cpu": cfg.CPURequest, "memory": cfg.MemoryRequest},
			Limits:   map[string]string{"memory": cfg.MemoryLimit},
		},
	}
	sc := &c.SecurityContext
	sc.ReadOnlyRootFilesystem = true
	sc.RunAsNonRoot, sc.RunAsUser, sc.RunAsGroup = false, 0, 0 // CAP_NET_ADMIN in the pod's namespace needs root
	sc.Capabilities.Add = []string{"NET_ADMIN"}
	sc.Capabilities.Drop = []string{"ALL"}
	sc.SeccompProfile.Type = "RuntimeDefault"
	return c
}

func appendNew(list []string, v string) []string {
	if slices.Contains(list, v) {
		return list
	}
	return append(list, v)
}

func joinList[T any](vs []T) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = fmt.Sprint(v)
	}
	return strings.Join(s, ",")
}

// isInjectedInit reports whether c is an init container that injection made (named meshlet-init, running
// redirect-traffic).
func isInjectedInit(c *yaml.Node) bool {
	args := get(c, "args")
	return scalar(get(c, "name")) == InitContainerName && args != nil && args.Kind == yaml.SequenceNode &&
		len(args.Content) > 0 && scalar(args.Content[0]) == redirectCommand
}

// checkInitContainers refuses a container of the pod's own named meshlet-init when injection would add one.
func checkInitContainers(spec *yaml.Node) error {
	for _, key := range []string{"initContainers", "containers"} {
		seq := get(spec, key)
		if seq == nil || seq.Kind != yaml.SequenceNode {
			continue
		}
		for i, c := range seq.Content {
			if scalar(get(c, "name")) == InitContainerName && (key != "initContainers" || !isInjectedInit(c)) {
				return fmt.Errorf("%s[%d]: the pod has its own container named %q, which transparent interception "+
					"needs; rename it, or set %s: \"false\"", key, i, InitContainerName, AnnotationTransparent)
			}
		}
	}
	return nil
}

// removeInjectedInit drops the init container injection made, and reports whether there was one.
func removeInjectedInit(spec *yaml.Node) bool {
	seq := get(spec, "initContainers")
	if seq == nil || seq.Kind != yaml.SequenceNode {
		return false
	}
	n := len(seq.Content)
	seq.Content = slices.DeleteFunc(seq.Content, isInjectedInit)
	return len(seq.Content) != n
}

var errNoProxyUID = errors.New("proxy UID: must be 1..2147483647 (not root: meshlet runs as non-root)")
