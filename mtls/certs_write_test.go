package mtls

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestWriteLeafSafe: keys are written through a new, exclusively created temporary file: a symlink planted at the
// old predictable name (<name>.key.tmp) is not followed, a key already there with mode 0644 is replaced by one
// with mode 0600, and a name with a path in it writes nothing anywhere.
func TestWriteLeafSafe(t *testing.T) {
	ca, err := NewCA("example.mesh", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	cert, key, err := ca.Issue(ServiceID("example.mesh", DefaultNamespace, DefaultDatacenter, "web"), now, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("symlink at the old temporary name", func(t *testing.T) {
		dir, outside := t.TempDir(), t.TempDir()
		victim := filepath.Join(outside, "victim")
		if err := os.WriteFile(victim, []byte("untouched"), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"web.key.tmp", "web.crt.tmp"} {
			if err := os.Symlink(victim, filepath.Join(dir, n)); err != nil {
				t.Fatal(err)
			}
		}
		if err := WriteLeaf(dir, "web", cert, key); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(victim); string(b) != "untouched" {
			t.Errorf("the symlink's target was written: %q", b)
		}
		assertRegular(t, filepath.Join(dir, "web.key"), 0o600)
		assertRegular(t, filepath.Join(dir, "web.crt"), 0o644)
	})
	t.Run("symlink at the key's own name", func(t *testing.T) {
		dir, outside := t.TempDir(), t.TempDir()
		victim := filepath.Join(outside, "victim")
		os.WriteFile(victim, []byte("untouched"), 0o644)
		os.Symlink(victim, filepath.Join(dir, "web.key"))
		if err := WriteLeaf(dir, "web", cert, key); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(victim); string(b) != "untouched" {
			t.Errorf("the symlink's target was written: %q", b)
		}
		assertRegular(t, filepath.Join(dir, "web.key"), 0o600)
	})
	t.Run("world-readable files already there", func(t *testing.T) {
		dir := t.TempDir()
		for _, n := range []string{"web.key", "web.key.tmp"} {
			if err := os.WriteFile(filepath.Join(dir, n), []byte("old"), 0o644); err != nil {
				t.Fatal(err)
			}
			os.Chmod(filepath.Join(dir, n), 0o644) // whatever the umask
		}
		if err := WriteLeaf(dir, "web", cert, key); err != nil {
			t.Fatal(err)
		}
		assertRegular(t, filepath.Join(dir, "web.key"), 0o600)
		if b, _ := os.ReadFile(filepath.Join(dir, "web.key")); !strings.Contains(string(b), "PRIVATE KEY") {
			t.Errorf("web.key: %q", b)
		}
	})
	t.Run("names with a path", func(t *testing.T) {
		parent := t.TempDir()
		dir := filepath.Join(parent, "certs")
		os.Mkdir(dir, 0o755)
		for _, name := range []string{"../x", "a/b", "..", ".", "", `..\x`, "/abs"} {
			if err := WriteLeaf(dir, name, cert, key); err == nil {
				t.Errorf("WriteLeaf(%q) wrote", name)
			}
		}
		for _, d := range []string{parent, dir} {
			if es, _ := os.ReadDir(d); len(es) != map[string]int{parent: 1, dir: 0}[d] {
				t.Errorf("%s holds %v", d, es)
			}
		}
	})
	t.Run("no temporary file left", func(t *testing.T) {
		dir := t.TempDir()
		if err := ca.WriteCA(dir); err != nil {
			t.Fatal(err)
		}
		if err := WriteLeaf(dir, "web", cert, key); err != nil {
			t.Fatal(err)
		}
		es, _ := os.ReadDir(dir)
		var names []string
		for _, e := range es {
			names = append(names, e.Name())
		}
		if strings.Join(names, " ") != "ca.crt ca.key web.crt web.key" {
			t.Errorf("dir holds %v", names)
		}
		assertRegular(t, filepath.Join(dir, "ca.key"), 0o600)
	})
	t.Run("CA refuses a dangling symlink at ca.key", func(t *testing.T) {
		dir := t.TempDir()
		os.Symlink(filepath.Join(t.TempDir(), "nothing"), filepath.Join(dir, "ca.key"))
		if err := ca.WriteCA(dir); err == nil || !strings.Contains(err.Error(), "already exists") {
			t.Errorf("WriteCA over a dangling symlink: %v", err)
		}
	})
}

func assertRegular(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm() != mode {
		t.Errorf("%s: mode %v, want a regular file with %v", path, fi.Mode(), mode)
	}
}
