package admin

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func start(t *testing.T, opts Options) string {
	t.Helper()
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	s := New(Config{Listen: "127.0.0.1:0"}, opts)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	return "http://" + s.Addr()
}

func do(t *testing.T, method, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAdminEndpoints(t *testing.T) {
	var notReady error = errors.New("upstream api: waiting for its first endpoints")
	reloadErr := errors.New("upstreams[0].name: required")
	base := start(t, Options{
		Ready:     func() error { return notReady },
		Upstreams: func() any { return []string{"api"} },
		Config:    func() any { return map[string]string{"k": "v"} },
		Reload:    func() ([]string, error) { return nil, reloadErr },
	})
	tests := []struct {
		method, path string
		status       int
		contains     string
	}{
		{"GET", "/live", 200, "ok"},
		{"GET", "/ready", 503, "waiting for its first endpoints"},
		{"GET", "/debug/upstreams", 200, `"upstreams": [`},
		{"GET", "/debug/config", 200, `"k": "v"`},
		{"POST", "/debug/reload", 400, "upstreams[0].name: required"},
		{"GET", "/debug/reload", 405, ""},
		{"POST", "/ready", 405, ""},
		{"GET", "/metrics", 404, ""}, // no metrics handler given
		{"GET", "/nope", 404, ""},
	}
	for _, tt := range tests {
		status, body := do(t, tt.method, base+tt.path)
		if status != tt.status || !strings.Contains(body, tt.contains) {
			t.Errorf("%s %s = %d %q, want %d containing %q", tt.method, tt.path, status, body, tt.status, tt.contains)
		}
	}
	notReady, reloadErr = nil, nil
	if status, _ := do(t, "GET", base+"/ready"); status != 200 {
		t.Errorf("/ready = %d once ready", status)
	}
	if status, body := do(t, "POST", base+"/debug/reload"); status != 200 || !strings.Contains(body, `"reloaded": true`) {
		t.Errorf("reload = %d %q", status, body)
	}
}

func TestAdminListenError(t *testing.T) {
	base := start(t, Options{})
	s := New(Config{Listen: strings.TrimPrefix(base, "http://")}, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	err := s.Start()
	if err == nil || !strings.Contains(err.Error(), "admin.listen") || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("second bind: %v", err)
	}
}

func TestQuitQuitQuit(t *testing.T) {
	t.Run("on by default, loopback", func(t *testing.T) {
		quit := make(chan struct{}, 1)
		base := start(t, Options{Quit: func() { quit <- struct{}{} }})
		if code, body := do(t, "GET", base+"/quitquitquit"); code != 405 {
			t.Errorf("GET: %d %s, want 405", code, body)
		}
		select {
		case <-quit:
			t.Fatal("GET quit")
		default:
		}
		if code, body := do(t, "POST", base+"/quitquitquit"); code != 200 || !strings.Contains(body, "shutting down") {
			t.Errorf("POST: %d %s", code, body)
		}
		select {
		case <-quit:
		default:
			t.Fatal("POST /quitquitquit did not call Quit")
		}
	})
	t.Run("disabled by config", func(t *testing.T) {
		off := false
		s := New(Config{Listen: "127.0.0.1:0", EnableQuit: &off}, Options{
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Quit: func() { t.Error("quit called") }})
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
		defer s.Shutdown(context.Background())
		if code, _ := do(t, "POST", "http://"+s.Addr()+"/quitquitquit"); code != 404 {
			t.Errorf("disabled: %d, want 404", code)
		}
	})
	t.Run("non-loopback client refused", func(t *testing.T) {
		s := New(Config{}, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Quit: func() { t.Error("quit called") }})
		for _, remote := range []string{"10.1.2.3:4567", "[fd00::1]:80", "garbage"} {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest("POST", "/quitquitquit", nil)
			req.RemoteAddr = remote
			s.srv.Handler.ServeHTTP(rec, req)
			if rec.Code != 403 {
				t.Errorf("%s: %d, want 403", remote, rec.Code)
			}
		}
		// A process in the same pod calling the pod IP: its source is the address it called.
		rec := httptest.NewRecorder()
		req := httptest.NewRequest("POST", "http://10.1.2.3:15000/quitquitquit", nil)
		req.RemoteAddr = "10.1.2.3:4567"
		req = req.WithContext(context.WithValue(req.Context(), http.LocalAddrContextKey, &net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 15000}))
		okSame := false
		s.opts.Quit = func() { okSame = true }
		s.srv.Handler.ServeHTTP(rec, req)
		if rec.Code != 200 || !okSame {
			t.Errorf("same address: %d, quit %v", rec.Code, okSame)
		}
		rec = httptest.NewRecorder()
		req = httptest.NewRequest("POST", "http://[::1]:15000/quitquitquit", nil)
		req.RemoteAddr = "[::1]:5000"
		ok := false
		s.opts.Quit = func() { ok = true }
		s.srv.Handler.ServeHTTP(rec, req)
		if rec.Code != 200 || !ok {
			t.Errorf("::1: %d, quit %v", rec.Code, ok)
		}
	})
}
