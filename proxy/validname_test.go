package proxy

import (
	"regexp"
	"strings"
	"testing"
)

// TestValidNameAgreesWithRegexp: the hand-written ValidName accepts exactly what the regexp it replaced accepts.
func TestValidNameAgreesWithRegexp(t *testing.T) {
	re := regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	names := []string{"", "a", "-", "a-", "-a", "a-b", "a--b", "api", "API", "a.b", "a_b", "a b", "ü", "0", "9z",
		strings.Repeat("a", 62), strings.Repeat("a", 63), strings.Repeat("a", 64), strings.Repeat("a", 62) + "-",
		"a" + strings.Repeat("-", 61) + "b", "a" + strings.Repeat("-", 62) + "b", "api\n", "\x00", "a/b", "a:b"}
	for c := 0; c < 256; c++ { // every byte alone, first, last and inside
		b := string(rune(c))
		if c >= 0x80 {
			b = string([]byte{byte(c)})
		}
		names = append(names, b, b+"a", "a"+b, "a"+b+"a")
	}
	for _, s := range names {
		if got, want := ValidName(s), re.MatchString(s); got != want {
			t.Errorf("ValidName(%q) = %v, the regexp says %v", s, got, want)
		}
	}
}

func FuzzValidName(f *testing.F) {
	re := regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	for _, s := range []string{"api", "a-b", "-a", "a-", strings.Repeat("x", 63), strings.Repeat("x", 64), "A"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := ValidName(s), re.MatchString(s); got != want {
			t.Fatalf("ValidName(%q) = %v, the regexp says %v", s, got, want)
		}
	})
}
