package e2e_test

// End-to-end mutual TLS tests (issue 5, file certificates): real meshlet processes with certificates made by
// `meshlet certs` (and, for the odd ones, by the mtls package), real clients and apps on loopback.
//
//	app → meshlet web (upstream, peer: sidecar) ══ mTLS ══▶ meshlet api (inbound, tls.mode) → app server

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"meshlet.dev/meshlet/internal/meshlettest"
	"meshlet.dev/meshlet/mtls"
	"meshlet.dev/meshlet/proxy"
)

// mtlsTrustDomain is the trust domain of every CA `meshlet certs` makes in these tests.
const mtlsTrustDomain = "example.mesh"

// mtlsCerts creates a CA with `meshlet certs ca` in a new directory and issues a certificate for each service
// with `meshlet certs issue`. It returns the directory.
func mtlsCerts(t testing.TB, services ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "certs")
	if out, code := meshlettest.Exec(t, "certs", "ca", "-dir", dir, "-trust-domain", mtlsTrustDomain); code != 0 {
		t.Fatalf("meshlet certs ca: exit %d\n%s", code, out)
	}
	for _, s := range services {
		mtlsIssue(t, dir, s)
	}
	return dir
}

// mtlsIssue runs `meshlet certs issue` for service into dir (writing dir/service.crt and .key).
func mtlsIssue(t testing.TB, dir, service string) {
	t.Helper()
	out, code := meshlettest.Exec(t, "certs", "issue", "-dir", dir, "-service", service)
	if code != 0 {
		t.Fatalf("meshlet certs issue -service %s: exit %d\n%s", service, code, out)
	}
	want := fmt.Sprintf("spiffe://%s/ns/default/dc/dc1/svc/%s", mtlsTrustDomain, service)
	if !strings.Contains(out, want) {
		t.Fatalf("meshlet certs issue -service %s: output does not name %s:\n%s", service, want, out)
	}
}

// mtlsLeaf reads the leaf certificate in path.
func mtlsLeaf(t testing.TB, path string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// mtlsWriteOdd writes dir/name.crt and .key for service signed by ca (LoadCA of a `meshlet certs` directory,
// or a foreign mtls.NewCA), valid from notBefore to notAfter.
func mtlsWriteOdd(t testing.TB, ca *mtls.CA, dir, name, service string, notBefore, notAfter time.Time) {
	t.Helper()
	cert, key, err := ca.Issue(mtls.ServiceID(mtls.TrustDomainOf(ca.Cert), "", "", service), notBefore, notAfter)
	if err != nil {
		t.Fatal(err)
	}
	if err := mtls.WriteLeaf(dir, name, cert, key); err != nil {
		t.Fatal(err)
	}
}

// mtlsUpstream is one upstream of an mtlsSidecar; every one has its own listener and one endpoint.
type mtlsUpstream struct {
	name, service, listen, protocol, peer, endpoint, tlsMode string
}

// mtlsSidecar is a meshlet config with a tls section.
type mtlsSidecar struct {
	name, app, protocol string // service
	inbound, mode       string // inbound.listen and inbound.tls.mode ("" leaves them out)
	allow               []string
	allowPlaintext      bool   // inbound.tls.allow_plaintext
	certDir, cert       string // tls files: certDir/cert.crt, certDir/cert.key, certDir/ca.crt; "" no tls
	reload              string // tls.reload_interval
	upstreams           []mtlsUpstream
	admin               string
	logLevel            string // log.level; "" leaves the default
}

// yaml renders c (meshlettest.File.YAML).
func (c mtlsSidecar) yaml() string {
	y, err := c.file().YAML()
	if err != nil {
		panic(err) // the config types always marshal
	}
	return y
}

// file is c as the config types.
func (c mtlsSidecar) file() meshlettest.File {
	var f meshlettest.File
	f.Service.Name, f.Service.Address, f.Service.Protocol = c.name, c.app, c.protocol
	if c.inbound != "" {
		f.Inbound.Listen, f.Inbound.TLS.Mode, f.Inbound.TLS.AllowPlaintext = c.inbound, c.mode, c.allowPlaintext
		if len(c.allow) > 0 {
			f.Inbound.TLS.Allow = c.allow
		}
	}
	if c.certDir != "" {
		f.TLS.CertFile = filepath.Join(c.certDir, c.cert+".crt")
		f.TLS.KeyFile = filepath.Join(c.certDir, c.cert+".key")
		f.TLS.CAFile = filepath.Join(c.certDir, "ca.crt")
		f.TLS.ReloadInterval = mustDuration(c.reload, "")
	}
	for _, u := range c.upstreams {
		up := proxy.UpstreamConfig{Name: u.name, Listen: u.listen, Endpoints: []string{}, Service: u.service,
			Protocol: u.protocol, Peer: u.peer, TLS: proxy.UpstreamTLSConfig{Mode: u.tlsMode}}
		if u.endpoint != "" {
			up.Endpoints = []string{u.endpoint}
		}
		f.Upstreams = append(f.Upstreams, up)
	}
	f.Log.Level = c.logLevel
	f.Admin.Listen = c.admin
	f.Shutdown = meshlettest.Shutdown{DrainDelay: meshlettest.Duration(0), DrainTimeout: 5 * time.Second}
	return f
}

// mtlsStart starts c (admin on a free port if unset) and fails the test if meshlet reports a data race.
func mtlsStart(t testing.TB, c mtlsSidecar) *meshlettest.Proc {
	t.Helper()
	if c.admin == "" {
		c.admin = meshlettest.FreeAddrs(t, 1)[0]
	}
	p := meshlettest.Start(t, c.admin, c.yaml())
	grpcFailOnRace(t, c.name, p)
	return p
}

// mtlsStartIn is meshlettest.Start for a config with paths relative to dir: meshlet runs with dir as its working
// directory, as in the issue's example.
func mtlsStartIn(t testing.TB, dir, admin, config string) *meshlettest.Proc {
	t.Helper()
	path := meshlettest.WriteConfig(t, config)
	cmd := exec.Command(meshlettest.Bin(), "run", "-config", path)
	cmd.Dir = dir
	p := meshlettest.Command(t, path, cmd)
	p.Admin = admin
	if err := p.WaitReady(context.Background(), 15*time.Second); err != nil {
		t.Fatalf("meshlet not ready: %v\nlog:\n%s", err, p.Log())
	}
	grpcFailOnRace(t, "api", p)
	return p
}

// mtlsApp is an HTTP app (HTTP/1.1 and h2c) that answers "<service> <path> <proto>", tunnels Upgrade requests
// like upgradeEcho, and records the paths it saw and the connections it accepted.
type mtlsApp struct {
	addr  string
	conns atomic.Int64
	mu    sync.Mutex
	seen  map[string]int
}

func mtlsStartApp(t testing.TB, service string) *mtlsApp {
	t.Helper()
	a := &mtlsApp{seen: map[string]int{}}
	ws := upgradeEcho(t)
	srv := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.seen[r.URL.Path]++
		a.mu.Unlock()
		if r.Header.Get("Upgrade") != "" {
			ws.ServeHTTP(w, r)
			return
		}
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%s %s %s", service, r.URL.Path, r.Proto)
	}), true, &a.conns)
	a.addr = meshlettest.HostOf(srv)
	return a
}

