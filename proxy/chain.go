package proxy

// The discovery chain (Consul's service-router, service-splitter and service-resolver, compiled by Consul): a
// cluster whose source compiles one applies it per request. The route the request matches sets its timeout,
// retries, path rewrite and header changes; a weighted split of the route picks a resolver; the resolver's targets
// (primary, then failover) are endpoint sets of their own, watched like the cluster's. A chain meshlet cannot
// honour is refused whole (the last applied one stays) and reported: a warning, meshlet_discovery_chain_refused
// and the reasons in /debug/upstreams.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/metrics"
	"meshlet.dev/meshlet/resilience"
)

// plan is a chain as a cluster applies it: regular expressions compiled, targets bound to endpoint sets.
// Immutable; a new chain makes a new plan.
type plan struct {
	routes []*planRoute
	index  uint64
}

type planRoute struct {
	label         string // the route's index, for metrics (never the path)
	match         *routeMatcher
	prefix        string // the path prefix (or exact path) PrefixRewrite replaces; "" without a rewrite
	rewrite       string
	timeout, idle time.Duration
	retry         *resilience.RetryPolicy // nil: the cluster's
	splits        []*planSplit
	cum           []float64             // cumulative weights of splits
	requests      [5]interface{ Inc() } // meshlet_route_requests_total by status class (1xx … 5xx)
}

type planSplit struct {
	reqMods, respMods discovery.HeaderMods
	targets           []*endpointSet // primary, then failover
	targetIDs         []string
	connectTimeout    time.Duration
	requestTimeout    time.Duration
	hash              []discovery.HashPolicy // ring_hash and maglev: what the request's key is made of
	lbFrom            string                 // where the targets' load balancing comes from (/debug/upstreams)
}

// pick returns the route and split of r; nil when no route matches (Consul adds a catch-all, so only a chain
// whose routes all have matches answers none).
func (pl *plan) pick(r *http.Request) (*planRoute, *planSplit) {
	for _, rt := range pl.routes {
		if rt.match == nil || rt.match.matches(r) {
			if len(rt.splits) == 1 {
				return rt, rt.splits[0]
			}
			x := rand.Float64() * rt.cum[len(rt.cum)-1]
			i, _ := slices.BinarySearch(rt.cum, x)
			return rt, rt.splits[min(i, len(rt.splits)-1)]
		}
	}
	return nil, nil
}

// routeMatcher is a compiled discovery.RouteMatch.
type routeMatcher struct {
	m       discovery.RouteMatch
	path    *regexp.Regexp
	headers []*regexp.Regexp // per header match with Regex; nil otherwise
	query   []*regexp.Regexp
}

func compileMatch(m *discovery.RouteMatch) (*routeMatcher, error) {
	if m == nil {
		return nil, nil
	}
	rm := &routeMatcher{m: *m}
	if m.CaseInsensitive {
		rm.m.PathExact, rm.m.PathPrefix = strings.ToLower(m.PathExact), strings.ToLower(m.PathPrefix)
	}
	full := func(re string, ci bool) (*regexp.Regexp, error) {
		if ci {
			re = "(?i)" + re
		}
		return regexp.Compile("^(?:" + re + ")$")
	}
	var err error
	if m.PathRegex != "" {
		if rm.path, err = full(m.PathRegex, m.CaseInsensitive); err != nil {
			return nil, fmt.Errorf("path regex %q: %w", m.PathRegex, err)
		}
	}
	for _, h := range m.Headers {
		var re *regexp.Regexp
		if h.Regex != "" {
			if re, err = full(h.Regex, false); err != nil {
				return nil, fmt.Errorf("header %s regex %q: %w", h.Name, h.Regex, err)
			}
		}
		rm.headers = append(rm.headers, re)
	}
	for _, q := range m.Query {
		var re *regexp.Regexp
		if q.Regex != "" {
			if re, err = full(q.Regex, false); err != nil {
				return nil, fmt.Errorf("query parameter %s regex %q: %w", q.Name, q.Regex, err)
			}
		}
		rm.query = append(rm.query, re)
	}
	return rm, nil
}

