package discovery_test

import (
	"net/netip"
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
