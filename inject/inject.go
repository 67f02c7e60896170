// Package inject adds the meshlet sidecar to Kubernetes workloads: the logic behind `meshlet inject` (YAML in,
// YAML out) and, later, the admission webhook.
//
// Injection works on a generic YAML node tree (go.yaml.in/yaml/v3), never on typed Kubernetes objects, so fields
// meshlet does not know (newer API fields, CRDs in the same stream), key order and comments survive. Documents that
// injection does not change are copied byte for byte; a changed document is re-encoded with two-space indentation
// (comments kept, formatting of that document normalised). Injecting twice gives the same bytes as injecting once.
package inject

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"
)

// Annotations read from a pod (template) and written by injection. All live on the pod template's metadata,
// which is what the admission webhook sees too.
const (
	AnnotationInject      = "meshlet.dev/inject"       // "false" or "disabled" skips the pod; "true" or "enabled" (or none) injects it
	AnnotationService     = "meshlet.dev/service"      // service name; default the app.kubernetes.io/name or app label, else the workload's name
	AnnotationUpstreams   = "meshlet.dev/upstreams"    // "api:9001,billing:9002:grpc": name:local-port[:protocol]
	AnnotationAppPort     = "meshlet.dev/app-port"     // the app's port; default the first containerPort of the first container; "none": no inbound
	AnnotationAppProtocol = "meshlet.dev/app-protocol" // http (default), http2, grpc, tcp
	AnnotationInboundPort = "meshlet.dev/inbound-port" // where other sidecars reach the pod; default 21000
	AnnotationConsul      = "meshlet.dev/consul"       // Consul agent address; default $(HOST_IP):8500 (an agent per node)
	AnnotationNative      = "meshlet.dev/native-sidecar"
	AnnotationLogLevel    = "meshlet.dev/log-level"
	// AnnotationTLSSecret names a Secret in the pod's namespace with tls.crt, tls.key and ca.crt (cert-manager's
	// layout) holding the sidecar's SPIFFE certificate: mounted read-only, and mutual TLS turns on.
	AnnotationTLSSecret = "meshlet.dev/tls-secret"
	// AnnotationTLS "consul" takes the sidecar's certificate from the Consul agent's Connect CA (tls.source: consul).
	AnnotationTLS = "meshlet.dev/tls"
	// AnnotationTransparent "true" adds transparent interception (the meshlet-init container; see
	// Config.Transparent for the cluster-wide default, which "false" overrides).
	AnnotationTransparent = "meshlet.dev/transparent"
	// The exclusions of transparent interception, comma-separated: local ports whose inbound connections, and
	// destination ports, networks (CIDRs or addresses) and UIDs whose outbound connections are left alone.
	AnnotationExcludeInboundPorts  = "meshlet.dev/exclude-inbound-ports"
	AnnotationExcludeOutboundPorts = "meshlet.dev/exclude-outbound-ports"
	AnnotationExcludeOutboundCIDRs = "meshlet.dev/exclude-outbound-cidrs"
	AnnotationExcludeUIDs          = "meshlet.dev/exclude-uids"
	// The sidecar's resources, Kubernetes quantities: requests and limits of cpu and memory (default: Config's).
	// GOMEMLIMIT is set to 90% of the memory limit.
	AnnotationCPURequest    = "meshlet.dev/proxy-cpu-request"
	AnnotationCPULimit      = "meshlet.dev/proxy-cpu-limit"
	AnnotationMemoryRequest = "meshlet.dev/proxy-memory-request"
	AnnotationMemoryLimit   = "meshlet.dev/proxy-memory-limit"
	// AnnotationAccessLog "true" logs one line per request (log.access_log); default off.
	AnnotationAccessLog = "meshlet.dev/access-log"
	// AnnotationDrainDelay and AnnotationDrainTimeout set shutdown.drain_delay and shutdown.drain_timeout (Go
	// durations such as 5s); default meshlet's (5s, 20s).
	AnnotationDrainDelay   = "meshlet.dev/drain-delay"
	AnnotationDrainTimeout = "meshlet.dev/drain-timeout"
)

// AnnotationDefaultContainer is kubectl's annotation naming the container that `kubectl logs` and `kubectl exec`
// use when none is given: classic injection sets it to the app's container (meshlet comes first in containers).
const AnnotationDefaultContainer = "kubectl.kubernetes.io/default-container"

// TLSVolume is the name of the volume injected for meshlet.dev/tls-secret, and TLSDir where it is mounted.
const (
	TLSVolume = "meshlet-tls"
	TLSDir    = "/etc/meshlet/tls"
)

// ContainerName is the name of the injected container; a pod that has one is re-injected in place.
const ContainerName = "meshlet"

