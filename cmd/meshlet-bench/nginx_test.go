package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
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
			text := c.text()
			for _, s := range append(tc.want, tc.listenLine, "worker_processes 1;", "access_log off;",
				"error_log "+dir+"/error.log", "server 127.0.0.1:9001;", "keepalive 256;", "daemon off;") {
				if !strings.Contains(text, s) {
					t.Errorf("config lacks %q:\n%s", s, text)
				}
			}
			for _, s := range tc.not {
				if strings.Contains(text, s) {
					t.Errorf("config has %q:\n%s", s, text)
				}
			}
			bin, err := exec.LookPath("nginx")
			if err != nil {
				return // nginx -t needs nginx; the bench skips its path without it
			}
			path := filepath.Join(dir, "nginx.conf")
			if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(bin, "-t", "-p", dir, "-c", path, "-e", filepath.Join(dir, "error.log")).CombinedOutput(); err != nil {
				t.Errorf("nginx -t: %v\n%s", err, out)
			}
		})
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