// saw returns how many requests for path the app received.
func (a *mtlsApp) saw(path string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.seen[path]
}

// mtlsClientTLS is the TLS of a test client that calls an inbound listener directly: the client certificate
// certDir/name.crt (none if name is ""), TLS 1.3, ALPN alpn. It checks nothing about the server: tests look at
// the served certificate themselves.
func mtlsClientTLS(t testing.TB, certDir, name, alpn string) *tls.Config {
	t.Helper()
	cfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13, NextProtos: []string{alpn}}
	if name != "" {
		cert, err := tls.LoadX509KeyPair(filepath.Join(certDir, name+".crt"), filepath.Join(certDir, name+".key"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg
}

// mtlsProbe sends GET path over TLS with cfg and returns the status (meshlettest.TLSGet).
func mtlsProbe(addr, path string, cfg *tls.Config) (int, error) {
	code, _, err := meshlettest.TLSGet(addr, path, cfg)
	return code, err
}

// mtlsServedSerial completes a handshake with addr and returns the serial of the leaf the server presented.
func mtlsServedSerial(t testing.TB, addr string, cfg *tls.Config) *big.Int {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("TLS handshake with %s: %v", addr, err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber
}

// mtlsWaitMetric polls until metric name with labels reaches at least want and returns its value.
func mtlsWaitMetric(t testing.TB, p *meshlettest.Proc, name string, labels map[string]string, want float64) float64 {
	t.Helper()
	got := p.WaitMetric(t, 10*time.Second, name, labels, want)
	if got < want {
		t.Fatalf("%s%v = %v, want >= %v\n%s", name, labels, got, want, p.Metrics(t).Lines(name))
	}
	return got
}

func mtlsFailures(direction, reason string) map[string]string {
	return map[string]string{"direction": direction, "reason": reason}
}

// TestMTLSIssueExample runs the issue's commands and config as written (relative paths, from the directory the
// certificates are in), then calls api from a web sidecar over mutual TLS with HTTP/1.1, h2c from the app, gRPC
// unary and bidi streaming, an Upgrade tunnel and raw TCP, and shows that the hop is TLS: plaintext is refused.
func TestMTLSIssueExample(t *testing.T) {
	work := t.TempDir()
	for _, args := range [][]string{
		{"certs", "ca", "-dir", "certs", "-trust-domain", "example.mesh"},
		{"certs", "issue", "-dir", "certs", "-service", "api"},
		{"certs", "issue", "-dir", "certs", "-service", "web"},
	} {
		cmd := exec.Command(meshlettest.Bin(), args...)
		cmd.Dir = work
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("meshlet %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, f := range []string{"ca.crt", "ca.key", "api.crt", "api.key", "web.crt", "web.key"} {
		if _, err := os.Stat(filepath.Join(work, "certs", f)); err != nil {
			t.Fatalf("certs/%s: %v", f, err)
		}
	}
	id, err := mtls.CertID(mtlsLeaf(t, filepath.Join(work, "certs", "api.crt")))
	if err != nil || id.String() != "spiffe://example.mesh/ns/default/dc/dc1/svc/api" {
		t.Fatalf("certs/api.crt identity %v %v", id, err)
	}

	app := mtlsStartApp(t, "api")
	backend := grpcStartBackend(t)
	tcpAppAddr := meshlettest.StartTCPBackend(t, tcpApp)
	a := meshlettest.FreeAddrs(t, 11)
	in, inGRPC, inTCP := a[0], a[1], a[2]
	lHTTP, lGRPC, lTCP := a[3], a[4], a[5]

	// The issue's api config, ports aside, with paths relative to the working directory.
	issueYAML := func(app, protocol, inbound, admin string) string {
		return fmt.Sprintf(`service: {name: api, address: %s, protocol: %s}
inbound: {listen: %s, tls: {mode: mtls}}
tls: {cert_file: certs/api.crt, key_file: certs/api.key, ca_file: certs/ca.crt}
admin: {listen: %s}
`, app, protocol, inbound, admin)
	}
	api := mtlsStartIn(t, work, a[6], issueYAML(app.addr, "http", in, a[6]))
	mtlsStartIn(t, work, a[7], issueYAML(backend.addr, "grpc", inGRPC, a[7]))
	mtlsStartIn(t, work, a[8], issueYAML(tcpAppAddr, "tcp", inTCP, a[8]))
	web := mtlsStart(t, mtlsSidecar{name: "web", certDir: filepath.Join(work, "certs"), cert: "web", admin: a[9],
		logLevel: "debug",
		upstreams: []mtlsUpstream{
			{name: "api", listen: lHTTP, peer: "sidecar", endpoint: in, tlsMode: "mtls"},
			{name: "api-grpc", service: "api", listen: lGRPC, protocol: "grpc", peer: "sidecar", endpoint: inGRPC},
			{name: "api-tcp", service: "api", listen: lTCP, protocol: "tcp", peer: "sidecar", endpoint: inTCP},
		}})

	t.Run("http1", func(t *testing.T) {
		code, body := meshlettest.GetBody(t, meshlettest.H1Client(nil), "http://"+lHTTP+"/hello")
		if code != http.StatusOK || body != "api /hello HTTP/1.1" {
			t.Fatalf("got %d %q, want 200 %q", code, body, "api /hello HTTP/1.1")
		}
	})
	t.Run("h2c from the app", func(t *testing.T) {
		resp, err := meshlettest.H2CClient(nil).Get("http://" + lHTTP + "/h2c")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 || string(b) != "api /h2c HTTP/1.1" {
			t.Fatalf("got %s %s %q", resp.Proto, resp.Status, b)
		}
	})
	t.Run("grpc unary", func(t *testing.T) {
		c := testpb.NewTestServiceClient(grpcDial(t, lGRPC, ""))
		callID := grpcNewCallID()
		body := grpcPattern(5, 64<<10)
		resp, err := c.UnaryCall(grpcCallCtx(t, callID, ""), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}})
		if err != nil {
			t.Fatal(err)
		}
		if sha(resp.GetPayload().GetBody()) != sha(body) {
			t.Fatalf("unary echo: %d bytes, want %d", len(resp.GetPayload().GetBody()), len(body))
		}
		if n := backend.call(callID).invocations(); n != 1 {
			t.Fatalf("backend saw %d invocations, want 1", n)
		}
	})
	t.Run("grpc bidi", func(t *testing.T) {
		c := testpb.NewTestServiceClient(grpcDial(t, lGRPC, ""))
		stream, err := c.FullDuplexCall(grpcCallCtx(t, grpcNewCallID(), ""))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			body := grpcIndexed(i, 1000*i)
			if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: body}}); err != nil {
				t.Fatalf("send %d: %v", i, err)
			}
			resp, err := stream.Recv()
			if err != nil {
				t.Fatalf("recv %d: %v", i, err)
			}
			if sha(resp.GetPayload().GetBody()) != sha(body) {
				t.Fatalf("message %d: got %d bytes, want %d", i, len(resp.GetPayload().GetBody()), len(body))
			}
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != io.EOF {
			t.Fatalf("end of stream: %v, want EOF", err)
		}
	})
	t.Run("upgrade", func(t *testing.T) {
		conn, br, resp := wsHandshake(t, lHTTP)
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("got %s, want 101", resp.Status)
		}
		if line, err := br.ReadString('\n'); err != nil || line != "hello from server /ws\n" {
			t.Fatalf("server-initiated message: %q %v", line, err)
		}
		for i := range 3 {
			msg := fmt.Sprintf("message %d %s\n", i, strings.Repeat("x", i*5000))
			io.WriteString(conn, msg)
			if got, err := br.ReadString('\n'); err != nil || got != strings.ToUpper(msg) {
				t.Fatalf("echo %d: got %d bytes %v", i, len(got), err)
			}
		}
	})
	t.Run("tcp", func(t *testing.T) {
		c := meshlettest.DialHeld(t, lTCP)
		defer c.Close()
		c.SetDeadline(time.Now().Add(15 * time.Second))
		br := bufio.NewReader(c)
		if banner, err := br.ReadString('\n'); err != nil || banner != "220 banner\n" {
			t.Fatalf("banner: %q %v", banner, err)
		}
		data := randBytes(55, 256<<10)
		errc := make(chan error, 1)
		go func() {
			_, err := c.Write(append([]byte("echo\n"), data...))
			if err == nil {
				err = c.(*net.TCPConn).CloseWrite()
			}
			errc <- err
		}()
		got, err := io.ReadAll(br)
		if werr := <-errc; werr != nil {
			t.Fatal(werr)
		}
		if err != nil || sha(got) != sha(data) {
			t.Fatalf("echo: got %d bytes (%v), want %d byte-exact", len(got), err, len(data))
		}
	})
	t.Run("TLS 1.3 with ALPN h2 and http/1.1", func(t *testing.T) {
		for _, alpn := range []string{"h2", "http/1.1"} {
			c, err := tls.Dial("tcp", in, mtlsClientTLS(t, filepath.Join(work, "certs"), "web", alpn))
			if err != nil {
				t.Fatal(err)
			}
			st := c.ConnectionState()
			c.Close()
			if st.Version != tls.VersionTLS13 || st.NegotiatedProtocol != alpn {
				t.Errorf("negotiated %s ALPN %q, want TLS 1.3 ALPN %q", tls.VersionName(st.Version),
					st.NegotiatedProtocol, alpn)
			}
		}
		old := mtlsClientTLS(t, filepath.Join(work, "certs"), "web", "h2")
		old.MinVersion, old.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
		if c, err := tls.Dial("tcp", in, old); err == nil {
			c.Close()
			t.Fatal("a TLS 1.2 client was accepted with the default min_version 1.3")
		}
	})
	t.Run("plaintext refused", func(t *testing.T) {
		before := api.MetricSum(t, "meshlet_tls_handshake_failures_total", mtlsFailures("inbound", "plaintext"))
		resp, body := mtlsPlaintext(t, in, "/plaintext")
		if resp != "" {
			t.Fatalf("a plaintext request to the mtls inbound got an answer: %q %q", resp, body)
		}
		mtlsWaitMetric(t, api, "meshlet_tls_handshake_failures_total", mtlsFailures("inbound", "plaintext"),
			before+1)
		if n := app.saw("/plaintext"); n != 0 {
			t.Fatalf("the app saw the plaintext request %d times", n)
		}
	})
	if v := web.MetricSum(t, "meshlet_tls_handshake_failures_total", map[string]string{"direction": "outbound"}); v != 0 {
		t.Errorf("web counted %v outbound handshake failures, want 0\n%s", v,
			web.Metrics(t).Lines("meshlet_tls_handshake_failures_total"))
	}
}

