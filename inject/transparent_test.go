package inject

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// transparentPod is a Deployment web with the annotations ann (YAML lines at the template's annotations level)
// beside meshlet.dev/upstreams, and the pod spec lines spec.
func transparentPod(ann, spec string) string {
	return deploymentWith(`        meshlet.dev/upstreams: "api:9001"
`+ann, spec)
}

// podSpec is the injected pod template's spec.
type podSpec struct {
	SecurityContext map[string]any   `yaml:"securityContext"`
	InitContainers  []map[string]any `yaml:"initContainers"`
	Containers      []map[string]any `yaml:"containers"`
}

func injectSpec(t *testing.T, in string, cfg Config) (podSpec, string) {
	t.Helper()
	var out bytes.Buffer
	if _, err := Inject(&out, strings.NewReader(in), cfg); err != nil {
		t.Fatal(err)
	}
	var d struct {
		Spec struct {
			Template struct {
				Spec podSpec
			}
		}
	}
	if err := yaml.Unmarshal(out.Bytes(), &d); err != nil {
		t.Fatal(err)
	}
	return d.Spec.Template.Spec, out.String()
}

func names(cs []map[string]any) []string {
	var n []string
	for _, c := range cs {
		n = append(n, c["name"].(string))
	}
	return n
}

// args is the init container's args as one line.
func args(c map[string]any) string {
	var s []string
	for _, a := range c["args"].([]any) {
		s = append(s, a.(string))
	}
	return strings.Join(s, " ")
}

func sidecarOf(ps podSpec) map[string]any {
	for _, c := range append(append([]map[string]any{}, ps.InitContainers...), ps.Containers...) {
		if c["name"] == ContainerName {
			return c
		}
	}
	return nil
}

func configOf(c map[string]any) string {
	for _, e := range c["env"].([]any) {
		if e.(map[string]any)["name"] == ConfigEnv {
			return e.(map[string]any)["value"].(string)
		}
	}
	return ""
}

