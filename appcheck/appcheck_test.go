package appcheck

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestErrorHidesCredentials: the error of a failing app check (shown by /ready and logged) names the
// check's URL without its userinfo and query, which may hold credentials.
func TestErrorHidesCredentials(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	defer app.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()
	for _, base := range []string{app.URL, closedURL} {
		u := strings.Replace(base, "http://", "http://probe:pw-s3cr3t@", 1) + "/health?token=q-s3cr3t"
		c := &Check{HTTP: u}
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