// matches reports whether r has everything the match asks for, as Envoy matches Consul's routes: the path without
// the query, as sent; a header's values joined with ","; a query parameter's first value.
func (rm *routeMatcher) matches(r *http.Request) bool {
	m := &rm.m
	if len(m.Methods) > 0 && !slices.Contains(m.Methods, r.Method) {
		return false
	}
	path := r.URL.EscapedPath()
	if m.CaseInsensitive && (m.PathExact != "" || m.PathPrefix != "") {
		path = strings.ToLower(path)
	}
	switch {
	case m.PathExact != "" && path != m.PathExact:
		return false
	case m.PathPrefix != "" && !strings.HasPrefix(path, m.PathPrefix):
		return false
	case rm.path != nil && !rm.path.MatchString(r.URL.EscapedPath()):
		return false
	}
	for i, h := range m.Headers {
		var vals []string
		if strings.EqualFold(h.Name, "host") || h.Name == ":authority" {
			if r.Host != "" {
				vals = []string{r.Host}
			}
		} else {
			vals = r.Header.Values(h.Name)
		}
		v := strings.Join(vals, ",")
		ok := len(vals) > 0
		switch {
		case !ok:
		case h.Exact != "":
			ok = v == h.Exact
		case h.Prefix != "":
			ok = strings.HasPrefix(v, h.Prefix)
		case h.Suffix != "":
			ok = strings.HasSuffix(v, h.Suffix)
		case rm.headers[i] != nil:
			ok = rm.headers[i].MatchString(v)
		}
		if ok == h.Invert {
			return false
		}
	}
	if len(m.Query) > 0 {
		q, err := url.ParseQuery(r.URL.RawQuery)
		if err != nil {
			return false // a query two parsers may read differently matches nothing
		}
		for i, qm := range m.Query {
			vals, ok := q[qm.Name]
			switch {
			case !ok:
				return false
			case qm.Exact != "":
				ok = vals[0] == qm.Exact
			case rm.query[i] != nil:
				ok = rm.query[i].MatchString(vals[0])
			}
			if !ok {
				return false
			}
		}
	}
	return true
}

// rewritePath replaces the route's matched prefix (or exact path) of p with the rewrite.
func (rt *planRoute) rewritePath(p string) string {
	if rt.prefix == "" || !strings.HasPrefix(p, rt.prefix) {
		return p
	}
	out := rt.rewrite + p[len(rt.prefix):]
	if strings.HasSuffix(rt.rewrite, "/") && strings.HasPrefix(p[len(rt.prefix):], "/") {
		out = rt.rewrite + p[len(rt.prefix)+1:]
	}
	if !strings.HasPrefix(out, "/") {
		out = "/" + out
	}
	return out
}

// applyMods changes h as m says: Remove, then Set, then Add.
func applyMods(h http.Header, m discovery.HeaderMods) {
	for _, k := range m.Remove {
		h.Del(k)
	}
	for k, v := range m.Set {
		h.Set(k, v)
	}
	for k, v := range m.Add {
		h.Add(k, v)
	}
}

// chainState is what /debug/upstreams shows of a cluster's chain.
type chainState struct {
	Applied bool `json:"applied"`
	// FileWins names the settings of the config file that the chain does not override (its routes' and
	// resolvers' timeouts, retries, load balancing).
	FileWins []string `json:"file_wins,omitempty"`
	Default  bool     `json:"default,omitempty"`
	Index    uint64   `json:"index,omitempty"`
	Routes   []string `json:"routes,omitempty"`
	// Settings are, per route, the timeout, retries and per split the connect timeout and load balancing in
	// effect, each with where it comes from: the route, the resolver, the config file, or the upstream (the file
	// and Consul's service-defaults, merged).
	Settings    []string `json:"settings,omitempty"`
	Unsupported []string `json:"unsupported,omitempty"`
}

