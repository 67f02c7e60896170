package mtls

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/consul/api"
)

// Intentions authorizes callers by Consul's intentions for one destination service, watched with a blocking query
// and evaluated locally: on each new TCP connection (L4 intentions) and on each HTTP request (L7 intentions on
// path, method and headers). The first intention (by Consul's precedence) whose source matches the caller
// decides; an L7 intention decides by its first matching permission, and denies when none matches. Without a
// matching intention, Consul's default applies: allow when ACLs are off, else the ACL default policy. Safe for
// concurrent use; Allowed never blocks.
type Intentions struct {
	client  *api.Client
	service string
	log     *slog.Logger

	rules        atomic.Pointer[[]intention] // nil until the first answer
	defaultAllow atomic.Bool
	ready        chan struct{}
	readyOnce    sync.Once
	lastErr      atomic.Pointer[string]
}

// intention is an api.Intention prepared for evaluation (regular expressions compiled).
type intention struct {
	source      string // a service name, or "*"
	allow       bool
	permissions []permission // L7; empty for an L4 intention
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

// NewIntentions returns an evaluator for the intentions towards service; run it with Run.
func NewIntentions(client *api.Client, service string, log *slog.Logger) *Intentions {
	it := &Intentions{client: client, service: service, log: log, ready: make(chan struct{})}
	it.defaultAllow.Store(true)
	return it
}

// Ready is closed after the first answer from Consul.
func (it *Intentions) Ready() <-chan struct{} { return it.ready }

// Err is the last error talking to Consul, or nil.
func (it *Intentions) Err() error {
	if p := it.lastErr.Load(); p != nil {
		return fmt.Errorf("%s", *p)
	}
	return nil
}

// Run reads the default policy once and watches the intentions until ctx ends.
func (it *Intentions) Run(ctx context.Context) error {
	it.readDefault()
	var latest []*api.Intention
	fetch := func(q *api.QueryOptions) (uint64, error) {
		m, meta, err := it.client.Connect().IntentionMatch(&api.IntentionMatch{By: api.IntentionMatchDestination,
			Names: []string{it.service}}, q)
		if err != nil {
			return 0, err
		}
		it.lastErr.Store(nil)
		latest = m[it.service]
		return meta.LastIndex, nil
	}
	changed := func() {
		rules := compile(latest, it.log)
		it.rules.Store(&rules)
		it.log.Info("intentions updated", "service", it.service, "intentions", len(rules))
		it.readyOnce.Do(func() { close(it.ready) })
	}
	blockingQueries(ctx, fetch, changed, func(err error) {
		msg := "consul intentions: " + err.Error()
		if p := it.lastErr.Swap(&msg); p == nil || *p != msg {
			it.log.Error("cannot read intentions; keeping the last ones", "error", err.Error())
		}
	})
	return nil
}

// readDefault learns Consul's default for callers no intention names: allow without ACLs, else the ACL default
// policy.
func (it *Intentions) readDefault() {
	self, err := it.client.Agent().Self()
	if err != nil {
		return
	}
	dc, _ := self["DebugConfig"]
	if dc == nil {
		return
	}
	enabled, _ := dc["ACLsEnabled"].(bool)
	policy, _ := dc["ACLResolverSettings"].(map[string]any)
	def, _ := policy["ACLDefaultPolicy"].(string)
	if def == "" {
		def, _ = dc["ACLDefaultPolicy"].(string)
	}
	it.defaultAllow.Store(!enabled || def != "deny")
}

func compile(in []*api.Intention, log *slog.Logger) []intention {
	out := make([]intention, 0, len(in))
	for _, x := range in {
		in := intention{source: x.SourceName, allow: x.Action == api.IntentionActionAllow}
		for _, p := range x.Permissions {
			perm := permission{allow: p.Action == api.IntentionActionAllow}
			if h := p.HTTP; h != nil {
				perm.pathExact, perm.pathPrefix, perm.methods = h.PathExact, h.PathPrefix, h.Methods
				if h.PathRegex != "" {
					re, err := regexp.Compile(h.PathRegex)
					if err != nil {
						log.Warn("intention path regex does not compile; the permission never matches", "regex", h.PathRegex)
						re = regexp.MustCompile(`a\A`) // matches nothing
					}
					perm.pathRegex = re
				}
				for _, hm := range h.Header {
					m := headerMatch{IntentionHTTPHeaderPermission: hm}
					if hm.Regex != "" {
						if re, err := regexp.Compile(hm.Regex); err == nil {
							m.regex = re
						} else {
							m.regex = regexp.MustCompile(`a\A`)
						}
					}
					perm.headers = append(perm.headers, m)
				}
			}
			in.permissions = append(in.permissions, perm)
		}
		out = append(out, in)
	}
	return out
}

// Allowed decides whether caller may call; r is nil for a TCP connection (an L7 intention then denies). The
// reason says which rule decided.
func (it *Intentions) Allowed(caller ID, r *http.Request) (bool, string) {
	rules := it.rules.Load()
	if rules == nil {
		return false, "intentions not loaded yet"
	}
	for _, x := range *rules {
		if x.source != "*" && x.source != caller.Service {
			continue
		}
		if len(x.permissions) == 0 {
			return x.allow, "intention " + x.source + " → " + it.service
		}
		if r == nil {
			return false, "L7 intention " + x.source + " → " + it.service + " on a TCP connection"
		}
		for _, p := range x.permissions {
			if p.matches(r) {
				return p.allow, "L7 intention " + x.source + " → " + it.service
			}
		}
		return false, "no permission of L7 intention " + x.source + " → " + it.service + " matches"
	}
	if it.defaultAllow.Load() {
		return true, "no intention; default allow"
	}
	return false, "no intention; default deny"
}

func (p *permission) matches(r *http.Request) bool {
	path := r.URL.Path
	switch {
	case p.pathExact != "" && path != p.pathExact:
		return false
	case p.pathPrefix != "" && !strings.HasPrefix(path, p.pathPrefix):
		return false
	case p.pathRegex != nil && !p.pathRegex.MatchString(path):
		return false
	}
	if len(p.methods) > 0 {
		found := false
		for _, m := range p.methods {
			if strings.EqualFold(m, r.Method) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	for _, h := range p.headers {
		if h.matches(r.Header) != !h.Invert {
			return false
		}
	}
	return true
}

func (h *headerMatch) matches(hdr http.Header) bool {
	vals, present := hdr[http.CanonicalHeaderKey(h.Name)]
	v := strings.Join(vals, ",")
	eq := func(a, b string) bool {
		if h.IgnoreCase {
			return strings.EqualFold(a, b)
		}
		return a == b
	}
	switch {
	case h.Present:
		return present
	case h.Exact != "":
		return present && eq(v, h.Exact)
	case h.Prefix != "":
		return present && len(v) >= len(h.Prefix) && eq(v[:len(h.Prefix)], h.Prefix)
	case h.Suffix != "":
		return present && len(v) >= len(h.Suffix) && eq(v[len(v)-len(h.Suffix):], h.Suffix)
	case h.Contains != "":
		return present && strings.Contains(v, h.Contains)
	case h.regex != nil:
		return present && h.regex.MatchString(v)
	}
	return present
}
