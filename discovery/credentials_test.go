package discovery

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestAppCheckErrorHidesCredentials: the error of a failing app check (shown by /ready and logged) names the
// check's URL without its userinfo and query, which may hold credentials.
func TestAppCheckErrorHidesCredentials(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	defer app.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()
	for _, base := range []string{app.URL, closedURL} {
		u := strings.Replace(base, "http://", "http://probe:pw-s3cr3t@", 1) + "/health?token=q-s3cr3t"
		c := &AppCheck{HTTP: u}
		err := c.Probe(context.Background())
		if err == nil {
			t.Fatalf("%s: no error", u)
		}
		if strings.Contains(err.Error(), "s3cr3t") || strings.Contains(err.Error(), "probe") ||
			!strings.Contains(err.Error(), "/health") {
			t.Errorf("error %q shows the credentials or not the check", err)
		}
	}
}

// TestConsulAddressCredentialsRefused: an address with userinfo is refused by Validate, and the error does not
// repeat the credentials.
func TestConsulAddressCredentialsRefused(t *testing.T) {
	for _, tt := range []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1:8500", true},
		{"https://consul.example:8501", true},
		{"unix:///run/consul.sock", true},
		{"http://user:pw-s3cr3t@127.0.0.1:8500", false},
		{"https://pw-s3cr3t@consul.example:8501/", false},
		{"user:pw-s3cr3t@127.0.0.1:8500", false},
	} {
		c := ConsulConfig{Address: tt.addr}
		c.SetDefaults()
		err := c.Validate("discovery.consul")
		if tt.ok != (err == nil) {
			t.Errorf("%s: %v, want ok %v", tt.addr, err, tt.ok)
			continue
		}
		if err != nil && (!strings.Contains(err.Error(), "discovery.consul.address: must not hold credentials") || strings.Contains(err.Error(), "s3cr3t")) {
			t.Errorf("%s: %v", tt.addr, err)
		}
	}
}
