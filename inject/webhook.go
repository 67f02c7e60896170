package inject

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"strings"

	"go.yaml.in/yaml/v3"
)

// The admission.k8s.io/v1 AdmissionReview, reduced to the fields the webhook reads and writes.
type (
	admissionReview struct {
		APIVersion string             `json:"apiVersion"`
		Kind       string             `json:"kind"`
		Request    *admissionRequest  `json:"request,omitempty"`
		Response   *admissionResponse `json:"response,omitempty"`
	}
	admissionRequest struct {
		UID       string          `json:"uid"`
		Kind      groupVersion    `json:"kind"`
		Namespace string          `json:"namespace"`
		Operation string          `json:"operation"`
		Object    json.RawMessage `json:"object"`
	}
	groupVersion struct {
		Group   string `json:"group"`
		Version string `json:"version"`
		Kind    string `json:"kind"`
	}
	admissionResponse struct {
		UID       string  `json:"uid"`
		Allowed   bool    `json:"allowed"`
		Status    *status `json:"status,omitempty"`
		PatchType string  `json:"patchType,omitempty"`
		Patch     []byte  `json:"patch,omitempty"` // JSON, base64 in the review
		// Warnings are shown by kubectl to whoever created the object (a pod admitted without its sidecar).
		Warnings []string `json:"warnings,omitempty"`
	}
	status struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	// patchOp is one RFC 6902 operation.
	patchOp struct {
		Op    string `json:"op"`
		Path  string `json:"path"`
		Value any    `json:"value,omitempty"`
	}
)

// maxReviewBytes bounds the body of an AdmissionReview request (the API server sends at most a few MiB).
const maxReviewBytes = 8 << 20

// Webhook is the mutating admission webhook: an http.Handler for POST AdmissionReview (admission.k8s.io/v1) that
// answers with a JSON patch adding the sidecar to a Pod, exactly as Inject would. Pods that opt out, that are
// already injected, and objects that are not Pods are allowed unchanged. A hostNetwork pod is allowed unchanged
// with a warning in the answer (the sidecar's identity would be lent to every process on the node; the pod is as
// it was asked for, and kubectl shows the warning). A pod that injection cannot handle is denied with the reason:
// wrong annotations, an out-of-range containerPort, or a container of its own named meshlet, which injection
// would replace. Denying fails closed: admitted with a warning, such a pod would run without its sidecar or
// without its container, and warnings reach nobody when a controller (a ReplicaSet) creates the pod, while a
// denial shows in the controller's events and at `kubectl apply` of a bare Pod. An injected pod gets warnings too
// for what is safe but worth a look (Stats.Warnings: a terminationGracePeriodSeconds shorter than meshlet's drain,
// an app's own preStop hook kept, a readinessProbe no app check can follow); every warning is also logged.
type Webhook struct {
	Config Config
	Log    *slog.Logger // nil: slog.Default()
}

