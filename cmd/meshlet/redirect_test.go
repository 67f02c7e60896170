package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"meshlet.dev/meshlet/redirect/redirecttest"
)

// TestRedirectTrafficCommand runs `meshlet redirect-traffic` as written, in process, inside a network namespace
// of the test's own, and reads the rules back with the system's nft: from flags (repeated and comma-separated
// lists), from a config file, twice in a row; -delete twice.
func TestRedirectTrafficCommand(t *testing.T) {
	redirecttest.NeedRoot(t)
	ns := redirecttest.NewNetns(t)
	runIn := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		var code int
		ns.Do(t, func() { code = run(append([]string{"redirect-traffic"}, args...), &out, &errb) })
		return code, out.String(), errb.String()
	}
	rules := func() string {
		out, err := ns.NFT("list", "table", "inet", "meshlet")
		if err != nil {
			t.Fatalf("nft list: %v\n%s", err, out)
		}
		return out
	}
	for range 2 {
		code, out, errs := runIn("-proxy-uid", "5995", "-proxy-outbound-port", "15001", "-exclude-outbound-port", "22,23",
			"-exclude-outbound-port", "24", "-exclude-uid", "100", "-exclude-outbound-cidr", "198.18.9.0/24")
		if code != 0 || !strings.Contains(out, "installed table inet meshlet") {
			t.Fatalf("exit %d: %s%s", code, out, errs)
		}
		got := rules()
		for _, want := range []string{"meta skuid 5995 return", "meta skuid 100 return", "tcp dport 22 return",
			"tcp dport 23 return", "tcp dport 24 return", "ip daddr 198.18.9.0/24 return", "redirect to :15001"} {
			if strings.Count(got, want) != 1 {
				t.Fatalf("want %q once in:\n%s", want, got)
			}
		}
		if strings.Contains(got, "prerouting") {
			t.Fatalf("inbound rules without an inbound port:\n%s", got)
		}
	}
	cfg := filepath.Join(t.TempDir(), "meshlet.yaml")
	os.WriteFile(cfg, []byte(`service:
  name: api
  address: 127.0.0.1:8080
inbound:
  listen: 0.0.0.0:20000
outbound:
  listen: 127.0.0.1:15001
admin:
  listen: 0.0.0.0:19000
`), 0o600)
	if code, out, errs := runIn("-config", cfg, "-proxy-uid", "5995", "-exclude-inbound-port", "22"); code != 0 {
		t.Fatalf("exit %d: %s%s", code, out, errs)
	}
	got := rules()
	for _, want := range []string{"redirect to :15001", "redirect to :20000", "tcp dport 19000 return", "tcp dport 22 return"} {
		if strings.Count(got, want) != 1 {
			t.Fatalf("want %q once in:\n%s", want, got)
		}
	}
	for range 2 {
		if code, out, errs := runIn("-delete"); code != 0 || !strings.Contains(out, "removed table inet meshlet") {
			t.Fatalf("-delete: exit %d: %s%s", code, out, errs)
		}
		if out, err := ns.NFT("list", "table", "inet", "meshlet"); err == nil {
			t.Fatalf("table still there after -delete:\n%s", out)
		}
	}
}

// TestRedirectTrafficCommandErrors: bad flags and configs get a clear message and an exit code, before any rule
// is touched.
func TestRedirectTrafficCommandErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o600)
		return p
	}
	loopbackInbound := write("lo.yaml", "service:\n  name: api\n  address: 127.0.0.1:8080\ninbound:\n  listen: 127.0.0.1:20000\n")
	anyPort := write("zero.yaml", "service:\n  name: web\noutbound:\n  listen: 127.0.0.1:0\n")
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-proxy-outbound-port", "15001"}, 2, "proxy-uid: required"},
		{[]string{"-proxy-uid", "5995"}, 2, "nothing to redirect"},
		{[]string{"-proxy-uid", "x", "-proxy-outbound-port", "15001"}, 2, `invalid UID "x"`},
		{[]string{"-proxy-uid", "1", "-proxy-outbound-port", "70000"}, 2, "70000 is not a port"},
		{[]string{"-proxy-uid", "1", "-proxy-outbound-port", "15001", "-exclude-outbound-port", "0"}, 2, `invalid port "0"`},
		{[]string{"-proxy-uid", "1", "-proxy-outbound-port", "15001", "-exclude-outbound-port", "15001"}, 2, "15001 is meshlet's outbound port"},
		{[]string{"-proxy-uid", "1", "-proxy-outbound-port", "15001", "-exclude-outbound-cidr", "10.0.0.0/33"}, 2, `invalid CIDR "10.0.0.0/33"`},
		{[]string{"-proxy-uid", "1", "-proxy-outbound-port", "15001", "-redirect-dns", "198.18.0.53"}, 2, "invalid ADDR:PORT"},
		{[]string{"-proxy-uid", "1", "-proxy-outbound-port", "15001", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"-proxy-uid", "1", "-config", loopbackInbound}, 1, "listens on loopback only"},
		{[]string{"-proxy-uid", "1", "-config", anyPort}, 1, "has no fixed port"},
		{[]string{"-proxy-uid", "1", "-config", filepath.Join(dir, "missing.yaml")}, 1, "missing.yaml"},
	} {
		var out, errb bytes.Buffer
		code := run(append([]string{"redirect-traffic"}, tc.args...), &out, &errb)
		if code != tc.code || !strings.Contains(errb.String(), tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want exit %d and %q", tc.args, code, errb.String(), tc.code, tc.want)
		}
	}
}
