package consul

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/mtls"
)

// Errors a Consul watch reports, to classify with errors.Is.
var (
	// ErrUnreachable: the agent could not be reached (refused, timed out, DNS, TLS) or could not serve
	// (5xx, such as no cluster leader).
	ErrUnreachable = errors.New("consul agent unreachable")
	// ErrDenied: the agent refused the token (unknown, expired, or without the permission).
	ErrDenied = errors.New("consul denied the request (check the ACL token)")
)

// Query kinds of one watch.
const (
	kindConnect = "connect" // /v1/health/connect/<service>: the service's sidecars
	kindService = "service" // /v1/health/service/<service>: the plain instances
)

// serviceWatch is the one watch of one service, fanned out to every subscriber.
type serviceWatch struct {
	c       *Source
	service string
	tag, dc string // what the queries are narrowed to ("": none, the agent's datacenter)
	mtls    bool   // the callers require mutual TLS: auto mode never offers plain instances
	filter  string // a service-resolver subset's filter ("": every instance)
	label   string // the service, with its tag and datacenter when not the defaults: for metrics and logs
	ctx     context.Context
	cancel  context.CancelFunc

	mu       sync.Mutex
	subs     map[chan discovery.Snapshot]struct{}
	results  map[string][]discovery.Endpoint // latest answer per query kind (healthy instances)
	sidecars int                             // sidecars in the latest connect answer, healthy or not (auto mode)
	failing  map[string]error                // query kinds whose last query failed
	seq      uint64
	last     discovery.Snapshot
	hasSnap  bool
	contact  time.Time
	firstErr error // the latest error while there is no snapshot yet
}

func newServiceWatch(c *Source, key watchKey) *serviceWatch {
	ctx, cancel := context.WithCancel(c.ctx)
	return &serviceWatch{c: c, service: key.service, tag: key.tag, dc: key.dc, mtls: key.mtls, filter: key.filter, label: key.label(c.cfg),
		ctx: ctx, cancel: cancel, subs: map[chan discovery.Snapshot]struct{}{}, results: map[string][]discovery.Endpoint{},
		failing: map[string]error{}}
}

// kinds are the queries the watch runs for the source's mode.
func (w *serviceWatch) kinds() []string {
	switch {
	case w.c.cfg.Mode == ModeConnect, w.mtls && w.c.cfg.Mode == ModeAuto:
		return []string{kindConnect}
	case w.c.cfg.Mode == ModeService:
		return []string{kindService}
	}
	return []string{kindConnect, kindService}
}

// countsSidecars reports whether the connect query must see every sidecar, healthy or not: in auto mode, a
// caller that may use plain instances may do so only while the service has no sidecar registered at all.
func (w *serviceWatch) countsSidecars() bool { return w.c.cfg.Mode == ModeAuto && !w.mtls }

// view is the endpoints the watch offers: the healthy sidecars, or the plain instances (service mode; auto mode
// when the callers allow plaintext and the service has no sidecar registered). Call with w.mu held.
func (w *serviceWatch) view() []discovery.Endpoint {
	switch w.c.cfg.Mode {
	case ModeService:
		return w.results[kindService]
	case ModeAuto:
		if !w.mtls && w.sidecars == 0 {
			return w.results[kindService]
		}
	}
	return w.results[kindConnect]
}

// run runs one blocking-query loop per kind until the watch stops, then closes the subscribers' channels.
func (w *serviceWatch) run() {
	var wg sync.WaitGroup
	for _, k := range w.kinds() {
		wg.Go(func() { w.loop(k) })
	}
	wg.Wait()
	w.c.forget(w)
	w.mu.Lock()
	for ch := range w.subs {
		close(ch)
	}
	w.subs = nil
	w.mu.Unlock()
}

func (w *serviceWatch) stop() { w.cancel() }

// add subscribes ch and gives it the latest snapshot if there is one.
func (w *serviceWatch) add(ch chan discovery.Snapshot) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.subs == nil { // already stopped
		close(ch)
		return
	}
	w.subs[ch] = struct{}{}
	if w.hasSnap {
		discovery.SendLatest(ch, w.last)
	}
}

// remove unsubscribes ch (closing it) and reports whether it was the last subscriber.
func (w *serviceWatch) remove(ch chan discovery.Snapshot) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.subs[ch]; ok {
		delete(w.subs, ch)
		close(ch)
	}
	return len(w.subs) == 0
}

