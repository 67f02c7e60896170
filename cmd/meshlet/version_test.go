package main

import (
	"bytes"
	"runtime"
	"testing"
)

// TestVersionLine: `meshlet version` prints "meshlet VERSION GOVERSION", then the commit when the build recorded
// one (make build sets it): the first three fields stay where scripts read them.
func TestVersionLine(t *testing.T) {
	oldV, oldC := version, commit
	defer func() { version, commit = oldV, oldC }()
	version, commit = "v1.2.3", "0123456789ab-dirty"
	var out, errb bytes.Buffer
	if code := run([]string{"version"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if want := "meshlet v1.2.3 " + runtime.Version() + " commit 0123456789ab-dirty\n"; out.String() != want {
		t.Fatalf("version printed %q, want %q", out.String(), want)
	}
}
