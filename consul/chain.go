package consul

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/discovery"
)

// WatchChain implements discovery.ChainSource: the service's compiled discovery chain (/v1/discovery-chain, with
// blocking queries), Consul's own merge of its service-router, service-splitter, service-resolver and
// service-defaults, flattened into a discovery.Chain. While Consul cannot be reached the last chain stays.
func (c *Source) WatchChain(ctx context.Context, service string) (<-chan discovery.Chain, error) {
	if service == "" {
		return nil, fmt.Errorf("consul: empty service name")
	}
	ch := make(chan discovery.Chain, 1)
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer close(ch)
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			select {
			case <-c.ctx.Done():
				cancel()
			case <-wctx.Done():
			}
		}()
		var lastErr string
		var last []byte
		Watch(wctx, Options{Wait: c.cfg.WaitTime, Datacenter: c.cfg.Datacenter}, func(q *api.QueryOptions) (uint64, error) {
			var raw struct{ Chain json.RawMessage }
			meta, err := c.client.Raw().Query("/v1/discovery-chain/"+service, &raw, q)
			if err != nil {
				return 0, classify(err)
			}
			if bytes.Equal(raw.Chain, last) {
				return meta.LastIndex, nil
			}
			var rc rawChain
			if err := json.Unmarshal(raw.Chain, &rc); err != nil {
				return 0, fmt.Errorf("discovery chain of %s: %w", service, err)
			}
			last = raw.Chain
			chain := rc.compile(c.cfg.Datacenter)
			chain.Service, chain.Index = service, meta.LastIndex
			for {
				select {
				case ch <- chain:
				default:
					select {
					case <-ch:
					default:
					}
					continue
				}
				break
			}
			lastErr = ""
			return meta.LastIndex, nil
		}, func(err error, _ time.Duration) {
			if err.Error() != lastErr {
				lastErr = err.Error()
				c.log.Warn("consul discovery chain query failed; the last known chain stays", "service", service, "error", lastErr)
			}
		})
	}()
	return ch, nil
}

// rawChain is /v1/discovery-chain's Chain as Consul sends it (api.CompiledDiscoveryChain drops the splits'
// definitions and the resolvers' request timeouts).
type rawChain struct {
	ServiceName string
	Namespace   string
	Partition   string
	Datacenter  string
	Protocol    string
	StartNode   string
	Nodes       map[string]*rawNode
	Targets     map[string]*api.DiscoveryTarget
	// peers are the targets' cluster peers (api.DiscoveryTarget has no Peer; decoded apart).
	peers map[string]struct{ Peer string }
}

func (rc *rawChain) UnmarshalJSON(b []byte) error {
	type plain rawChain
	if err := json.Unmarshal(b, (*plain)(rc)); err != nil {
		return err
	}
	var p struct {
		Targets map[string]struct{ Peer string }
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return err
	}
	rc.peers = p.Targets
	return nil
}

type rawNode struct {
	Type   string
	Name   string
	Routes []*struct {
		Definition *api.ServiceRoute
		NextNode   string
	}
	Splits []*struct {
		Definition *api.ServiceSplit
		Weight     float64
		NextNode   string
	}
	Resolver *struct {
		Default        bool
		ConnectTimeout jsonDuration
		RequestTimeout jsonDuration
		Target         string
		Failover       *struct {
			Targets []string
			Policy  *api.ServiceResolverFailoverPolicy
		}
	}
	LoadBalancer *rawLB
}

// rawLB is a resolver's LoadBalancer (api.LoadBalancer cannot read a cookie TTL written as a string).
type rawLB struct {
	Policy             string
	RingHashConfig     *struct{ MinimumRingSize uint64 }
	LeastRequestConfig *struct{ ChoiceCount uint32 }
	HashPolicies       []struct {
		Field, FieldValue  string
		SourceIP, Terminal bool
		CookieConfig       *struct {
			Session bool
			TTL     jsonDuration
			Path    string
		}
	}
}

// jsonDuration reads a duration Consul writes as a string ("5s") or as nanoseconds (a number).
type jsonDuration time.Duration

func (d *jsonDuration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		*d = jsonDuration(v)
		return err
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("duration %s: %w", b, err)
	}
	*d = jsonDuration(n)
	return nil
}

