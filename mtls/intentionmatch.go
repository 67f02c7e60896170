package mtls

import (
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"

	"github.com/hashicorp/consul/api"
)

// Intentions authorizes callers by Consul's intentions for one destination service, evaluated locally: on each
// new TCP connection (L4 intentions) and on each HTTP request (L7 intentions on path, method and headers). The
// first intention (by Consul's precedence) whose source is the caller (service, namespace and partition; never a
// peer's service) decides; an L7 intention decides by its first matching permission, and denies when none
// matches. Without a matching intention, Consul's default applies (DefaultPolicy); while it is unknown, such
// callers are denied. What watches the agent (consul.Intentions) sets the intentions (SetIntentions) and the
// default policy (SetDefaultPolicy); before the first SetIntentions every caller is denied. Safe for concurrent
// use; Allowed never blocks.
type Intentions struct {
	service string
	log     *slog.Logger

	rules atomic.Pointer[[]intention] // nil until the first SetIntentions
	def   atomic.Pointer[defaultState]
}

// DefaultPolicy is Consul's decision for a caller that no intention names.
type DefaultPolicy string

// Default policies. DefaultUnknown is meshlet's state until it has learned Consul's: such callers are denied.
const (
	DefaultAllow   DefaultPolicy = "allow"
	DefaultDeny    DefaultPolicy = "deny"
	DefaultUnknown DefaultPolicy = "unknown"
)

// defaultState is what meshlet knows of the default policy: the policy, or why it is not known.
type defaultState struct {
	policy DefaultPolicy
	err    error // why the policy is DefaultUnknown; nil otherwise
}

// NewIntentions returns an evaluator for the intentions towards service: none yet (every caller is denied), and
// the default policy DefaultUnknown. log gets the warnings about intentions that do not compile.
func NewIntentions(service string, log *slog.Logger) *Intentions {
	it := &Intentions{service: service, log: log}
	it.def.Store(&defaultState{policy: DefaultUnknown, err: errors.New("not read yet")})
	return it
}

// SetIntentions replaces the intentions with in, in Consul's order of precedence (as /v1/connect/intentions/match
// answers).
func (it *Intentions) SetIntentions(in []*api.Intention) {
	rules := compile(in, it.log)
	it.rules.Store(&rules)
}

// DefaultPolicy returns Consul's default for callers no intention names, and, when it is DefaultUnknown, why
// (nil otherwise).
func (it *Intentions) DefaultPolicy() (DefaultPolicy, error) {
	d := it.def.Load()
	if d.policy == DefaultUnknown {
		return d.policy, d.err
	}
	return d.policy, nil
}

// SetDefaultPolicy sets Consul's default for callers no intention names; with DefaultUnknown, err says why (it
// must not be nil then), and is ignored otherwise.
func (it *Intentions) SetDefaultPolicy(p DefaultPolicy, err error) {
	if p != DefaultUnknown {
		err = nil
	}
	it.def.Store(&defaultState{policy: p, err: err})
}

// Names reports whether an intention names caller as its source, and the first that does, by its source as
// Consul's CLI writes it ("web", "*", "team/web"); false before the first SetIntentions.
func (it *Intentions) Names(caller ID) (source string, ok bool) {
	if rules := it.rules.Load(); rules != nil {
		for _, x := range *rules {
			if x.matchesSource(caller) {
				return x.label, true
			}
		}
	}
	return "", false
}

// Allowed decides whether caller (verified, of the local trust domain) may call; r is the request with its path
// normalized, or nil for a TCP connection (an L7 intention then denies). The reason says which rule decided.
func (it *Intentions) Allowed(caller ID, r *http.Request) (bool, string) {
	rules := it.rules.Load()
	if rules == nil {
		return false, "intentions not loaded yet"
	}
	for i := range *rules {
		x := &(*rules)[i]
		if !x.matchesSource(caller) {
			continue
		}
		if x.unchecked != "" {
			return false, "intention " + x.label + " → " + it.service + ": meshlet cannot check its source (" + x.unchecked + ")"
		}
		if len(x.permissions) == 0 {
			return x.allow, "intention " + x.label + " → " + it.service
		}
		if r == nil {
			return false, "L7 intention " + x.label + " → " + it.service + " on a TCP connection"
		}
		v := newRequestView(r)
		for j := range x.permissions {
			if p := &x.permissions[j]; p.matches(v) {
				return p.allow, "L7 intention " + x.label + " → " + it.service
			}
		}
		return false, "no permission of L7 intention " + x.label + " → " + it.service + " matches"
	}
	switch d := it.def.Load(); d.policy {
	case DefaultAllow:
		return true, "no intention; default allow"
	case DefaultDeny:
		return false, "no intention; default deny"
	default:
		return false, "no intention, and Consul's default policy is unknown: " + d.err.Error()
	}
}