// ServeHTTP implements http.Handler.
func (h *Webhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	log := h.Log
	if log == nil {
		log = slog.Default()
	}
	if r.Method != http.MethodPost {
		http.Error(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		http.Error(w, "Content-Type must be application/json", http.StatusUnsupportedMediaType)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxReviewBytes+1))
	if err != nil || len(body) > maxReviewBytes {
		http.Error(w, "cannot read the request body", http.StatusBadRequest)
		return
	}
	var review admissionReview
	if err := json.Unmarshal(body, &review); err != nil || review.Request == nil ||
		review.APIVersion != "admission.k8s.io/v1" || review.Kind != "AdmissionReview" {
		http.Error(w, "want an admission.k8s.io/v1 AdmissionReview with a request", http.StatusBadRequest)
		return
	}
	req := review.Request
	resp := &admissionResponse{UID: req.UID, Allowed: true}
	if req.Kind.Kind == "Pod" && req.Kind.Group == "" && (req.Operation == "CREATE" || req.Operation == "") {
		patch, warnings, err := h.patch(req.Object)
		resp.Warnings = warnings
		for _, w := range warnings {
			log.Warn("injection warning", "namespace", req.Namespace, "uid", req.UID, "warning", w)
		}
		switch {
		case err != nil:
			resp.Allowed = false
			resp.Status = &status{Code: http.StatusBadRequest, Message: "meshlet injection: " + err.Error()}
			log.Warn("pod denied", "namespace", req.Namespace, "uid", req.UID, "error", err.Error())
		case patch != nil:
			resp.PatchType, resp.Patch = "JSONPatch", patch
			log.Info("pod injected", "namespace", req.Namespace, "uid", req.UID)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(admissionReview{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview", Response: resp})
}

// patch injects the pod and returns the JSON patch from object to the result (nil when nothing changes) and the
// warnings for the answer.
func (h *Webhook) patch(object json.RawMessage) ([]byte, []string, error) {
	cfg := h.Config
	if err := cfg.validate(); err != nil {
		return nil, nil, err
	}
	var before map[string]any
	if err := json.Unmarshal(object, &before); err != nil {
		return nil, nil, fmt.Errorf("the pod is not a JSON object: %w", err)
	}
	var doc yaml.Node // JSON is YAML: the same node-tree injection as `meshlet inject`
	if err := yaml.Unmarshal(object, &doc); err != nil || len(doc.Content) != 1 {
		return nil, nil, errors.New("the pod is not a JSON object")
	}
	pod := doc.Content[0]
	name := scalar(get(get(pod, "metadata"), "name"))
	if name == "" { // pods of controllers: web-7d9f8b- ; the app label or the annotation usually names the service
		name = strings.TrimSuffix(scalar(get(get(pod, "metadata"), "generateName")), "-")
	}
	var st Stats
	if get(pod, "spec") != nil {
		if err := injectPod(pod, name, cfg, &st); err != nil {
			return nil, nil, err
		}
	}
	var warnings []string
	for _, w := range st.Warnings {
		warnings = append(warnings, "meshlet injection: "+w)
	}
	var after map[string]any
	if err := pod.Decode(&after); err != nil {
		return nil, nil, err
	}
	ops := diffFields(before, after, "/metadata", "annotations")
	ops = append(ops, diffFields(before, after, "/spec", "initContainers", "containers", "volumes")...)
	if len(ops) == 0 {
		return nil, warnings, nil
	}
	p, err := json.Marshal(ops)
	return p, warnings, err
}

// diffFields returns add (or replace) and remove operations for the named members of the object at path.
func diffFields(before, after map[string]any, path string, keys ...string) []patchOp {
	b, _ := lookup(before, path).(map[string]any)
	a, _ := lookup(after, path).(map[string]any)
	var ops []patchOp
	if b == nil && a != nil { // e.g. a pod without metadata: add it whole
		return []patchOp{{Op: "add", Path: path, Value: jsonValue(a)}}
	}
	for _, k := range keys {
		bv, inB := b[k]
		av, inA := a[k]
		av = jsonValue(av)
		switch {
		case inA && (!inB || !reflect.DeepEqual(jsonValue(bv), av)):
			ops = append(ops, patchOp{Op: "add", Path: path + "/" + k, Value: av}) // add replaces an existing member
		case inB && !inA:
			ops = append(ops, patchOp{Op: "remove", Path: path + "/" + k})
		}
	}
	return ops
}

// lookup follows a /a/b path through nested objects.
func lookup(v map[string]any, path string) any {
	var cur any = v
	for _, p := range strings.Split(strings.TrimPrefix(path, "/"), "/") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[p]
	}
	return cur
}

// jsonValue normalises a value decoded from YAML or JSON (ints vs float64) by a JSON round trip.
func jsonValue(v any) any {
	b, err := json.Marshal(v)
	if err != nil {
		return v
	}
	var out any
	json.Unmarshal(b, &out)
	return out
}