// mtlsPlaintext sends a plaintext HTTP/1.1 request to addr and returns the status line it got ("" if the
// connection was closed without an answer) and what followed.
func mtlsPlaintext(t testing.TB, addr, path string) (string, string) {
	t.Helper()
	c := meshlettest.DialHeld(t, addr)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: api\r\n\r\n", path)
	b, err := io.ReadAll(c)
	if meshlettest.IsTimeout(err) {
		t.Fatalf("plaintext request: no answer and no close within 10s")
	}
	if len(b) == 0 {
		return "", ""
	}
	line, rest, _ := strings.Cut(string(b), "\r\n")
	return line, rest
}

// TestMTLSRefusals: callers the inbound listener must refuse, each counted with its reason, and a server whose
// certificate is not the expected service, refused by the calling sidecar.
func TestMTLSRefusals(t *testing.T) {
	dir := mtlsCerts(t, "api", "web", "billing")
	ca, err := mtls.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	odd := t.TempDir()
	foreign, err := mtls.NewCA(mtlsTrustDomain, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	mtlsWriteOdd(t, foreign, odd, "foreign", "web", now.Add(-time.Minute), now.Add(time.Hour))
	mtlsWriteOdd(t, ca, odd, "expired", "web", now.Add(-2*time.Hour), now.Add(-time.Hour))
	mtlsWriteNoSPIFFE(t, ca, odd, "nospiffe")

	app := mtlsStartApp(t, "api")
	a := meshlettest.FreeAddrs(t, 2)
	api := mtlsStart(t, mtlsSidecar{name: "api", app: app.addr, inbound: a[0], mode: "mtls", certDir: dir, cert: "api",
		admin: a[1]})

	t.Run("control: web is accepted", func(t *testing.T) {
		code, err := mtlsProbe(a[0], "/control", mtlsClientTLS(t, dir, "web", "http/1.1"))
		if err != nil || code != http.StatusOK {
			t.Fatalf("got %d %v, want 200", code, err)
		}
	})
	for _, tc := range []struct {
		name, certDir, cert, reason string
	}{
		{"another CA", odd, "foreign", mtls.ReasonUnknownCA},
		{"expired", odd, "expired", mtls.ReasonExpired},
		{"no client certificate", "", "", mtls.ReasonNoCert},
		{"no SPIFFE ID", odd, "nospiffe", mtls.ReasonBadIdentity},
	} {
		t.Run(tc.name, func(t *testing.T) {
			labels := mtlsFailures("inbound", tc.reason)
			before := api.MetricSum(t, "meshlet_tls_handshake_failures_total", labels)
			path := "/refused/" + tc.reason
			code, err := mtlsProbe(a[0], path, mtlsClientTLS(t, tc.certDir, tc.cert, "http/1.1"))
			if err == nil {
				t.Fatalf("the handshake was accepted: status %d", code)
			}
			t.Logf("client saw: %v", err)
			deadline := time.Now().Add(5 * time.Second)
			for api.MetricSum(t, "meshlet_tls_handshake_failures_total", labels) < before+1 {
				if time.Now().After(deadline) {
					t.Fatalf("meshlet_tls_handshake_failures_total%v did not count the refusal\n%s", labels,
						api.Metrics(t).Lines("meshlet_tls_handshake_failures_total"))
				}
				time.Sleep(20 * time.Millisecond)
			}
			if n := app.saw(path); n != 0 {
				t.Fatalf("the app saw the refused request %d times", n)
			}
		})
	}

	t.Run("outbound: server is another service", func(t *testing.T) {
		billingApp := mtlsStartApp(t, "billing")
		b := meshlettest.FreeAddrs(t, 4)
		mtlsStart(t, mtlsSidecar{name: "billing", app: billingApp.addr, inbound: b[0], certDir: dir, cert: "billing",
			admin: b[1]})
		web := mtlsStart(t, mtlsSidecar{name: "web", certDir: dir, cert: "web", admin: b[2],
			upstreams: []mtlsUpstream{{name: "api", listen: b[3], peer: "sidecar", endpoint: b[0]}}})
		code, body := meshlettest.GetBody(t, meshlettest.H1Client(nil), "http://"+b[3]+"/to-billing")
		if code != http.StatusBadGateway {
			t.Fatalf("got %d %q, want 502", code, body)
		}
		mtlsWaitMetric(t, web, "meshlet_tls_handshake_failures_total", mtlsFailures("outbound", "bad_identity"), 1)
		if n, c := billingApp.saw("/to-billing"), billingApp.conns.Load(); n != 0 || c != 0 {
			t.Fatalf("billing's app saw %d requests on %d connections, want none", n, c)
		}
	})
}

// mtlsWriteNoSPIFFE writes dir/name.crt and .key: a client certificate signed by ca with no URI SAN at all.
func mtlsWriteNoSPIFFE(t testing.TB, ca *mtls.CA, dir, name string) {
	t.Helper()
	cert, key, err := ca.Issue(mtls.ServiceID(mtlsTrustDomain, "", "", "web"), time.Now().Add(-time.Minute),
		time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := *cert
	tmpl.URIs = nil
	tmpl.Subject = pkix.Name{CommonName: "web"}
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := mtls.WriteLeaf(dir, name, plain, key); err != nil {
		t.Fatal(err)
	}
}

// TestMTLSAllow: inbound.tls.allow [web] lets web through and refuses batch with 403 / PERMISSION_DENIED,
// counted by source, before anything reaches the app.
func TestMTLSAllow(t *testing.T) {
	dir := mtlsCerts(t, "api", "web", "batch")
	app := mtlsStartApp(t, "api")
	backend := grpcStartBackend(t)
	a := meshlettest.FreeAddrs(t, 4)
	inHTTP, inGRPC := a[0], a[1]
	apiHTTP := mtlsStart(t, mtlsSidecar{name: "api", app: app.addr, inbound: inHTTP, mode: "mtls",
		allow: []string{"web"}, certDir: dir, cert: "api", admin: a[2]})
	apiGRPC := mtlsStart(t, mtlsSidecar{name: "api", app: backend.addr, protocol: "grpc", inbound: inGRPC,
		allow: []string{"web"}, certDir: dir, cert: "api", admin: a[3]})
	callers := map[string][2]string{} // caller → its HTTP and gRPC listeners
	for _, caller := range []string{"web", "batch"} {
		l := meshlettest.FreeAddrs(t, 3)
		mtlsStart(t, mtlsSidecar{name: caller, certDir: dir, cert: caller, admin: l[2], upstreams: []mtlsUpstream{
			{name: "api", listen: l[0], peer: "sidecar", endpoint: inHTTP},
			{name: "api-grpc", service: "api", listen: l[1], protocol: "grpc", peer: "sidecar", endpoint: inGRPC},
		}})
		callers[caller] = [2]string{l[0], l[1]}
	}

	for _, tc := range []struct {
		caller string
		status int
		code   codes.Code
	}{
		{"web", http.StatusOK, codes.OK},
		{"batch", http.StatusForbidden, codes.PermissionDenied},
	} {
		t.Run(tc.caller, func(t *testing.T) {
			path := "/from/" + tc.caller
			code, body := meshlettest.GetBody(t, meshlettest.H1Client(nil), "http://"+callers[tc.caller][0]+path)
			if code != tc.status {
				t.Fatalf("HTTP: got %d %q, want %d", code, body, tc.status)
			}
			callID := grpcNewCallID()
			c := testpb.NewTestServiceClient(grpcDial(t, callers[tc.caller][1], ""))
			_, err := c.UnaryCall(grpcCallCtx(t, callID, ""), &testpb.SimpleRequest{ResponseSize: 10})
			if got := status.Code(err); got != tc.code {
				t.Fatalf("gRPC: got %v (%v), want %v", got, err, tc.code)
			}
			want := 1
			if tc.code != codes.OK {
				want = 0
				if !strings.Contains(status.Convert(err).Message(), "batch") {
					t.Errorf("gRPC message %q does not name the caller", status.Convert(err).Message())
				}
			}
			if n := app.saw(path); n != want {
				t.Errorf("the HTTP app saw %s %d times, want %d", path, n, want)
			}
			if n := backend.call(callID).invocations(); n != want {
				t.Errorf("the gRPC app saw the call %d times, want %d", n, want)
			}
		})
	}
	for name, p := range map[string]*meshlettest.Proc{"http": apiHTTP, "grpc": apiGRPC} {
		if v := p.MetricSum(t, "meshlet_authz_denied_total", map[string]string{"source": "batch"}); v != 1 {
			t.Errorf("api (%s): meshlet_authz_denied_total{source=batch} = %v, want 1", name, v)
		}
		if v := p.MetricSum(t, "meshlet_authz_denied_total", map[string]string{"source": "web"}); v != 0 {
			t.Errorf("api (%s): meshlet_authz_denied_total{source=web} = %v, want 0", name, v)
		}
	}
}

// TestMTLSPermissive: a permissive inbound takes mutual TLS and plaintext callers, and counts the plaintext ones.
func TestMTLSPermissive(t *testing.T) {
	dir := mtlsCerts(t, "api", "web")
	app := mtlsStartApp(t, "api")
	a := meshlettest.FreeAddrs(t, 5)
	api := mtlsStart(t, mtlsSidecar{name: "api", app: app.addr, inbound: a[0], mode: "permissive", certDir: dir,
		cert: "api", admin: a[1]})
	mtlsStart(t, mtlsSidecar{name: "web", certDir: dir, cert: "web", admin: a[2], upstreams: []mtlsUpstream{
		{name: "api", listen: a[3], peer: "sidecar", endpoint: a[0]},
		{name: "api-plain", service: "api", listen: a[4], peer: "sidecar", endpoint: a[0], tlsMode: "disabled"},
	}})
	const plain = "meshlet_tls_plaintext_connections_total"

	if code, body := meshlettest.GetBody(t, meshlettest.H1Client(nil), "http://"+a[3]+"/mtls"); code != http.StatusOK {
		t.Fatalf("mTLS caller: got %d %q", code, body)
	}
	if v := api.MetricSum(t, plain, nil); v != 0 {
		t.Fatalf("%s = %v after an mTLS call, want 0", plain, v)
	}
	if code, body := meshlettest.GetBody(t, meshlettest.H1Client(nil), "http://"+a[0]+"/direct"); code != http.StatusOK ||
		body != "api /direct HTTP/1.1" {
		t.Fatalf("plaintext client: got %d %q", code, body)
	}
	mtlsWaitMetric(t, api, plain, nil, 1)
	if code, body := meshlettest.GetBody(t, meshlettest.H1Client(nil), "http://"+a[4]+"/plain-sidecar"); code != http.StatusOK {
		t.Fatalf("sidecar with upstream tls.mode disabled: got %d %q", code, body)
	}
	mtlsWaitMetric(t, api, plain, nil, 2)
	for _, p := range []string{"/mtls", "/direct", "/plain-sidecar"} {
		if n := app.saw(p); n != 1 {
			t.Errorf("the app saw %s %d times, want 1", p, n)
		}
	}
}

// TestMTLSRotation replaces api's certificate files while connections are open: they keep working, new
// handshakes get the new certificate, and a broken file is refused while the old certificate keeps serving.
func TestMTLSRotation(t *testing.T) {
	dir := mtlsCerts(t, "api", "web")
	app := mtlsStartApp(t, "api")
	a := meshlettest.FreeAddrs(t, 4)
	api := mtlsStart(t, mtlsSidecar{name: "api", app: app.addr, inbound: a[0], certDir: dir, cert: "api",
		reload: "200ms", admin: a[1]})
	mtlsStart(t, mtlsSidecar{name: "web", certDir: dir, cert: "web", admin: a[2],
		upstreams: []mtlsUpstream{{name: "api", listen: a[3], peer: "sidecar", endpoint: a[0]}}})
	rotations := func(result string) float64 {
		return api.MetricSum(t, "meshlet_tls_rotations_total", map[string]string{"result": result})
	}
	probe := mtlsClientTLS(t, dir, "web", "h2")
	old := mtlsLeaf(t, filepath.Join(dir, "api.crt")).SerialNumber
	if got := mtlsServedSerial(t, a[0], probe); got.Cmp(old) != 0 {
		t.Fatalf("api serves serial %v, want %v (api.crt)", got, old)
	}

	// An HTTP/2 connection of our own to api's inbound, and web's pooled connections, open across the rotation.
	var dials atomic.Int64
	var p http.Protocols
	p.SetHTTP2(true)
	h2 := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Protocols: &p,
		TLSClientConfig: mtlsClientTLS(t, dir, "web", "h2"), DialContext: meshlettest.CountingDialer(&dials)}}
	viaWeb := meshlettest.H1Client(nil)
	h2Get := func(path string) *big.Int {
		t.Helper()
		resp, err := h2.Get("https://" + a[0] + path)
		if err != nil {
			t.Fatalf("GET %s over the open HTTP/2 connection: %v", path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
			t.Fatalf("GET %s: %s %s", path, resp.Proto, resp.Status)
		}
		return resp.TLS.PeerCertificates[0].SerialNumber
	}
	h2Get("/before")
	if code, body := meshlettest.GetBody(t, viaWeb, "http://"+a[3]+"/before-web"); code != http.StatusOK {
		t.Fatalf("via web: %d %q", code, body)
	}
	successes := rotations("success")

	mtlsIssue(t, dir, "api")
	renewed := mtlsLeaf(t, filepath.Join(dir, "api.crt")).SerialNumber
	if renewed.Cmp(old) == 0 {
		t.Fatal("certs issue wrote the same serial")
	}
	mtlsWaitMetric(t, api, "meshlet_tls_rotations_total", map[string]string{"result": "success"}, successes+1)
	if got := mtlsServedSerial(t, a[0], probe); got.Cmp(renewed) != 0 {
		t.Fatalf("a new handshake after the rotation got serial %v, want the new %v (old %v)", got, renewed, old)
	}
	if got := h2Get("/after"); got.Cmp(old) != 0 || dials.Load() != 1 {
		t.Fatalf("the open HTTP/2 connection: serial %v (want the old %v), %d dials (want 1)", got, old, dials.Load())
	}
	if code, body := meshlettest.GetBody(t, viaWeb, "http://"+a[3]+"/after-web"); code != http.StatusOK {
		t.Fatalf("via web after the rotation: %d %q", code, body)
	}

	// A broken key: refused, counted, the renewed certificate keeps serving.
	successes, failures := rotations("success"), rotations("failure")
	tmp := filepath.Join(dir, "api.key.garbage")
	if err := os.WriteFile(tmp, []byte("-----BEGIN EC PRIVATE KEY-----\ngarbage\n-----END EC PRIVATE KEY-----\n"),
		0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "api.key")); err != nil {
		t.Fatal(err)
	}
	mtlsWaitMetric(t, api, "meshlet_tls_rotations_total", map[string]string{"result": "failure"}, failures+1)
	if v := rotations("success"); v != successes {
		t.Fatalf("rotations{result=success} went from %v to %v on a garbage key", successes, v)
	}
	if got := mtlsServedSerial(t, a[0], probe); got.Cmp(renewed) != 0 {
		t.Fatalf("after a broken key file, api serves serial %v, want %v", got, renewed)
	}
	if code, body := meshlettest.GetBody(t, viaWeb, "http://"+a[3]+"/after-garbage"); code != http.StatusOK {
		t.Fatalf("via web after the broken key: %d %q", code, body)
	}
	if code, _ := api.AdminGet(t, "/ready"); code != http.StatusOK {
		t.Fatalf("/ready %d after a refused reload, want 200", code)
	}
}