// loop runs blocking queries of one kind until the watch stops (Watch's rules).
func (w *serviceWatch) loop(kind string) {
	Watch(w.ctx, Options{Wait: w.c.cfg.WaitTime, Datacenter: w.dc}, func(q *api.QueryOptions) (uint64, error) {
		eps, registered, meta, err := w.query(kind, q)
		if err != nil {
			return 0, err
		}
		if w.ctx.Err() != nil {
			return 0, w.ctx.Err()
		}
		w.answered(kind, eps, registered)
		return meta.LastIndex, nil
	}, func(err error, retryIn time.Duration) { w.failed(kind, err, retryIn) })
}

// query runs one blocking query of kind with q and turns the answer into the healthy endpoints; registered is
// how many instances the answer held, healthy or not.
func (w *serviceWatch) query(kind string, q *api.QueryOptions) ([]discovery.Endpoint, int, *api.QueryMeta, error) {
	h := w.c.client.Health()
	q.Filter = w.filter
	var entries []*api.ServiceEntry
	var meta *api.QueryMeta
	var err error
	if kind == kindConnect {
		entries, meta, err = h.Connect(w.service, w.tag, !w.countsSidecars(), q)
	} else {
		entries, meta, err = h.Service(w.service, w.tag, true, q)
	}
	if err != nil {
		return nil, 0, nil, classify(err)
	}
	if meta.ResultsFilteredByACLs && len(entries) == 0 {
		// Consul hides what the token may not read instead of refusing: an empty answer is ACL denied.
		return nil, 0, nil, fmt.Errorf("%w: the token may not read service %s (results filtered by ACLs)", ErrDenied, w.service)
	}
	if meta.ResultsFilteredByACLs {
		w.c.log.Debug("consul filtered some instances by ACLs", "service", w.service, "query", kind)
	}
	trust := ""
	if kind == kindConnect && len(entries) > 0 {
		trust = w.c.trustDomain(q.Context())
	}
	eps, registered := w.endpoints(kind, entries, trust)
	return eps, registered, meta, nil
}

// endpoints turns health entries into the endpoints of the healthy instances (all checks passing), and counts
// the instances registered, healthy or not; instances whose address is not an IP are skipped.
func (w *serviceWatch) endpoints(kind string, entries []*api.ServiceEntry, trust string) ([]discovery.Endpoint, int) {
	eps := make([]discovery.Endpoint, 0, len(entries))
	registered := 0
	for _, e := range entries {
		if e.Service == nil || e.Node == nil {
			continue
		}
		if kind == kindService && w.c.cfg.Mode == ModeAuto && e.Service.Meta[MetaSidecar] != "" {
			continue // reached only through its meshlet sidecar, never directly
		}
		if w.tag != "" && !slices.Contains(e.Service.Tags, w.tag) {
			// The agent filters by tag already, but not always on the first answer of a connect query (seen with
			// Consul 1.14 under load): filter again, so an untagged instance never gets tagged traffic.
			continue
		}
		registered++
		if e.Checks.AggregatedStatus() != api.HealthPassing {
			continue // what ?passing leaves out: any check (the node's too) not passing
		}
		host := e.Service.Address
		if host == "" {
			host = e.Node.Address
		}
		ip, err := netip.ParseAddr(host)
		if err != nil {
			w.c.log.Debug("consul instance skipped: address is not an IP", "service", w.service, "address", host)
			continue
		}
		ep := discovery.Endpoint{ID: e.Node.Node + "/" + e.Service.ID, Addr: netip.AddrPortFrom(ip.Unmap(), uint16(e.Service.Port)),
			Weight: e.Service.Weights.Passing, Meta: map[string]string{"consul_node": e.Node.Node, "consul_kind": kind}}
		if ep.Weight <= 0 {
			ep.Weight = 1
		}
		if kind == kindConnect {
			ep.Meta["peer"] = "sidecar"
			ep.Meta[discovery.MetaProxy] = discovery.ProxyMeshlet
			if e.Service.Meta[MetaMeshlet] != "true" {
				ep.Meta[discovery.MetaProxy] = discovery.ProxyForeign
			}
			if trust != "" {
				dc := e.Node.Datacenter
				if dc == "" {
					dc = w.dc
				}
				ep.Identity = serviceIdentity(trust, dc, w.service, e.Service)
			}
		}
		eps = append(eps, ep)
	}
	slices.SortFunc(eps, func(a, b discovery.Endpoint) int { return strings.Compare(a.ID, b.ID) })
	return eps, registered
}