// fileWins names the settings the config file pins, which the chain does not override.
func fileWins(p Pinned) []string {
	var out []string
	for _, f := range []struct {
		set  bool
		name string
	}{{p.Timeout, "timeout"}, {p.ConnectTimeout, "connect_timeout"}, {p.Retry, "retry"}, {p.LB, "lb"}} {
		if f.set {
			out = append(out, f.name)
		}
	}
	return out
}

// describeSettings says, for each route of pl, what it applies and where each setting comes from.
func describeSettings(pl *plan, cfg *UpstreamConfig) []string {
	var out []string
	for _, rt := range pl.routes {
		var b strings.Builder
		fmt.Fprintf(&b, "%s:", rt.label)
		switch {
		case cfg.Pinned.Timeout:
			fmt.Fprintf(&b, " timeout %s (file)", cfg.Timeout)
		case rt.timeout > 0:
			fmt.Fprintf(&b, " timeout %s (route)", rt.timeout)
		case rt.splits[0].requestTimeout > 0:
			fmt.Fprintf(&b, " timeout %s (resolver)", rt.splits[0].requestTimeout)
		case cfg.Timeout > 0:
			fmt.Fprintf(&b, " timeout %s (upstream)", cfg.Timeout)
		default:
			b.WriteString(" no timeout")
		}
		switch {
		case rt.retry != nil:
			fmt.Fprintf(&b, ", %d attempts (route)", rt.retry.MaxAttempts())
		case cfg.Pinned.Retry:
			fmt.Fprintf(&b, ", %d attempts (file)", cfg.Resilience.Retry.MaxAttempts)
		default:
			fmt.Fprintf(&b, ", %d attempts (upstream)", cfg.Resilience.Retry.MaxAttempts)
		}
		if rt.idle > 0 {
			fmt.Fprintf(&b, ", stream idle %s (route)", rt.idle)
		}
		for i, sp := range rt.splits {
			ct, ctFrom := cfg.ConnectTimeout, "upstream"
			if cfg.Pinned.ConnectTimeout {
				ctFrom = "file"
			} else if sp.connectTimeout > 0 {
				ct, ctFrom = sp.connectTimeout, "resolver"
			}
			fmt.Fprintf(&b, "; split %d: connect timeout %s (%s), lb %s (%s)", i, ct, ctFrom, sp.targets[0].lbName(), sp.lbFrom)
		}
		out = append(out, b.String())
	}
	return out
}

// describe lists the routes of ch for /debug/upstreams: match, splits and targets.
func describe(ch discovery.Chain) []string {
	var out []string
	for i, r := range ch.Routes {
		var b strings.Builder
		fmt.Fprintf(&b, "%d: ", i)
		if r.Match == nil {
			b.WriteString("*")
		} else {
			m := r.Match
			for _, s := range []struct{ k, v string }{{"path", m.PathExact}, {"prefix", m.PathPrefix}, {"regex", m.PathRegex}} {
				if s.v != "" {
					fmt.Fprintf(&b, "%s=%s ", s.k, s.v)
				}
			}
			for _, h := range m.Headers {
				fmt.Fprintf(&b, "header:%s ", h.Name)
			}
			for _, q := range m.Query {
				fmt.Fprintf(&b, "query:%s ", q.Name)
			}
			if len(m.Methods) > 0 {
				fmt.Fprintf(&b, "methods=%s ", strings.Join(m.Methods, ","))
			}
		}
		b.WriteString(" →")
		for _, s := range r.Splits {
			var ids []string
			for _, t := range s.Resolver.Targets {
				ids = append(ids, t.ID)
			}
			fmt.Fprintf(&b, " %s%% %s", strconv.FormatFloat(s.Weight, 'f', -1, 64), strings.Join(ids, " then "))
			if s.Resolver.LB != "" {
				fmt.Fprintf(&b, " (%s)", s.Resolver.LB)
			}
		}
		out = append(out, b.String())
	}
	return out
}

