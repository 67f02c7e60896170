package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"meshlet.dev/meshlet/mtls"
)

func TestNginxConfig(t *testing.T) {
	for _, tc := range []struct {
		p          protocol
		want, not  []string
		listenLine string
	}{
		{protoHTTP1, []string{"proxy_pass http://backend;", "proxy_http_version 1.1;", `proxy_set_header Connection "";`}, []string{"grpc_pass", "http2"}, "listen 127.0.0.1:8001;"},
		{protoH2C, []string{"proxy_pass http://backend;", "proxy_http_version 1.1;"}, []string{"grpc_pass"}, "listen 127.0.0.1:8001 http2;"},
		{protoGRPC, []string{"grpc_pass grpc://backend;"}, []string{"proxy_pass"}, "listen 127.0.0.1:8001 http2;"},
	} {
		t.Run(string(tc.p), func(t *testing.T) {
			dir := t.TempDir()
			c := nginxConfig{protocol: tc.p, dir: dir, listen: "127.0.0.1:8001", backend: "127.0.0.1:9001"}
			nginxCheck(t, c, append(tc.want, tc.listenLine, "worker_processes 1;", "access_log off;",
				"error_log "+dir+"/error.log", "server 127.0.0.1:9001;", "keepalive 256;", "daemon off;"),
				append(tc.not, "ssl"))
		})
	}
}