// compile flattens the chain: routes (a start node that is a splitter or a resolver is one catch-all route), each
// with its splits, each ending at a resolver and its targets. What meshlet cannot honour goes to Unsupported.
func (rc *rawChain) compile(localDC string) discovery.Chain {
	ch := discovery.Chain{Protocol: rc.Protocol, Datacenter: rc.Datacenter}
	unsupported := map[string]bool{}
	refuse := func(format string, args ...any) { unsupported[fmt.Sprintf(format, args...)] = true }
	if rc.Namespace != "" && rc.Namespace != "default" || rc.Partition != "" && rc.Partition != "default" {
		refuse("namespace %q, partition %q (Consul Enterprise)", rc.Namespace, rc.Partition)
	}
	start := rc.Nodes[rc.StartNode]
	if start == nil {
		refuse("start node %q missing", rc.StartNode)
		ch.Unsupported = slices.Sorted(maps.Keys(unsupported))
		return ch
	}
	if start.Type == api.DiscoveryGraphNodeTypeResolver && start.Resolver != nil && start.Resolver.Default && len(rc.Nodes) == 1 {
		if t := rc.Targets[start.Resolver.Target]; t != nil && t.Service == rc.ServiceName && t.ServiceSubset == "" &&
			(t.Datacenter == "" || t.Datacenter == rc.Datacenter) {
			ch.Default = true
		}
	}
	if start.Type == api.DiscoveryGraphNodeTypeRouter {
		for i, r := range start.Routes {
			route := discovery.Route{}
			if r.Definition != nil {
				route.Match = routeMatch(r.Definition.Match, refuse)
				if d := r.Definition.Destination; d != nil {
					route.PrefixRewrite = d.PrefixRewrite
					route.RequestTimeout, route.IdleTimeout = d.RequestTimeout, d.IdleTimeout
					for _, c := range d.RetryOn {
						if c != "5xx" && !slices.Contains(retryOnHonoured, c) {
							refuse("route %d: retry condition %q", i, c)
						}
					}
					if d.NumRetries > 0 || d.RetryOnConnectFailure || len(d.RetryOn) > 0 || len(d.RetryOnStatusCodes) > 0 {
						route.Retry = routeSettings(d)
						route.Retry.Timeout = 0
					}
					route.RequestHeaders = headerMods(d.RequestHeaders, refuse)
					route.ResponseHeaders = headerMods(d.ResponseHeaders, refuse)
					if d.Namespace != "" && d.Namespace != "default" || d.Partition != "" && d.Partition != "default" {
						refuse("route %d: a destination in namespace %q, partition %q (Consul Enterprise)", i, d.Namespace, d.Partition)
					}
				}
			}
			route.Splits = rc.splits(r.NextNode, 100, 0, refuse)
			ch.Routes = append(ch.Routes, route)
		}
	} else {
		ch.Routes = []discovery.Route{{Splits: rc.splits(rc.StartNode, 100, 0, refuse)}}
	}
	ch.Unsupported = slices.Sorted(maps.Keys(unsupported))
	return ch
}

// retryOnHonoured are the RetryOn conditions meshlet applies as they are (routeSettings; 5xx becomes
// gateway-error and 500); a chain with another is refused, not applied without it.
var retryOnHonoured = []string{"gateway-error", "reset", "connect-failure", "refused-stream", "unavailable",
	"cancelled", "deadline-exceeded", "resource-exhausted"}

// splits follows node (a splitter or a resolver) with weight (percent) to the resolvers it ends at.
func (rc *rawChain) splits(name string, weight float64, depth int, refuse func(string, ...any)) []discovery.Split {
	n := rc.Nodes[name]
	if n == nil || depth > 8 {
		refuse("node %q missing or nested too deep", name)
		return nil
	}
	switch n.Type {
	case api.DiscoveryGraphNodeTypeResolver:
		return []discovery.Split{{Weight: weight, Resolver: rc.resolver(n, refuse)}}
	case api.DiscoveryGraphNodeTypeSplitter:
		var out []discovery.Split
		for _, s := range n.Splits {
			if s.Weight <= 0 {
				continue
			}
			sub := rc.splits(s.NextNode, weight*s.Weight/100, depth+1, refuse)
			if s.Definition != nil {
				req, resp := headerMods(s.Definition.RequestHeaders, refuse), headerMods(s.Definition.ResponseHeaders, refuse)
				for i := range sub {
					sub[i].RequestHeaders = mergeMods(req, sub[i].RequestHeaders)
					sub[i].ResponseHeaders = mergeMods(resp, sub[i].ResponseHeaders)
				}
			}
			out = append(out, sub...)
		}
		return out
	}
	refuse("node %q of type %q where a splitter or resolver belongs", name, n.Type)
	return nil
}

