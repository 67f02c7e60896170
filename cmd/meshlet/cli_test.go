package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
)

// flagLine is how a flag's line reads in the help: its name and at most a type word (a description with a word in
// backquotes would put that word there instead).
var flagLine = regexp.MustCompile(`^  -[a-z0-9-]+( (string|int|duration|value|uint))?$`)

// TestSubcommandHelp: every subcommand's -h (and -help) prints its usage line, examples and flags on stdout and
// exits 0; a flag it does not know exits 2 with flag's message and the same help on stderr.
func TestSubcommandHelp(t *testing.T) {
	for _, cmd := range [][]string{{"run"}, {"check"}, {"inject"}, {"wait"}, {"webhook"}, {"redirect-traffic"},
		{"certs", "ca"}, {"certs", "issue"}} {
		name := strings.Join(cmd, " ")
		for _, h := range []string{"-h", "-help"} {
			var out, errb bytes.Buffer
			code := run(append(append([]string{}, cmd...), h), &out, &errb)
			help := out.String()
			if code != 0 || errb.Len() != 0 {
				t.Errorf("meshlet %s %s: exit %d, stderr %q; want 0 and nothing", name, h, code, errb.String())
			}
			for _, want := range []string{"Usage", "meshlet " + name, "Examples:", "Flags:"} {
				if !strings.Contains(help, want) {
					t.Errorf("meshlet %s %s: help lacks %q:\n%s", name, h, want, help)
				}
			}
			for _, l := range strings.Split(help[strings.Index(help, "Flags:"):], "\n") {
				if strings.HasPrefix(l, "  -") && !flagLine.MatchString(l) {
					t.Errorf("meshlet %s: flag line %q renders wrongly (a backquoted word in its description?)", name, l)
				}
			}
		}
		var out, errb bytes.Buffer
		if code := run(append(append([]string{}, cmd...), "-no-such-flag"), &out, &errb); code != 2 ||
			!strings.Contains(errb.String(), "flag provided but not defined") || !strings.Contains(errb.String(), "Usage") || out.Len() != 0 {
			t.Errorf("meshlet %s -no-such-flag: exit %d, stdout %q, stderr %q", name, code, out.String(), errb.String())
		}
	}
	for _, args := range [][]string{{"certs", "-h"}, {"help"}, {"-h"}} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 0 || !strings.Contains(out.String(), "Usage") {
			t.Errorf("meshlet %s: exit %d, stdout %q", strings.Join(args, " "), code, out.String())
		}
	}
}