// Stats counts what Inject did.
type Stats struct {
	Injected int // pod templates that got (or kept) the sidecar
	Skipped  int // pod templates opted out with meshlet.dev/inject: "false"
	// Unmeshed are pod templates left unchanged because injecting them would be unsafe (hostNetwork: true); each
	// has a line in Warnings.
	Unmeshed int
	// Warnings say, for each pod template left unchanged for a reason, or injected with something left out or
	// worth a look (no app check from an exec readinessProbe, an app's own preStop hook kept, a grace period
	// shorter than meshlet's drain), where it is and why ("document 2: Deployment web: not injected: ...").
	Warnings []string
}

// prefixSince prefixes the warnings added since the first n with where.
func (st *Stats) prefixSince(n int, where string) {
	for i := n; i < len(st.Warnings); i++ {
		st.Warnings[i] = where + st.Warnings[i]
	}
}

// Inject reads a stream of YAML documents from r and writes it to w with the sidecar added to every pod template
// in it: Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, and the items of a List. Other
// documents are copied unchanged. An error names the document (1-based) and the problem; nothing is written then.
func Inject(w io.Writer, r io.Reader, cfg Config) (Stats, error) {
	var st Stats
	if err := cfg.validate(); err != nil {
		return st, err
	}
	in, err := io.ReadAll(r)
	if err != nil {
		return st, err
	}
	var out bytes.Buffer
	for i, chunk := range splitDocuments(in) {
		n := len(st.Warnings)
		b, err := injectDocument(chunk, cfg, &st)
		st.prefixSince(n, fmt.Sprintf("document %d: ", i+1))
		if err != nil {
			return st, fmt.Errorf("document %d: %w", i+1, err)
		}
		out.Write(b)
	}
	_, err = w.Write(out.Bytes())
	return st, err
}

