package mtls

import "testing"

// FuzzParseID checks that ParseID never panics and that the String of a parsed ID parses back to the same ID.
func FuzzParseID(f *testing.F) {
	for _, s := range []string{
		"spiffe://example.org/ns/default/dc/dc1/svc/web",
		"spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/api",
		"spiffe://td/ns/a/dc/b/svc/c/extra", "spiffe:///ns/a/dc/b/svc/c", "spiffe://td/ns//dc/b/svc/c",
		"http://td/ns/a/dc/b/svc/c", "SPIFFE://td/ns/a/dc/b/svc/c", "spiffe://td/ns/a%2Fb/dc/b/svc/c",
		"spiffe://td/ns/a/dc/b/svc/c?x=1#frag", "spiffe://user@td:8080/ns/a/dc/b/svc/c", "spiffe://[::1]/ns/a/dc/b/svc/c",
		"spiffe://td/ns/%zz/dc/b/svc/c", "spiffe://td/ns/a b/dc/b/svc/c", "spiffe:td/ns/a/dc/b/svc/c", "", "%",
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
		again, err := ParseID(id.String())
		if err != nil {
			t.Fatalf("ParseID(%q) = %+v, but its String %q does not parse: %v", s, id, id.String(), err)
		}
		if again != id {
			t.Fatalf("ParseID(%q) = %+v, String %q parses to %+v", s, id, id.String(), again)
		}
	})
}
