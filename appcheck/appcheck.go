// Package appcheck is the local app's health check (service.check): its settings, one probe (HTTP GET, TCP
// connect or gRPC health check), and the Runner that runs it in meshlet for /ready when service.check.ready asks for it. The Consul
// agent runs the same check for the registration (package consul gives it to the agent).
package appcheck

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// Check is the app's own health check (service.check), run by the Consul agent: an HTTP GET (2xx passing, 429
// warning, anything else critical), a TCP connect, or a gRPC health check (grpc.health.v1.Health/Check over
// plaintext HTTP/2: SERVING passing, anything else critical). Exactly one of HTTP, TCP and GRPC is set.
type Check struct {
	HTTP string `yaml:"http" json:"http"` // URL, e.g. http://127.0.0.1:8080/health
	TCP  string `yaml:"tcp" json:"tcp"`   // host:port, e.g. the app's address
	// GRPC is host:port, or host:port/service for the health of one gRPC service (Consul's form), e.g.
	// 127.0.0.1:9090/shop.Cart; without /service the server's overall health ("").
	GRPC string `yaml:"grpc" json:"grpc"`
	// TLSSkipVerify makes an https:// HTTP check accept any server certificate, as the kubelet's HTTPS probes
	// do (the app's certificate rarely names 127.0.0.1). Default false: verified.
	TLSSkipVerify bool          `yaml:"tls_skip_verify" json:"tls_skip_verify"`
	Interval      time.Duration `yaml:"interval" json:"interval"` // default 10s
	Timeout       time.Duration `yaml:"timeout" json:"timeout"`   // default 2s
	// Ready, when true, makes meshlet run the check itself as well (at once, then every Interval, see
	// Runner): while it fails, meshlet's /ready answers 503 with the check's error, and it passes again with
	// the first passing run. Only readiness follows it: the registrations stay in Consul (an app outage never
	// deregisters; the sidecar's /ready check goes critical and passes again by itself), registration is not
	// delayed by it, and /live stays 200. Default false: only the Consul agent runs the check.
	Ready bool `yaml:"ready" json:"ready"`
}

// Validate reports the check's problems with their field paths under prefix.
func (c *Check) Validate(prefix string) error {
	var errs []error
	if n := countSet(c.HTTP, c.TCP, c.GRPC); n != 1 {
		errs = append(errs, fmt.Errorf("%s: set one of http, tcp and grpc (%d set)", prefix, n))
	}
	if c.HTTP != "" && !strings.HasPrefix(c.HTTP, "http://") && !strings.HasPrefix(c.HTTP, "https://") {
		errs = append(errs, fmt.Errorf("%s.http: %q must be an http:// or https:// URL", prefix, c.HTTP))
	}
	if u, err := url.Parse(c.HTTP); c.HTTP != "" && (err != nil || u.Host == "") {
		errs = append(errs, fmt.Errorf("%s.http: %q must be a URL with a host", prefix, c.HTTP))
	}
	if c.TCP != "" {
		if _, _, err := net.SplitHostPort(c.TCP); err != nil {
			errs = append(errs, fmt.Errorf("%s.tcp: %q must be host:port", prefix, c.TCP))
		}
	}
	if c.GRPC != "" {
		addr, _, _ := strings.Cut(c.GRPC, "/")
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s.grpc: %q must be host:port or host:port/service", prefix, c.GRPC))
		}
	}
	if c.TLSSkipVerify && !strings.HasPrefix(c.HTTP, "https://") {
		errs = append(errs, fmt.Errorf("%s.tls_skip_verify: only for an https:// http check", prefix))
	}
	if c.Interval != 0 && c.Interval < time.Second {
		errs = append(errs, fmt.Errorf("%s.interval: must be at least 1s (Consul's shortest check interval)", prefix))
	}
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("%s.timeout: must not be negative", prefix))
	}
	return errors.Join(errs...)
}

func countSet(vs ...string) int {
	n := 0
	for _, v := range vs {
		if v != "" {
			n++
		}
	}
	return n
}

