package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestPartsSeries: discovery's and the conditional collectors export series only once their part uses them, and
// read their values at scrape time.
func TestPartsSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg, "test")
	names := func() string {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, mf := range mfs {
			b.WriteString(mf.GetName() + " ")
		}
		return b.String()
	}
	for _, absent := range []string{"meshlet_discovery_", "meshlet_tls_rotations_total", "meshlet_tls_certificate_expiry_seconds",
		"meshlet_authz_default_policy"} {
		if strings.Contains(names(), absent) {
			t.Errorf("%s exported before its part uses it", absent)
		}
	}
	if n := testutil.CollectAndCount(m.AdminRefused); n != 5 {
		t.Errorf("admin refusals: %d series, want the 5 reasons at 0", n)
	}

	m.Discovery.LastSuccess.Set("api", time.Now().Add(-3*time.Second))
	if v := testutil.ToFloat64(m.Discovery.LastSuccess); v < 3 || v > 60 {
		t.Errorf("last success age %v, want about 3 s", v)
	}
	m.Discovery.LastSuccess.Delete("api")
	if n := testutil.CollectAndCount(m.Discovery.LastSuccess); n != 0 {
		t.Errorf("%d age series after Delete", n)
	}

	expiry := 42.0
	rotations := m.RegisterTLS(func() float64 { return expiry })
	rotations.WithLabelValues("success").Inc()
	current := "unknown"
	m.RegisterAuthzDefault([]string{"allow", "deny", "unknown"}, func() string { return current })
	current = "deny"
	want := `
# HELP meshlet_authz_default_policy Consul's default for callers no intention names, as meshlet knows it: 1 for the current policy (unknown: meshlet could not learn it and denies them).
# TYPE meshlet_authz_default_policy gauge
meshlet_authz_default_policy{policy="allow"} 0
meshlet_authz_default_policy{policy="deny"} 1
meshlet_authz_default_policy{policy="unknown"} 0
# HELP meshlet_tls_certificate_expiry_seconds Seconds until the leaf certificate expires (negative once expired; 0 before one is loaded).
# TYPE meshlet_tls_certificate_expiry_seconds gauge
meshlet_tls_certificate_expiry_seconds 42
# HELP meshlet_tls_rotations_total Certificate changes, by result (success; failure: the new certificate did not load and the old one stays).
# TYPE meshlet_tls_rotations_total counter
meshlet_tls_rotations_total{result="failure"} 0
meshlet_tls_rotations_total{result="success"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "meshlet_authz_default_policy",
		"meshlet_tls_certificate_expiry_seconds", "meshlet_tls_rotations_total"); err != nil {
		t.Error(err)
	}
}