// intention is an api.Intention prepared for evaluation (regular expressions compiled). Its source is the whole
// identity Consul names: service, namespace and admin partition ("" means the default one; "*" any), and a
// peer (a service of a peered cluster, never one of meshlet's callers: meshlet accepts only its own trust domain).
type intention struct {
	name, namespace, partition string
	peer                       string
	unchecked                  string // why meshlet cannot tell whether a caller is the source; "" when it can
	label                      string // the source, for reasons
	allow                      bool
	permissions                []permission // L7; empty for an L4 intention
}

type permission struct {
	allow      bool
	pathExact  string
	pathPrefix string
	pathRegex  *regexp.Regexp
	methods    []string
	headers    []headerMatch
}

type headerMatch struct {
	api.IntentionHTTPHeaderPermission
	regex *regexp.Regexp
}

// never is a regular expression that matches nothing: the stand-in for one that does not compile.
var never = regexp.MustCompile(`a\A`)

func compile(in []*api.Intention, log *slog.Logger) []intention {
	out := make([]intention, 0, len(in))
	for _, x := range in {
		it := intention{name: x.SourceName, namespace: x.SourceNS, partition: x.SourcePartition, peer: x.SourcePeer,
			allow: x.Action == api.IntentionActionAllow}
		switch {
		case x.SourceType != "" && x.SourceType != api.IntentionSourceConsul:
			it.unchecked = "source type " + string(x.SourceType)
		case x.SourceSamenessGroup != "":
			it.unchecked = "sameness group " + x.SourceSamenessGroup
		}
		it.label = sourceLabel(x)
		for _, p := range x.Permissions {
			it.permissions = append(it.permissions, compilePermission(p, log))
		}
		out = append(out, it)
	}
	return out
}

// sourceLabel names an intention's source as Consul's CLI does: [peer/|partition/][namespace/]name.
func sourceLabel(x *api.Intention) string {
	l := x.SourceName
	if x.SourceNS != "" && x.SourceNS != DefaultNamespace {
		l = x.SourceNS + "/" + l
	}
	switch {
	case x.SourcePeer != "":
		l = "peer:" + x.SourcePeer + "/" + l
	case x.SourcePartition != "" && x.SourcePartition != DefaultPartition:
		l = x.SourcePartition + "/" + l
	case x.SourceSamenessGroup != "":
		l = "sameness-group:" + x.SourceSamenessGroup + "/" + l
	}
	return l
}

func compilePermission(p *api.IntentionPermission, log *slog.Logger) permission {
	perm := permission{allow: p.Action == api.IntentionActionAllow}
	h := p.HTTP
	if h == nil {
		return perm
	}
	perm.pathExact, perm.pathPrefix, perm.methods = h.PathExact, h.PathPrefix, h.Methods
	if h.PathRegex != "" {
		re, err := regexp.Compile(h.PathRegex)
		if err != nil {
			log.Warn("intention path regex does not compile; the permission never matches", "regex", h.PathRegex)
			re = never
		}
		perm.pathRegex = re
	}
	for _, hm := range h.Header {
		m := headerMatch{IntentionHTTPHeaderPermission: hm}
		if hm.Regex != "" {
			re, err := regexp.Compile(hm.Regex)
			if err != nil {
				log.Warn("intention header regex does not compile; the permission never matches", "regex", hm.Regex)
				re = never
			}
			m.regex = re
		}
		perm.headers = append(perm.headers, m)
	}
	return perm
}

// matchesSource reports whether caller is the intention's source: same service (or "*"), namespace (or "*") and
// admin partition, never through a peering. For an intention whose source meshlet cannot check (unchecked), the
// partition is not compared: such an intention denies every caller whose name and namespace match.
func (x *intention) matchesSource(caller ID) bool {
	if x.peer != "" {
		return false
	}
	if x.name != "*" && x.name != caller.Service {
		return false
	}
	ns := x.namespace
	if ns == "" {
		ns = DefaultNamespace
	}
	if ns != "*" && ns != caller.Namespace {
		return false
	}
	part := x.partition
	if part == "" {
		part = DefaultPartition
	}
	return x.unchecked != "" || part == "*" || part == caller.PartitionName()
}

// requestView is what permissions read of a request. An allow permission reads the path as Envoy matches it
// (the normalized path with its remaining %-escapes); a deny permission matches when any reading does: that path,
// its percent-decoded form, or either with the ;parameters of each segment removed (as Tomcat or Spring read it).
type requestView struct {
	r        *http.Request
	path     string
	readings []string // the deny readings, built on first use
}

func newRequestView(r *http.Request) *requestView {
	p := r.URL.RawPath
	if p == "" {
		p = r.URL.EscapedPath()
	}
	return &requestView{r: r, path: p}
}

