package inject

// Offline schema validation of the Kubernetes manifests in deploy/kubernetes and of what injection produces: each
// document is decoded strictly (unknown or misspelt fields, wrong types, bad quantities are errors) into its real
// k8s.io/api type. This is why go.mod requires k8s.io/api and k8s.io/apimachinery: for this test only; the meshlet
// binary does not link them.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// schemaTypes are the kinds the manifests may use, each with its Go type.
var schemaTypes = map[string]func() any{
	"v1/Namespace":                  func() any { return &corev1.Namespace{} },
	"v1/ServiceAccount":             func() any { return &corev1.ServiceAccount{} },
	"v1/Service":                    func() any { return &corev1.Service{} },
	"v1/ConfigMap":                  func() any { return &corev1.ConfigMap{} },
	"v1/Secret":                     func() any { return &corev1.Secret{} },
	"v1/Pod":                        func() any { return &corev1.Pod{} },
	"apps/v1/Deployment":            func() any { return &appsv1.Deployment{} },
	"apps/v1/StatefulSet":           func() any { return &appsv1.StatefulSet{} },
	"apps/v1/DaemonSet":             func() any { return &appsv1.DaemonSet{} },
	"apps/v1/ReplicaSet":            func() any { return &appsv1.ReplicaSet{} },
	"batch/v1/Job":                  func() any { return &batchv1.Job{} },
	"batch/v1/CronJob":              func() any { return &batchv1.CronJob{} },
	"policy/v1/PodDisruptionBudget": func() any { return &policyv1.PodDisruptionBudget{} },
	"admissionregistration.k8s.io/v1/MutatingWebhookConfiguration": func() any { return &admissionregistrationv1.MutatingWebhookConfiguration{} },
	"rbac.authorization.k8s.io/v1/Role":                            func() any { return &rbacv1.Role{} },
	"rbac.authorization.k8s.io/v1/RoleBinding":                     func() any { return &rbacv1.RoleBinding{} },
	"rbac.authorization.k8s.io/v1/ClusterRole":                     func() any { return &rbacv1.ClusterRole{} },
	"rbac.authorization.k8s.io/v1/ClusterRoleBinding":              func() any { return &rbacv1.ClusterRoleBinding{} },
}

// customKinds are custom resources, which k8s.io/api has no types for: only their apiVersion and kind are checked.
var customKinds = map[string]bool{
	"cert-manager.io/v1/Issuer":      true,
	"cert-manager.io/v1/Certificate": true,
}

// validateDocument strictly decodes one YAML document (a List's items too) into its k8s.io/api type.
func validateDocument(doc []byte, allowUnknownGroups bool) error {
	var head struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Items      []json.RawMessage `json:"items"`
	}
	if err := yaml.Unmarshal(doc, &head); err != nil {
		return err
	}
	if head.APIVersion == "" && head.Kind == "" {
		return nil // empty document or comments only
	}
	gvk := head.APIVersion + "/" + head.Kind
	switch {
	case gvk == "v1/List":
		for i, it := range head.Items {
			if err := validateDocument(it, allowUnknownGroups); err != nil {
				return fmt.Errorf("items[%d]: %w", i, err)
			}
		}
		return nil
	case customKinds[gvk]:
		return nil
	case schemaTypes[gvk] != nil:
		return decodeStrict(doc, schemaTypes[gvk](), gvk)
	case allowUnknownGroups && strings.Contains(head.APIVersion, ".example.com/"):
		return nil
	}
	return fmt.Errorf("%s: no schema type known (add it to schemaTypes)", gvk)
}

// decodeStrict decodes as the API server does: field names case-sensitive, unknown and duplicate fields errors.
func decodeStrict(doc []byte, v any, what string) error {
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	strict, err := sigsjson.UnmarshalStrict(j, v, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if len(strict) > 0 {
		return fmt.Errorf("%s: %w", what, errors.Join(strict...))
	}
	return nil
}

func validateFile(t *testing.T, path string, data []byte, allowUnknownGroups bool) int {
	t.Helper()
	n := 0
	for i, doc := range splitDocuments(data) {
		if err := validateDocument(doc, allowUnknownGroups); err != nil {
			t.Errorf("%s: document %d: %v", path, i+1, err)
		}
		n++
	}
	return n
}

// TestManifestsSchema validates every manifest in deploy/kubernetes, and checks that each kustomization lists
// every manifest beside it and only files that exist.
func TestManifestsSchema(t *testing.T) {
	files, _ := filepath.Glob("../deploy/kubernetes/*/*.yaml")
	if len(files) < 8 {
		t.Fatalf("only %d manifests found", len(files))
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(f) == "kustomization.yaml" {
			checkKustomization(t, f, data)
			continue
		}
		validateFile(t, f, data, false)
	}
}

func checkKustomization(t *testing.T, path string, data []byte) {
	t.Helper()
	var k struct {
		APIVersion string   `json:"apiVersion"`
		Kind       string   `json:"kind"`
		Resources  []string `json:"resources"`
		Images     []struct {
			Name    string `json:"name"`
			NewName string `json:"newName"`
			NewTag  string `json:"newTag"`
		} `json:"images"`
	}
	if err := decodeStrict(data, &k, "Kustomization"); err != nil {
		t.Errorf("%s: %v", path, err)
		return
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		t.Errorf("%s: %s/%s is not a Kustomization", path, k.APIVersion, k.Kind)
	}
	dir := filepath.Dir(path)
	listed := map[string]bool{}
	for _, r := range k.Resources {
		listed[r] = true
		if _, err := os.Stat(filepath.Join(dir, r)); err != nil {
			t.Errorf("%s: resource %s: %v", path, r, err)
		}
	}
	siblings, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	for _, s := range siblings {
		if b := filepath.Base(s); b != "kustomization.yaml" && !listed[b] {
			t.Errorf("%s does not list %s", path, b)
		}
	}
}

// TestInjectedSchema validates what injection makes: every golden file, and the example application injected.
func TestInjectedSchema(t *testing.T) {
	goldens, _ := filepath.Glob("testdata/*.golden.yaml")
	n := 0
	for _, g := range goldens {
		data, err := os.ReadFile(g)
		if err != nil {
			t.Fatal(err)
		}
		n += validateFile(t, g, data, true)
	}
	examples, _ := filepath.Glob("../deploy/kubernetes/example/*.yaml")
	for _, f := range examples {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		data, _ := os.ReadFile(f)
		var out bytes.Buffer
		if _, err := Inject(&out, bytes.NewReader(data), testConfig); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		n += validateFile(t, f+" (injected)", out.Bytes(), false)
	}
	if n < 15 {
		t.Errorf("validated only %d documents", n)
	}
	// The validator is not a rubber stamp: a misspelt field in an injected container is caught.
	bad := strings.Replace(string(mustRead(t, "testdata/deployment.golden.yaml")), "readOnlyRootFilesystem", "readOnlyRootFileSystem", 1)
	if err := validateDocument([]byte(bad), false); err == nil || !strings.Contains(err.Error(), "readOnlyRootFileSystem") {
		t.Errorf("a misspelt field passed: %v", err)
	}
	badQty := strings.Replace(string(mustRead(t, "testdata/deployment.golden.yaml")), "memory: 128Mi", "memory: 128MiB", 1)
	if err := validateDocument([]byte(badQty), false); err == nil {
		t.Error("a bad quantity passed")
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
