package inject

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// review posts an AdmissionReview for object (JSON) to a real HTTP server running the webhook.
func review(t *testing.T, url, kind string, object []byte) (int, admissionResponse) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{
		"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
		"request": map[string]any{"uid": "0c1f-42", "kind": map[string]string{"group": "", "version": "v1", "kind": kind},
			"namespace": "shop", "operation": "CREATE", "object": json.RawMessage(object)},
	})
	resp, err := http.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out admissionReview
	if resp.StatusCode == 200 {
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatal(err)
		}
		if out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" || out.Response == nil || out.Response.UID != "0c1f-42" {
			t.Fatalf("bad review answer: %+v", out)
		}
		return 200, *out.Response
	}
	return resp.StatusCode, admissionResponse{}
}

// applyPatch applies add and remove operations on object members (what the webhook emits) per RFC 6902.
func applyPatch(t *testing.T, doc map[string]any, patch []byte) {
	t.Helper()
	var ops []patchOp
	if err := json.Unmarshal(patch, &ops); err != nil {
		t.Fatalf("patch is not a JSON patch: %v: %s", err, patch)
	}
	for _, op := range ops {
		parts := strings.Split(strings.TrimPrefix(op.Path, "/"), "/")
		parent := doc
		for _, p := range parts[:len(parts)-1] {
			next, ok := parent[p].(map[string]any)
			if !ok {
				t.Fatalf("%s: parent %s missing", op.Path, p)
			}
			parent = next
		}
		last := parts[len(parts)-1]
		switch op.Op {
		case "add":
			parent[last] = op.Value
		case "remove":
			if _, ok := parent[last]; !ok {
				t.Fatalf("remove %s: no such member", op.Path)
			}
			delete(parent, last)
		default:
			t.Fatalf("unexpected op %q", op.Op)
		}
	}
}

