package e2e_test

// `meshlet certs` writes keys safely (issue 11, item 19): names that end up in file names and SPIFFE IDs are
// checked, nothing is written outside -dir, temporary files are not predictable and keys are never world-readable.

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"meshlet.dev/meshlet/internal/meshlettest"
)

func TestCertsRefusesBadNames(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "certs")
	if out, code := meshlettest.Exec(t, "certs", "ca", "-dir", dir, "-trust-domain", "example.mesh"); code != 0 {
		t.Fatalf("certs ca: %d %s", code, out)
	}
	for _, tc := range []struct {
		args []string
		says string
	}{
		{[]string{"issue", "-service", "../x"}, `-service "../x" must be a lowercase DNS label`},
		{[]string{"issue", "-service", "a/b"}, "-service"},
		{[]string{"issue", "-service", ".."}, "-service"},
		{[]string{"issue", "-service", "Web"}, "-service"},
		{[]string{"issue", "-service", "-web"}, "-service"},
		{[]string{"issue", "-service", strings.Repeat("a", 64)}, "-service"},
		{[]string{"issue", "-service", "web", "-namespace", "../ns"}, `-namespace "../ns"`},
		{[]string{"issue", "-service", "web", "-namespace", "a/dc/x"}, "-namespace"},
		{[]string{"issue", "-service", "web", "-datacenter", "dc1/svc/admin"}, `-datacenter "dc1/svc/admin"`},
		{[]string{"issue", "-service", "web", "-datacenter", ".."}, "-datacenter"},
		{[]string{"ca", "-trust-domain", "Example.Mesh"}, "-trust-domain"},
		{[]string{"ca", "-trust-domain", "example.mesh/ns/x"}, "-trust-domain"},
		{[]string{"ca", "-trust-domain", "example.mesh:8443"}, "-trust-domain"},
		{[]string{"ca", "-trust-domain", "a..b"}, "-trust-domain"},
	} {
		args := append([]string{"certs", tc.args[0], "-dir", filepath.Join(parent, "fresh")}, tc.args[1:]...)
		if tc.args[0] == "issue" {
			args[3] = dir
		}
		out, code := meshlettest.Exec(t, args...)
		if code != 2 || !strings.Contains(out, tc.says) {
			t.Errorf("meshlet %s: exit %d, want 2 saying %q:\n%s", strings.Join(args, " "), code, tc.says, out)
		}
	}
	if es, _ := os.ReadDir(parent); len(es) != 1 {
		t.Errorf("something was written next to -dir: %v", es)
	}
	if es, _ := os.ReadDir(dir); len(es) != 2 {
		t.Errorf("something was written into -dir: %v", es)
	}
	// The good names still work, with every flag.
	out, code := meshlettest.Exec(t, "certs", "issue", "-dir", dir, "-service", "web-2", "-namespace", "shop", "-datacenter", "eu_west-1")
	if code != 0 || !strings.Contains(out, "spiffe://example.mesh/ns/shop/dc/eu_west-1/svc/web-2") {
		t.Errorf("certs issue with good names: %d %s", code, out)
	}
}

// TestCertsKeyFiles: a symlink planted at the old predictable temporary name is not followed, and a key file that
// was world-readable is replaced by one that is not.
func TestCertsKeyFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	if out, code := meshlettest.Exec(t, "certs", "ca", "-dir", dir, "-trust-domain", "example.mesh"); code != 0 {
		t.Fatalf("certs ca: %d %s", code, out)
	}
	victim := filepath.Join(t.TempDir(), "authorized_keys")
	if err := os.WriteFile(victim, []byte("untouched"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(dir, "web.key.tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "api.key"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Join(dir, "api.key"), 0o644)
	for _, svc := range []string{"web", "api"} {
		if out, code := meshlettest.Exec(t, "certs", "issue", "-dir", dir, "-service", svc); code != 0 {
			t.Fatalf("certs issue %s: %d %s", svc, code, out)
		}
		fi, err := os.Lstat(filepath.Join(dir, svc+".key"))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s.key: %v %v, want a regular file with mode 0600", svc, fi.Mode(), err)
		}
	}
	if b, _ := os.ReadFile(victim); string(b) != "untouched" {
		t.Errorf("the planted symlink was followed: %q", b)
	}
}
