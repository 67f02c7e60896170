package main

import (
	"encoding/json"
	"strings"
	"testing"

	"meshlet.dev/meshlet/proxy"
)

// secretsConfig holds credentials in every place a config can: URLs' userinfo and query, service.meta, the
// Consul token. Each secret contains "s3cr3t" so that a test can look for any of them at once.
const secretsConfig = `
service:
  name: web
  address: 127.0.0.1:8080
  register: true
  meta:
    version: "1.4"
    owner: team@example.com
    db_password: pw-s3cr3t
    apiKey: key-s3cr3t
    X-Auth-Token: tok-s3cr3t
    AWS_SECRET_ACCESS_KEY: aws-s3cr3t
    sentry_dsn: https://pub:dsn-s3cr3t@sentry.example/42
  check:
    http: http://probe:chk-s3cr3t@127.0.0.1:8080/health?token=q-s3cr3t&verbose=1
inbound: {listen: 127.0.0.1:21000}
discovery:
  consul:
    address: https://consul-user:addr-s3cr3t@consul.example:8501
    token: consul-s3cr3t
    tls: {cert_file: /etc/consul/client.crt, key_file: /etc/consul/client.key}
`

// TestDebugConfigRedacts: the effective config shown by /debug/config holds none of the secrets, says where it
// redacted, and keeps what is not secret (paths of key files, an e-mail address, hosts of URLs).
func TestDebugConfigRedacts(t *testing.T) {
	cfg, err := decodeConfig([]byte(secretsConfig))
	if err != nil {
		t.Fatal(err)
	}
	cfg.setDefaults()
	// Validation refuses credentials in the Consul address; the view redacts them all the same.
	if err := cfg.validate(); err == nil || !strings.Contains(err.Error(), "discovery.consul.address: must not hold credentials") ||
		strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("validate: %v, want the Consul address refused without its credentials", err)
	}
	b, err := json.Marshal(cfg.view())
	if err != nil {
		t.Fatal(err)
	}
	view := string(b)
	if strings.Contains(view, "s3cr3t") {
		t.Errorf("/debug/config shows a secret:\n%s", view)
	}
	for _, want := range []string{
		`"db_password":"\u003credacted\u003e"`, `"apiKey":"\u003credacted\u003e"`, `"X-Auth-Token":"\u003credacted\u003e"`,
		`"token":"\u003credacted\u003e"`,
		`"http":"http://\u003credacted\u003e@127.0.0.1:8080/health?token=%3Credacted%3E\u0026verbose=1"`,
		`"address":"https://\u003credacted\u003e@consul.example:8501"`,
		`"sentry_dsn":"https://\u003credacted\u003e@sentry.example/42"`,
		`"key_file":"/etc/consul/client.key"`, `"owner":"team@example.com"`, `"version":"1.4"`,
	} {
		if !strings.Contains(view, want) {
			t.Errorf("/debug/config lacks %s:\n%s", want, view)
		}
	}
}

// TestDebugUpstreamsRedacts: endpoint metadata (from Consul registrations) is redacted in /debug/upstreams.
func TestDebugUpstreamsRedacts(t *testing.T) {
	v := redactedView([]proxy.UpstreamInfo{{Name: "api", Endpoints: []proxy.EndpointInfo{{
		ID: "api-1", Address: "10.0.0.1:8080",
		Meta: map[string]string{"version": "2", "auth_token": "meta-s3cr3t", "callback": "http://u:cb-s3cr3t@h/"},
	}}}})
	b, _ := json.Marshal(v)
	if s := string(b); strings.Contains(s, "s3cr3t") || !strings.Contains(s, `"version":"2"`) || !strings.Contains(s, `"10.0.0.1:8080"`) {
		t.Errorf("/debug/upstreams: %s", s)
	}
}

func TestRedactString(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"http://127.0.0.1:8080/health", "http://127.0.0.1:8080/health"},
		{"http://u:p@h:1/x", "http://<redacted>@h:1/x"},
		{"https://only-user@h", "https://<redacted>@h"},
		{"user:pass@consul:8500", "<redacted>@consul:8500"},
		{"http://h/p?a=1&Access_Token=x#frag", "http://h/p?a=1&Access_Token=%3Credacted%3E#frag"},
		{"http://h/p?password", "http://h/p?password"}, // no value
		{"http://h/a@b", "http://h/a@b"},               // @ in the path
		{"team@example.com", "team@example.com"},
		{"127.0.0.1:9001", "127.0.0.1:9001"},
		{"", ""},
	} {
		if got := redactString(tt.in); got != tt.want {
			t.Errorf("redactString(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestSecretKey(t *testing.T) {
	for k, want := range map[string]bool{
		"token": true, "accessToken": true, "DB_PASSWORD": true, "x-api-key": true, "apikey": true, "client_secret": true,
		"Authorization": true, "auth": true, "credentials": true, "passwd": true, "dbpassword": true, "sessionid": true,
		"key_file": false, "token_file": false, "cert_file": false, "author": false, "authority": false, "monkey": false,
		"version": false, "name": false, "address": false, "keepalive": false, "": false,
	} {
		if got := secretKey(k); got != want {
			t.Errorf("secretKey(%q) = %v, want %v", k, got, want)
		}
	}
}
