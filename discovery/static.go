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
	services map[string]Snapshot
	watchers map[string]map[chan Snapshot]struct{}
}

// NewStatic returns a Static source with no services.
func NewStatic() *Static {
	return &Static{services: map[string]Snapshot{}, watchers: map[string]map[chan Snapshot]struct{}{}}
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
	snap := Snapshot{Service: service, Endpoints: append([]Endpoint(nil), eps...), Index: s.index}
	s.services[service] = snap
	for ch := range s.watchers[service] {
		SendLatest(ch, snap)
	}
}

// Watch implements Source. A service that was never Set yields an empty snapshot at once.
func (s *Static) Watch(ctx context.Context, service string) (<-chan Snapshot, error) {
	ch := make(chan Snapshot, 1)
	s.mu.Lock()
	snap, ok := s.services[service]
	if !ok {
		snap = Snapshot{Service: service, Index: s.index}
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
