package consul

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

	"meshlet.dev/meshlet/mtls"
)

// Intentions keeps an mtls.Intentions, which authorizes callers, current for one destination service: Consul's
// intentions towards it, watched with a blocking query, and Consul's default for callers no intention names,
// learned from the agent (DefaultPolicy); while the default is unknown, such callers are denied. Allowed and
// DefaultPolicy are the mtls.Intentions'. Safe for concurrent use; Allowed never blocks.
type Intentions struct {
	client  *api.Client
	service string
	log     *slog.Logger
	eval    *mtls.Intentions

	via     atomic.Pointer[string] // the agent endpoint that said the default policy; "" while it is unknown
	ready   chan struct{}          // closed once both steps below are done
	steps   atomic.Int32
	loaded  sync.Once // the first answer about the intentions
	tried   sync.Once // the first attempt to learn the default policy
	lastErr atomic.Pointer[string]
}

// defaultRecheck is how often the default policy is read again once known (a Consul agent may restart with
// another one); while it is unknown, attempts follow each other with Backoff and at each change of the
// intentions.
const defaultRecheck = 5 * time.Minute

// NewIntentions returns an evaluator for the intentions towards service, read from the agent behind client; run
// it with Run.
func NewIntentions(client *api.Client, service string, log *slog.Logger) *Intentions {
	it := &Intentions{client: client, service: service, log: log, eval: mtls.NewIntentions(service, log),
		ready: make(chan struct{})}
	it.via.Store(new(string))
	return it
}

// Allowed decides whether caller (verified, of the local trust domain) may call; r is the request with its path
// normalized, or nil for a TCP connection. See mtls.Intentions.Allowed.
func (it *Intentions) Allowed(caller mtls.ID, r *http.Request) (bool, string) {
	return it.eval.Allowed(caller, r)
}

// DefaultPolicy returns Consul's default for callers no intention names, and, when it is mtls.DefaultUnknown, why
// (nil otherwise).
func (it *Intentions) DefaultPolicy() (mtls.DefaultPolicy, error) { return it.eval.DefaultPolicy() }

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
		it.eval.SetIntentions(latest)
		it.log.Info("intentions updated", "service", it.service, "intentions", len(latest))
		it.loaded.Do(it.step)
		if p, _ := it.DefaultPolicy(); p == mtls.DefaultUnknown {
			select { // try again now: a wildcard intention that hid the default may be gone
			case nudge <- struct{}{}:
			default:
			}
		}
	}
	watchChanges(ctx, fetch, changed, func(err error) {
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
			wait = Backoff(failures)
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
			prev, prevErr := it.eval.DefaultPolicy()
			if prev != mtls.DefaultUnknown {
				it.log.Debug("cannot read the default intention policy again; keeping the one learned", "policy",
					string(prev), "error", err.Error())
				return err
			}
			it.eval.SetDefaultPolicy(mtls.DefaultUnknown, err)
			it.via.Store(new(string))
			if prevErr == nil || prevErr.Error() != err.Error() {
				it.log.Error("default intention policy unknown: callers no intention names are denied", "error", err.Error())
			}
			return err
		}
	}
	prev, _ := it.eval.DefaultPolicy()
	it.eval.SetDefaultPolicy(policy, nil)
	it.via.Store(&via)
	if prev != policy {
		it.log.Info("default intention policy learned", "service", it.service, "policy", string(policy), "via", via)
	}
	return nil
}

// defaultFromSelf reads the default from the agent's configuration: default_intention_policy when set (Consul
// 1.17+), else allow without ACLs and the ACL default policy with them.
func (it *Intentions) defaultFromSelf(ctx context.Context) (mtls.DefaultPolicy, error) {
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
		return mtls.DefaultAllow, nil
	}
	resolver, _ := dc["ACLResolverSettings"].(map[string]any)
	def, _ := resolver["ACLDefaultPolicy"].(string)
	if def == "" {
		def, _ = dc["ACLDefaultPolicy"].(string)
	}
	return parsePolicy("ACLDefaultPolicy", def)
}

func parsePolicy(field, p string) (mtls.DefaultPolicy, error) {
	switch p {
	case "allow":
		return mtls.DefaultAllow, nil
	case "deny":
		return mtls.DefaultDeny, nil
	}
	return "", fmt.Errorf("%s %q is neither allow nor deny", field, p)
}

// defaultFromAuthorize asks the agent to authorize a caller that no intention names: a service of a random name
// in the default namespace and partition of the local trust domain. A wildcard intention names it too; then the
// answer is not the default and the attempt fails (the default matters only once that intention is gone, and the
// next change of the intentions tries again).
func (it *Intentions) defaultFromAuthorize(ctx context.Context) (mtls.DefaultPolicy, error) {
	var roots api.CARootList
	if _, err := it.client.Raw().Query("/v1/agent/connect/ca/roots", &roots, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return "", err
	}
	if roots.TrustDomain == "" {
		return "", errors.New("the Connect CA has no trust domain yet")
	}
	probe := mtls.ServiceID(roots.TrustDomain, "", "", "meshlet-default-probe-"+strings.ToLower(rand.Text()))
	if source, ok := it.eval.Names(probe); ok {
		return "", fmt.Errorf("intention %s → %s names every caller", source, it.service)
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
		return mtls.DefaultAllow, nil
	}
	return mtls.DefaultDeny, nil
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