// TestTransparent: what the annotations and the cluster-wide default make of a pod: whether meshlet-init is
// there, where, and with which arguments; the sidecar's UID and config.
func TestTransparent(t *testing.T) {
	const web = `      containers:
      - name: web
        image: web:1
        ports: [{name: http, containerPort: 8080}, {name: health, containerPort: 8081}]
`
	on := testConfig
	on.Transparent = true
	for _, tc := range []struct {
		name     string
		cfg      Config
		ann      string
		spec     string
		init     []string // initContainers' names
		cont     []string // containers' names
		args     string   // meshlet-init's args; "" when there is none
		uid      int      // the sidecar's runAsUser
		outbound bool     // the generated config has outbound.transparent
	}{
		{name: "annotation true", cfg: testConfig, ann: `meshlet.dev/transparent: "true"`, spec: web,
			init: []string{"meshlet-init", "meshlet"}, cont: []string{"web"},
			args: "redirect-traffic -proxy-uid 5995 -proxy-outbound-port 15001 -proxy-inbound-port 21000 -exclude-inbound-port 15000",
			uid:  5995, outbound: true},
		{name: "not asked", cfg: testConfig, spec: web, init: []string{"meshlet"}, cont: []string{"web"}, uid: 65532},
		{name: "annotation false", cfg: testConfig, ann: `meshlet.dev/transparent: "false"`, spec: web,
			init: []string{"meshlet"}, cont: []string{"web"}, uid: 65532},
		{name: "cluster default", cfg: on, spec: web, init: []string{"meshlet-init", "meshlet"}, cont: []string{"web"},
			args: "redirect-traffic -proxy-uid 5995 -proxy-outbound-port 15001 -proxy-inbound-port 21000 -exclude-inbound-port 15000",
			uid:  5995, outbound: true},
		{name: "cluster default, pod says false", cfg: on, ann: `meshlet.dev/transparent: "false"`, spec: web,
			init: []string{"meshlet"}, cont: []string{"web"}, uid: 65532},
		{name: "exclusions", cfg: on, spec: web, ann: `meshlet.dev/exclude-inbound-ports: "9100, 15000,9100"
meshlet.dev/exclude-outbound-ports: "22,5432"
meshlet.dev/exclude-outbound-cidrs: "10.0.0.0/8,192.0.2.7,2001:db8::/32"
meshlet.dev/exclude-uids: "0,1001"`,
			init: []string{"meshlet-init", "meshlet"}, cont: []string{"web"},
			args: "redirect-traffic -proxy-uid 5995 -proxy-outbound-port 15001 -proxy-inbound-port 21000 -exclude-inbound-port 15000,9100 " +
				"-exclude-outbound-port 22,5432 -exclude-outbound-cidr 10.0.0.0/8,192.0.2.7/32,2001:db8::/32 -exclude-uid 0,1001",
			uid: 5995, outbound: true},
		{name: "probe ports, named and numbered, of containers and native sidecars", cfg: on, spec: `      initContainers:
      - name: shipper
        image: s:1
        restartPolicy: Always
        ports: [{name: admin, containerPort: 2020}]
        startupProbe: {httpGet: {path: /, port: admin}}
      - name: setup
        image: s:1
` + web + `        readinessProbe: {httpGet: {path: /ready, port: health}}
        livenessProbe: {tcpSocket: {port: 8081}}
        startupProbe: {grpc: {port: 9090}}
        lifecycle: {preStop: {httpGet: {path: /drain, port: http}}, postStart: {exec: {command: [x]}}}
`,
			init: []string{"meshlet-init", "meshlet", "shipper", "setup"}, cont: []string{"web"},
			args: "redirect-traffic -proxy-uid 5995 -proxy-outbound-port 15001 -proxy-inbound-port 21000 -exclude-inbound-port 15000,2020,9090,8081,8080",
			uid:  5995, outbound: true},
		{name: "no app port: no inbound redirection", cfg: on, ann: `meshlet.dev/app-port: none`,
			spec: web + "        readinessProbe: {httpGet: {path: /ready, port: health}}\n",
			init: []string{"meshlet-init", "meshlet"}, cont: []string{"web"},
			args: "redirect-traffic -proxy-uid 5995 -proxy-outbound-port 15001", uid: 5995, outbound: true},
		{name: "classic sidecar", cfg: on, ann: `meshlet.dev/native-sidecar: "false"`,
			spec: "      initContainers:\n      - {name: setup, image: s:1}\n" + web,
			init: []string{"meshlet-init", "setup"}, cont: []string{"meshlet", "web"},
			args: "redirect-traffic -proxy-uid 5995 -proxy-outbound-port 15001 -proxy-inbound-port 21000 -exclude-inbound-port 15000",
			uid:  5995, outbound: true},
		{name: "other ports and UID", cfg: Config{Image: "m:1", Transparent: true, OutboundPort: 16001, ProxyUID: 1337, AdminPort: 19000, InboundPort: 20000},
			spec: web, init: []string{"meshlet-init", "meshlet"}, cont: []string{"web"},
			args: "redirect-traffic -proxy-uid 1337 -proxy-outbound-port 16001 -proxy-inbound-port 20000 -exclude-inbound-port 19000",
			uid:  1337, outbound: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ann := ""
			for _, l := range strings.Split(tc.ann, "\n") {
				if l != "" {
					ann += "        " + l + "\n"
				}
			}
			ps, out := injectSpec(t, transparentPod(ann, tc.spec), tc.cfg)
			if got := names(ps.InitContainers); !reflect.DeepEqual(got, tc.init) {
				t.Errorf("initContainers %v, want %v", got, tc.init)
			}
			if got := names(ps.Containers); !reflect.DeepEqual(got, tc.cont) {
				t.Errorf("containers %v, want %v", got, tc.cont)
			}
			if tc.args != "" {
				if got := args(ps.InitContainers[0]); got != tc.args {
					t.Errorf("meshlet-init args\n %s\nwant\n %s", got, tc.args)
				}
			}
			sc := sidecarOf(ps)
			if got := sc["securityContext"].(map[string]any)["runAsUser"]; got != tc.uid {
				t.Errorf("sidecar runAsUser %v, want %d", got, tc.uid)
			}
			conf := configOf(sc)
			if got := strings.Contains(conf, "transparent:\n    enabled: true"); got != tc.outbound {
				t.Errorf("outbound.transparent in the config: %v, want %v:\n%s", got, tc.outbound, conf)
			}
			if tc.outbound && strings.Contains(conf, "inbound:") && !strings.Contains(conf, "listen: $(POD_IP):") {
				t.Errorf("inbound not on the pod IP:\n%s", conf)
			}
			// Injecting the output again changes nothing.
			var again bytes.Buffer
			if _, err := Inject(&again, strings.NewReader(out), tc.cfg); err != nil || again.String() != out {
				t.Errorf("second injection differs (%v):\n%s", err, again.String())
			}
		})
	}
}

