package testports

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// TestClaimAcrossProcesses: a port this process handed out is not handed out by another test process while this
// one lives. The child (this test binary again) claims the ports this process claimed, and must be refused every
// one.
func TestClaimAcrossProcesses(t *testing.T) {
	if ports := os.Getenv("TESTPORTS_CHILD"); ports != "" {
		for _, a := range strings.Fields(ports) {
			_, port, _ := strings.Cut(a, ":")
			n, err := strconv.Atoi(port)
			if err != nil {
				t.Fatal(err)
			}
			if claim(n) {
				t.Fatalf("the child could claim port %d, which its parent holds", n)
			}
		}
		return
	}
	addrs, err := Pick(20)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	low, span := testPorts()
	for _, a := range addrs {
		if seen[a] {
			t.Fatalf("Pick handed out %s twice", a)
		}
		seen[a] = true
		_, port, _ := strings.Cut(a, ":")
		if n, err := strconv.Atoi(port); err != nil || n < low || n >= low+span {
			t.Fatalf("Pick handed out %s, outside the test ports %d..%d", a, low, low+span-1)
		}
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestClaimAcrossProcesses$", "-test.count=1")
	cmd.Env = append(os.Environ(), "TESTPORTS_CHILD="+strings.Join(addrs, " "))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
}