func yamlToJSON(t *testing.T, y []byte) []byte {
	t.Helper()
	var v any
	if err := yaml.Unmarshal(y, &v); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestWebhook: the patched pod equals what `meshlet inject` makes of the same pod; opted-out, already injected
// and non-pod objects pass unchanged; bad annotations are denied with the reason; bad requests get 4xx.
func TestWebhook(t *testing.T) {
	srv := httptest.NewServer(&Webhook{Config: testConfig, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	defer srv.Close()

	podYAML, err := os.ReadFile("testdata/pod.in.yaml")
	if err != nil {
		t.Fatal(err)
	}
	nativePod := []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"web-7d9f8b-","labels":{"app":"web"},
		"annotations":{"meshlet.dev/upstreams":"api:9001:grpc"}},"spec":{"containers":[{"name":"web","image":"web:1",
		"ports":[{"containerPort":8080}]}],"initContainers":[{"name":"migrate","image":"m:1"}]}}`)
	for _, tc := range []struct {
		name string
		pod  []byte
	}{
		{"classic pod from testdata", yamlToJSON(t, podYAML)},
		{"native sidecar, pod of a controller", nativePod},
		{"tuning annotations, classic: default container", []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"legacy-5f-",
			"labels":{"app":"legacy"},"annotations":{"meshlet.dev/inject":"enabled","meshlet.dev/native-sidecar":"false",
			"meshlet.dev/proxy-cpu-request":"100m","meshlet.dev/proxy-cpu-limit":"1","meshlet.dev/proxy-memory-request":"64Mi",
			"meshlet.dev/proxy-memory-limit":"256Mi","meshlet.dev/access-log":"true","meshlet.dev/log-level":"debug",
			"meshlet.dev/drain-delay":"10s","meshlet.dev/drain-timeout":"45s"}},
			"spec":{"containers":[{"name":"legacy","image":"legacy:1","ports":[{"containerPort":8080}]}]}}`)},
		{"no annotations", []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"solo"},"spec":{"containers":[{"name":"app","image":"a","ports":[{"containerPort":80}]}]}}`)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, resp := review(t, srv.URL, "Pod", tc.pod)
			if code != 200 || !resp.Allowed || resp.PatchType != "JSONPatch" || len(resp.Patch) == 0 {
				t.Fatalf("code %d, response %+v", code, resp)
			}
			var got map[string]any
			json.Unmarshal(tc.pod, &got)
			applyPatch(t, got, resp.Patch)

			var want bytes.Buffer
			if _, err := Inject(&want, bytes.NewReader(tc.pod), testConfig); err != nil {
				t.Fatal(err)
			}
			var wantV map[string]any
			json.Unmarshal(yamlToJSON(t, want.Bytes()), &wantV)
			if !reflect.DeepEqual(jsonValue(got), jsonValue(wantV)) {
				g, _ := json.MarshalIndent(got, "", " ")
				w, _ := json.MarshalIndent(wantV, "", " ")
				t.Fatalf("patched pod differs from meshlet inject's:\n%s\nwant:\n%s", g, w)
			}
			// The injected pod, reviewed again (a reinvocation), is left alone.
			again, _ := json.Marshal(got)
			if code, resp := review(t, srv.URL, "Pod", again); code != 200 || !resp.Allowed || resp.Patch != nil {
				t.Errorf("second review: code %d, response %+v, patch %s", code, resp, resp.Patch)
			}
		})
	}

	t.Run("unchanged", func(t *testing.T) {
		for name, obj := range map[string]struct {
			kind string
			obj  string
		}{
			"opted out":           {"Pod", `{"metadata":{"annotations":{"meshlet.dev/inject":"false"}},"spec":{"containers":[{"name":"a","image":"a"}]}}`},
			"opted out, disabled": {"Pod", `{"metadata":{"annotations":{"meshlet.dev/inject":"disabled"}},"spec":{"containers":[{"name":"a","image":"a"}]}}`},
			"a Service":           {"Service", `{"metadata":{"name":"web"},"spec":{"ports":[{"port":80}]}}`},
		} {
			code, resp := review(t, srv.URL, obj.kind, []byte(obj.obj))
			if code != 200 || !resp.Allowed || resp.Patch != nil || resp.PatchType != "" {
				t.Errorf("%s: code %d, response %+v", name, code, resp)
			}
		}
	})
	t.Run("denied: no service name", func(t *testing.T) {
		code, resp := review(t, srv.URL, "Pod", []byte(`{"spec":{"containers":[{"name":"a","image":"a"}]}}`))
		if code != 200 || resp.Allowed || resp.Status == nil || !strings.Contains(resp.Status.Message, "meshlet.dev/service") {
			t.Errorf("code %d, response %+v", code, resp)
		}
	})
	t.Run("denied", func(t *testing.T) {
		code, resp := review(t, srv.URL, "Pod", []byte(`{"metadata":{"name":"p","annotations":{"meshlet.dev/upstreams":"api"}},"spec":{"containers":[]}}`))
		if code != 200 || resp.Allowed || resp.Status == nil || resp.Status.Code != 400 ||
			!strings.Contains(resp.Status.Message, `meshlet.dev/upstreams: "api" must be name:port`) {
			t.Errorf("code %d, response %+v", code, resp)
		}
	})
	t.Run("denied: bad tuning annotations", func(t *testing.T) {
		for ann, want := range map[string]string{
			`"meshlet.dev/proxy-memory-limit":"lots"`: `meshlet.dev/proxy-memory-limit: "lots" must be a Kubernetes quantity`,
			`"meshlet.dev/inject":"maybe"`:            `meshlet.dev/inject: "maybe" must be enabled or disabled`,
			`"meshlet.dev/drain-delay":"5"`:           `meshlet.dev/drain-delay: "5" must be a duration`,
			`"meshlet.dev/access-log":"loud"`:         `meshlet.dev/access-log: "loud" must be true or false`,
		} {
			code, resp := review(t, srv.URL, "Pod", []byte(`{"metadata":{"name":"p","annotations":{`+ann+`}},"spec":{"containers":[{"name":"a","image":"a","ports":[{"containerPort":80}]}]}}`))
			if code != 200 || resp.Allowed || resp.Status == nil || !strings.Contains(resp.Status.Message, want) {
				t.Errorf("%s: code %d, response %+v", ann, code, resp)
			}
		}
	})
	t.Run("bad requests", func(t *testing.T) {
		for _, tc := range []struct {
			method, ctype, body string
			code                int
		}{
			{"GET", "application/json", "", 405},
			{"POST", "text/plain", "{}", 415},
			{"POST", "application/json", "not json", 400},
			{"POST", "application/json", `{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}`, 400},
			{"POST", "application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, 400},
		} {
			req, _ := http.NewRequest(tc.method, srv.URL, strings.NewReader(tc.body))
			req.Header.Set("Content-Type", tc.ctype)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.code {
				t.Errorf("%s %s %q: %d, want %d", tc.method, tc.ctype, tc.body, resp.StatusCode, tc.code)
			}
		}
	})
}
