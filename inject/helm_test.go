package inject

// The Helm chart deploy/helm/meshlet, run through the real helm binary (internal/helmtest: make helm): helm lint
// --strict with each values file of testdata/helm, and helm template, whose every document is validated like the
// manifests (validateDocument: strict decoding into its k8s.io/api type) and whose wiring is checked: the webhook's
// Service, port and path, the certificate for the Service's names and its caBundle, the default image, the
// selectors, and the agreement with the kustomize base (deploy/kubernetes) where both must say the same.

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"meshlet.dev/meshlet/internal/helmtest"
)

const (
	chartNamespace = "meshlet-system" // helmtest.Template installs the release "meshlet" there, as the README does
	webhookName    = "meshlet-webhook"
	injectorName   = "meshlet-injector"
	helmValuesDir  = "testdata/helm"
)

// renderedDoc is one document of helm template's output.
type renderedDoc struct {
	gvk, name, namespace string
	raw                  []byte
}

type rendered []renderedDoc

// render runs helm template with args, validates every document against the Kubernetes schema and returns them.
func render(t *testing.T, h *helmtest.Helm, args ...string) rendered {
	t.Helper()
	out := h.Template(t, args...)
	var r rendered
	for i, doc := range splitDocuments([]byte(out)) {
		if err := validateDocument(doc, false); err != nil {
			t.Errorf("helm template %v: document %d: %v\n%s", args, i+1, err, doc)
			continue
		}
		var head struct {
			APIVersion string            `json:"apiVersion"`
			Kind       string            `json:"kind"`
			Metadata   metav1.ObjectMeta `json:"metadata"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			t.Fatal(err)
		}
		if head.Kind == "" {
			continue
		}
		r = append(r, renderedDoc{head.APIVersion + "/" + head.Kind, head.Metadata.Name, head.Metadata.Namespace, doc})
	}
	if len(r) == 0 {
		t.Fatalf("helm template %v rendered nothing", args)
	}
	return r
}

// get decodes the one document of kind gvk named name into v; it fails the test unless there is exactly one.
func (r rendered) get(t *testing.T, gvk, name string, v any) {
	t.Helper()
	var found []renderedDoc
	for _, d := range r {
		if d.gvk == gvk && d.name == name {
			found = append(found, d)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d documents %s %s, want 1 (rendered: %v)", len(found), gvk, name, r.kinds())
	}
	if err := yaml.Unmarshal(found[0].raw, v); err != nil {
		t.Fatalf("%s %s: %v", gvk, name, err)
	}
}

// kinds lists "gvk name" of every document, sorted.
func (r rendered) kinds() []string {
	var ks []string
	for _, d := range r {
		ks = append(ks, d.gvk+" "+d.name)
	}
	slices.Sort(ks)
	return ks
}

// chartAppVersion is the appVersion of Chart.yaml: the meshlet version whose image the chart runs and injects.
func chartAppVersion(t *testing.T, h *helmtest.Helm) string {
	t.Helper()
	var c struct {
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(mustRead(t, filepath.Join(h.Chart, "Chart.yaml")), &c); err != nil || c.AppVersion == "" {
		t.Fatalf("Chart.yaml appVersion: %q %v", c.AppVersion, err)
	}
	return c.AppVersion
}

// makefileImageRepo is the Makefile's IMAGE_REPO: what `make image` builds, cmd/meshlet's DefaultImageRepo (a test
// there checks both).
func makefileImageRepo(t *testing.T) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^IMAGE_REPO \?= (\S+)$`).FindSubmatch(mustRead(t, "../Makefile"))
	if m == nil {
		t.Fatal("no IMAGE_REPO in the Makefile")
	}
	return string(m[1])
}

// webhookParts are the objects that wire the webhook together, and what the chart's wiring check found.
type webhookParts struct {
	deploy    appsv1.Deployment
	container corev1.Container
	args      []string // the container's args after `webhook`
	svc       corev1.Service
	mwc       admissionregistrationv1.MutatingWebhookConfiguration
	tlsSecret string // the Secret the webhook's certificate is mounted from
}

// checkWiring checks what must hold whatever the values: every webhook of the MutatingWebhookConfiguration calls
// the Service on its port at /inject, the Service reaches the container's https port where the webhook listens,
// the selectors select the webhook's pods, which are never injected themselves, and the certificate is mounted
// where -tls-cert and -tls-key read it.
func checkWiring(t *testing.T, r rendered) webhookParts {
	t.Helper()
	var p webhookParts
	r.get(t, "apps/v1/Deployment", webhookName, &p.deploy)
	r.get(t, "v1/Service", webhookName, &p.svc)
	r.get(t, "admissionregistration.k8s.io/v1/MutatingWebhookConfiguration", injectorName, &p.mwc)
	for _, d := range r {
		if strings.HasPrefix(d.name, "meshlet-") && d.namespace != chartNamespace && d.name != injectorName && d.gvk != "v1/Namespace" {
			t.Errorf("%s %s in namespace %q, want %s", d.gvk, d.name, d.namespace, chartNamespace)
		}
	}
	pod := p.deploy.Spec.Template
	if len(pod.Spec.Containers) != 1 {
		t.Fatalf("webhook pod has %d containers", len(pod.Spec.Containers))
	}
	p.container = pod.Spec.Containers[0]
	if len(p.container.Args) == 0 || p.container.Args[0] != "webhook" {
		t.Fatalf("webhook container args %q do not run `meshlet webhook`", p.container.Args)
	}
	p.args = p.container.Args[1:]

	if len(p.svc.Spec.Ports) != 1 {
		t.Fatalf("Service ports %+v", p.svc.Spec.Ports)
	}
	sp := p.svc.Spec.Ports[0]
	if len(p.mwc.Webhooks) == 0 {
		t.Fatal("MutatingWebhookConfiguration has no webhooks")
	}
	for _, w := range p.mwc.Webhooks {
		s := w.ClientConfig.Service
		if s == nil || s.Name != p.svc.Name || s.Namespace != p.svc.Namespace || s.Path == nil || *s.Path != "/inject" ||
			s.Port == nil || *s.Port != sp.Port {
			t.Errorf("webhook %s calls %+v, want Service %s/%s port %d path /inject", w.Name, s, p.svc.Namespace, p.svc.Name, sp.Port)
		}
		if w.ClientConfig.URL != nil {
			t.Errorf("webhook %s has a URL", w.Name)
		}
		if w.SideEffects == nil || *w.SideEffects != admissionregistrationv1.SideEffectClassNone ||
			!slices.Equal(w.AdmissionReviewVersions, []string{"v1"}) {
			t.Errorf("webhook %s: sideEffects %v, admissionReviewVersions %v", w.Name, w.SideEffects, w.AdmissionReviewVersions)
		}
		if w.ObjectSelector == nil || selects(t, w.ObjectSelector, pod.Labels) {
			t.Errorf("webhook %s: objectSelector %+v selects the webhook's own pods %v", w.Name, w.ObjectSelector, pod.Labels)
		}
	}
	// Service → the container's https port, on which -listen has the webhook listen.
	var https *corev1.ContainerPort
	for i, cp := range p.container.Ports {
		if cp.Name == sp.TargetPort.String() {
			https = &p.container.Ports[i]
		}
	}
	if https == nil || sp.TargetPort.String() != "https" || sp.Port != 443 {
		t.Fatalf("Service port %+v does not reach a named container port of %+v", sp, p.container.Ports)
	}
	if want := fmt.Sprintf("-listen=:%d", https.ContainerPort); !slices.Contains(p.args, want) {
		t.Errorf("webhook args %q lack %s (the Service's target port)", p.args, want)
	}
	for _, probe := range []*corev1.Probe{p.container.ReadinessProbe, p.container.LivenessProbe} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != "/healthz" || probe.HTTPGet.Port.String() != "https" ||
			probe.HTTPGet.Scheme != corev1.URISchemeHTTPS {
			t.Errorf("probe %+v, want GET https /healthz", probe)
		}
	}
	// Selectors: the Service and the Deployment select the webhook's pods.
	if !labelsContain(pod.Labels, p.svc.Spec.Selector) || len(p.svc.Spec.Selector) == 0 {
		t.Errorf("Service selector %v does not select the pods %v", p.svc.Spec.Selector, pod.Labels)
	}
	if p.deploy.Spec.Selector == nil || !labelsContain(pod.Labels, p.deploy.Spec.Selector.MatchLabels) {
		t.Errorf("Deployment selector %+v does not select its pods %v", p.deploy.Spec.Selector, pod.Labels)
	}
	if pod.Labels["meshlet.dev/inject"] != "disabled" {
		t.Errorf("the webhook's pods are not labelled meshlet.dev/inject=disabled: %v", pod.Labels)
	}
	// The certificate: -tls-cert and -tls-key read tls.crt and tls.key of the Secret mounted read-only.
	var mount *corev1.VolumeMount
	for i, m := range p.container.VolumeMounts {
		if m.Name == "tls" {
			mount = &p.container.VolumeMounts[i]
		}
	}
	if mount == nil || !mount.ReadOnly {
		t.Fatalf("no read-only tls mount: %+v", p.container.VolumeMounts)
	}
	for _, f := range []string{"-tls-cert=" + mount.MountPath + "/tls.crt", "-tls-key=" + mount.MountPath + "/tls.key"} {
		if !slices.Contains(p.args, f) {
			t.Errorf("webhook args %q lack %s", p.args, f)
		}
	}
	for _, v := range pod.Spec.Volumes {
		if v.Name == "tls" && v.Secret != nil {
			p.tlsSecret = v.Secret.SecretName
		}
	}
	if p.tlsSecret == "" {
		t.Errorf("no Secret volume tls: %+v", pod.Spec.Volumes)
	}
	// RBAC: the webhook's ServiceAccount, with no token (it calls no API); no Role, since it needs none.
	if pod.Spec.AutomountServiceAccountToken == nil || *pod.Spec.AutomountServiceAccountToken {
		t.Error("the webhook's pods mount a service account token")
	}
	for _, d := range r {
		if strings.HasPrefix(d.gvk, "rbac.authorization.k8s.io/") {
			t.Errorf("%s %s: the webhook reads nothing from the API and needs no RBAC rules", d.gvk, d.name)
		}
	}
	return p
}