func (v *requestView) denyReadings() []string {
	if v.readings != nil {
		return v.readings
	}
	v.readings = []string{v.path}
	add := func(s string) {
		for _, x := range v.readings {
			if x == s {
				return
			}
		}
		v.readings = append(v.readings, s)
	}
	decoded := v.r.URL.Path
	if d, err := url.PathUnescape(v.path); err == nil {
		decoded = d
	}
	add(decoded)
	add(stripParams(v.path))
	add(stripParams(decoded))
	return v.readings
}

// stripParams removes the ;parameters of each segment of p: /a;x=1/b;y → /a/b.
func stripParams(p string) string {
	if strings.IndexByte(p, ';') < 0 {
		return p
	}
	segs := strings.Split(p, "/")
	for i, s := range segs {
		if j := strings.IndexByte(s, ';'); j >= 0 {
			segs[i] = s[:j]
		}
	}
	return strings.Join(segs, "/")
}

// matches reports whether the permission applies to the request. Where a request can be read two ways (a path
// with escapes or ;parameters, a method in another case, a header spelled with _ for -, a header sent twice), an
// allow matches only the strict reading and a deny matches any: a doubt never turns into an allow.
func (p *permission) matches(v *requestView) bool {
	if !p.pathMatches(v) {
		return false
	}
	if len(p.methods) > 0 {
		found := false
		for _, m := range p.methods {
			if m == v.r.Method || !p.allow && strings.EqualFold(m, v.r.Method) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	for i := range p.headers {
		if !p.headers[i].matches(v.r, !p.allow) {
			return false
		}
	}
	return true
}

func (p *permission) pathMatches(v *requestView) bool {
	if p.pathExact == "" && p.pathPrefix == "" && p.pathRegex == nil {
		return true
	}
	if p.allow {
		return p.pathMatch(v.path)
	}
	for _, s := range v.denyReadings() {
		if p.pathMatch(s) {
			return true
		}
	}
	return false
}

func (p *permission) pathMatch(path string) bool {
	switch {
	case p.pathExact != "" && path != p.pathExact:
		return false
	case p.pathPrefix != "" && !strings.HasPrefix(path, p.pathPrefix):
		return false
	case p.pathRegex != nil && !p.pathRegex.MatchString(path):
		return false
	}
	return true
}

// matches applies the header condition to r, as Envoy does: names compare without case, several values of one
// header are joined with ",", Invert negates the result. Host is the request's authority. A header whose name is
// the condition's with '_' and '-' taken alike but spelled otherwise (X_User for X-User; CVE-2024-10006: apps
// that map '_' to '-' read it as the same header) makes the condition fail for an allow (strict); for a deny
// (lenient) the condition holds when it holds for the named header, for any such look-alike, or for any single
// value of either.
func (h *headerMatch) matches(r *http.Request, lenient bool) bool {
	var exact []string
	var lookalikes [][]string
	present := false
	if strings.EqualFold(h.Name, "Host") {
		exact, present = []string{r.Host}, true
	}
	want := dashed(h.Name)
	for k, vals := range r.Header {
		switch {
		case strings.EqualFold(k, h.Name):
			exact, present = append(exact, vals...), true
		case strings.EqualFold(dashed(k), want):
			lookalikes = append(lookalikes, vals)
		}
	}
	if !lenient {
		return len(lookalikes) == 0 && h.test(strings.Join(exact, ","), present)
	}
	if h.test(strings.Join(exact, ","), present) {
		return true
	}
	for _, vals := range lookalikes {
		if h.test(strings.Join(vals, ","), true) {
			return true
		}
		exact = append(exact, vals...)
	}
	if len(exact) > 1 {
		for _, v := range exact {
			if h.test(v, true) {
				return true
			}
		}
	}
	return false
}

// dashed returns name with every '_' written '-'.
func dashed(name string) string {
	if strings.IndexByte(name, '_') < 0 {
		return name
	}
	return strings.ReplaceAll(name, "_", "-")
}

// test applies the condition to one reading of the header: v its value, present whether it was sent.
func (h *headerMatch) test(v string, present bool) bool {
	return h.cond(v, present) != h.Invert
}

func (h *headerMatch) cond(v string, present bool) bool {
	fold := func(s string) string {
		if h.IgnoreCase {
			return strings.ToLower(s)
		}
		return s
	}
	switch {
	case h.Present:
		return present
	case h.Exact != "":
		return present && fold(v) == fold(h.Exact)
	case h.Prefix != "":
		return present && strings.HasPrefix(fold(v), fold(h.Prefix))
	case h.Suffix != "":
		return present && strings.HasSuffix(fold(v), fold(h.Suffix))
	case h.Contains != "":
		return present && strings.Contains(fold(v), fold(h.Contains))
	case h.regex != nil:
		return present && h.regex.MatchString(v)
	}
	return present
}
