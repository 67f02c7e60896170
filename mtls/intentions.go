package mtls

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/consul"
)

// Intentions authorizes callers by Consul's intentions for one destination service, watched with a blocking query
// and evaluated locally: on each new TCP connection (L4 intentions) and on each HTTP request (L7 intentions on
// path, method and headers). The first intention (by Consul's precedence) whose source is the caller (service,
// namespace and partition; never a peer's service) decides; an L7 intention decides by its first matching
// permission, and denies when none matches. Without a matching intention, Consul's default applies, learned from
// the agent (DefaultPolicy); while it is unknown, such callers are denied. Safe for concurrent use; Allowed never
// blocks.
type Intentions struct {
	client  *api.Client
	service string
	log     *slog.Logger

	rules   atomic.Pointer[[]intention] // nil until the first answer
	def     atomic.Pointer[defaultState]
	ready   chan struct{} // closed once both steps below are done
	steps   atomic.Int32
	loaded  sync.Once // the first answer about the intentions
	tried   sync.Once // the first attempt to learn the default policy
	lastErr atomic.Pointer[string]
}

// DefaultPolicy is Consul's decision for a caller that no intention names.
type DefaultPolicy string

// Default policies. DefaultUnknown is meshlet's state until it has learned Consul's: such callers are denied.
const (
	DefaultAllow   DefaultPolicy = "allow"
	DefaultDeny    DefaultPolicy = "deny"
	DefaultUnknown DefaultPolicy = "unknown"
)

// defaultState is what meshlet knows of the default policy: the policy, where it was learned, or why it is not.
type defaultState struct {
	policy DefaultPolicy
	via    string // the agent endpoint that said
	err    error  // why the last attempt failed; nil after a success
}

// defaultRecheck is how often the default policy is read again once known (a Consul agent may restart with
// another one); while it is unknown, attempts follow each other with consul.Backoff and at each
// change of the intentions.
const defaultRecheck = 5 * time.Minute

// NewIntentions returns an evaluator for the intentions towards service; run it with Run.
func NewIntentions(client *api.Client, service string, log *slog.Logger) *Intentions {
	it := &Intentions{client: client, service: service, log: log, ready: make(chan struct{})}
	it.def.Store(&defaultState{policy: DefaultUnknown, err: errors.New("not read yet")})
	return it
}

// Loaded is closed after the first answer about the intentions and the first attempt to learn the default
// policy (which may have failed: DefaultPolicy says).
func (it *Intentions) Loaded() <-chan struct{} { return it.ready }

// Ready is the readiness of authorization: not ready before Loaded (with the last error talking to Consul, if
// any). An unknown default policy does not make it unready: callers no intention names are denied, which is
// safe.
func (it *Intentions) Ready() error {
	select {
	case <-it.ready:
		return nil
	default:
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("waiting for intentions: %w", err)
	}
	return errors.New("waiting for intentions from consul")
}

// step marks one of the two steps Loaded waits for as done.
func (it *Intentions) step() {
	if it.steps.Add(1) == 2 {
		close(it.ready)
	}
}

// Err is the last error talking to Consul, or nil.
func (it *Intentions) Err() error {
	if p := it.lastErr.Load(); p != nil {
		return fmt.Errorf("%s", *p)
	}
	return nil
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

// Run watches the intentions and learns the default policy until ctx ends; it returns when both have stopped.
func (it *Intentions) Run(ctx context.Context) error {
	nudge := make(chan struct{}, 1)
	var wg sync.WaitGroup
	wg.Go(func() { it.learnDefaults(ctx, nudge) })
	defer wg.Wait()
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
		it.loaded.Do(it.step)
		if p, _ := it.DefaultPolicy(); p == DefaultUnknown {
			select { // try again now: a wildcard intention that hid the default may be gone
			case nudge <- struct{}{}:
			default:
			}
		}
	}
	consul.WatchChanges(ctx, fetch, changed, func(err error) {
		msg := "consul intentions: " + err.Error()
		if p := it.lastErr.Swap(&msg); p == nil || *p != msg {
			it.log.Error("cannot read intentions; keeping the last ones", "error", err.Error())
		}
	})
	return nil
}

// learnDefaults reads the default policy at once, again every defaultRecheck once known, and with a growing
// backoff (or when nudged) while it is not, until ctx ends.
func (it *Intentions) learnDefaults(ctx context.Context, nudge <-chan struct{}) {
	failures := 0
	for {
		wait := defaultRecheck
		err := it.learnDefault(ctx)
		if ctx.Err() != nil {
			return
		}
		it.tried.Do(it.step)
		if err != nil {
			failures++
			wait = consul.Backoff(failures)
		} else {
			failures = 0
		}
		select {
		case <-ctx.Done():
			return
		case <-nudge:
		case <-time.After(wait):
		}
	}
}