// resolver turns a resolver node into its targets (primary, then failover), timeouts and load balancing.
func (rc *rawChain) resolver(n *rawNode, refuse func(string, ...any)) discovery.Resolver {
	var r discovery.Resolver
	if n.Resolver == nil {
		refuse("resolver %q without a resolver", n.Name)
		return r
	}
	r.ConnectTimeout, r.RequestTimeout = time.Duration(n.Resolver.ConnectTimeout), time.Duration(n.Resolver.RequestTimeout)
	ids := []string{n.Resolver.Target}
	if f := n.Resolver.Failover; f != nil {
		ids = append(ids, f.Targets...)
		if f.Policy != nil && f.Policy.Mode != "" && f.Policy.Mode != "default" {
			refuse("resolver %s: failover policy mode %q", n.Name, f.Policy.Mode)
		}
	}
	for _, id := range ids {
		t := rc.Targets[id]
		if t == nil {
			refuse("target %q missing", id)
			continue
		}
		if t.External {
			refuse("target %s: an external service (terminating gateway)", id)
		}
		if m := t.MeshGateway.Mode; m != "" && m != api.MeshGatewayModeNone && m != api.MeshGatewayModeDefault {
			refuse("target %s: mesh gateway mode %q (meshlet dials instances directly)", id, m)
		}
		if t.Namespace != "" && t.Namespace != "default" {
			refuse("target %s: namespace %q (Consul Enterprise)", id, t.Namespace)
		}
		if peer := rc.peers[id].Peer; peer != "" {
			refuse("target %s: cluster peer %q (meshlet does not dial peered clusters)", id, peer)
		}
		r.Targets = append(r.Targets, discovery.Target{ID: id, Service: t.Service, Subset: t.ServiceSubset,
			Datacenter: t.Datacenter, Filter: t.Subset.Filter})
	}
	if lb := n.LoadBalancer; lb != nil {
		switch lb.Policy {
		case "", "round_robin", "least_request", "random", "ring_hash", "maglev":
			r.LB = lb.Policy
		default:
			refuse("resolver %s: load balancer policy %q", n.Name, lb.Policy)
		}
		if rh := lb.RingHashConfig; rh != nil {
			r.RingSize = rh.MinimumRingSize
		}
		for _, h := range lb.HashPolicies {
			switch {
			case h.SourceIP && h.Field == "":
			case h.Field == "header" || h.Field == "query_parameter":
			case h.Field == "cookie" && (h.CookieConfig == nil || !h.CookieConfig.Session && h.CookieConfig.TTL == 0 && h.CookieConfig.Path == ""):
			case h.Field == "cookie":
				refuse("resolver %s: a hash cookie meshlet would have to generate (cookie_config session or ttl)", n.Name)
			default:
				refuse("resolver %s: hash policy field %q", n.Name, h.Field)
			}
			r.Hash = append(r.Hash, discovery.HashPolicy{Field: h.Field, FieldValue: h.FieldValue, SourceIP: h.SourceIP, Terminal: h.Terminal})
		}
		if c := lb.LeastRequestConfig; c != nil && c.ChoiceCount != 0 && c.ChoiceCount != 2 {
			refuse("resolver %s: least_request choice count %d (meshlet picks the least loaded of 2)", n.Name, c.ChoiceCount)
		}
		if len(lb.HashPolicies) > 0 && lb.Policy != "ring_hash" && lb.Policy != "maglev" {
			refuse("resolver %s: hash policies without a hashing load balancer", n.Name)
		}
	}
	return r
}

// routeMatch is a route's HTTP match; nil for a catch-all (no match, or only PathPrefix "/").
func routeMatch(m *api.ServiceRouteMatch, refuse func(string, ...any)) *discovery.RouteMatch {
	if m == nil || m.HTTP == nil {
		return nil
	}
	h := m.HTTP
	if (h.PathPrefix == "/" || h.PathPrefix == "") && h.PathExact == "" && h.PathRegex == "" && len(h.Header) == 0 &&
		len(h.QueryParam) == 0 && len(h.Methods) == 0 {
		return nil
	}
	rm := &discovery.RouteMatch{PathExact: h.PathExact, PathPrefix: h.PathPrefix, PathRegex: h.PathRegex,
		CaseInsensitive: h.CaseInsensitive, Methods: h.Methods}
	for _, hm := range h.Header {
		rm.Headers = append(rm.Headers, discovery.HeaderMatch{Name: hm.Name, Present: hm.Present, Exact: hm.Exact,
			Prefix: hm.Prefix, Suffix: hm.Suffix, Regex: hm.Regex, Invert: hm.Invert})
	}
	for _, qm := range h.QueryParam {
		rm.Query = append(rm.Query, discovery.QueryMatch{Name: qm.Name, Present: qm.Present, Exact: qm.Exact, Regex: qm.Regex})
	}
	return rm
}

// headerMods turns Consul's header modifiers into meshlet's; a value with an Envoy variable (%...%) cannot be
// honoured.
func headerMods(m *api.HTTPHeaderModifiers, refuse func(string, ...any)) discovery.HeaderMods {
	if m == nil {
		return discovery.HeaderMods{}
	}
	for _, vs := range []map[string]string{m.Add, m.Set} {
		for k, v := range vs {
			if strings.Count(v, "%") >= 2 {
				refuse("header %s: value %q has an Envoy variable", k, v)
			}
		}
	}
	return discovery.HeaderMods{Add: maps.Clone(m.Add), Set: maps.Clone(m.Set), Remove: slices.Clone(m.Remove)}
}

// mergeMods lays inner's changes over outer's.
func mergeMods(outer, inner discovery.HeaderMods) discovery.HeaderMods {
	if outer.Empty() {
		return inner
	}
	out := discovery.HeaderMods{Add: maps.Clone(outer.Add), Set: maps.Clone(outer.Set), Remove: slices.Clone(outer.Remove)}
	if out.Add == nil {
		out.Add = map[string]string{}
	}
	if out.Set == nil {
		out.Set = map[string]string{}
	}
	maps.Copy(out.Add, inner.Add)
	maps.Copy(out.Set, inner.Set)
	out.Remove = append(out.Remove, inner.Remove...)
	return out
}
