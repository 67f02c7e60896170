package mtls

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// FuzzParseID checks that ParseID never panics, accepts only what go-spiffe's spiffeid accepts as a SPIFFE ID,
// normalizes nothing (an accepted string is its ID's String, but for an explicit /ap/default/ segment), and that
// the String of a parsed ID parses back to the same ID.
func FuzzParseID(f *testing.F) {
	for _, s := range []string{
		"spiffe://example.org/ns/default/dc/dc1/svc/web",
		"spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/api",
		"spiffe://example.org/ap/team-a/ns/ops/dc/dc1/svc/web", "spiffe://td/ap/default/ns/a/dc/b/svc/c",
		"spiffe://td_1/ns/A.b-c_d/dc/b/svc/c", "spiffe://td/ap//ns/a/dc/b/svc/c", "spiffe://td/ap/x/ns/a/dc/b/svc/c/d",
		"spiffe://td/ns/a/dc/b/svc/c/extra", "spiffe:///ns/a/dc/b/svc/c", "spiffe://td/ns//dc/b/svc/c",
		"http://td/ns/a/dc/b/svc/c", "SPIFFE://td/ns/a/dc/b/svc/c", "spiffe://TD/ns/a/dc/b/svc/c",
		"spiffe://td/ns/a%2Fb/dc/b/svc/c", "spiffe://td/ns/def%61ult/dc/b/svc/c",
		"spiffe://td/ns/a/dc/b/svc/c?x=1#frag", "spiffe://td/ns/a/dc/b/svc/c?", "spiffe://td/ns/a/dc/b/svc/c#",
		"spiffe://user@td:8080/ns/a/dc/b/svc/c", "spiffe://td:8080/ns/a/dc/b/svc/c", "spiffe://[::1]/ns/a/dc/b/svc/c",
		"spiffe://td/ns/./dc/b/svc/c", "spiffe://td/ns/../dc/b/svc/c", "spiffe://td/ns/a/dc/b/svc/c/",
		"spiffe://td/ns/%zz/dc/b/svc/c", "spiffe://td/ns/a b/dc/b/svc/c", "spiffe://td/ns/a~b/dc/b/svc/c",
		"spiffe:td/ns/a/dc/b/svc/c", "spiffe://td", "spiffe://td/", "", "%",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID(s)
		if err != nil {
			if id != (ID{}) {
				t.Fatalf("ParseID(%q): error %v with a non-zero ID %+v", s, err, id)
			}
			return
		}
		if id.TrustDomain == "" || id.Namespace == "" || id.Datacenter == "" || id.Service == "" {
			t.Fatalf("ParseID(%q) = %+v: an empty part", s, id)
		}
		sid, err := spiffeid.FromString(s)
		if err != nil {
			t.Fatalf("ParseID(%q) accepted what spiffeid refuses: %v", s, err)
		}
		if sid.TrustDomain().Name() != id.TrustDomain {
			t.Fatalf("ParseID(%q): trust domain %q, spiffeid says %q", s, id.TrustDomain, sid.TrustDomain())
		}
		if want := strings.Replace(s, "/ap/default/", "/", 1); id.String() != s && id.String() != want {
			t.Fatalf("ParseID(%q) = %+v: its String %q is another string", s, id, id.String())
		}
		again, err := ParseID(id.String())
		if err != nil {
			t.Fatalf("ParseID(%q) = %+v, but its String %q does not parse: %v", s, id, id.String(), err)
		}
		if again != id {
			t.Fatalf("ParseID(%q) = %+v, String %q parses to %+v", s, id, id.String(), again)
		}
	})
}
