package main

// meshlet wait: block until a meshlet is ready, for start-up ordering where native sidecars are not available
// (a postStart hook of a classic sidecar, or the first step of an app's entrypoint).

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// waitCmd polls http://ADMIN/ready until it answers 200 (exit 0) or the timeout passes (exit 1).
func waitCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("wait", stderr)
	admin := fs.String("admin", defaultWaitAdmin(), "the meshlet's admin address, host:port ($MESHLET_ADMIN_LISTEN when set)")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	interval := fs.Duration("interval", 200*time.Millisecond, "time between two checks")
	if code, ok := parseFlags(fs, waitHelp, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "meshlet wait: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *timeout <= 0 || *interval <= 0 {
		fmt.Fprintln(stderr, "meshlet wait: -timeout and -interval must be positive")
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	last, err := waitReady(ctx, "http://"+*admin+"/ready", *interval)
	if err != nil {
		fmt.Fprintf(stderr, "meshlet wait: %s not ready after %s: %s\n", *admin, *timeout, last)
		return 1
	}
	fmt.Fprintf(stdout, "meshlet at %s is ready\n", *admin)
	return 0
}

// defaultWaitAdmin is where meshlet's admin listener is when -admin is not given: $MESHLET_ADMIN_LISTEN (what the
// injected container sets), with an unspecified host (0.0.0.0, [::], empty) meaning loopback; else 127.0.0.1:15000.
func defaultWaitAdmin() string {
	v := os.Getenv("MESHLET_ADMIN_LISTEN")
	host, port, err := net.SplitHostPort(v)
	if v == "" || err != nil {
		return "127.0.0.1:15000"
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// waitReady polls url until it answers 200 or ctx ends; it returns the last reason it was not ready.
func waitReady(ctx context.Context, url string, interval time.Duration) (string, error) {
	client := &http.Client{Timeout: 2 * time.Second}
	last := "no answer yet"
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err.Error(), err
		}
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return "", nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(body)))
		} else if ctx.Err() == nil {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-tick.C:
		}
	}
}
