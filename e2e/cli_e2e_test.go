package e2e_test

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"meshlet.dev/meshlet/internal/meshlettest"
)

// specExampleConfig is the example config of the working spec, verbatim.
const specExampleConfig = `service:
  name: web                 # required
  address: 127.0.0.1:8080   # the local app (ip:port), required when inbound.listen is set
  protocol: http            # http | http2 | grpc | tcp   (what the local app speaks; default http)
inbound:
  listen: 0.0.0.0:21000     # optional; where other sidecars reach this service. Accepts HTTP/1.1 and h2c
                            # (for protocol tcp: raw TCP passthrough to service.address)
  timeout: 0s               # per-request timeout towards the local app; 0 = none
outbound:
  listen: 127.0.0.1:15001   # optional name-routed listener: routes by Host/:authority "api", "api.mesh", "api:80"
  domains: [mesh]           # accepted suffixes after the upstream name (default [mesh])
upstreams:
  - name: api               # required, unique, DNS label
    listen: 127.0.0.1:9001  # optional per-upstream port (HTTP/1.1 + h2c for http/http2/grpc; raw TCP for tcp)
    protocol: grpc          # http | http2 | grpc | tcp   (default http)
    endpoints: [127.0.0.1:9101, 127.0.0.1:9102]  # static endpoints, ip:port
    peer: app               # app | sidecar. sidecar: endpoints are other meshlets' inbound listeners, spoken to
                            # over h2c (HTTP/1.1 for Upgrade/WebSocket requests). app: plain apps, spoken to in
                            # ` + "`protocol`" + ` (http -> HTTP/1.1, http2/grpc -> h2c). default app
    lb: p2c                 # p2c (power of two choices, least outstanding requests) | round_robin
    timeout: 0s             # overall per-request timeout; 0 = none
    connect_timeout: 5s
admin:
  listen: 127.0.0.1:15000   # default 127.0.0.1:15000
log:
  level: info               # debug | info | warn | error
  access_log: false         # one JSON line per request on stderr when true
shutdown:
  drain_delay: 5s           # after SIGTERM, keep accepting for this long (ready=503 already)
  drain_timeout: 20s        # then wait up to this long for in-flight requests
`

// assertNoCrash fails if out looks like a panic or a goroutine dump.
func assertNoCrash(t *testing.T, out string) {
	t.Helper()
	for _, bad := range []string{"panic:", "goroutine ", "DATA RACE"} {
		if strings.Contains(out, bad) {
			t.Errorf("output contains %q:\n%s", bad, out)
		}
	}
}

