package discovery_test

import (
	"net/netip"
	"testing"

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
