// Package meshletproc starts and watches meshlet processes for the project's tools (`make bench`, `make soak`):
// the config file, a log file, SIGKILL when the tool dies first, readiness through /ready, and a clean stop.
package meshletproc

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

const (
	ReadyTimeout = 15 * time.Second // from start until GET /ready answers 200
	StopTimeout  = 10 * time.Second // from SIGTERM until the process must have exited (drain_timeout is 5s)
)

// Proc is one running meshlet process.
type Proc struct {
	Name    string // how messages name it: "meshlet", "meshlet A"
	Admin   string // admin listen address
	CfgPath string
	LogPath string
	Cmd     *exec.Cmd
	exited  chan struct{} // closed when the process has exited; waitErr is set then
	waitErr error
}

// Start writes yaml to cfgPath and starts `bin run -config cfgPath`, its output appended to logPath, with the
// environment less MESHLET_* (so that the generated config is what runs). The process gets SIGKILL if the
// calling program dies first.
func Start(bin, name, admin, cfgPath, logPath, yaml string) (*Proc, error) {
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o644); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	p := &Proc{Name: name, Admin: admin, CfgPath: cfgPath, LogPath: logPath, exited: make(chan struct{})}
	p.Cmd = exec.Command(bin, "run", "-config", cfgPath)
	p.Cmd.Stdout, p.Cmd.Stderr = f, f
	p.Cmd.Env = cleanEnv()
	p.Cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
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

// WaitErr is how the process ended, once Exited is closed.
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

// WaitReady polls GET /ready on the admin port until it answers 200, the process exits, ctx ends or ReadyTimeout
// passes.
func (p *Proc) WaitReady(ctx context.Context) error {
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(ReadyTimeout)
	last := "no answer"
	for time.Now().Before(deadline) {
		if !p.Alive() {
			return fmt.Errorf("%s exited before it was ready (%v); log:\n%s", p.Name, p.waitErr, LogTail(p.LogPath, 20))
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		resp, err := client.Get("http://" + p.Admin + "/ready")
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %q", resp.StatusCode, bytes.TrimSpace(body))
		} else {
			last = err.Error()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %s (last /ready: %s); log:\n%s", p.Name, ReadyTimeout, last, LogTail(p.LogPath, 20))
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

// FreeAddrs returns n distinct loopback addresses whose ports were free a moment ago. All n listeners are open at
// once, so the ports differ.
func FreeAddrs(n int) ([]string, error) {
	var out []string
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close()
		out = append(out, l.Addr().String())
	}
	return out, nil
}