// TestNginxTLSConfig checks the configs of the nginx mTLS pair: A reaches B over TLS 1.3 with the client
// certificate, verifying B's; B asks for the client certificate. nginx -t (when nginx is installed) loads the
// certificates meshlet certs would make.
func TestNginxTLSConfig(t *testing.T) {
	certs := t.TempDir()
	ca, err := mtls.NewCA("bench.mesh", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteCA(certs); err != nil {
		t.Fatal(err)
	}
	for _, svc := range []string{"bench-client", "bench-backend"} {
		cert, key, err := ca.Issue(mtls.ID{TrustDomain: "bench.mesh", Namespace: "default", Datacenter: "dc1", Service: svc},
			time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if err := mtls.WriteLeaf(certs, svc, cert, key); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name      string
		c         nginxConfig
		want, not []string
	}{
		{"A http1", nginxConfig{protocol: protoHTTP1, tlsOut: true},
			[]string{"listen 127.0.0.1:8001;", "proxy_pass https://backend;", "proxy_http_version 1.1;", "proxy_ssl_protocols TLSv1.3;",
				"proxy_ssl_certificate " + certs + "/bench-client.crt;", "proxy_ssl_certificate_key " + certs + "/bench-client.key;",
				"proxy_ssl_trusted_certificate " + certs + "/ca.crt;", "proxy_ssl_verify on;", "proxy_ssl_name bench-backend;"},
			[]string{"grpc_", "ssl_verify_client", " ssl;"}},
		{"A grpc", nginxConfig{protocol: protoGRPC, tlsOut: true},
			[]string{"listen 127.0.0.1:8001 http2;", "grpc_pass grpcs://backend;", "grpc_ssl_certificate " + certs + "/bench-client.crt;",
				"grpc_ssl_verify on;", "grpc_ssl_name bench-backend;"},
			[]string{"proxy_pass", "proxy_ssl", "ssl_verify_client"}},
		{"B http1", nginxConfig{protocol: protoHTTP1, tlsIn: true},
			[]string{"listen 127.0.0.1:8001 ssl;", "ssl_protocols TLSv1.3;", "ssl_certificate " + certs + "/bench-backend.crt;",
				"ssl_client_certificate " + certs + "/ca.crt;", "ssl_verify_client on;", "proxy_pass http://backend;"},
			[]string{"proxy_ssl", "https://"}},
		{"B grpc", nginxConfig{protocol: protoGRPC, tlsIn: true},
			[]string{"listen 127.0.0.1:8001 ssl http2;", "ssl_verify_client on;", "grpc_pass grpc://backend;"},
			[]string{"grpc_ssl", "grpcs://"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.c.dir, tc.c.listen, tc.c.backend, tc.c.tls = dir, "127.0.0.1:8001", "127.0.0.1:9001", certs
			nginxCheck(t, tc.c, tc.want, tc.not)
		})
	}
}

// nginxCheck checks that c's text holds every string of want and none of not, and that nginx -t takes it when
// nginx is installed.
func nginxCheck(t *testing.T, c nginxConfig, want, not []string) {
	t.Helper()
	text := c.text()
	for _, s := range want {
		if !strings.Contains(text, s) {
			t.Errorf("config lacks %q:\n%s", s, text)
		}
	}
	for _, s := range not {
		if strings.Contains(text, s) {
			t.Errorf("config has %q:\n%s", s, text)
		}
	}
	bin, err := exec.LookPath("nginx")
	if err != nil {
		return // nginx -t needs nginx; the bench skips its paths without it
	}
	path := filepath.Join(c.dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-t", "-p", c.dir, "-c", path, "-e", filepath.Join(c.dir, "error.log")).CombinedOutput(); err != nil {
		t.Errorf("nginx -t: %v\n%s", err, out)
	}
}

func TestParseProcPIDs(t *testing.T) {
	got, err := parsePIDs("4242 4243 \n")
	if err != nil || len(got) != 2 || got[0] != 4242 || got[1] != 4243 {
		t.Errorf("parsePIDs = %v, %v", got, err)
	}
	if _, err := parsePIDs("12 x"); err == nil {
		t.Error("parsePIDs(\"12 x\"): no error")
	}
	ppid, err := parsePPID("4243 (nginx: worker) S 4242 4242 1 0 -1")
	if err != nil || ppid != 4242 {
		t.Errorf("parsePPID = %d, %v; want 4242", ppid, err)
	}
	if kids, err := childPIDs(os.Getpid()); err != nil || len(kids) != 0 {
		t.Errorf("childPIDs(self) = %v, %v; want none", kids, err)
	}
}

func TestPlanPinning(t *testing.T) {
	if p, why := planPinning([]int{0}); p.enabled() || why == "" {
		t.Errorf("one CPU: %+v, %q; want nothing pinned, with a reason", p, why)
	}
	p, why := planPinning([]int{0, 2, 3})
	if why != "" || cpuList(p.proxy) != "3" || cpuList(p.bench) != "0,2" {
		t.Errorf("three CPUs: %+v, %q; want proxies on 3, bench on 0,2", p, why)
	}
}

func TestCompareNginx(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	path := func(k pathKind, addedP50 float64, cpuPer1k ...float64) *pathResult {
		r := &pathResult{Protocol: "http1", Path: string(k), AddedP50us: f(addedP50), Throughput: &throughputStats{Requests: 1000}}
		for _, c := range cpuPer1k {
			r.Meshlets = append(r.Meshlets, &meshletStats{RSSLoadKiB: 1, CPUPer1k: c})
		}
		return r
	}
	rep := &report{Results: []*pathResult{
		path(pathNginx, 100, 0.010),
		path(pathOne, 150, 0.025),
		path(pathTwoTLS, 300, 0.030, 0.020),
		path(pathNginxTLS, 200, 0.015, 0.010),
	}}
	rep.compareNginx()
	if len(rep.VsNginx) != 1 {
		t.Fatalf("VsNginx = %+v, want one figure", rep.VsNginx)
	}
	g := rep.VsNginx[0]
	if g.NginxCPUus != 10 || g.OneCPUus != 25 || g.MeshCPUus != 50 || *g.OneCPURatio != 2.5 || *g.MeshCPURatio != 5 ||
		*g.OneP50Ratio != 1.5 || *g.MeshP50Ratio != 3 {
		t.Errorf("figure %+v", g)
	}
	if g.NginxMeshCPUus != 25 || *g.NginxMeshCPURatio != 2.5 || *g.MeshVsNginxMeshCPU != 2 ||
		g.NginxMeshAddedP50us != 200 || *g.NginxMeshP50Ratio != 2 || *g.MeshVsNginxMeshP50us != 1.5 {
		t.Errorf("nginx mesh figures %+v", g)
	}
	var out strings.Builder
	writeVsNginx(&out, rep)
	if !strings.Contains(out.String(), "2 nginx mTLS") || !strings.Contains(out.String(), "2.50") {
		t.Errorf("report lacks the nginx mesh path:\n%s", out.String())
	}
	if v := verdict(g.OneP50Ratio, targetOneVsNginx); v != "1.50 (ok ≤2)" {
		t.Errorf("verdict = %q", v)
	}
	if v := verdict(g.MeshP50Ratio, targetMeshVsNginx); v != "3.00 (OVER 2.5)" {
		t.Errorf("verdict = %q", v)
	}
}

func TestScaleArithmetic(t *testing.T) {
	if got := perItemKiB(20000, 24000, 1000); got != 4 {
		t.Errorf("perItemKiB = %v, want 4", got)
	}
	if got := perItemKiB(20000, 20500, 0); got != 0 {
		t.Errorf("perItemKiB with no item = %v, want 0", got)
	}
	for _, tc := range []struct {
		f    scaleFigure
		want string
	}{
		{scaleFigure{Value: 4, Target: 4}, "PASS"},
		{scaleFigure{Value: 4.1, Target: 4}, "FAIL"},
		{scaleFigure{Value: 30}, "-"},
		{scaleFigure{Value: 1, Target: 4, Err: "x"}, "NOT MEASURED"},
	} {
		if got := tc.f.result(); got != tc.want {
			t.Errorf("%+v: result %q, want %q", tc.f, got, tc.want)
		}
	}
}

func TestScaleOnlyFlag(t *testing.T) {
	o, err := parseFlags([]string{"-meshlet", os.Args[0], "-scale", "-scale-only", "idle,endpoint"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.scaleOnly) != 2 || !o.scaleOnly["idle"] || !o.scaleOnly["endpoint"] {
		t.Fatalf("scaleOnly = %v, want idle and endpoint", o.scaleOnly)
	}
	if _, err := parseFlags([]string{"-meshlet", os.Args[0], "-scale", "-scale-only", "idle,bogus"}, io.Discard); err == nil ||
		!strings.Contains(err.Error(), `"bogus"`) {
		t.Fatalf("an unknown measurement: err %v, want one naming it", err)
	}
}
