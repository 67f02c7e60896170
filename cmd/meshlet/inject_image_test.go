package main

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
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

// TestHelmChartDefaultImage: the Helm chart (deploy/helm/meshlet) runs and injects, by default, the image that
// `meshlet inject` and `meshlet webhook` of its appVersion inject by default (defaultImage of that version). inject's
// TestHelmChartDefault checks that the rendered chart uses image.repository:appVersion for both.
func TestHelmChartDefaultImage(t *testing.T) {
	var chart struct {
		AppVersion string `yaml:"appVersion"`
	}
	var values struct {
		Image   struct{ Repository, Tag string }
		Sidecar struct{ Image string }
	}
	for f, v := range map[string]any{"../../deploy/helm/meshlet/Chart.yaml": &chart, "../../deploy/helm/meshlet/values.yaml": &values} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	if values.Image.Tag != "" || values.Sidecar.Image != "" {
		t.Errorf("values.yaml sets image.tag %q, sidecar.image %q: the defaults are the appVersion's image", values.Image.Tag, values.Sidecar.Image)
	}
	if imageTag(chart.AppVersion) != chart.AppVersion {
		t.Errorf("appVersion %q is not an image tag as `make image` makes it (%q)", chart.AppVersion, imageTag(chart.AppVersion))
	}
	old := version
	defer func() { version = old }()
	version = chart.AppVersion
	if got, want := values.Image.Repository+":"+chart.AppVersion, defaultImage(); got != want {
		t.Errorf("the chart's default image %q, meshlet %s injects %q", got, chart.AppVersion, want)
	}
}
