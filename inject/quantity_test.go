package inject

import (
	"math/big"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
)

// TestParseQuantity agrees with Kubernetes' own parser (k8s.io/apimachinery, a test dependency only) on what is a
// quantity and on its value.
func TestParseQuantity(t *testing.T) {
	for _, s := range []string{"128Mi", "1Gi", "250m", "0.5", "1", "2e9", "1E3", "1.5G", "100k", "500M", "10n", "3u",
		"+1Ki", ".5", "5.", "1Ei", "64MB", "1 Gi", "fast", "", "-1", "0", "1e", "Mi", "1.2.3", "0x10", "1mi", "1KI"} {
		want, kerr := resource.ParseQuantity(s)
		got, err := parseQuantity(s)
		if kerr != nil || want.Sign() <= 0 {
			if err == nil {
				t.Errorf("%q: accepted as %v; Kubernetes: %v (sign %d)", s, got, kerr, want.Sign())
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v; Kubernetes accepts it", s, err)
			continue
		}
		wantRat, ok := new(big.Rat).SetString(want.AsDec().String())
		if !ok || wantRat.Cmp(got) != 0 {
			t.Errorf("%q = %v, Kubernetes: %v", s, got.FloatString(9), want.AsDec().String())
		}
	}
}

func TestGoMemLimit(t *testing.T) {
	for in, want := range map[string]string{"128Mi": "115MiB", "1Gi": "921MiB", "500M": "429MiB", "10Mi": "9437184", "1": "1", "64Mi": "57MiB"} {
		q, err := parseQuantity(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := goMemLimit(q); got != want {
			t.Errorf("goMemLimit(%s) = %s, want %s", in, got, want)
		}
	}
}
