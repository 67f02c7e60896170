// Package toolbin finds the binaries of the tools the project builds for its tests (`make consul`, `make helm`):
// $MESHLET_<NAME>_BIN, else bin/<name> at the module's root. It imports nothing of meshlet's, so that every test
// harness can use it.
package toolbin

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Find returns the path of tool name (consul, helm): $MESHLET_<NAME>_BIN when set, else bin/<name> at the module's
// root; the error says how to get one.
func Find(name string) (string, error) {
	env := "MESHLET_" + strings.ToUpper(name) + "_BIN"
	if p := os.Getenv(env); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w", env, p, err)
		}
		return p, nil
	}
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	p := filepath.Join(root, "bin", name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no %s binary at %s: run `make %s` (or set %s)", name, p, name, env)
	}
	return p, nil
}

// Need is Find for a test: without the binary it ends the test (Missing).
func Need(t testing.TB, name string) string {
	t.Helper()
	p, err := Find(name)
	if err != nil {
		Missing(t, fmt.Sprintf("%s: %v", name, err))
	}
	return p
}

// Missing ends a test that lacks what it needs (a tool, root): skipped with why, or failed under CI=true, where
// everything a test needs is installed and a skip would hide a broken CI.
func Missing(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(why + "; CI=true: failing instead of skipping")
	}
	t.Skip(why)
}

// ModuleRoot finds the directory of meshlet's go.mod above the working directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.Contains(b, []byte("module meshlet.dev/meshlet\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("meshlet's go.mod not found above the working directory")
		}
		dir = parent
	}
}
