package main_test

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"meshlet.dev/meshlet/internal/meshlettest"
)

// TestBinaryLinksNoGRPC: the meshlet binary links neither grpc-go nor its codes package. Every page of the
// binary that a meshlet touches, and the 64 KiB the kernel maps around it, counts in its RSS: grpc-go was 4.3 MB
// of the binary and 2.7 MiB of an idle meshlet's RSS, for one unary call (appcheck speaks it itself) and the
// names of the status codes (grpcwire.Code). Tests may use grpc-go: they are not in the binary.
func TestBinaryLinksNoGRPC(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", meshlettest.MeshletPkg).Output()
	if err != nil {
		t.Fatal(err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 100 {
		t.Fatalf("go list found only %d packages: %v", len(deps), deps)
	}
	for _, p := range deps {
		if p == "google.golang.org/grpc" || strings.HasPrefix(p, "google.golang.org/grpc/") {
			t.Errorf("the meshlet binary links %s", p)
		}
	}
}

// TestInitAllocations: no package of meshlet's allocates more than a few KiB in its init: what a package-level
// var builds at start (a compiled regexp was up to 380 KB: inject's, which `meshlet run` never uses) stays in every
// meshlet's heap; such values are built on first use (sync.OnceValue) or not at all.
func TestInitAllocations(t *testing.T) {
	const limit = 16 << 10
	cmd := exec.Command(meshlettest.Bin(), "version")
	cmd.Env = append(os.Environ(), "GODEBUG=inittrace=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("meshlet version: %v\n%s", err, stderr.String())
	}
	seen := 0
	sc := bufio.NewScanner(&stderr)
	for sc.Scan() {
		// init meshlet.dev/meshlet/inject @2.8 ms, 0.60 ms clock, 463048 bytes, 4612 allocs
		f := strings.Fields(sc.Text())
		if len(f) < 9 || f[0] != "init" || (f[1] != "main" && !strings.HasPrefix(f[1], "meshlet.dev/meshlet/")) ||
			f[8] != "bytes," {
			continue
		}
		seen++
		n, err := strconv.Atoi(f[7])
		if err != nil {
			t.Fatalf("inittrace line %q: %v", sc.Text(), err)
		}
		if n > limit {
			t.Errorf("package %s allocates %d bytes in its init, more than %d", f[1], n, limit)
		}
	}
	if seen < 5 {
		t.Fatalf("inittrace showed %d of meshlet's packages:\n%s", seen, stderr.String())
	}
}