// entryChain is what an upstream's discovery chain watch keeps (upstreamEntry.chain), from its first chain on.
type entryChain struct {
	targets map[string]*targetWatch // the chain's targets other than the cluster's own
	last    *discovery.Chain        // the latest chain received, applied again when the upstream's settings change
	ctx     context.Context         // the context of the chain's watch
	index   uint64                  // the index of the chain applied or refused last
}

// fresh reports whether a chain of index is not older than the one applied or refused last (ec nil: none yet).
func (ec *entryChain) fresh(index uint64) bool { return ec == nil || index >= ec.index }

// targetWatch is one target's endpoint set and its watch.
type targetWatch struct {
	set    *endpointSet
	cancel context.CancelFunc
}

// targetKey names a target's instances: equal keys are the same endpoints.
func targetKey(t discovery.Target) string {
	return t.Service + "\x00" + t.Datacenter + "\x00" + t.Filter
}

// watchChain applies the chains of e's service from src until ctx ends. Call with p.mu held (startWatch).
func (p *Proxy) watchChain(ctx context.Context, e *upstreamEntry, src discovery.ChainSource, service string) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		chains, err := src.WatchChain(ctx, service)
		if err != nil {
			p.log.Error("discovery chain watch failed", "upstream", e.cluster.name, "service", service, "error", err)
			return
		}
		for ch := range chains {
			p.applyChain(ctx, e, ch)
		}
	}()
}

// applyChain applies ch to e's cluster, or refuses it whole (the last applied plan stays) and says why. A plan
// that needs targets not watched yet is applied once each has its first endpoints (at most chainTargetWait), so
// that a change under traffic fails no request.
func (p *Proxy) applyChain(ctx context.Context, e *upstreamEntry, ch discovery.Chain) {
	c := e.cluster
	state := &chainState{Index: ch.Index, Default: ch.Default, Routes: describe(ch), Unsupported: ch.Unsupported}
	refuse := func(reasons []string) {
		state.Unsupported = reasons
		c.chain.Store(state)
		p.m.ChainRefused.WithLabelValues(c.name).Set(1)
		c.log.Warn("discovery chain refused: meshlet cannot honour all of it; the last applied routing stays",
			"service", ch.Service, "index", ch.Index, "reasons", strings.Join(reasons, "; "))
	}
	current := func() bool {
		return !p.stopped && p.upstreams[c.name] == e && ctx.Err() == nil && e.chain.fresh(ch.Index)
	}
	p.mu.Lock()
	if !current() {
		p.mu.Unlock()
		return
	}
	if e.chain == nil {
		e.chain = &entryChain{}
	}
	e.chain.last, e.chain.ctx, e.chain.index = &ch, ctx, ch.Index
	if len(ch.Unsupported) > 0 {
		refuse(ch.Unsupported)
		p.mu.Unlock()
		return
	}
	if c.protocol == ProtocolTCP && !ch.Default {
		refuse([]string{"a chain for a tcp upstream (routes, splits and resolvers apply to HTTP upstreams)"})
		p.mu.Unlock()
		return
	}
	cfg := c.cfg.Load()
	next := map[string]*targetWatch{}
	pl := &plan{index: ch.Index}
	// dropNew stops the watches next started that the entry does not hold.
	dropNew := func() {
		for k, tw := range next {
			if e.chain.targets[k] != tw {
				p.dropTarget(tw)
			}
		}
	}
	if !ch.Default {
		for i, r := range ch.Routes {
			pr, err := p.planRoute(ctx, e, cfg, ch.Datacenter, i, r, next)
			if err != nil {
				dropNew()
				refuse([]string{err.Error()})
				p.mu.Unlock()
				return
			}
			pl.routes = append(pl.routes, pr)
		}
	}
	var fresh []*endpointSet
	for k, tw := range next {
		if e.chain.targets[k] != tw {
			fresh = append(fresh, tw.set)
		}
	}
	p.mu.Unlock()
	deadline := time.Now().Add(chainTargetWait)
	for _, set := range fresh {
		set.waitSnapshot(time.Until(deadline))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !current() {
		dropNew()
		return
	}
	for k, tw := range e.chain.targets {
		if next[k] != tw {
			p.dropTarget(tw)
		}
	}
	e.chain.targets = next
	if ch.Default {
		c.plan.Store(nil)
	} else {
		c.plan.Store(pl)
	}
	state.Applied = true
	state.FileWins = fileWins(cfg.Pinned)
	if !ch.Default {
		state.Settings = describeSettings(pl, cfg)
	}
	c.chain.Store(state)
	p.m.ChainRefused.WithLabelValues(c.name).Set(0)
	c.log.Info("discovery chain applied", "service", ch.Service, "index", ch.Index, "routes", len(pl.routes), "default", ch.Default)
}

// chainTargetWait bounds how long a new chain waits for the first endpoints of targets it adds.
const chainTargetWait = 5 * time.Second

// reapplyChain applies e's latest chain again (its upstream's settings changed: what the file pins may have).
// Call with p.mu held; it applies in the background.
func (p *Proxy) reapplyChain(e *upstreamEntry) {
	if e.chain == nil {
		return
	}
	ch, ctx := *e.chain.last, e.chain.ctx
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.applyChain(ctx, e, ch)
	}()
}

