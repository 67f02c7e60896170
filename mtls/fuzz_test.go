package mtls

import (
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// FuzzParseID checks that ParseID never panics, accepts only what go-spiffe's spiffeid accepts as a SPIFFE ID,
// normalizes nothing (an accepted string is its ID's String, but for an explicit /ap/default/ segment), and that
// the String of a parsed ID parses back to the same ID. Of an accepted ID it also checks Consul's rules: the
// default partition is the zero Partition; the SNI is the service's, its namespace's and datacenter's, internal-v1
// with the partition only outside the default one; an intention whose source is the ID's service, namespace and
// partition matches it, and one for the service in default/default only when the ID is there too.
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
		if id.Partition == DefaultPartition {
			t.Fatalf("ParseID(%q) = %+v: the default partition kept as a name", s, id)
		}
		sni, head := id.SNI(), id.Service+"."+id.Namespace+"."
		tail := "." + id.Datacenter + ".internal." + id.TrustDomain
		if id.Partition != "" {
			tail = "." + id.Partition + "." + id.Datacenter + ".internal-v1." + id.TrustDomain
		}
		if sni != head+strings.TrimPrefix(tail, ".") {
			t.Fatalf("ParseID(%q): SNI %q", s, sni)
		}
		own := evaluator([]*api.Intention{{SourceName: id.Service, SourceNS: id.Namespace, SourcePartition: id.Partition,
			Action: api.IntentionActionAllow}}, DefaultDeny)
		if ok, why := own.Allowed(id, nil); !ok {
			t.Fatalf("ParseID(%q) = %+v: the intention for its own source denies it: %s", s, id, why)
		}
		dflt := evaluator([]*api.Intention{{SourceName: id.Service, Action: api.IntentionActionAllow}}, DefaultDeny)
		inDefault := id.Namespace == DefaultNamespace && id.PartitionName() == DefaultPartition
		if ok, why := dflt.Allowed(id, nil); ok != inDefault {
			t.Fatalf("ParseID(%q) = %+v: an intention for default/default/%s allowed=%v (%s)", s, id, id.Service, ok, why)
		}
	})
}