// TestTransparentInitContainer checks the security of meshlet-init: root, NET_ADMIN and nothing else.
func TestTransparentInitContainer(t *testing.T) {
	ps, _ := injectSpec(t, transparentPod(`        meshlet.dev/transparent: "true"`+"\n", webContainer), testConfig)
	c := ps.InitContainers[0]
	checks := map[string]string{
		"name":                         "meshlet-init",
		"image":                        testConfig.Image,
		"securityContext.runAsUser":    "0",
		"securityContext.runAsNonRoot": "false",
		"securityContext.allowPrivilegeEscalation": "false",
		"securityContext.readOnlyRootFilesystem":   "true",
		"securityContext.capabilities.add":         "[NET_ADMIN]",
		"securityContext.capabilities.drop":        "[ALL]",
		"securityContext.seccompProfile.type":      "RuntimeDefault",
		"resources.limits.memory":                  "128Mi",
	}
	for path, want := range checks {
		var v any = c
		for _, k := range strings.Split(path, ".") {
			v = v.(map[string]any)[k]
		}
		if got := strings.TrimSpace(fmtAny(v)); got != want {
			t.Errorf("%s = %q, want %q", path, got, want)
		}
	}
	for _, k := range []string{"restartPolicy", "ports", "env", "startupProbe", "readinessProbe", "livenessProbe", "volumeMounts"} {
		if _, ok := c[k]; ok {
			t.Errorf("meshlet-init has %s", k)
		}
	}
	sc := sidecarOf(ps)["securityContext"].(map[string]any)
	if sc["runAsNonRoot"] != true || sc["runAsUser"] != 5995 || sc["runAsGroup"] != 5995 ||
		fmtAny(sc["capabilities"].(map[string]any)["drop"]) != "[ALL]" || sc["capabilities"].(map[string]any)["add"] != nil {
		t.Errorf("sidecar securityContext %v", sc)
	}
	if conf := configOf(sidecarOf(ps)); !strings.Contains(conf, "outbound:\n  listen: 127.0.0.1:15001\n  transparent:\n    enabled: true\n") {
		t.Errorf("config:\n%s", conf)
	}
}

