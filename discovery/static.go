package discovery

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
)

// Static is a Source of endpoints written in the config file. Set replaces a service's endpoints at run time
// (a config reload); every watcher of that service receives the new snapshot. The zero value is not usable: use
// NewStatic. Static is safe for concurrent use.
type Static struct {
	mu       sync.Mutex
	index    uint64
	services map[string]staticService
	watchers map[string]map[chan Snapshot]struct{}
}

// staticService is a service's endpoints as Set gave them, kept for the watches to come. Endpoints that are what
// ParseAddrs makes of their IDs (as those of the config file are) are kept as their IDs alone, 16 bytes each
// instead of 80 (a watch parses them again), others as they are.
type staticService struct {
	index uint64
	ids   []string   // the endpoints' IDs, when each one is what ParseAddrs makes of it
	eps   []Endpoint // the endpoints otherwise
}

func newStaticService(eps []Endpoint, index uint64) staticService {
	if len(eps) == 0 {
		return staticService{index: index}
	}
	ids := make([]string, 0, len(eps))
	var buf [64]byte
	for _, ep := range eps {
		if ep.Weight != 1 || ep.Identity != "" || ep.Meta != nil || !ep.Addr.IsValid() ||
			string(ep.Addr.AppendTo(buf[:0])) != ep.ID {
			return staticService{index: index, eps: append([]Endpoint(nil), eps...)}
		}
		ids = append(ids, ep.ID)
	}
	return staticService{index: index, ids: ids}
}

// snapshot is the service's snapshot: a new Endpoints slice each time for endpoints kept as IDs.
func (ss staticService) snapshot(service string) Snapshot {
	snap := Snapshot{Service: service, Endpoints: ss.eps, Index: ss.index}
	if ss.ids != nil {
		snap.Endpoints = make([]Endpoint, len(ss.ids))
		for i, id := range ss.ids {
			snap.Endpoints[i] = Endpoint{ID: id, Addr: netip.MustParseAddrPort(id), Weight: 1}
		}
	}
	return snap
}

// NewStatic returns a Static source with no services.
func NewStatic() *Static {
	return &Static{services: map[string]staticService{}, watchers: map[string]map[chan Snapshot]struct{}{}}
}

// ParseAddrs turns "ip:port" strings into endpoints whose ID is the address (in its canonical form: a string of
// addrs itself when it is one, which the endpoints then share with it rather than hold a copy of).
func ParseAddrs(addrs []string) ([]Endpoint, error) {
	eps := make([]Endpoint, 0, len(addrs))
	var buf [64]byte
	for _, a := range addrs {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			return nil, fmt.Errorf("endpoint %q: must be ip:port", a)
		}
		id := a
		if c := ap.AppendTo(buf[:0]); string(c) != a {
			id = string(c)
		}
		eps = append(eps, Endpoint{ID: id, Addr: ap, Weight: 1})
	}
	return eps, nil
}

// Set replaces the endpoints of service and notifies its watchers.
func (s *Static) Set(service string, eps []Endpoint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.index++
	ss := newStaticService(eps, s.index)
	s.services[service] = ss
	if len(s.watchers[service]) == 0 {
		return
	}
	snap := ss.snapshot(service)
	for ch := range s.watchers[service] {
		SendLatest(ch, snap)
	}
}

// Watch implements Source. A service that was never Set yields an empty snapshot at once.
func (s *Static) Watch(ctx context.Context, service string) (<-chan Snapshot, error) {
	ch := make(chan Snapshot, 1)
	s.mu.Lock()
	snap := Snapshot{Service: service, Index: s.index}
	if ss, ok := s.services[service]; ok {
		snap = ss.snapshot(service)
	}
	ch <- snap
	if s.watchers[service] == nil {
		s.watchers[service] = map[chan Snapshot]struct{}{}
	}
	s.watchers[service][ch] = struct{}{}
	s.mu.Unlock()
	go func() {
		<-ctx.Done()
		s.mu.Lock()
		delete(s.watchers[service], ch)
		close(ch)
		s.mu.Unlock()
	}()
	return ch, nil
}