// Intervals returns Interval and Timeout with their defaults applied.
func (c *Check) Intervals() (interval, timeout time.Duration) {
	interval, timeout = c.Interval, c.Timeout
	if interval == 0 {
		interval = 10 * time.Second
	}
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	return interval, timeout
}

// Probe runs the check once, within Timeout: an HTTP GET must answer 2xx (Consul's 429 "warning" fails here,
// as it leaves passing-only routing too), a TCP check must connect, a gRPC check must answer SERVING. The error says what failed, with the start of
// a failing response's body; it never blocks longer than Timeout or past ctx.
func (c *Check) Probe(ctx context.Context) error {
	_, timeout := c.Intervals()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if c.TCP != "" {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", c.TCP)
		if err != nil {
			return fmt.Errorf("app check tcp %s: %w", c.TCP, err)
		}
		return conn.Close()
	}
	if c.GRPC != "" {
		return c.probeGRPC(ctx)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.HTTP, nil)
	if err != nil {
		return fmt.Errorf("app check http %s: invalid URL", c.shownURL())
	}
	req.Header.Set("User-Agent", "meshlet app check")
	client := probeClient
	if c.TLSSkipVerify {
		client = probeClientSkipVerify
	}
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error // its URL holds the user name and the query
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("app check http %s: %w", c.shownURL(), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 128))
	msg := strings.Join(strings.Fields(string(b)), " ")
	return fmt.Errorf("app check http %s: %s: %q", c.shownURL(), resp.Status, msg)
}

// shownURL is the check's URL as errors, /ready and logs show it: without userinfo and query, which may hold
// credentials (issue 11).
func (c *Check) shownURL() string {
	u, err := url.Parse(c.HTTP)
	if err != nil {
		return "(unparseable URL)"
	}
	u.User, u.RawQuery, u.ForceQuery = nil, "", false
	return u.String()
}

// probeClient runs HTTP app checks: a new connection each time (a probe holds none to the app between runs).
// probeClientSkipVerify is the same for tls_skip_verify.
var (
	probeClient           = &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	probeClientSkipVerify = &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // the check's choice: tls_skip_verify
)

// probeGRPC runs grpc.health.v1.Health/Check on a connection of its own (closed after the probe) over plaintext
// HTTP/2, as Consul's gRPC check does without TLS, and as the kubelet's grpc probe does. It speaks the call
// itself (healthcheck.go): meshlet does not link a gRPC client for one unary call.
func (c *Check) probeGRPC(ctx context.Context) error {
	addr, service, _ := strings.Cut(c.GRPC, "/")
	st, err := healthCheck(ctx, addr, service)
	if err != nil {
		return fmt.Errorf("app check grpc %s: %w", c.GRPC, err)
	}
	if st != servingStatusServing {
		return fmt.Errorf("app check grpc %s: status %s", c.GRPC, st)
	}
	return nil
}

// Runner runs a Check in meshlet (Check.Ready) and keeps its latest result for /ready.
type Runner struct {
	c   Check
	log *slog.Logger
	err atomic.Pointer[error] // latest result; nil until the first run
}

// NewRunner returns a runner of c that logs each change of result on log. Nothing runs before Run.
func NewRunner(c Check, log *slog.Logger) *Runner {
	return &Runner{c: c, log: log.With("component", "app-check")}
}

// Ready is the latest result: nil when the check passed, its error when it failed, an error saying so before the
// first run has finished. Safe for concurrent use; it never blocks.
func (r *Runner) Ready() error {
	p := r.err.Load()
	if p == nil {
		return errors.New("app check: not run yet")
	}
	return *p
}

// Run runs the check at once, then every Interval, until ctx ends; it returns nil then.
func (r *Runner) Run(ctx context.Context) error {
	interval, _ := r.c.Intervals()
	for first := true; ; first = false {
		err := r.c.Probe(ctx)
		if ctx.Err() != nil {
			return nil
		}
		prev := r.err.Swap(&err)
		switch {
		case err != nil && (first || *prev == nil):
			r.log.Warn("app check failing: not ready", "error", err.Error())
		case err == nil && !first && *prev != nil:
			r.log.Info("app check passing again: ready")
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}