// selects reports whether the label selector sel selects an object with labels.
func selects(t *testing.T, sel *metav1.LabelSelector, l map[string]string) bool {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatalf("selector %+v: %v", sel, err)
	}
	return s.Matches(labels.Set(l))
}

func labelsContain(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// checkCertManager checks the cert-manager mode: the Certificate covers the Service's DNS names and is written to the
// Secret the webhook mounts, its issuer chain exists, and cert-manager's CA injector fills the caBundle from it.
func checkCertManager(t *testing.T, r rendered, p webhookParts) {
	t.Helper()
	var cert struct {
		Spec struct {
			SecretName string   `json:"secretName"`
			DNSNames   []string `json:"dnsNames"`
			IssuerRef  struct{ Name, Kind string }
		}
	}
	r.get(t, "cert-manager.io/v1/Certificate", webhookName, &cert)
	if cert.Spec.SecretName != p.tlsSecret {
		t.Errorf("Certificate writes %q, the webhook mounts %q", cert.Spec.SecretName, p.tlsSecret)
	}
	if want := serviceDNSNames(p.svc); !slices.Equal(cert.Spec.DNSNames, want) {
		t.Errorf("Certificate dnsNames %q, want the Service's %q", cert.Spec.DNSNames, want)
	}
	var issuer struct {
		Spec struct{ CA struct{ SecretName string } }
	}
	r.get(t, "cert-manager.io/v1/Issuer", cert.Spec.IssuerRef.Name, &issuer)
	var ca struct {
		Spec struct{ SecretName, CommonName string }
	}
	r.get(t, "cert-manager.io/v1/Certificate", issuer.Spec.CA.SecretName, &ca)
	if got, want := p.mwc.Annotations["cert-manager.io/inject-ca-from"], chartNamespace+"/"+webhookName; got != want {
		t.Errorf("cert-manager.io/inject-ca-from %q, want %q", got, want)
	}
	for _, w := range p.mwc.Webhooks {
		if len(w.ClientConfig.CABundle) != 0 {
			t.Errorf("webhook %s has a caBundle of its own with cert-manager", w.Name)
		}
	}
	for _, d := range r {
		if d.gvk == "v1/Secret" {
			t.Errorf("Secret %s rendered with cert-manager, which writes the certificate", d.name)
		}
	}
}

func serviceDNSNames(svc corev1.Service) []string {
	n := svc.Name + "." + svc.Namespace + ".svc"
	return []string{n, n + ".cluster.local"}
}

// TestHelmChartLint: helm lint --strict passes with the default values and with each good values file of
// testdata/helm, and fails with each bad one (the values schema is checked, not only the templates).
func TestHelmChartLint(t *testing.T) {
	h := helmtest.New(t)
	files, _ := filepath.Glob(filepath.Join(helmValuesDir, "*.yaml"))
	if len(files) < 8 {
		t.Fatalf("only %d values files in %s", len(files), helmValuesDir)
	}
	for _, f := range append([]string{""}, files...) {
		args := []string{"lint", "--strict", h.Chart}
		if f != "" {
			args = append(args, "-f", f)
		}
		out, stderr, err := h.Run(t, args...)
		bad := strings.HasPrefix(filepath.Base(f), "bad-")
		switch {
		case !bad && (err != nil || !strings.Contains(out, "1 chart(s) linted, 0 chart(s) failed")):
			t.Errorf("helm lint %s: %v\n%s%s", f, err, out, stderr)
		case bad && err == nil:
			t.Errorf("helm lint %s passed:\n%s", f, out)
		}
	}
}

// TestHelmChartDefault renders the default values: the webhook from this version's image injecting that image, the
// cert-manager certificate, the opt-in namespace selector, a PodDisruptionBudget, and nothing of the example.
func TestHelmChartDefault(t *testing.T) {
	h := helmtest.New(t)
	r := render(t, h)
	p := checkWiring(t, r)
	checkCertManager(t, r, p)

	wantKinds := []string{
		"admissionregistration.k8s.io/v1/MutatingWebhookConfiguration meshlet-injector",
		"apps/v1/Deployment meshlet-webhook",
		"cert-manager.io/v1/Certificate meshlet-webhook",
		"cert-manager.io/v1/Certificate meshlet-webhook-ca",
		"cert-manager.io/v1/Issuer meshlet-selfsigned",
		"cert-manager.io/v1/Issuer meshlet-webhook-ca",
		"policy/v1/PodDisruptionBudget meshlet-webhook",
		"v1/Service meshlet-webhook",
		"v1/ServiceAccount meshlet-webhook",
	}
	if got := r.kinds(); !slices.Equal(got, wantKinds) {
		t.Errorf("rendered\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(wantKinds, "\n"))
	}

	// The image: this version's (the Makefile's IMAGE_REPO, tagged with the chart's appVersion), for the webhook and
	// as what it injects. cmd/meshlet's TestHelmChartDefaultImage checks that it is defaultImage() of that version.
	image := makefileImageRepo(t) + ":" + chartAppVersion(t, h)
	if p.container.Image != image {
		t.Errorf("webhook image %q, want %q", p.container.Image, image)
	}
	wantArgs := []string{"-listen=:8443", "-tls-cert=/etc/meshlet-webhook/tls/tls.crt", "-tls-key=/etc/meshlet-webhook/tls/tls.key",
		"-image=" + image, "-consul=$$(HOST_IP):8500", "-admin-port=15000", "-inbound-port=21000", "-transparent=false",
		"-outbound-port=15001", "-proxy-uid=5995", "-classic=false",
		"-proxy-cpu-request=50m", "-proxy-memory-request=32Mi", "-proxy-memory-limit=128Mi"}
	if !slices.Equal(p.args, wantArgs) {
		t.Errorf("webhook args\n%q\nwant\n%q", p.args, wantArgs)
	}

	// Selectors: namespaces labelled meshlet.dev/inject=enabled, then pods labelled so elsewhere.
	if len(p.mwc.Webhooks) != 2 {
		t.Fatalf("%d webhooks, want 2", len(p.mwc.Webhooks))
	}
	ns, pod := p.mwc.Webhooks[0], p.mwc.Webhooks[1]
	if want := (&metav1.LabelSelector{MatchLabels: map[string]string{"meshlet.dev/inject": "enabled"}}); !reflect.DeepEqual(ns.NamespaceSelector, want) {
		t.Errorf("namespaceSelector %+v, want %+v", ns.NamespaceSelector, want)
	}
	for labels, want := range map[string]bool{"meshlet.dev/inject=enabled": true, "meshlet.dev/inject=disabled": false, "": false} {
		l := map[string]string{}
		if k, v, ok := strings.Cut(labels, "="); ok {
			l[k] = v
		}
		if got := selects(t, ns.NamespaceSelector, l); got != want {
			t.Errorf("namespace webhook selects a namespace labelled %q: %v", labels, got)
		}
	}
	if !selects(t, ns.ObjectSelector, nil) || selects(t, ns.ObjectSelector, map[string]string{"meshlet.dev/inject": "disabled"}) {
		t.Errorf("namespace webhook objectSelector %+v", ns.ObjectSelector)
	}
	for _, nsName := range []string{"kube-system", chartNamespace} {
		if selects(t, pod.NamespaceSelector, map[string]string{"kubernetes.io/metadata.name": nsName}) {
			t.Errorf("the pod webhook selects the namespace %s", nsName)
		}
	}
	if !selects(t, pod.NamespaceSelector, map[string]string{"kubernetes.io/metadata.name": "shop"}) ||
		selects(t, pod.NamespaceSelector, map[string]string{"kubernetes.io/metadata.name": "shop", "meshlet.dev/inject": "enabled"}) {
		t.Errorf("the pod webhook's namespaceSelector %+v should select the namespaces the other does not", pod.NamespaceSelector)
	}
	if !selects(t, pod.ObjectSelector, map[string]string{"meshlet.dev/inject": "enabled"}) || selects(t, pod.ObjectSelector, nil) {
		t.Errorf("pod webhook objectSelector %+v", pod.ObjectSelector)
	}
	for _, w := range p.mwc.Webhooks {
		if w.FailurePolicy == nil || *w.FailurePolicy != admissionregistrationv1.Fail {
			t.Errorf("webhook %s failurePolicy %v, want Fail", w.Name, w.FailurePolicy)
		}
	}

	var sa corev1.ServiceAccount
	r.get(t, "v1/ServiceAccount", p.deploy.Spec.Template.Spec.ServiceAccountName, &sa)
	if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
		t.Error("the ServiceAccount mounts its token")
	}
	var pdb policyv1.PodDisruptionBudget
	r.get(t, "policy/v1/PodDisruptionBudget", webhookName, &pdb)
	if pdb.Spec.Selector == nil || !reflect.DeepEqual(pdb.Spec.Selector.MatchLabels, p.deploy.Spec.Selector.MatchLabels) {
		t.Errorf("PodDisruptionBudget selector %+v, want the Deployment's %+v", pdb.Spec.Selector, p.deploy.Spec.Selector)
	}
}

// TestHelmChartSelfSigned renders certManager.enabled: false: no cert-manager resources; a kubernetes.io/tls Secret,
// mounted by the webhook, whose certificate covers the Service's names and is signed by the CA that every webhook's
// caBundle holds.
func TestHelmChartSelfSigned(t *testing.T) {
	h := helmtest.New(t)
	r := render(t, h, "-f", filepath.Join(helmValuesDir, "selfsigned.yaml"))
	p := checkWiring(t, r)
	for _, d := range r {
		if strings.HasPrefix(d.gvk, "cert-manager.io/") {
			t.Errorf("%s %s rendered without cert-manager", d.gvk, d.name)
		}
	}
	if a, ok := p.mwc.Annotations["cert-manager.io/inject-ca-from"]; ok {
		t.Errorf("cert-manager.io/inject-ca-from: %s without cert-manager", a)
	}
	var secret corev1.Secret
	r.get(t, "v1/Secret", p.tlsSecret, &secret)
	if secret.Type != corev1.SecretTypeTLS || secret.Namespace != chartNamespace {
		t.Errorf("Secret %s: type %q namespace %q", secret.Name, secret.Type, secret.Namespace)
	}
	pair, err := tls.X509KeyPair(secret.Data["tls.crt"], secret.Data["tls.key"])
	if err != nil {
		t.Fatalf("tls.crt and tls.key: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(secret.Data["ca.crt"]) {
		t.Fatalf("ca.crt holds no certificate: %q", secret.Data["ca.crt"])
	}
	for _, w := range p.mwc.Webhooks {
		if string(w.ClientConfig.CABundle) != string(secret.Data["ca.crt"]) {
			t.Errorf("webhook %s: caBundle is not the Secret's ca.crt", w.Name)
		}
	}
	for _, name := range serviceDNSNames(p.svc) {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("the serving certificate for %s: %v", name, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "meshlet-webhook.other.svc", Roots: roots}); err == nil {
		t.Error("the serving certificate verifies for a name that is not the Service's")
	}
	if left := time.Until(leaf.NotAfter); left < 29*24*time.Hour || left > 31*24*time.Hour { // selfSigned.validityDays: 30
		t.Errorf("the serving certificate is valid until %v", leaf.NotAfter)
	}
	if block, _ := pem.Decode(secret.Data["ca.crt"]); block == nil {
		t.Error("ca.crt is not PEM")
	} else if ca, err := x509.ParseCertificate(block.Bytes); err != nil || !ca.IsCA {
		t.Errorf("ca.crt is not a CA: %v", err)
	}
}

// TestHelmChartCustomValues renders testdata/helm/custom.yaml: every value reaches its place (the images, the
// sidecar's flags, the selectors, the failure policy, the scheduling fields), with one replica and no PDB, and
// without a ServiceAccount of the chart's.
func TestHelmChartCustomValues(t *testing.T) {
	h := helmtest.New(t)
	r := render(t, h, "-f", filepath.Join(helmValuesDir, "custom.yaml"))
	p := checkWiring(t, r)
	checkCertManager(t, r, p)
	c, spec := p.container, p.deploy.Spec.Template.Spec
	if c.Image != "registry.example.com/meshlet:v9.8.7" || c.ImagePullPolicy != corev1.PullAlways {
		t.Errorf("webhook image %q %q", c.Image, c.ImagePullPolicy)
	}
	wantArgs := []string{"-listen=:8443", "-tls-cert=/etc/meshlet-webhook/tls/tls.crt", "-tls-key=/etc/meshlet-webhook/tls/tls.key",
		"-image=registry.example.com/meshlet-sidecar:v9.8.7", "-image-pull-policy=IfNotPresent", "-consul=consul-client.consul.svc:8500",
		"-admin-port=15100", "-inbound-port=21100", "-transparent=true", "-outbound-port=15101", "-proxy-uid=7000", "-classic=true",
		"-proxy-cpu-request=100m", "-proxy-memory-request=48Mi", "-proxy-cpu-limit=1", "-proxy-memory-limit=256Mi"}
	if !slices.Equal(p.args, wantArgs) {
		t.Errorf("webhook args\n%q\nwant\n%q", p.args, wantArgs)
	}
	if *p.deploy.Spec.Replicas != 1 || spec.ServiceAccountName != "injector" || spec.PriorityClassName != "system-cluster-critical" ||
		!reflect.DeepEqual(spec.ImagePullSecrets, []corev1.LocalObjectReference{{Name: "my-registry"}}) ||
		spec.NodeSelector["kubernetes.io/os"] != "linux" || len(spec.Tolerations) != 1 ||
		p.deploy.Spec.Template.Annotations["example.com/team"] != "platform" {
		t.Errorf("pod spec %+v", spec)
	}
	for _, d := range r {
		if d.gvk == "policy/v1/PodDisruptionBudget" || d.gvk == "v1/ServiceAccount" {
			t.Errorf("%s %s rendered (one replica; serviceAccount.create: false)", d.gvk, d.name)
		}
	}
	if len(p.mwc.Webhooks) != 1 { // podOptIn: false
		t.Fatalf("%d webhooks, want 1", len(p.mwc.Webhooks))
	}
	w := p.mwc.Webhooks[0]
	wantNS := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "mesh", Operator: metav1.LabelSelectorOpIn, Values: []string{"meshlet"}}}}
	if !reflect.DeepEqual(w.NamespaceSelector, wantNS) {
		t.Errorf("namespaceSelector %+v, want %+v (replaced whole, not merged with the default)", w.NamespaceSelector, wantNS)
	}
	wantObj := &metav1.LabelSelector{MatchLabels: map[string]string{"team": "payments"},
		MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "meshlet.dev/inject", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"disabled"}}}}
	if !reflect.DeepEqual(w.ObjectSelector, wantObj) {
		t.Errorf("objectSelector %+v, want %+v", w.ObjectSelector, wantObj)
	}
	if *w.FailurePolicy != admissionregistrationv1.Ignore || *w.TimeoutSeconds != 3 {
		t.Errorf("failurePolicy %v timeoutSeconds %v", *w.FailurePolicy, *w.TimeoutSeconds)
	}

	// With only image.tag set, the sidecar image follows the webhook's.
	r = render(t, h, "--set", "image.tag=v2.0.0")
	p = checkWiring(t, r)
	if img := makefileImageRepo(t) + ":v2.0.0"; p.container.Image != img || !slices.Contains(p.args, "-image="+img) {
		t.Errorf("image.tag=v2.0.0: image %q, args %q", p.container.Image, p.args)
	}
}

