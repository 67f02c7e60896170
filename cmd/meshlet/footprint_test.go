package main_test

import (
	"os/exec"
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