func TestCLICheck(t *testing.T) {
	for _, tc := range []struct {
		name     string
		config   string
		code     int
		contains []string // each must appear (on its own line for problems)
		lines    bool     // each of contains must be on a different line
		anyOf    []string // at least one must appear
	}{
		{name: "spec example", config: specExampleConfig, code: 0, contains: []string{"config ok"}},
		{name: "minimal", config: "service:\n  name: web\n", code: 0, contains: []string{"config ok"}},
		{name: "tcp upstream", config: "service:\n  name: web\nupstreams:\n  - name: db\n    listen: 127.0.0.1:5432\n" +
			"    protocol: tcp\n    endpoints: [10.0.0.1:5432]\n", code: 0, contains: []string{"config ok"}},
		{name: "several problems", code: 1, lines: true, config: `service:
  name: ""
  address: not-an-address
  protocol: ftp
inbound:
  listen: 0.0.0.0:21000
upstreams:
  - name: api
    listen: nonsense
    endpoints: [127.0.0.1:9101]
  - name: Bad_Name!
    endpoints: [127.0.0.1:9102]
    lb: random
    peer: friend
  - name: api
    protocol: smtp
    endpoints: [not-an-ip]
log:
  level: loud
`, contains: []string{
			"service.name", "service.address", "service.protocol", "upstreams[0].listen", "upstreams[1].name",
			"upstreams[1].lb", "upstreams[1].peer", "upstreams[2].name", "upstreams[2].protocol",
			"upstreams[2].endpoints", "log.level",
		}},
		{name: "address required with inbound", code: 1, config: "service:\n  name: web\ninbound:\n" +
			"  listen: 127.0.0.1:21000\n", contains: []string{"service.address"}},
		{name: "unknown top-level key", code: 1, config: "service:\n  name: web\nfrobnicate: true\n",
			contains: []string{"frobnicate"}},
		{name: "unknown nested key", code: 1, config: "service:\n  name: web\nupstreams:\n  - name: api\n" +
			"    endpoints: [127.0.0.1:1]\n    bogus_key: 1\n", contains: []string{"bogus_key"}},
		{name: "bad yaml", code: 1, config: "service:\n  name: web\n   protocol: [http\n",
			contains: []string{"line"}},
		{name: "wrong type", code: 1, config: "service:\n  name: web\nupstreams: 5\n"},
		{name: "negative durations", code: 1, lines: true, config: "service:\n  name: web\nupstreams:\n" +
			"  - name: a\n    listen: 127.0.0.1:9001\n    endpoints: [127.0.0.1:1]\n    timeout: -1s\n" +
			"    connect_timeout: -2s\nshutdown:\n  drain_delay: -1s\n", contains: []string{
			"upstreams[0].timeout", "upstreams[0].connect_timeout", "shutdown.drain_delay"}},
		{name: "bad duration", code: 1, config: "service:\n  name: web\nshutdown:\n  drain_delay: soon\n",
			anyOf: []string{"drain_delay", "line 4"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := meshlettest.WriteTemp(t, "meshlet.yaml", tc.config)
			out, code := meshlettest.Exec(t, "check", "-config", path)
			if code != tc.code {
				t.Fatalf("exit code %d, want %d; output:\n%s", code, tc.code, out)
			}
			assertNoCrash(t, out)
			if tc.code != 0 && strings.Contains(out, "config ok") {
				t.Errorf("invalid config reported ok:\n%s", out)
			}
			if tc.code != 0 && strings.TrimSpace(out) == "" {
				t.Error("no error message")
			}
			if len(tc.anyOf) > 0 && !slices.ContainsFunc(tc.anyOf, func(s string) bool {
				return strings.Contains(out, s)
			}) {
				t.Errorf("output mentions none of %q:\n%s", tc.anyOf, out)
			}
			lines := strings.Split(out, "\n")
			used := map[int]string{}
			for _, want := range tc.contains {
				found := false
				for i, l := range lines {
					if !strings.Contains(strings.ToLower(l), strings.ToLower(want)) {
						continue
					}
					if tc.lines {
						if _, dup := used[i]; dup {
							continue
						}
						used[i] = want
					}
					found = true
					break
				}
				if !found {
					t.Errorf("output does not mention %q (on a line of its own):\n%s", want, out)
				}
			}
		})
	}
}

func TestCLICheckMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.yaml")
	out, code := meshlettest.Exec(t, "check", "-config", path)
	if code == 0 {
		t.Fatalf("exit 0 for a missing file:\n%s", out)
	}
	assertNoCrash(t, out)
	if !strings.Contains(out, path) {
		t.Errorf("error does not name the file %s:\n%s", path, out)
	}
}

func TestCLIConfigFromEnv(t *testing.T) {
	path := meshlettest.WriteTemp(t, "meshlet.yaml", "service:\n  name: web\n")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, meshlettest.Bin(), "check")
	cmd.Env = append(os.Environ(), "MESHLET_CONFIG="+path)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "config ok") {
		t.Fatalf("meshlet check with MESHLET_CONFIG: %v\n%s", err, out)
	}
}

func TestCLIVersion(t *testing.T) {
	out, code := meshlettest.Exec(t, "version")
	if code != 0 {
		t.Fatalf("exit code %d:\n%s", code, out)
	}
	re := regexp.MustCompile(`^meshlet \S+ ` + regexp.QuoteMeta(runtime.Version()) + `( commit ([0-9a-f]{12})(-dirty)?)?\n?$`)
	m := re.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("version output %q does not match %s", out, re)
	}
	// The test binary is built without -ldflags, and with Go's VCS stamp only where GOFLAGS allows it: a commit,
	// when printed, is this checkout's HEAD.
	if m[2] != "" {
		head, err := exec.Command("git", "rev-parse", "HEAD").Output()
		if err == nil && !strings.HasPrefix(string(head), m[2]) {
			t.Errorf("version output %q: commit %q, want HEAD %s", out, m[2], strings.TrimSpace(string(head)))
		}
	}
}