// TestHelmChartExample: example.enabled renders deploy/kubernetes/example (the same objects, field for field, in
// example.namespace); by default nothing of it.
func TestHelmChartExample(t *testing.T) {
	h := helmtest.New(t)
	const ns = "demo-shop" // testdata/helm/example.yaml
	r := render(t, h, "-f", filepath.Join(helmValuesDir, "example.yaml"))
	checkWiring(t, r)
	files, _ := filepath.Glob("../deploy/kubernetes/example/*.yaml")
	n := 0
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		for _, doc := range splitDocuments(mustRead(t, f)) {
			var head struct {
				APIVersion, Kind string
				Metadata         metav1.ObjectMeta
			}
			if err := yaml.Unmarshal(doc, &head); err != nil || head.Kind == "" {
				continue
			}
			gvk := head.APIVersion + "/" + head.Kind
			want, got := schemaTypes[gvk](), schemaTypes[gvk]()
			if err := yaml.Unmarshal(doc, want); err != nil {
				t.Fatal(err)
			}
			name := head.Metadata.Name
			if gvk == "v1/Namespace" {
				name = ns
				want.(*corev1.Namespace).Name = ns
			} else {
				reflect.ValueOf(want).Elem().FieldByName("Namespace").SetString(ns)
			}
			r.get(t, gvk, name, got)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s %s: the chart's example differs from %s:\n%+v\nwant\n%+v", gvk, name, f, got, want)
			}
			n++
		}
	}
	inNS := 0
	for _, d := range r {
		if d.namespace == ns || (d.gvk == "v1/Namespace" && d.name == ns) {
			inNS++
		}
	}
	if n < 5 || inNS != n {
		t.Errorf("the chart renders %d example objects, deploy/kubernetes/example has %d", inNS, n)
	}
	for _, d := range render(t, h) {
		if d.gvk == "v1/Namespace" || d.namespace != chartNamespace && d.namespace != "" {
			t.Errorf("example.enabled: false renders %s %s/%s", d.gvk, d.namespace, d.name)
		}
	}
}