// TestMTLSExpiredLeaf: meshlet with an expired leaf, and a leaf that expires while meshlet runs.
func TestMTLSExpiredLeaf(t *testing.T) {
	dir := mtlsCerts(t)
	ca, err := mtls.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	app := mtlsStartApp(t, "api")

	t.Run("expired at start", func(t *testing.T) {
		// An expired leaf loads (checked as of its last valid second): meshlet starts, is not ready and says why,
		// so that a renewal of the files (cert-manager) brings it back without a crash loop.
		now := time.Now()
		mtlsWriteOdd(t, ca, dir, "api-expired", "api", now.Add(-30*time.Second), now.Add(-2*time.Second))
		a := meshlettest.FreeAddrs(t, 2)
		p := meshlettest.Launch(t, mtlsSidecar{name: "api", app: app.addr, inbound: a[0], certDir: dir,
			cert: "api-expired", admin: a[1]}.yaml())
		p.Admin = a[1]
		deadline := time.Now().Add(15 * time.Second)
		for {
			select {
			case <-p.Exited():
				t.Fatalf("meshlet with an expired certificate exited (%v); it should run not ready:\n%s", p.WaitErr(), p.Log())
			default:
			}
			if resp, err := http.Get("http://" + a[1] + "/ready"); err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 503 && strings.Contains(string(b), "expired") && strings.Contains(string(b), "svc/api") {
					break
				}
				if resp.StatusCode == 200 {
					t.Fatal("ready with an expired certificate")
				}
			}
			if time.Now().After(deadline) {
				t.Fatal("/ready never said the certificate expired")
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	t.Run("expires while running", func(t *testing.T) {
		now := time.Now()
		mtlsWriteOdd(t, ca, dir, "api-short", "api", now.Add(-time.Minute), now.Add(4*time.Second))
		a := meshlettest.FreeAddrs(t, 2)
		p := meshlettest.Launch(t, mtlsSidecar{name: "api", app: app.addr, inbound: a[0], certDir: dir,
			cert: "api-short", admin: a[1]}.yaml())
		p.Admin = a[1]
		grpcFailOnRace(t, "api", p)
		deadline := time.Now().Add(20 * time.Second)
		var code int
		var body string
		for {
			select {
			case <-p.Exited():
				t.Fatalf("meshlet exited: %v", p.WaitErr())
			default:
			}
			if resp, err := http.Get("http://" + a[1] + "/ready"); err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				code, body = resp.StatusCode, string(b)
				if code == http.StatusServiceUnavailable && strings.Contains(body, "certificate") {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("/ready never failed on the expired certificate: last %d %q", code, body)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if !strings.Contains(body, "spiffe://example.mesh/ns/default/dc/dc1/svc/api") || !strings.Contains(body, "expired") {
			t.Errorf("/ready body %q does not name the expired certificate", body)
		}
		if v := p.MetricSum(t, "meshlet_tls_certificate_expiry_seconds", nil); v >= 0 {
			t.Errorf("meshlet_tls_certificate_expiry_seconds = %v after expiry, want negative", v)
		}
	})
}

// TestMTLSCheck: `meshlet check` reports TLS config mistakes with their field paths.
func TestMTLSCheck(t *testing.T) {
	dir := mtlsCerts(t, "api")
	tlsSection := fmt.Sprintf("tls: {cert_file: %s, key_file: %s, ca_file: %s}\n", filepath.Join(dir, "api.crt"),
		filepath.Join(dir, "api.key"), filepath.Join(dir, "ca.crt"))
	base := "service: {name: api, address: 127.0.0.1:8080}\nadmin: {listen: 127.0.0.1:15001}\n"
	for _, tc := range []struct {
		name, config string
		want         []string // substrings of the output; none: the config is valid
	}{
		{"valid", base + "inbound: {listen: 127.0.0.1:21001, tls: {mode: mtls, allow: [web, " +
			"spiffe://example.mesh/ns/default/dc/dc1/svc/batch]}}\n" + tlsSection, nil},
		{"mtls without tls section", base + "inbound: {listen: 127.0.0.1:21001, tls: {mode: mtls}}\n",
			[]string{"inbound.tls.mode: mtls needs the tls section"}},
		{"permissive without tls section", base + "inbound: {listen: 127.0.0.1:21001, tls: {mode: permissive}}\n",
			[]string{"inbound.tls.mode: permissive needs the tls section"}},
		{"bad modes", base + "inbound: {listen: 127.0.0.1:21001, tls: {mode: strict}}\n" + tlsSection +
			"upstreams:\n  - {name: db, listen: 127.0.0.1:9001, endpoints: [127.0.0.1:5432], tls: {mode: permissive}}\n",
			[]string{`inbound.tls.mode: "strict" must be mtls, permissive or disabled`,
				`upstreams[0].tls.mode: "permissive" must be mtls or disabled`}},
		{"bad allow entries", base + "inbound: {listen: 127.0.0.1:21001, tls: {allow: [web, Web_1, \"\"]}}\n" +
			tlsSection, []string{`inbound.tls.allow[1]: "Web_1" must be a service name or a spiffe:// ID`,
			`inbound.tls.allow[2]: "" must be`}},
		{"upstream mtls without tls section", base + "upstreams:\n  - {name: db, listen: 127.0.0.1:9001, " +
			"endpoints: [127.0.0.1:5432], peer: sidecar, tls: {mode: mtls}}\n",
			[]string{"upstreams[0].tls.mode: mtls needs the tls section"}},
		{"allow without tls section", base + "inbound: {listen: 127.0.0.1:21001, tls: {allow: [web]}}\n",
			[]string{"inbound.tls.allow: needs the tls section"}},
		{"allow with a malformed SPIFFE ID", base + "inbound: {listen: 127.0.0.1:21001, tls: {allow: " +
			"[\"spiffe://example.mesh/web\"]}}\n" + tlsSection, []string{"inbound.tls.allow[0]:"}},
		{"tls without ca_file", base + fmt.Sprintf("tls: {cert_file: %s, key_file: %s}\n",
			filepath.Join(dir, "api.crt"), filepath.Join(dir, "api.key")),
			[]string{"tls.ca_file: required"}},
		{"bad min_version and reload_interval", base + tlsSection[:len(tlsSection)-2] +
			", min_version: \"1.1\", reload_interval: -1s}\n",
			[]string{`tls.min_version: "1.1" must be 1.2 or 1.3`, "tls.reload_interval: must not be negative"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "meshlet.yaml")
			if err := os.WriteFile(path, []byte(tc.config), 0o600); err != nil {
				t.Fatal(err)
			}
			out, code := meshlettest.Exec(t, "check", "-config", path)
			if tc.want == nil {
				if code != 0 {
					t.Fatalf("exit %d for a valid config:\n%s\n%s", code, out, tc.config)
				}
				return
			}
			if code == 0 {
				t.Fatalf("exit 0, want an error naming %q; config:\n%s", tc.want, tc.config)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output does not contain %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestMTLSHTTP1Guarded calls an inbound listener over mutual TLS with HTTP/1.1 (ALPN http/1.1), as a peer that
// does not speak HTTP/2 would: inbound.tls.allow still applies (the caller's identity comes through the HTTP/1.1
// guard), and a smuggling shape is refused with 400 and the connection closed.
func TestMTLSHTTP1Guarded(t *testing.T) {
	dir := mtlsCerts(t, "api", "web", "batch")
	app := mtlsStartApp(t, "api")
	a := meshlettest.FreeAddrs(t, 2)
	m := mtlsStart(t, mtlsSidecar{name: "api", app: app.addr, inbound: a[0], mode: "mtls", allow: []string{"web"},
		certDir: dir, cert: "api", admin: a[1]})
	for _, tc := range []struct {
		caller string
		want   int
	}{{"web", http.StatusOK}, {"batch", http.StatusForbidden}} {
		path := "/h1/" + tc.caller
		code, err := mtlsProbe(a[0], path, mtlsClientTLS(t, dir, tc.caller, "http/1.1"))
		if err != nil || code != tc.want {
			t.Errorf("%s over HTTP/1.1: %d %v, want %d", tc.caller, code, err, tc.want)
		}
		if want := map[bool]int{true: 1, false: 0}[tc.want == http.StatusOK]; app.saw(path) != want {
			t.Errorf("the app saw %s %d times, want %d", path, app.saw(path), want)
		}
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", a[0], mtlsClientTLS(t, dir, "web", "http/1.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "POST /smuggle HTTP/1.1\r\nHost: api\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer to a smuggling shape: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("smuggling shape over mutual TLS: %d, want 400", resp.StatusCode)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Error("connection left open after the refusal")
	}
	if app.saw("/smuggle") != 0 {
		t.Error("the app received the smuggling shape")
	}
	labels := map[string]string{"direction": "inbound", "reason": "content_length_and_transfer_encoding"}
	if v := m.MetricSum(t, "meshlet_refused_requests_total", labels); v != 1 {
		t.Errorf("meshlet_refused_requests_total%v = %v, want 1", labels, v)
	}
}

// TestMTLSClientCertHeader: the app behind an mtls sidecar learns its verified caller from X-Forwarded-Client-Cert
// (By: the sidecar's identity, Hash: the SHA-256 of the caller's leaf, URI: the caller's identity), over HTTP/1.1
// and h2c from the app; one the caller forged never reaches it; the inbound requests count under the caller.
func TestMTLSClientCertHeader(t *testing.T) {
	dir := mtlsCerts(t, "api", "web")
	seen := make(chan []string, 4)
	app := meshlettest.StartBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Values("X-Forwarded-Client-Cert")
	}), true, nil)
	a := meshlettest.FreeAddrs(t, 5)
	api := mtlsStart(t, mtlsSidecar{name: "api", app: meshlettest.HostOf(app), inbound: a[0], mode: "mtls", certDir: dir,
		cert: "api", admin: a[1]})
	mtlsStart(t, mtlsSidecar{name: "web", certDir: dir, cert: "web", admin: a[2], upstreams: []mtlsUpstream{
		{name: "api", listen: a[3], peer: "sidecar", endpoint: a[0]}}})
	leaf := mtlsLeaf(t, filepath.Join(dir, "web.crt"))
	sum := sha256.Sum256(leaf.Raw)
	want := fmt.Sprintf("By=spiffe://%[1]s/ns/default/dc/dc1/svc/api;Hash=%[2]s;URI=spiffe://%[1]s/ns/default/dc/dc1/svc/web",
		mtlsTrustDomain, hex.EncodeToString(sum[:]))
	for name, c := range map[string]*http.Client{"http1": meshlettest.H1Client(nil), "h2c": meshlettest.H2CClient(nil)} {
		req, _ := http.NewRequest("GET", "http://"+a[3]+"/who", nil)
		req.Header.Set("X-Forwarded-Client-Cert", "By=spiffe://evil;URI=spiffe://example.mesh/ns/default/dc/dc1/svc/admin")
		if code, body := meshlettest.Do(t, c, req); code != 200 {
			t.Fatalf("%s: %d %q", name, code, body)
		}
		if got := <-seen; len(got) != 1 || got[0] != want {
			t.Fatalf("%s: the app saw X-Forwarded-Client-Cert %q, want only %q", name, got, want)
		}
	}
	// The inbound requests count under their caller (once done: the response may be read a moment before).
	mtlsWaitMetric(t, api, "meshlet_requests_total", map[string]string{"direction": "inbound", "caller": "web"}, 2)
}
