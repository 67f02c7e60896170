package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// profileSeconds is how long a profile of the throughput phase covers at most.
const profileSeconds = 10

// startProfiles fetches in the background, from each meshlet of ms (admin.pprof is on with -profile), a CPU
// profile and an allocation profile of the next d (at most profileSeconds, ending before the phase does) and
// writes them into b.opts.profileDir as PROTOCOL-PATH-ROLE-cpu.pprof and -allocs.pprof (read them with
// `go tool pprof -top FILE`). The returned func waits for them; failures become notes.
func (b *bench) startProfiles(p protocol, k pathKind, ms []*meshletStats, d time.Duration) (wait func()) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	if b.opts.profileDir == "" {
		return wg.Wait
	}
	secs := max(1, min(profileSeconds, int(d.Seconds())-1))
	for _, m := range ms {
		if m.proc == nil {
			continue // nginx
		}
		client := &http.Client{Transport: m.proc.adminClient().Transport, Timeout: time.Duration(secs)*time.Second + 15*time.Second}
		for _, kind := range []string{"cpu", "allocs"} {
			name := fmt.Sprintf("%s-%s-%s-%s.pprof", p, k, m.Role, kind)
			url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", m.proc.Admin, secs)
			if kind == "allocs" {
				url = fmt.Sprintf("http://%s/debug/pprof/allocs?seconds=%d", m.proc.Admin, secs)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := fetchTo(client, url, filepath.Join(b.opts.profileDir, name)); err != nil {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("profile %s: %v", name, err))
					mu.Unlock()
				}
			}()
		}
	}
	return func() {
		wg.Wait()
		for _, f := range failures {
			b.note(f)
		}
	}
}

// fetchTo GETs url with client and writes a 200 answer's body to path.
func fetchTo(client *http.Client, url, path string) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		return fmt.Errorf("GET %s: %d %q", url, resp.StatusCode, b)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