// serviceIdentity is the SPIFFE ID of service's instance behind the connect entry svc: in svc's namespace and
// admin partition (Consul Enterprise names them; empty, the default ones), as Consul's CA writes it.
func serviceIdentity(trust, dc, service string, svc *api.AgentService) string {
	id := mtls.ServiceID(trust, svc.Namespace, dc, service)
	if p := svc.Partition; p != mtls.DefaultPartition {
		id.Partition = p
	}
	return id.String()
}

// answered records a successful answer (eps healthy of registered instances) and publishes a snapshot when the
// endpoints the watch offers changed or were stale.
func (w *serviceWatch) answered(kind string, eps []discovery.Endpoint, registered int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	w.contact = now
	w.c.m.contact(w.label, now)
	_, wasFailing := w.failing[kind]
	delete(w.failing, kind)
	if wasFailing && w.hasSnap {
		w.c.log.Info("consul watch resumed", "service", w.label, "query", kind)
	}
	w.results[kind] = eps
	if kind == kindConnect {
		w.sidecars = registered
	}
	if len(w.results) < len(w.kinds()) {
		return // auto mode decides once both queries have answered
	}
	changed := !w.hasSnap || !sameEndpoints(w.last.Endpoints, w.view())
	if w.hasSnap && !changed && !(w.last.Stale && len(w.failing) == 0) {
		return
	}
	w.publish(now)
}

// failed records a failed query; the first failure after a snapshot makes it stale.
func (w *serviceWatch) failed(kind string, err error, retry time.Duration) {
	w.c.m.watchError(w.label, err)
	w.mu.Lock()
	defer w.mu.Unlock()
	prev, was := w.failing[kind]
	w.failing[kind] = err
	if !w.hasSnap {
		w.firstErr = err
	}
	if !was || prev.Error() != err.Error() {
		w.c.log.Warn("consul query failed", "service", w.label, "query", kind, "error", err.Error(),
			"retry_in", retry.Round(time.Millisecond).String(), "have_endpoints", w.hasSnap)
	}
	if w.hasSnap && !w.last.Stale {
		w.publish(w.contact)
	}
}

// publish sends the current view to every subscriber. Call with w.mu held.
func (w *serviceWatch) publish(contact time.Time) {
	eps := w.view()
	w.seq++
	stale := len(w.failing) > 0
	snap := discovery.Snapshot{Service: w.service, Endpoints: eps, Index: w.seq, Stale: stale, LastContact: contact}
	w.last, w.hasSnap, w.firstErr = snap, true, nil
	w.c.m.published(w.label, len(eps), stale)
	for ch := range w.subs {
		discovery.SendLatest(ch, snap)
	}
}

// err says why the watch has no current snapshot; nil when it has one and is not stale, or is still waiting
// for its first answer without an error.
func (w *serviceWatch) err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.hasSnap && w.firstErr != nil {
		return fmt.Errorf("consul: service %s: no answer yet: %w", w.label, w.firstErr)
	}
	if w.hasSnap && w.last.Stale {
		for _, err := range w.failing {
			return fmt.Errorf("consul: service %s: endpoints stale since %s: %w", w.label,
				w.contact.UTC().Format(time.RFC3339), err)
		}
	}
	return nil
}

// sameEndpoints reports whether a and b list the same endpoints in the same order (endpoints sorts them by ID).
func sameEndpoints(a, b []discovery.Endpoint) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.ID != y.ID || x.Addr != y.Addr || x.Identity != y.Identity || x.Weight != y.Weight ||
			x.Meta[discovery.MetaProxy] != y.Meta[discovery.MetaProxy] {
			return false
		}
	}
	return true
}

// classify wraps err with ErrUnreachable or ErrDenied when it is one of those.
func classify(err error) error {
	var se api.StatusError
	if errors.As(err, &se) && (se.Code == 401 || se.Code == 403) {
		return fmt.Errorf("%w: %d %s", ErrDenied, se.Code, se.Body)
	}
	if errors.As(err, &se) && se.Code >= 500 { // e.g. 500 No cluster leader: the agent cannot serve
		return fmt.Errorf("%w: %d %s", ErrUnreachable, se.Code, se.Body)
	}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &oe) || errors.As(err, &ne) {
		return fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	return err
}

// hostID returns a stable name of this host for instance IDs.
func hostID() string {
	h, err := osHostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return h
}
