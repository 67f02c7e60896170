package discovery_test

import (
	"fmt"
	"net/netip"
	"reflect"
	"runtime"
	"testing"
	"unsafe"

	"meshlet.dev/meshlet/discovery"
)

// TestStaticWatchOptions: Static serves plain watches through discovery.Watch, and refuses options it cannot
// honour instead of ignoring them.
func TestStaticWatchOptions(t *testing.T) {
	s := discovery.NewStatic()
	s.Set("api", []discovery.Endpoint{{ID: "a", Addr: netip.MustParseAddrPort("127.0.0.1:1")}})
	ch, err := discovery.Watch(t.Context(), s, "api", discovery.WatchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if snap := <-ch; len(snap.Endpoints) != 1 {
		t.Fatalf("static snapshot: %+v", snap)
	}
	if _, err := discovery.Watch(t.Context(), s, "api", discovery.WatchOptions{Tag: "v1"}); err == nil {
		t.Fatal("a tag on a static source: no error")
	}
	// MutualTLS narrows only sources with plain instances to leave out: a static list is served as it is.
	ch, err = discovery.Watch(t.Context(), s, "api", discovery.WatchOptions{MutualTLS: true})
	if err != nil {
		t.Fatal(err)
	}
	if snap := <-ch; len(snap.Endpoints) != 1 {
		t.Fatalf("static snapshot with MutualTLS: %+v", snap)
	}
}

// TestParseAddrs: an endpoint's ID is its address in canonical form; a static endpoint written canonically (as
// nearly all are) shares its ID with the config's string instead of holding a copy (issue 16: memory per
// endpoint).
func TestParseAddrs(t *testing.T) {
	in := []string{"127.0.0.1:8080", "[::1]:443", "[0:0::1]:80", "[fe80::1%eth0]:9"}
	eps, err := discovery.ParseAddrs(in)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"127.0.0.1:8080", "[::1]:443", "[::1]:80", "[fe80::1%eth0]:9"} {
		ep := eps[i]
		if ep.ID != want || ep.Addr.String() != want || ep.Weight != 1 {
			t.Errorf("%q: %+v, want ID %q", in[i], ep, want)
		}
		if shared := unsafe.StringData(ep.ID) == unsafe.StringData(in[i]); shared != (in[i] == want) {
			t.Errorf("%q: ID shares the input's bytes: %v", in[i], shared)
		}
	}
	if _, err := discovery.ParseAddrs([]string{"localhost:80"}); err == nil {
		t.Error("a host name: no error")
	}
}

// TestStaticSnapshots: watchers get the endpoints as Set gave them, whether Static keeps them as IDs (what
// ParseAddrs makes) or whole (anything else), at Set and at a later Watch, with the Set's index.
func TestStaticSnapshots(t *testing.T) {
	parsed, err := discovery.ParseAddrs([]string{"127.0.0.1:1", "[::1]:2"})
	if err != nil {
		t.Fatal(err)
	}
	other := append([]discovery.Endpoint(nil), parsed...)
	other[1].Meta = map[string]string{"peer": "sidecar"}
	weighted := append([]discovery.Endpoint(nil), parsed...)
	weighted[0].Weight = 3
	named := []discovery.Endpoint{{ID: "api-1", Addr: netip.MustParseAddrPort("127.0.0.1:1"), Weight: 1}}
	s := discovery.NewStatic()
	ch, err := s.Watch(t.Context(), "api")
	if err != nil {
		t.Fatal(err)
	}
	if snap := <-ch; len(snap.Endpoints) != 0 || snap.Index != 0 {
		t.Fatalf("never set: %+v", snap)
	}
	for i, eps := range [][]discovery.Endpoint{parsed, other, weighted, named, nil, parsed} {
		s.Set("api", eps)
		for _, c := range []string{"set", "later watch"} {
			var snap discovery.Snapshot
			if c == "set" {
				snap = <-ch
			} else {
				late, err := s.Watch(t.Context(), "api")
				if err != nil {
					t.Fatal(err)
				}
				snap = <-late
			}
			if snap.Service != "api" || snap.Index != uint64(i+1) || !reflect.DeepEqual(snap.Endpoints, eps) {
				t.Fatalf("set %d, %s: %+v, want index %d and %+v", i, c, snap, i+1, eps)
			}
		}
	}
}

// TestStaticKeepsIDs: Static keeps the endpoints ParseAddrs makes as their IDs alone, sharing the strings
// (issue 16: memory per endpoint; 80 bytes and more each as whole endpoints).
func TestStaticKeepsIDs(t *testing.T) {
	var addrs []string
	for i := range 10000 {
		addrs = append(addrs, fmt.Sprintf("198.18.%d.%d:8080", i/250, i%250+1))
	}
	eps, err := discovery.ParseAddrs(addrs)
	if err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	s := discovery.NewStatic()
	s.Set("api", eps)
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(s)
	runtime.KeepAlive(eps) // the caller's, not Static's
	if per := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(len(eps)); per > 24 {
		t.Fatalf("Static holds %.0f B per endpoint, want at most 24 (a string header)", per)
	}
}
