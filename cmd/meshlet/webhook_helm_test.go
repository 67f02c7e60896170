package main_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"meshlet.dev/meshlet/internal/helmtest"
	"meshlet.dev/meshlet/internal/meshlettest"
)

// TestHelmChartWebhook runs `meshlet webhook` as the Helm chart deploys it (deploy/helm/meshlet, certManager.enabled:
// false): with the args of its Deployment as Kubernetes passes them, the certificate of its Secret, and a client that
// trusts only the MutatingWebhookConfiguration's caBundle and calls the Service's DNS name, as the API server does.
// The webhook must accept every flag the chart writes and inject what the values say.
func TestHelmChartWebhook(t *testing.T) {
	h := helmtest.New(t)
	out := h.Template(t, "--set", "certManager.enabled=false", "--set", "sidecar.transparent=true",
		"--set", "sidecar.resources.limits.cpu=300m", "--set", "image.tag=v7.7.7")
	var (
		deploy appsv1.Deployment
		secret corev1.Secret
		mwc    admissionregistrationv1.MutatingWebhookConfiguration
	)
	for _, doc := range strings.Split(out, "\n---\n") {
		var head struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatal(err)
		}
		switch head.Kind {
		case "Deployment":
			yaml.Unmarshal([]byte(doc), &deploy)
		case "Secret":
			yaml.Unmarshal([]byte(doc), &secret)
		case "MutatingWebhookConfiguration":
			yaml.Unmarshal([]byte(doc), &mwc)
		}
	}
	if len(deploy.Spec.Template.Spec.Containers) != 1 || len(secret.Data) == 0 || len(mwc.Webhooks) == 0 {
		t.Fatalf("rendered no webhook Deployment, Secret or MutatingWebhookConfiguration:\n%s", out)
	}
	c := deploy.Spec.Template.Spec.Containers[0]
	mount := c.VolumeMounts[0].MountPath
	dir := t.TempDir()
	for _, f := range []string{"tls.crt", "tls.key"} {
		if err := os.WriteFile(filepath.Join(dir, f), secret.Data[f], 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The args as the container gets them: Kubernetes expands $(VAR) of the container's environment (it has none)
	// and turns $$ into $. The chart's own paths and port are then pointed at the test's.
	addr := meshlettest.FreeAddr(t)
	var args []string
	for _, a := range c.Args {
		if strings.Contains(strings.ReplaceAll(a, "$$", ""), "$(") {
			t.Errorf("arg %q would be expanded by Kubernetes", a)
		}
		a = strings.ReplaceAll(a, "$$", "$")
		switch {
		case strings.HasPrefix(a, "-listen="):
			a = "-listen=" + addr
		case strings.HasPrefix(a, "-tls-cert=") || strings.HasPrefix(a, "-tls-key="):
			a = strings.Replace(a, mount, dir, 1)
		}
		args = append(args, a)
	}
	if !strings.Contains(strings.Join(args, " "), "-consul=$(HOST_IP):8500") {
		t.Errorf("args %q: the sidecar's Consul address is not $(HOST_IP):8500", args)
	}
	w := startWebhook(t, args...)

	svc := mwc.Webhooks[0].ClientConfig.Service
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(mwc.Webhooks[0].ClientConfig.CABundle) {
		t.Fatal("the caBundle holds no certificate")
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: svc.Name + "." + svc.Namespace + ".svc"}}}
	waitHealthy(t, client, addr, w)
	patch, paths := admit(t, client, addr, `{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"web-5f-",
		"labels":{"app.kubernetes.io/name":"web"}},"spec":{"containers":[{"name":"web","image":"web:1","ports":[{"containerPort":8080}]}]}}`)
	init := paths["/spec/initContainers"]
	for _, want := range []string{`"image":"ghcr.io/meshlet-dev/meshlet:v7.7.7"`, `"name":"meshlet-init"`, `"cpu":"300m"`, `"restartPolicy":"Always"`} {
		if !strings.Contains(init, want) {
			t.Errorf("the injected init containers lack %s: %s", want, patch)
		}
	}
	// The webhook logs the injection after it has answered: the line may come a moment after the answer.
	logged := func() bool { return bytes.Contains([]byte(w.out.String()), []byte(`"msg":"pod injected"`)) }
	for deadline := time.Now().Add(5 * time.Second); !logged() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if !logged() {
		t.Errorf("no log line for the injection within 5 s of the answer:\n%s", w.out.String())
	}
}