// planRoute compiles route i of a chain; the targets it needs are put in next (reused from e.targets when
// watched already).
func (p *Proxy) planRoute(ctx context.Context, e *upstreamEntry, cfg *UpstreamConfig, dc string, i int, r discovery.Route, next map[string]*targetWatch) (*planRoute, error) {
	rm, err := compileMatch(r.Match)
	if err != nil {
		return nil, fmt.Errorf("route %d: %w", i, err)
	}
	pr := &planRoute{label: strconv.Itoa(i), match: rm, timeout: r.RequestTimeout, idle: r.IdleTimeout}
	if cfg.Pinned.Timeout {
		pr.timeout = 0 // the file's timeout wins
	}
	for class := range pr.requests {
		pr.requests[class] = p.m.RouteRequests.WithLabelValues(e.cluster.name, pr.label, metrics.CodeClass((class+1)*100))
	}
	if r.PrefixRewrite != "" {
		pr.rewrite, pr.prefix = r.PrefixRewrite, "/"
		if r.Match != nil && r.Match.PathPrefix != "" {
			pr.prefix = r.Match.PathPrefix
		} else if r.Match != nil && r.Match.PathExact != "" {
			pr.prefix = r.Match.PathExact
		}
	}
	if r.Retry != nil && !cfg.Pinned.Retry { // the file's retries win
		rc := cfg.Resilience.Retry
		rc.MaxAttempts = r.Retry.MaxAttempts
		if r.Retry.RetryOn != nil { // else meshlet's default conditions, as the upstream's
			rc.RetryOn = r.Retry.RetryOn
		}
		if pr.retry, err = resilience.NewRetryPolicy(rc); err != nil {
			return nil, fmt.Errorf("route %d: retries: %w", i, err)
		}
	}
	total := 0.0
	for _, s := range r.Splits {
		ps := &planSplit{reqMods: mergeHeaderMods(r.RequestHeaders, s.RequestHeaders),
			respMods:       mergeHeaderMods(r.ResponseHeaders, s.ResponseHeaders),
			connectTimeout: s.Resolver.ConnectTimeout, requestTimeout: s.Resolver.RequestTimeout, hash: s.Resolver.Hash}
		if cfg.Pinned.Timeout {
			ps.requestTimeout = 0
		}
		if cfg.Pinned.ConnectTimeout {
			ps.connectTimeout = 0
		}
		ps.lbFrom = "upstream"
		if s.Resolver.LB != "" {
			ps.lbFrom = "resolver"
		}
		if cfg.Pinned.LB {
			ps.hash, ps.lbFrom = nil, "file"
		}
		for _, t := range s.Resolver.Targets {
			ps.targets = append(ps.targets, p.targetSet(ctx, e, cfg, dc, t, s.Resolver, next))
			ps.targetIDs = append(ps.targetIDs, t.ID)
		}
		if len(ps.targets) == 0 {
			return nil, fmt.Errorf("route %d: a split without targets", i)
		}
		total += s.Weight
		pr.cum = append(pr.cum, total)
		pr.splits = append(pr.splits, ps)
	}
	if len(pr.splits) == 0 || total <= 0 {
		return nil, fmt.Errorf("route %d: no split with a weight", i)
	}
	return pr, nil
}