// TestTransparentErrors: bad values of the annotations, clashes of ports and UIDs, and a container of the pod's
// own named meshlet-init stop injection with the annotation or the field named.
func TestTransparentErrors(t *testing.T) {
	on := `meshlet.dev/transparent: "true"`
	for _, tc := range []struct{ name, ann, spec, want string }{
		{"bad transparent", `meshlet.dev/transparent: "sometimes"`, webContainer, `meshlet.dev/transparent: "sometimes" must be true or false`},
		{"inbound port 0", on + "\nmeshlet.dev/exclude-inbound-ports: \"0\"", webContainer, `meshlet.dev/exclude-inbound-ports: invalid port "0"`},
		{"inbound port word", on + "\nmeshlet.dev/exclude-inbound-ports: \"80,http\"", webContainer, `meshlet.dev/exclude-inbound-ports: invalid port "http"`},
		{"outbound port too big", on + "\nmeshlet.dev/exclude-outbound-ports: \"70000\"", webContainer, `meshlet.dev/exclude-outbound-ports: invalid port "70000"`},
		{"bad cidr", on + "\nmeshlet.dev/exclude-outbound-cidrs: \"10.0.0.0/33\"", webContainer, `meshlet.dev/exclude-outbound-cidrs: invalid CIDR "10.0.0.0/33"`},
		{"bad uid", on + "\nmeshlet.dev/exclude-uids: \"-1\"", webContainer, `meshlet.dev/exclude-uids: invalid UID "-1"`},
		{"bad value, transparent off", "meshlet.dev/exclude-uids: \"root\"", webContainer, `meshlet.dev/exclude-uids: invalid UID "root"`},
		{"excluded inbound port", on + "\nmeshlet.dev/exclude-inbound-ports: \"21000\"", webContainer, "meshlet.dev/exclude-inbound-ports: 21000 is meshlet's inbound port"},
		{"excluded outbound port", on + "\nmeshlet.dev/exclude-outbound-ports: \"15001\"", webContainer, "meshlet.dev/exclude-outbound-ports: 15001 is meshlet's outbound port"},
		{"probe on the inbound port", on, webContainer + "        readinessProbe: {tcpSocket: {port: 21000}}\n", "port 21000, meshlet's inbound port"},
		{"probe port name unknown", on, webContainer + "        readinessProbe: {httpGet: {path: /, port: health}}\n",
			`containers[0] (web): readinessProbe.httpGet.port "health" names no port of the container`},
		{"probe port out of range", on, webContainer + "        livenessProbe: {tcpSocket: {port: 70000}}\n", `livenessProbe.tcpSocket.port "70000" must be a port number`},
		{"pod runs as the proxy UID", on, "      securityContext: {runAsUser: 5995}\n" + webContainer, "spec.securityContext.runAsUser 5995 is meshlet's UID"},
		{"container runs as the proxy UID", on, webContainer + "        securityContext: {runAsUser: 5995}\n", "containers[0] (web).securityContext.runAsUser 5995 is meshlet's UID"},
		{"own meshlet-init", on, "      initContainers:\n      - {name: meshlet-init, image: x, args: [setup]}\n" + webContainer,
			`initContainers[0]: the pod has its own container named "meshlet-init"`},
		{"own meshlet-init in containers", on, webContainer + "      - {name: meshlet-init, image: x}\n", `containers[1]: the pod has its own container named "meshlet-init"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := transparentPod("        "+strings.ReplaceAll(tc.ann, "\n", "\n        ")+"\n", tc.spec)
			var out bytes.Buffer
			_, err := Inject(&out, strings.NewReader(in), testConfig)
			if err == nil || !strings.Contains(err.Error(), "Deployment web: ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tc.want)
			}
			if out.Len() != 0 {
				t.Errorf("output despite the error:\n%s", out.String())
			}
		})
	}
	t.Run("outbound port clashes", func(t *testing.T) {
		for ann, want := range map[string]string{
			`meshlet.dev/app-port: "15001"`:     "the outbound port 15001 is also the app port",
			`meshlet.dev/inbound-port: "15001"`: "the outbound port 15001 is also the inbound port",
		} {
			in := transparentPod("        "+on+"\n        "+ann+"\n", webContainer)
			if _, err := Inject(io.Discard, strings.NewReader(in), testConfig); err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: err = %v, want %q", ann, err, want)
			}
		}
		in := strings.Replace(transparentPod("        "+on+"\n", webContainer), `"api:9001"`, `"api:15001"`, 1)
		if _, err := Inject(io.Discard, strings.NewReader(in), testConfig); err == nil || !strings.Contains(err.Error(), "upstream api's port 15001 is also the outbound port") {
			t.Errorf("upstream on 15001: err = %v", err)
		}
	})
	t.Run("bad config", func(t *testing.T) {
		for _, cfg := range []Config{{Image: "m", ProxyUID: -1}, {Image: "m", ProxyUID: 1 << 32}, {Image: "m", OutboundPort: 70000}} {
			if _, err := Inject(io.Discard, strings.NewReader(""), cfg); err == nil {
				t.Errorf("%+v accepted", cfg)
			}
		}
	})
}

// TestTransparentChanges: a pod's own meshlet-init is left alone when the pod is not transparent; turning
// transparent interception off for an injected pod removes meshlet-init and gives what injecting the pod afresh
// gives; opting out of injection leaves the pod unchanged.
func TestTransparentChanges(t *testing.T) {
	on := testConfig
	on.Transparent = true
	t.Run("own meshlet-init, not transparent", func(t *testing.T) {
		ps, _ := injectSpec(t, transparentPod("", "      initContainers:\n      - {name: meshlet-init, image: x, args: [setup]}\n"+webContainer), testConfig)
		if ps.InitContainers[1]["image"] != "x" {
			t.Errorf("initContainers %v", ps.InitContainers)
		}
	})
	for name, ann := range map[string]string{"native": "", "classic, no other init container": `        meshlet.dev/native-sidecar: "false"` + "\n"} {
		t.Run("off after on: "+name, func(t *testing.T) {
			in := transparentPod(ann, webContainer)
			var once, off, fresh bytes.Buffer
			if _, err := Inject(&once, strings.NewReader(in), on); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(once.String(), "meshlet-init") {
				t.Fatalf("not transparent:\n%s", once.String())
			}
			if _, err := Inject(&off, strings.NewReader(once.String()), testConfig); err != nil {
				t.Fatal(err)
			}
			if _, err := Inject(&fresh, strings.NewReader(in), testConfig); err != nil {
				t.Fatal(err)
			}
			if off.String() != fresh.String() {
				t.Errorf("re-injected without transparent:\n%s\nwant:\n%s", off.String(), fresh.String())
			}
		})
	}
	t.Run("opted out", func(t *testing.T) {
		in := transparentPod("        meshlet.dev/inject: \"false\"\n        meshlet.dev/transparent: \"true\"\n", webContainer)
		var out bytes.Buffer
		st, err := Inject(&out, strings.NewReader(in), on)
		if err != nil || out.String() != in || st.Skipped != 1 {
			t.Errorf("err %v, stats %+v, output:\n%s", err, st, out.String())
		}
	})
}

// TestWebhookTransparent: the webhook's patch of a transparent pod (by annotation, and by the webhook's default)
// adds meshlet-init and gives what `meshlet inject` gives; a reinvocation changes nothing; bad exclusions are
// denied with the annotation named.
func TestWebhookTransparent(t *testing.T) {
	pod := []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"web-7d9f8b-","labels":{"app":"web"},
		"annotations":{"meshlet.dev/transparent":"true","meshlet.dev/exclude-outbound-cidrs":"169.254.169.254"}},
		"spec":{"containers":[{"name":"web","image":"web:1","ports":[{"name":"http","containerPort":8080}],
		"readinessProbe":{"httpGet":{"path":"/ready","port":"http"}}}],"initContainers":[{"name":"migrate","image":"m:1"}]}}`)
	plain := []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"solo","labels":{"app":"solo"}},
		"spec":{"containers":[{"name":"app","image":"a","ports":[{"containerPort":80}]}]}}`)
	on := testConfig
	on.Transparent = true
	for _, tc := range []struct {
		name string
		cfg  Config
		pod  []byte
		args string
	}{
		{"annotation", testConfig, pod, "redirect-traffic -proxy-uid 5995 -proxy-outbound-port 15001 -proxy-inbound-port 21000 " +
			"-exclude-inbound-port 15000,8080 -exclude-outbound-cidr 169.254.169.254/32"},
		{"webhook default", on, plain, "redirect-traffic -proxy-uid 5995 -proxy-outbound-port 15001 -proxy-inbound-port 21000 -exclude-inbound-port 15000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(&Webhook{Config: tc.cfg, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
			defer srv.Close()
			code, resp := review(t, srv.URL, "Pod", tc.pod)
			if code != 200 || !resp.Allowed || resp.PatchType != "JSONPatch" || len(resp.Patch) == 0 {
				t.Fatalf("code %d, response %+v", code, resp)
			}
			var got map[string]any
			json.Unmarshal(tc.pod, &got)
			applyPatch(t, got, resp.Patch)
			var want bytes.Buffer
			if _, err := Inject(&want, bytes.NewReader(tc.pod), tc.cfg); err != nil {
				t.Fatal(err)
			}
			var wantV map[string]any
			json.Unmarshal(yamlToJSON(t, want.Bytes()), &wantV)
			if !reflect.DeepEqual(jsonValue(got), jsonValue(wantV)) {
				g, _ := json.MarshalIndent(got, "", " ")
				t.Fatalf("patched pod differs from meshlet inject's:\n%s\nwant:\n%s", g, want.String())
			}
			inits := got["spec"].(map[string]any)["initContainers"].([]any)
			first := inits[0].(map[string]any)
			var a []string
			for _, s := range first["args"].([]any) {
				a = append(a, s.(string))
			}
			if first["name"] != InitContainerName || strings.Join(a, " ") != tc.args {
				t.Errorf("first init container %v %q, want meshlet-init %q", first["name"], a, tc.args)
			}
			caps := first["securityContext"].(map[string]any)["capabilities"].(map[string]any)
			if !reflect.DeepEqual(caps["add"], []any{"NET_ADMIN"}) || !reflect.DeepEqual(caps["drop"], []any{"ALL"}) {
				t.Errorf("capabilities %v", caps)
			}
			again, _ := json.Marshal(got)
			if code, resp := review(t, srv.URL, "Pod", again); code != 200 || !resp.Allowed || resp.Patch != nil {
				t.Errorf("second review: code %d, response %+v, patch %s", code, resp, resp.Patch)
			}
		})
	}
	t.Run("denied", func(t *testing.T) {
		srv := httptest.NewServer(&Webhook{Config: on, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
		defer srv.Close()
		bad := []byte(`{"metadata":{"name":"p","annotations":{"meshlet.dev/exclude-outbound-ports":"ssh"}},
			"spec":{"containers":[{"name":"a","image":"a","ports":[{"containerPort":80}]}]}}`)
		code, resp := review(t, srv.URL, "Pod", bad)
		if code != 200 || resp.Allowed || resp.Status == nil || !strings.Contains(resp.Status.Message, `meshlet.dev/exclude-outbound-ports: invalid port "ssh"`) {
			t.Errorf("code %d, response %+v", code, resp)
		}
	})
	t.Run("opted out", func(t *testing.T) {
		srv := httptest.NewServer(&Webhook{Config: on, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
		defer srv.Close()
		code, resp := review(t, srv.URL, "Pod", []byte(`{"metadata":{"annotations":{"meshlet.dev/inject":"false"}},"spec":{"containers":[{"name":"a","image":"a"}]}}`))
		if code != 200 || !resp.Allowed || resp.Patch != nil {
			t.Errorf("code %d, response %+v", code, resp)
		}
	})
}

// TestTransparentExample: the transparent example in deploy/kubernetes/example (validated offline with the others
// by TestManifestsSchema and TestInjectedSchema) gets meshlet-init, with its probe port left out of the inbound
// redirection and its exclusions.
func TestTransparentExample(t *testing.T) {
	ps, _ := injectSpec(t, string(mustRead(t, "../deploy/kubernetes/example/checkout.yaml")), testConfig)
	want := "redirect-traffic -proxy-uid 5995 -proxy-outbound-port 15001 -proxy-inbound-port 21000 -exclude-inbound-port 15000,8081 " +
		"-exclude-outbound-port 5432 -exclude-outbound-cidr 169.254.169.254/32"
	if got := names(ps.InitContainers); !reflect.DeepEqual(got, []string{"meshlet-init", "meshlet"}) || args(ps.InitContainers[0]) != want {
		t.Errorf("initContainers %v, meshlet-init args %q, want %q", got, args(ps.InitContainers[0]), want)
	}
}

// TestTransparentServicePorts: a transparent pod's config lists the app's other TCP ports as service.ports, so that
// connections redirected to them reach the app at that port; the app port, meshlet's ports, the kubelet's probe
// ports, excluded ports and UDP ports are not listed (they never reach meshlet's inbound listener, or are the
// default).
func TestTransparentServicePorts(t *testing.T) {
	on := testConfig
	on.Transparent = true
	for _, tc := range []struct {
		name, ann, ports string
		want             string // the service.ports line of the generated config; "": none
	}{
		{name: "other ports", ports: `[{name: http, containerPort: 8080}, {name: grpc, containerPort: 9090}, {name: dns, containerPort: 5353, protocol: UDP}, {name: x, containerPort: 7000, protocol: TCP}]`,
			want: "ports: [9090, 7000]"},
		{name: "excluded and probe ports left out", ann: `meshlet.dev/exclude-inbound-ports: "9090"`,
			ports: `[{name: http, containerPort: 8080}, {name: grpc, containerPort: 9090}, {name: health, containerPort: 8081}]`},
		{name: "only the app port", ports: `[{name: http, containerPort: 8080}]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := `      containers:
      - name: web
        image: web:1
        ports: ` + tc.ports + `
        readinessProbe: {httpGet: {path: /healthz, port: 8081}}
`
			ann := ""
			if tc.ann != "" {
				ann = "        " + tc.ann + "\n"
			}
			_, out := injectSpec(t, transparentPod(ann, spec), on)
			got := ""
			for _, l := range strings.Split(out, "\n") {
				if l = strings.TrimSpace(l); strings.HasPrefix(l, "ports: [") && len(l) > 8 && l[8] >= '0' && l[8] <= '9' {
					got = l
				}
			}
			if got != tc.want {
				t.Fatalf("service.ports line %q, want %q in:\n%s", got, tc.want, out)
			}
		})
	}
}