// learnDefault asks the agent for the default policy: /v1/agent/self (it needs agent:read, which a
// service-identity token lacks), else /v1/agent/connect/authorize for a caller no intention names (it needs
// service:write on this service, which the service's own token has), the endpoint Consul's built-in proxy
// authorized with. When both fail, a policy learned before stays (the agent said it); else it stays unknown and
// callers no intention names are denied.
func (it *Intentions) learnDefault(ctx context.Context) error {
	policy, selfErr := it.defaultFromSelf(ctx)
	via := "/v1/agent/self"
	if selfErr != nil {
		var authErr error
		policy, authErr = it.defaultFromAuthorize(ctx)
		via = "/v1/agent/connect/authorize"
		if authErr != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			err := fmt.Errorf("cannot learn Consul's default intention policy (/v1/agent/self: %v; /v1/agent/connect/authorize: %v)",
				selfErr, authErr)
			prev := it.def.Load()
			if prev.policy != DefaultUnknown {
				it.log.Debug("cannot read the default intention policy again; keeping the one learned", "policy",
					string(prev.policy), "error", err.Error())
				return err
			}
			it.def.Store(&defaultState{policy: DefaultUnknown, err: err})
			if prev.err == nil || prev.err.Error() != err.Error() {
				it.log.Error("default intention policy unknown: callers no intention names are denied", "error", err.Error())
			}
			return err
		}
	}
	if prev := it.def.Swap(&defaultState{policy: policy, via: via}); prev.policy != policy {
		it.log.Info("default intention policy learned", "service", it.service, "policy", string(policy), "via", via)
	}
	return nil
}

// defaultFromSelf reads the default from the agent's configuration: default_intention_policy when set (Consul
// 1.17+), else allow without ACLs and the ACL default policy with them.
func (it *Intentions) defaultFromSelf(ctx context.Context) (DefaultPolicy, error) {
	var self map[string]map[string]any
	if _, err := it.client.Raw().Query("/v1/agent/self", &self, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return "", err
	}
	dc := self["DebugConfig"]
	if dc == nil {
		return "", errors.New("no DebugConfig in the answer")
	}
	if p, _ := dc["DefaultIntentionPolicy"].(string); p != "" {
		return parsePolicy("DefaultIntentionPolicy", p)
	}
	enabled, ok := dc["ACLsEnabled"].(bool)
	if !ok {
		return "", errors.New("no DebugConfig.ACLsEnabled in the answer")
	}
	if !enabled {
		return DefaultAllow, nil
	}
	resolver, _ := dc["ACLResolverSettings"].(map[string]any)
	def, _ := resolver["ACLDefaultPolicy"].(string)
	if def == "" {
		def, _ = dc["ACLDefaultPolicy"].(string)
	}
	return parsePolicy("ACLDefaultPolicy", def)
}

func parsePolicy(field, p string) (DefaultPolicy, error) {
	switch p {
	case "allow":
		return DefaultAllow, nil
	case "deny":
		return DefaultDeny, nil
	}
	return "", fmt.Errorf("%s %q is neither allow nor deny", field, p)
}

// defaultFromAuthorize asks the agent to authorize a caller that no intention names: a service of a random name
// in the default namespace and partition of the local trust domain. A wildcard intention names it too; then the
// answer is not the default and the attempt fails (the default matters only once that intention is gone, and the
// next change of the intentions tries again).
func (it *Intentions) defaultFromAuthorize(ctx context.Context) (DefaultPolicy, error) {
	var roots api.CARootList
	if _, err := it.client.Raw().Query("/v1/agent/connect/ca/roots", &roots, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return "", err
	}
	if roots.TrustDomain == "" {
		return "", errors.New("the Connect CA has no trust domain yet")
	}
	probe := ServiceID(roots.TrustDomain, "", "", "meshlet-default-probe-"+strings.ToLower(rand.Text()))
	if rules := it.rules.Load(); rules != nil {
		for _, x := range *rules {
			if x.matchesSource(probe) {
				return "", fmt.Errorf("intention %s → %s names every caller", x.label, it.service)
			}
		}
	}
	res, err := it.authorize(ctx, &api.AgentAuthorizeParams{Target: it.service, ClientCertURI: probe.String(),
		ClientCertSerial: "00"})
	if err != nil {
		return "", err
	}
	if strings.HasPrefix(res.Reason, "Matched") {
		return "", fmt.Errorf("an intention names every caller (%s)", res.Reason)
	}
	if res.Authorized {
		return DefaultAllow, nil
	}
	return DefaultDeny, nil
}

// authorize is the agent's POST /v1/agent/connect/authorize, abandoned when ctx ends. The API client takes no
// context for it: the call runs in a goroutine of its own, which ends when the local agent answers (its result
// then goes to a buffered channel nobody reads).
func (it *Intentions) authorize(ctx context.Context, params *api.AgentAuthorizeParams) (*api.AgentAuthorize, error) {
	type answer struct {
		res *api.AgentAuthorize
		err error
	}
	ch := make(chan answer, 1)
	go func() {
		res, err := it.client.Agent().ConnectAuthorize(params)
		ch <- answer{res, err}
	}()
	select {
	case a := <-ch:
		return a.res, a.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
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