// dropTarget stops a target's watch and takes its endpoint set's series away (its name is its own: the cluster's
// name and the target's ID).
func (p *Proxy) dropTarget(tw *targetWatch) {
	tw.cancel()
	tw.set.retire()
	p.m.Endpoints.DeleteLabelValues(tw.set.name)
	p.m.EjectedEndpoints.DeleteLabelValues(tw.set.name)
	for _, state := range []string{resilience.StateClosed, resilience.StateHalfOpen, resilience.StateOpen} {
		p.m.BreakerEndpoints.DeleteLabelValues(tw.set.name, state)
	}
}

// targetSet returns the endpoint set of target t: the cluster's own for the upstream's service itself (no subset,
// its datacenter, its load balancing), else a set of its own, watched under ctx. dc is the chain's datacenter
// (where it was compiled: the upstream's own).
func (p *Proxy) targetSet(ctx context.Context, e *upstreamEntry, cfg *UpstreamConfig, dc string, t discovery.Target, res discovery.Resolver, next map[string]*targetWatch) *endpointSet {
	c := e.cluster
	lb := chainLB(res.LB, cfg.LB)
	if cfg.Pinned.LB {
		lb = cfg.LB // the file's load balancing wins
	}
	sameDC := t.Datacenter == "" || t.Datacenter == dc
	if t.Service == cfg.Service && t.Filter == "" && sameDC && lb == cfg.LB {
		return c.endpoints
	}
	key := targetKey(t) + "\x00" + lb + "\x00" + strconv.FormatUint(res.RingSize, 10) + "\x00" + strconv.Itoa(cfg.SubsetSize)
	if tw := next[key]; tw != nil {
		return tw.set
	}
	if tw := e.chain.targets[key]; tw != nil {
		next[key] = tw
		return tw.set
	}
	name := c.name + "/" + t.ID
	set := newEndpointSet(name, lb, cfg.SubsetSize, cfg.Resilience, p.m, c.decisions, c.log.With("target", t.ID))
	set.ringSize = res.RingSize
	tctx, cancel := context.WithCancel(ctx)
	next[key] = &targetWatch{set: set, cancel: cancel}
	opts := cfg.watchOptions()
	opts.Datacenter, opts.Filter, opts.Subset = t.Datacenter, t.Filter, t.Subset
	if sameDC {
		opts.Datacenter = cfg.Datacenter // the same watch as the cluster's datacenter
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		ch, err := discovery.Watch(tctx, p.discovery, t.Service, opts)
		if err != nil {
			c.log.Error("discovery chain target watch failed", "target", t.ID, "error", err)
			return
		}
		for snap := range ch {
			set.update(snap)
		}
	}()
	return set
}

// chainLB is a resolver's load-balancing policy in meshlet's terms (least_request is Envoy's power of two choices).
func chainLB(policy, def string) string {
	switch policy {
	case "round_robin":
		return LBRoundRobin
	case "least_request":
		return LBP2C
	case "random":
		return LBRandom
	case "ring_hash":
		return LBRingHash
	case "maglev":
		return LBMaglev
	}
	return def
}

// mergeHeaderMods lays inner's changes over outer's.
func mergeHeaderMods(outer, inner discovery.HeaderMods) discovery.HeaderMods {
	if outer.Empty() {
		return inner
	}
	if inner.Empty() {
		return outer
	}
	out := discovery.HeaderMods{Add: map[string]string{}, Set: map[string]string{}}
	for _, m := range []discovery.HeaderMods{outer, inner} {
		for k, v := range m.Add {
			out.Add[k] = v
		}
		for k, v := range m.Set {
			out.Set[k] = v
		}
		out.Remove = append(out.Remove, m.Remove...)
	}
	return out
}