// TestHelmChartMatchesKustomize: with the default values, the chart and the kustomize base deploy/kubernetes/webhook
// say the same where they must: the webhooks (names, rules, selectors, Service, path, port, policies), the Service's
// ports, the pod's labels, security contexts, ports, probes, resources and mounts, the certificates, the
// ServiceAccount and the PodDisruptionBudget. The chart adds its own labels, and sets the image by value.
func TestHelmChartMatchesKustomize(t *testing.T) {
	h := helmtest.New(t)
	r := render(t, h)
	chart := checkWiring(t, r)
	var k rendered
	files, _ := filepath.Glob("../deploy/kubernetes/webhook/*.yaml")
	for _, f := range files {
		for _, doc := range splitDocuments(mustRead(t, f)) {
			var head struct {
				APIVersion, Kind string
				Metadata         metav1.ObjectMeta
			}
			if err := yaml.Unmarshal(doc, &head); err == nil && head.Kind != "" && head.Kind != "Kustomization" {
				k = append(k, renderedDoc{head.APIVersion + "/" + head.Kind, head.Metadata.Name, head.Metadata.Namespace, doc})
			}
		}
	}
	base := checkWiring(t, k)

	// The chart has every object of the base but the Namespace (helm install --create-namespace makes it).
	for _, d := range k {
		if d.gvk != "v1/Namespace" && !slices.Contains(r.kinds(), d.gvk+" "+d.name) {
			t.Errorf("the kustomize base has %s %s, the chart does not", d.gvk, d.name)
		}
	}
	if !reflect.DeepEqual(chart.mwc.Webhooks, base.mwc.Webhooks) {
		t.Errorf("webhooks differ:\nchart     %+v\nkustomize %+v", chart.mwc.Webhooks, base.mwc.Webhooks)
	}
	if !reflect.DeepEqual(chart.mwc.Annotations, base.mwc.Annotations) {
		t.Errorf("MutatingWebhookConfiguration annotations: chart %v, kustomize %v", chart.mwc.Annotations, base.mwc.Annotations)
	}
	if !reflect.DeepEqual(chart.svc.Spec.Ports, base.svc.Spec.Ports) {
		t.Errorf("Service ports: chart %+v, kustomize %+v", chart.svc.Spec.Ports, base.svc.Spec.Ports)
	}
	if !labelsContain(chart.svc.Spec.Selector, base.svc.Spec.Selector) {
		t.Errorf("Service selector: chart %v, kustomize %v", chart.svc.Spec.Selector, base.svc.Spec.Selector)
	}
	cp, bp := chart.deploy.Spec.Template, base.deploy.Spec.Template
	if !labelsContain(cp.Labels, bp.Labels) || !labelsContain(chart.deploy.Labels, base.deploy.Labels) {
		t.Errorf("labels: chart %v %v, kustomize %v %v", chart.deploy.Labels, cp.Labels, base.deploy.Labels, bp.Labels)
	}
	if *chart.deploy.Spec.Replicas != *base.deploy.Spec.Replicas || chart.tlsSecret != base.tlsSecret ||
		!reflect.DeepEqual(cp.Spec.SecurityContext, bp.Spec.SecurityContext) ||
		!reflect.DeepEqual(cp.Spec.AutomountServiceAccountToken, bp.Spec.AutomountServiceAccountToken) ||
		cp.Spec.ServiceAccountName != bp.Spec.ServiceAccountName {
		t.Errorf("pod spec: chart %+v\nkustomize %+v", cp.Spec, bp.Spec)
	}
	cc, bc := chart.container, base.container
	for what, pair := range map[string][2]any{
		"name": {cc.Name, bc.Name}, "ports": {cc.Ports, bc.Ports}, "readinessProbe": {cc.ReadinessProbe, bc.ReadinessProbe},
		"livenessProbe": {cc.LivenessProbe, bc.LivenessProbe}, "resources": {cc.Resources, bc.Resources},
		"securityContext": {cc.SecurityContext, bc.SecurityContext}, "volumeMounts": {cc.VolumeMounts, bc.VolumeMounts},
		"args (listen, certificate)": {chart.args[:3], base.args[:3]},
	} {
		if !reflect.DeepEqual(pair[0], pair[1]) {
			t.Errorf("webhook container %s: chart %+v, kustomize %+v", what, pair[0], pair[1])
		}
	}
	var csa, bsa corev1.ServiceAccount
	r.get(t, "v1/ServiceAccount", webhookName, &csa)
	k.get(t, "v1/ServiceAccount", webhookName, &bsa)
	if !reflect.DeepEqual(csa.AutomountServiceAccountToken, bsa.AutomountServiceAccountToken) {
		t.Error("ServiceAccount automountServiceAccountToken differs")
	}
	var cpdb, bpdb policyv1.PodDisruptionBudget
	r.get(t, "policy/v1/PodDisruptionBudget", webhookName, &cpdb)
	k.get(t, "policy/v1/PodDisruptionBudget", webhookName, &bpdb)
	if !reflect.DeepEqual(cpdb.Spec.MinAvailable, bpdb.Spec.MinAvailable) {
		t.Errorf("PodDisruptionBudget minAvailable: chart %v, kustomize %v", cpdb.Spec.MinAvailable, bpdb.Spec.MinAvailable)
	}
	// The cert-manager resources: the same spec for each name.
	for _, d := range k {
		if !strings.HasPrefix(d.gvk, "cert-manager.io/") {
			continue
		}
		var c, b struct{ Spec map[string]any }
		r.get(t, d.gvk, d.name, &c)
		k.get(t, d.gvk, d.name, &b)
		if !reflect.DeepEqual(c.Spec, b.Spec) {
			t.Errorf("%s %s spec: chart %v, kustomize %v", d.gvk, d.name, c.Spec, b.Spec)
		}
	}
}

// TestHelmChartBadValues: values that cannot work fail helm template with a message naming the value.
func TestHelmChartBadValues(t *testing.T) {
	h := helmtest.New(t)
	for file, want := range map[string]string{
		"bad-certmanager.yaml":    "at '/certManager/enabled': got string, want boolean",
		"bad-key.yaml":            "additional properties 'certmanager' not allowed",
		"bad-failurepolicy.yaml":  "at '/webhook/failurePolicy': value must be one of 'Fail', 'Ignore'",
		"bad-quantity.yaml":       "at '/sidecar/resources/limits/memory': '128MiB' does not match pattern",
		"bad-serviceaccount.yaml": "at '/serviceAccount/name': minLength: got 0, want 1",
	} {
		out, stderr, err := h.Run(t, "template", "meshlet", h.Chart, "-f", filepath.Join(helmValuesDir, file))
		if err == nil || !strings.Contains(stderr, want) {
			t.Errorf("%s: exit %v, stderr %q, want %q", file, err, stderr, want)
		}
		if out != "" {
			t.Errorf("%s: rendered %d bytes", file, len(out))
		}
	}
	if _, err := os.Stat(filepath.Join(h.Chart, "values.schema.json")); err != nil {
		t.Error(err)
	}
}
