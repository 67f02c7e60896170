package consul

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/resilience"
)

// Tagged addresses a service of the mesh is reached at (any port): the virtual IP Consul assigns to every
// service with a sidecar (transparent proxy mode; its DNS answers <service>.virtual.consul with it), and the
// address a platform registers (consul-k8s: the Kubernetes ClusterIP).
const (
	TaggedConsulVirtual = "consul-virtual"
	TaggedVirtual       = "virtual"
)

// MeshRefreshInterval is the least time between two reads of the mesh's services: a burst of registrations is
// read once.
const MeshRefreshInterval = time.Second

// MeshService is a service of the mesh as transparent interception sees it: its name and the addresses an app
// reaches it at ("240.0.0.3": a virtual IP, any port; "198.18.0.5:8080": an instance).
type MeshService struct {
	Name      string
	Addresses []string
}

// Mesh watches the services of the mesh (every service with a sidecar registered: a connect-proxy instance)
// with one blocking query on the catalog's service list, and reads each proxy's registration when it changes.
// Changed is signalled after every change; Services returns the latest. Run owns its goroutines.
type Mesh struct {
	c       *Source
	changed chan struct{}

	mu       sync.Mutex
	services []MeshService
	answered bool
	err      error
}

// NewMesh returns a watcher of c's mesh; nothing is queried before Run.
func NewMesh(c *Source) *Mesh { return &Mesh{c: c, changed: make(chan struct{}, 1)} }

// Changed receives a value after each change (one-slot: changes in a burst coalesce).
func (m *Mesh) Changed() <-chan struct{} { return m.changed }

// Services returns the mesh's services, by name.
func (m *Mesh) Services() []MeshService {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.services
}

// Ready is nil once the mesh has been read (later failures keep the last known services), the latest error or
// that no answer has come yet otherwise.
func (m *Mesh) Ready() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.answered:
		return nil
	case m.err != nil:
		return fmt.Errorf("consul mesh services: no answer yet: %w", m.err)
	}
	return fmt.Errorf("consul mesh services: no answer yet")
}

// Run watches until ctx ends and returns nil then.
func (m *Mesh) Run(ctx context.Context) error {
	var last time.Time
	Watch(ctx, Options{Wait: m.c.cfg.WaitTime, Datacenter: m.c.cfg.Datacenter}, func(q *api.QueryOptions) (uint64, error) {
		q.Filter = `ServiceKind == "connect-proxy"`
		names, meta, err := m.c.client.Catalog().Services(q)
		if err != nil {
			return 0, classify(err)
		}
		if m.isAnswered() && meta.LastIndex == q.WaitIndex {
			return meta.LastIndex, nil // the wait ended without a change
		}
		if !resilience.Sleep(ctx, MeshRefreshInterval-time.Since(last)) {
			return 0, ctx.Err()
		}
		last = time.Now()
		services, err := m.read(ctx, slices.Sorted(maps.Keys(names)))
		if err != nil {
			return 0, classify(err)
		}
		m.store(services)
		return meta.LastIndex, nil
	}, func(err error, _ time.Duration) {
		m.mu.Lock()
		prev := m.err
		m.err = err
		m.mu.Unlock()
		if prev == nil || prev.Error() != err.Error() {
			m.c.log.Warn("consul mesh services query failed; the last known ones stay", "error", err.Error())
		}
	})
	return nil
}

func (m *Mesh) isAnswered() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.answered
}

// meshReadConcurrency bounds the proxies' registrations read at once.
const meshReadConcurrency = 8

// read reads the registrations of the proxy services named and returns the services they front.
func (m *Mesh) read(ctx context.Context, proxies []string) ([]MeshService, error) {
	type answer struct {
		entries []*api.CatalogService
		err     error
	}
	answers := make([]answer, len(proxies))
	sem := make(chan struct{}, meshReadConcurrency)
	var wg sync.WaitGroup
	for i, name := range proxies {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			q := (&api.QueryOptions{Datacenter: m.c.cfg.Datacenter}).WithContext(ctx)
			answers[i].entries, _, answers[i].err = m.c.client.Catalog().Service(name, "", q)
		})
	}
	wg.Wait()
	byName := map[string]map[string]bool{}
	for i, a := range answers {
		if a.err != nil {
			return nil, fmt.Errorf("read %s: %w", proxies[i], a.err)
		}
		for _, e := range a.entries {
			if e.ServiceProxy == nil || e.ServiceProxy.DestinationServiceName == "" { // the filter kept proxies only
				continue
			}
			dest := e.ServiceProxy.DestinationServiceName
			if byName[dest] == nil {
				byName[dest] = map[string]bool{}
			}
			for _, addr := range proxyAddresses(e) {
				byName[dest][addr] = true
			}
		}
	}
	out := make([]MeshService, 0, len(byName))
	for name, addrs := range byName {
		out = append(out, MeshService{Name: name, Addresses: slices.Sorted(maps.Keys(addrs))})
	}
	slices.SortFunc(out, func(a, b MeshService) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// proxyAddresses are the addresses a proxy's registration says its service is reached at: its virtual IPs (any
// port), and the instance's address at the service's port. Loopback and unspecified addresses are left out: a
// connection to them is never redirected.
func proxyAddresses(e *api.CatalogService) []string {
	var out []string
	routable := func(s string) (netip.Addr, bool) {
		a, err := netip.ParseAddr(s)
		if err != nil || a.IsLoopback() || a.IsUnspecified() || a.Zone() != "" {
			return netip.Addr{}, false
		}
		return a.Unmap(), true
	}
	for _, tag := range []string{TaggedConsulVirtual, TaggedVirtual} {
		if ta, ok := e.ServiceTaggedAddresses[tag]; ok {
			if a, ok := routable(ta.Address); ok {
				out = append(out, a.String())
			}
		}
	}
	host := e.ServiceAddress
	if host == "" {
		host = e.Address
	}
	if a, ok := routable(host); ok && e.ServiceProxy.LocalServicePort > 0 && e.ServiceProxy.LocalServicePort < 1<<16 {
		out = append(out, netip.AddrPortFrom(a, uint16(e.ServiceProxy.LocalServicePort)).String())
	}
	return out
}

// store keeps services and signals a change when they differ from the last.
func (m *Mesh) store(services []MeshService) {
	m.mu.Lock()
	changed := !m.answered || !slices.EqualFunc(m.services, services, func(a, b MeshService) bool {
		return a.Name == b.Name && slices.Equal(a.Addresses, b.Addresses)
	})
	m.answered, m.err = true, nil
	m.services = services
	m.mu.Unlock()
	if changed {
		m.c.log.Info("consul mesh services read", "services", len(services))
		select {
		case m.changed <- struct{}{}:
		default:
		}
	}
}
