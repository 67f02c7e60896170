package main_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"meshlet.dev/meshlet/internal/meshlettest"
)

// selfSigned writes a certificate for 127.0.0.1 and its key into dir and returns a pool that trusts it.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "meshlet-webhook"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	c, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(c)
	return certFile, keyFile, pool
}

// TestCLIWebhook runs `meshlet webhook` over TLS, posts an AdmissionReview for a pod and expects a JSON patch that
// adds the native sidecar; SIGTERM stops it with exit 0.
func TestCLIWebhook(t *testing.T) {
	cert, key, pool := selfSigned(t, t.TempDir())
	addr := meshlettest.FreeAddr(t)
	w := startWebhook(t, "webhook", "-listen", addr, "-tls-cert", cert, "-tls-key", key, "-image", goldenImage)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	waitHealthy(t, client, addr, w)
	patch, paths := admit(t, client, addr, `{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"web-5f-","labels":{"app":"web"},
		"annotations":{"meshlet.dev/upstreams":"api:9001"}},"spec":{"containers":[{"name":"web","image":"web:1","ports":[{"containerPort":8080}]}]}}`)
	if v := paths["/spec/initContainers"]; !strings.Contains(v, `"name":"meshlet"`) || !strings.Contains(v, `"restartPolicy":"Always"`) ||
		!strings.Contains(v, goldenImage) {
		t.Errorf("patch lacks the native sidecar: %s", patch)
	}
	if v := paths["/metadata/annotations"]; !strings.Contains(v, `"prometheus.io/scrape":"true"`) || !strings.Contains(v, `"meshlet.dev/upstreams":"api:9001"`) {
		t.Errorf("annotations patch: %s", v)
	}
	// The app container gets the preStop hook that drains the sidecar (issue 12), and nothing else.
	if v, want := goldenTokens(t, paths["/spec/containers"]+paths["/spec/initContainers"]), `[{"image":"web:1","lifecycle":{"preStop":{"httpGet":{"httpHeaders":[{"name":"X-Meshlet-Drain-Token","value":"`+goldenDrainToken+`"}],"path":"/drain","port":15000}}},"name":"web","ports":[{"containerPort":8080}]}]`; !strings.HasPrefix(v, want) {
		t.Errorf("app containers patched to %s, want %s", v, want)
	}

	if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.done:
		if w.err != nil {
			t.Fatalf("exit: %v", w.err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("webhook did not stop on SIGTERM")
	}
	if !bytes.Contains([]byte(w.out.String()), []byte(`"msg":"pod injected"`)) {
		t.Errorf("no log line for the injection:\n%s", w.out.String())
	}
	if out, code := meshlettest.Exec(t, "webhook", "-image", "x"); code != 2 || !strings.Contains(out, "-tls-cert, -tls-key and -image") {
		t.Errorf("without a certificate: exit %d, %s", code, out)
	}
	if out, code := meshlettest.Exec(t, "webhook", "-image", "x", "-tls-cert", "/nonexistent", "-tls-key", "/nonexistent"); code != 1 || !strings.Contains(out, "cannot load the serving certificate") {
		t.Errorf("missing certificate files: exit %d, %s", code, out)
	}
}

// webhookProc is a `meshlet webhook` process of a test: done is closed when it has exited, with err.
type webhookProc struct {
	cmd  *exec.Cmd
	out  meshlettest.SyncBuffer
	done chan struct{}
	err  error
}

// startWebhook runs meshlet with args (webhook ...) until the test ends (SIGKILL then, and reaped); its output is
// logged when the test fails.
func startWebhook(t *testing.T, args ...string) *webhookProc {
	t.Helper()
	w := &webhookProc{cmd: exec.Command(meshlettest.Bin(), args...), done: make(chan struct{})}
	w.cmd.Stdout, w.cmd.Stderr = &w.out, &w.out
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		w.err = w.cmd.Wait()
		close(w.done)
	}()
	t.Cleanup(func() {
		w.cmd.Process.Signal(syscall.SIGKILL)
		select {
		case <-w.done:
		case <-time.After(5 * time.Second):
		}
		if t.Failed() {
			t.Logf("webhook %q output:\n%s", args, w.out.String())
		}
	})
	return w
}

// waitHealthy polls GET /healthz of the webhook at addr until it answers 200; it fails at once if the process
// exits.
func waitHealthy(t *testing.T, client *http.Client, addr string, w *webhookProc) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-w.done:
			t.Fatalf("webhook exited: %v", w.err)
		default:
		}
		resp, err := client.Get("https://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("webhook not healthy: %v", err)
		}
		time.Sleep(20 * time.Millisecond) // poll until it listens
	}
}

// admit posts an AdmissionReview (CREATE, namespace shop) of pod to the webhook at addr, expects it allowed with a
// JSON patch, and returns the patch and its values by path.
func admit(t *testing.T, client *http.Client, addr, pod string) (patch []byte, paths map[string]string) {
	t.Helper()
	review := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1",
		"kind":{"group":"","version":"v1","kind":"Pod"},"namespace":"shop","operation":"CREATE","object":` + pod + `}}`
	resp, err := client.Post("https://"+addr+"/inject", "application/json", strings.NewReader(review))
	if err != nil {
		t.Fatal(err)
	}
	var ar struct {
		Response struct {
			UID       string
			Allowed   bool
			PatchType string
			Patch     []byte
		}
	}
	err = json.NewDecoder(resp.Body).Decode(&ar)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%d %v", resp.StatusCode, err)
	}
	r := ar.Response
	if r.UID != "u-1" || !r.Allowed || r.PatchType != "JSONPatch" {
		t.Fatalf("response %+v", r)
	}
	var ops []struct {
		Op, Path string
		Value    json.RawMessage
	}
	if err := json.Unmarshal(r.Patch, &ops); err != nil {
		t.Fatalf("patch %s: %v", r.Patch, err)
	}
	paths = map[string]string{}
	for _, op := range ops {
		paths[op.Path] = string(op.Value)
	}
	return r.Patch, paths
}