func TestCLIUnknownCommand(t *testing.T) {
	out, code := meshlettest.Exec(t, "frobnicate")
	if code == 0 {
		t.Fatalf("unknown subcommand exited 0:\n%s", out)
	}
	assertNoCrash(t, out)
	if !strings.Contains(out, "frobnicate") {
		t.Errorf("error does not name the unknown command:\n%s", out)
	}
}

// TestCLIRunAddressInUse starts meshlet with one of its listen addresses taken: it must exit non-zero, name the
// address, and not panic.
func TestCLIRunAddressInUse(t *testing.T) {
	for _, field := range []string{"inbound", "upstream", "outbound", "admin"} {
		t.Run(field, func(t *testing.T) {
			busy, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer busy.Close()
			addr := busy.Addr().String()
			cfg := e2eConfig{Name: "web", Address: "127.0.0.1:1", InboundListen: meshlettest.FreeAddr(t), Admin: meshlettest.FreeAddr(t),
				OutboundListen: meshlettest.FreeAddr(t),
				Upstreams:      []e2eUpstream{{Name: "api", Listen: meshlettest.FreeAddr(t), Endpoints: []string{"127.0.0.1:2"}}}}
			switch field {
			case "inbound":
				cfg.InboundListen = addr
			case "upstream":
				cfg.Upstreams[0].Listen = addr
			case "outbound":
				cfg.OutboundListen = addr
			case "admin":
				cfg.Admin = addr
			}
			p := meshlettest.Launch(t, cfg.yaml())
			code := p.Wait(t, 15*time.Second)
			out := p.Log()
			if code == 0 {
				t.Errorf("exit code 0 with %s listen address in use", field)
			}
			assertNoCrash(t, out)
			if !strings.Contains(out, addr) {
				t.Errorf("output does not name the address %s:\n%s", addr, out)
			}
		})
	}
}

// TestCLIRunInvalidConfig: run refuses an invalid config, naming the problem.
func TestCLIRunInvalidConfig(t *testing.T) {
	p := meshlettest.Launch(t, "service:\n  name: web\nupstreams:\n  - name: api\n    listen: nonsense\n")
	code := p.Wait(t, 15*time.Second)
	out := p.Log()
	if code == 0 {
		t.Error("exit code 0 for an invalid config")
	}
	assertNoCrash(t, out)
	if !strings.Contains(out, "upstreams[0].listen") {
		t.Errorf("output does not name upstreams[0].listen:\n%s", out)
	}
}

// TestCLIEnvOverrides: MESHLET_ADMIN_LISTEN replaces admin.listen and MESHLET_LOG_LEVEL replaces log.level.
func TestCLIEnvOverrides(t *testing.T) {
	fileAdmin, envAdmin := meshlettest.FreeAddr(t), meshlettest.FreeAddr(t)
	t.Setenv("MESHLET_ADMIN_LISTEN", envAdmin)
	t.Setenv("MESHLET_LOG_LEVEL", "error")
	cfg := e2eConfig{Name: "web", Admin: fileAdmin, Upstreams: []e2eUpstream{{Name: "api", Listen: meshlettest.FreeAddr(t),
		Endpoints: []string{"127.0.0.1:1"}}}}
	p := meshlettest.Start(t, envAdmin, cfg.yaml())
	if _, err := http.Get("http://" + fileAdmin + "/live"); err == nil {
		t.Errorf("admin also listening on the file's address %s", fileAdmin)
	}
	if out := p.Log(); strings.Contains(out, `"level":"INFO"`) {
		t.Errorf("MESHLET_LOG_LEVEL=error, yet INFO lines were logged:\n%s", out)
	}
}
