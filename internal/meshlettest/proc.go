// Package meshlettest starts and watches meshlet processes and the servers and clients around them, for the
// end-to-end tests (e2e), `make bench`, `make soak` and the demo: one process starter (StartCmd), one readiness
// wait (WaitFor, WaitReady), one log tail (LogTail), one free-port picker (FreeAddr, FreeAddrs, PickAddrs), metrics read with
// expfmt (Scrape), configs built from the config types (File), the HTTP/1.1, h2c and gRPC test backends, a
// restartable server (Restartable), raw HTTP/1.1 exchanges and a raw HTTP/2 client. The functions that take a
// testing.TB are for tests; the rest return errors, for the tools.
package meshlettest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	ReadyTimeout = 15 * time.Second // from start until GET /ready answers 200
	StopTimeout  = 10 * time.Second // from SIGTERM until the process must have exited (drain_timeout is 5s)
)

// Proc is one running process: a meshlet, or another program a tool started (the demo's apps, a Consul agent).
type Proc struct {
	Name    string // how messages name it: "meshlet", "meshlet A", "api's meshlet"
	Admin   string // admin listen address of a meshlet; "" for other programs
	CfgPath string // config file of a meshlet; may be ""
	LogPath string // the process's stdout and stderr
	Cmd     *exec.Cmd
	exited  chan struct{} // closed when the process has exited; waitErr is set then
	waitErr error
}

// StartCmd starts cmd with its stdout and stderr appended to logPath. It is the one way this package starts a
// process. name, admin and cfgPath are recorded in the Proc as given.
func StartCmd(name, admin, cfgPath, logPath string, cmd *exec.Cmd) (*Proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	p := &Proc{Name: name, Admin: admin, CfgPath: cfgPath, LogPath: logPath, Cmd: cmd, exited: make(chan struct{})}
	p.Cmd.Stdout, p.Cmd.Stderr = f, f
	if err := p.Cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		p.waitErr = p.Cmd.Wait()
		f.Close()
		close(p.exited)
	}()
	return p, nil
}

// StartConfig writes yaml to cfgPath and starts `bin run -config cfgPath`, its output appended to logPath, with
// the environment less MESHLET_* (so that the generated config is what runs). The process gets SIGKILL if the
// calling program dies first (Linux).
func StartConfig(bin, name, admin, cfgPath, logPath, yaml string) (*Proc, error) {
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "run", "-config", cfgPath)
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = dieWithParent(nil)
	return StartCmd(name, admin, cfgPath, logPath, cmd)
}

// cleanEnv is the environment without MESHLET_* variables.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MESHLET_") {
			env = append(env, kv)
		}
	}
	return env
}

func (p *Proc) PID() int { return p.Cmd.Process.Pid }

// Exited is closed when the process has exited.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// WaitErr is how the process ended, once Exited is closed; it blocks until then.
func (p *Proc) WaitErr() error {
	<-p.exited
	return p.waitErr
}

// Alive reports whether the process has not exited.
func (p *Proc) Alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Log returns all the process has written to its log so far ("" if the log cannot be read).
func (p *Proc) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// ErrExited is wrapped by WaitFor's error when the process exited before it was ready.
var ErrExited = errors.New("exited before it was ready")

// WaitFor polls check every 20ms until it returns nil, the process exits, ctx ends or timeout passes (0: only
// ctx bounds the wait). The error of an exit wraps ErrExited and ends with the last 20 lines of the log.
func (p *Proc) WaitFor(ctx context.Context, timeout time.Duration, check func(context.Context) error) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := check(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s %w (%v); log %s:\n%s", p.Name, ErrExited, p.waitErr, p.LogPath, LogTail(p.LogPath, 20))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (last: %v); log %s:\n%s", p.Name, ctx.Err(), err, p.LogPath, LogTail(p.LogPath, 20))
		case <-tick.C:
		}
	}
}

// WaitReady waits (WaitFor) until GET /ready on the admin address answers 200.
func (p *Proc) WaitReady(ctx context.Context, timeout time.Duration) error {
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	return p.WaitFor(ctx, timeout, func(ctx context.Context) error { return HTTPOK(ctx, client, "http://"+p.Admin+"/ready") })
}

// HTTPOK GETs url with client and returns nil for a 200, else an error with the status and the start of the body.
func HTTPOK(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %q", url, resp.StatusCode, bytes.TrimSpace(body))
	}
	return nil
}

// Stop sends SIGTERM and waits up to StopTimeout for the process to exit, then kills it. It returns an error if
// the process had already exited, did not exit in time, or exited with a non-zero status.
func (p *Proc) Stop() error {
	if !p.Alive() {
		return fmt.Errorf("%s had exited before it was stopped (%v); log:\n%s", p.Name, p.waitErr, LogTail(p.LogPath, 20))
	}
	if err := p.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("%s: SIGTERM: %w", p.Name, err)
	}
	t := time.NewTimer(StopTimeout)
	defer t.Stop()
	select {
	case <-p.exited:
	case <-t.C:
		p.Cmd.Process.Kill()
		<-p.exited
		return fmt.Errorf("%s did not exit within %s of SIGTERM; killed", p.Name, StopTimeout)
	}
	if p.waitErr != nil {
		return fmt.Errorf("%s exited with %v after SIGTERM; log:\n%s", p.Name, p.waitErr, LogTail(p.LogPath, 20))
	}
	return nil
}

// Kill ends the process at once (cleanup on a failed run) and waits for it.
func (p *Proc) Kill() {
	if p.Alive() {
		p.Cmd.Process.Kill()
		<-p.exited
	}
}

// ProcField returns the first number on the line of /proc/<pid>/<file> that starts with key: ProcField(pid, "status",
// "VmRSS:") is the resident set size in kB, ProcField(pid, "limits", "Max open files") the soft open-files limit.
func ProcField(pid int, file, key string) (int64, error) {
	path := fmt.Sprintf("/proc/%d/%s", pid, file)
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, key); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("%s: no %q line", path, key)
}

// LogTail returns the last n lines of a log file, indented.
func LogTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "    (no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 1 && lines[0] == "" {
		return "    (empty)"
	}
	return "    " + strings.Join(lines, "\n    ")
}
