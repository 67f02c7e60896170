package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestDefaultImage: the default sidecar image is the Makefile's `make image` (IMAGE_REPO:VERSION) for this binary's
// version, with the version made a valid image tag.
func TestDefaultImage(t *testing.T) {
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^IMAGE_REPO \?= (\S+)$`).FindSubmatch(mk)
	if m == nil || string(m[1]) != DefaultImageRepo {
		t.Errorf("Makefile IMAGE_REPO = %q, want DefaultImageRepo %q", m, DefaultImageRepo)
	}
	for v, want := range map[string]string{
		"v1.2.3": "v1.2.3",
		"dev":    "dev",
		"v0.0.0-20261206110000-d6d2bed05feb+dirty": "v0.0.0-20261206110000-d6d2bed05feb-dirty",
		"d6d2bed-dirty":          "d6d2bed-dirty",
		"":                       "dev",
		"-x":                     "dev",
		strings.Repeat("a", 200): strings.Repeat("a", 128),
	} {
		if got := imageTag(v); got != want {
			t.Errorf("imageTag(%q) = %q, want %q", v, got, want)
		}
	}
	old := version
	defer func() { version = old }()
	version = "v1.4.0"
	if got := defaultImage(); got != "ghcr.io/meshlet-dev/meshlet:v1.4.0" {
		t.Errorf("defaultImage() = %q", got)
	}
}