var docSeparator = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^---(\s|$)`) })

// splitDocuments cuts a YAML stream before each "---" line. Each part keeps its separator line, so that the parts
// joined are the input.
func splitDocuments(in []byte) [][]byte {
	var parts [][]byte
	start := 0
	for off := 0; off < len(in); {
		end := bytes.IndexByte(in[off:], '\n')
		if end < 0 {
			end = len(in)
		} else {
			end += off + 1
		}
		if off > start && docSeparator().Match(in[off:end]) {
			parts = append(parts, in[start:off])
			start = off
		}
		off = end
	}
	return append(parts, in[start:])
}

// injectDocument returns chunk itself when injection changes nothing, else the re-encoded document.
func injectDocument(chunk []byte, cfg Config, st *Stats) ([]byte, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(chunk, &doc); err != nil {
		return nil, fmt.Errorf("bad YAML: %w", err)
	}
	if needsResolve(&doc) { // aliases, merge keys, duplicate keys: read them as kubectl does
		var r resolver
		resolved, err := r.resolve(&doc)
		if err != nil {
			return nil, err
		}
		doc = *resolved
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return chunk, nil // empty, comments only, or not an object
	}
	before, err := encode(&doc)
	if err != nil {
		return nil, err
	}
	if err := injectObject(doc.Content[0], cfg, st); err != nil {
		return nil, err
	}
	after, err := encode(&doc)
	if err != nil {
		return nil, err
	}
	if bytes.Equal(before, after) {
		return chunk, nil
	}
	if docSeparator().Match(chunk) {
		after = append([]byte("---\n"), after...)
	}
	return after, nil
}

func encode(n *yaml.Node) ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	enc.CompactSeqIndent()
	if err := enc.Encode(n); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// injectObject finds the pod template(s) of one Kubernetes object and injects each.
func injectObject(obj *yaml.Node, cfg Config, st *Stats) error {
	kind := scalar(get(obj, "kind"))
	name := scalar(get(get(obj, "metadata"), "name"))
	var tmpl *yaml.Node // a node with metadata and spec of a pod
	switch kind {
	case "Pod":
		tmpl = obj
	case "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController":
		tmpl = get(get(obj, "spec"), "template")
	case "CronJob":
		tmpl = get(get(get(get(obj, "spec"), "jobTemplate"), "spec"), "template")
	default:
		if kind == "List" || strings.HasSuffix(kind, "List") {
			items := get(obj, "items")
			if items == nil || items.Kind != yaml.SequenceNode {
				return nil
			}
			for i, it := range items.Content {
				if it.Kind != yaml.MappingNode {
					continue
				}
				n := len(st.Warnings)
				if err := injectObject(it, cfg, st); err != nil {
					return fmt.Errorf("items[%d]: %w", i, err)
				}
				st.prefixSince(n, fmt.Sprintf("items[%d]: ", i))
			}
		}
		return nil
	}
	if tmpl == nil || tmpl.Kind != yaml.MappingNode || get(tmpl, "spec") == nil {
		return nil
	}
	n := len(st.Warnings)
	if err := injectPod(tmpl, name, cfg, st); err != nil {
		return fmt.Errorf("%s %s: %w", kind, name, err)
	}
	st.prefixSince(n, fmt.Sprintf("%s %s: ", kind, name))
	return nil
}

// injectPod adds the sidecar to a pod (or pod template): metadata and spec.
func injectPod(pod *yaml.Node, workload string, cfg Config, st *Stats) error {
	meta := ensureMap(pod, "metadata")
	ann := annotations(meta)
	switch v := ann[AnnotationInject]; strings.ToLower(v) {
	case "false", "disabled":
		st.Skipped++
		return nil
	case "", "true", "enabled":
	default:
		return fmt.Errorf("%s: %q must be enabled or disabled (or true or false)", AnnotationInject, v)
	}
	spec := get(pod, "spec")
	if spec.Kind != yaml.MappingNode {
		return errors.New("spec: not a mapping")
	}
	injected, err := checkMeshletContainers(spec)
	if err != nil {
		return err
	}
	if v := get(spec, "hostNetwork"); v != nil && !yamlFalse(v) {
		if injected {
			return fmt.Errorf("hostNetwork: %s with a meshlet sidecar: the sidecar's identity would be lent to every process on the node; remove hostNetwork or the sidecar", v.Value)
		}
		st.Unmeshed++
		st.Warnings = append(st.Warnings, fmt.Sprintf("not injected: hostNetwork: %s (the sidecar's identity and "+
			"ports would be shared with every process on the node); set %s: \"false\" to silence this", v.Value, AnnotationInject))
		return nil
	}
	p, err := podParamsFrom(meta, spec, ann, workload, cfg)
	if err != nil {
		return err
	}
	if p.appPort != 0 {
		if p.drainToken = existingDrainToken(spec, cfg); p.drainToken == "" {
			p.drainToken = newDrainToken()
		}
	}
	c, err := sidecar(p, cfg)
	if err != nil {
		return err
	}
	var cn, in yaml.Node
	if err := cn.Encode(c); err != nil {
		return err
	}
	if p.transparent != nil {
		if err := checkInitContainers(spec); err != nil {
			return err
		}
		if err := in.Encode(initContainer(p, cfg)); err != nil {
			return err
		}
	}
	appContainer := firstAppContainer(spec)
	hadInit := removeContainer(spec, "initContainers", ContainerName)
	if removeInjectedInit(spec) {
		hadInit = true
	}
	removeContainer(spec, "containers", ContainerName)
	if p.native {
		insertFirst(ensureSeq(spec, "initContainers"), &cn)
	} else {
		insertFirst(ensureSeq(spec, "containers"), &cn)
	}
	if p.transparent != nil { // first of all: the rules are in place before any other container runs
		insertFirst(ensureSeq(spec, "initContainers"), &in)
	}
	if init := get(spec, "initContainers"); hadInit && init != nil && len(init.Content) == 0 {
		del(spec, "initContainers") // only meshlet's were there, and they moved to containers or went
	}
	if err := setTLSVolume(spec, p.tlsSecret); err != nil {
		return err
	}
	st.Warnings = append(st.Warnings, p.warnings...)
	if p.appPort != 0 { // registered in Consul: drain it before the app gets SIGTERM
		w, err := addDrainHooks(spec, cfg, p.drainToken)
		if err != nil {
			return err
		}
		st.Warnings = append(st.Warnings, w...)
	}
	if w := gracePeriodWarning(spec, p); w != "" {
		st.Warnings = append(st.Warnings, w)
	}
	annMap := ensureMap(meta, "annotations")
	if _, ok := ann[AnnotationDefaultContainer]; !ok && !p.native && appContainer != "" {
		setScalar(annMap, AnnotationDefaultContainer, appContainer) // kubectl logs/exec: the app, not meshlet
	}
	if _, ok := ann["prometheus.io/scrape"]; !ok { // the app's own scrape annotations win: then use the port name
		setScalar(annMap, "prometheus.io/scrape", "true")
		setScalar(annMap, "prometheus.io/port", fmt.Sprint(cfg.AdminPort))
		setScalar(annMap, "prometheus.io/path", "/metrics")
	}
	st.Injected++
	return nil
}

// firstAppContainer is the name of the first container in spec.containers that is not meshlet's, or "".
func firstAppContainer(spec *yaml.Node) string {
	cs := get(spec, "containers")
	if cs == nil || cs.Kind != yaml.SequenceNode {
		return ""
	}
	for _, c := range cs.Content {
		if n := scalar(get(c, "name")); n != "" && n != ContainerName {
			return n
		}
	}
	return ""
}

// checkMeshletContainers reports whether the pod has a meshlet sidecar injected earlier (a container named meshlet
// that carries the generated config), and refuses a container named meshlet that is the pod's own: injection would
// replace it silently.
func checkMeshletContainers(spec *yaml.Node) (bool, error) {
	injected := false
	for _, key := range []string{"initContainers", "containers"} {
		seq := get(spec, key)
		if seq == nil || seq.Kind != yaml.SequenceNode {
			continue
		}
		for i, c := range seq.Content {
			if scalar(get(c, "name")) != ContainerName {
				continue
			}
			if !hasEnv(c, ConfigEnv) {
				return false, fmt.Errorf("%s[%d]: the pod has its own container named %q, which injection would "+
					"replace; rename it, or set %s: \"false\"", key, i, ContainerName, AnnotationInject)
			}
			injected = true
		}
	}
	return injected, nil
}

// hasEnv reports whether container c sets the environment variable name.
func hasEnv(c *yaml.Node, name string) bool {
	env := get(c, "env")
	if env == nil || env.Kind != yaml.SequenceNode {
		return false
	}
	for _, e := range env.Content {
		if scalar(get(e, "name")) == name {
			return true
		}
	}
	return false
}

// yamlFalse reports whether n is false or null as kubectl's YAML reader (YAML 1.1) sees it: false, no, off, n in
// their spellings, or null, ~ and an empty value. Anything else (true, yes, on, a quoted string) is not false.
func yamlFalse(n *yaml.Node) bool {
	if n.Kind != yaml.ScalarNode {
		return false
	}
	if n.Tag == "!!null" {
		return true
	}
	if n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 {
		return false
	}
	switch n.Value {
	case "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF", "n", "N":
		return true
	}
	return false
}

// setTLSVolume adds (or replaces, or removes when secret is empty) the volume of the TLS secret.
func setTLSVolume(spec *yaml.Node, secret string) error {
	hadVolume := removeContainer(spec, "volumes", TLSVolume) // volumes are found by name too
	if secret == "" {
		if vs := get(spec, "volumes"); hadVolume && vs != nil && len(vs.Content) == 0 {
			del(spec, "volumes")
		}
		return nil
	}
	v := struct {
		Name   string `yaml:"name"`
		Secret struct {
			SecretName string `yaml:"secretName"`
		} `yaml:"secret"`
	}{Name: TLSVolume}
	v.Secret.SecretName = secret
	var n yaml.Node
	if err := n.Encode(&v); err != nil {
		return err
	}
	vs := ensureSeq(spec, "volumes")
	vs.Content = append(vs.Content, &n)
	return nil
}

// annotations reads metadata.annotations as strings.
func annotations(meta *yaml.Node) map[string]string {
	m := map[string]string{}
	a := get(meta, "annotations")
	if a == nil || a.Kind != yaml.MappingNode {
		return m
	}
	for i := 0; i+1 < len(a.Content); i += 2 {
		m[a.Content[i].Value] = a.Content[i+1].Value
	}
	return m
}

// get returns the value of key in mapping m, or nil.
func get(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

func scalar(n *yaml.Node) string {
	if n == nil || n.Kind != yaml.ScalarNode {
		return ""
	}
	return n.Value
}

func set(m *yaml.Node, key string, v *yaml.Node) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content[i+1] = v
			return
		}
	}
	m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key}, v)
}

func del(m *yaml.Node, key string) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content = append(m.Content[:i], m.Content[i+2:]...)
			return
		}
	}
}

func setScalar(m *yaml.Node, key, value string) {
	set(m, key, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: value, Style: yaml.DoubleQuotedStyle})
}

// ensureMap returns the mapping at key, creating it (or replacing a null) when absent.
func ensureMap(m *yaml.Node, key string) *yaml.Node {
	if n := get(m, key); n != nil && n.Kind == yaml.MappingNode {
		return n
	}
	n := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	set(m, key, n)
	return n
}

func ensureSeq(m *yaml.Node, key string) *yaml.Node {
	if n := get(m, key); n != nil && n.Kind == yaml.SequenceNode {
		return n
	}
	n := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
	set(m, key, n)
	return n
}

func insertFirst(seq, n *yaml.Node) {
	seq.Content = append([]*yaml.Node{n}, seq.Content...)
}

// removeContainer drops the container called name from spec[key] and reports whether there was one.
func removeContainer(spec *yaml.Node, key, name string) bool {
	seq := get(spec, key)
	if seq == nil || seq.Kind != yaml.SequenceNode {
		return false
	}
	out := seq.Content[:0]
	for _, c := range seq.Content {
		if scalar(get(c, "name")) != name {
			out = append(out, c)
		}
	}
	removed := len(out) != len(seq.Content)
	seq.Content = out
	return removed
}
