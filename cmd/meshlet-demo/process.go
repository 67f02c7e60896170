package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// process is one program the demo started. Its stdout and stderr go to a log file.
type process struct {
	name string // e.g. "api's meshlet"
	log  string // path of the log file
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // how it exited; read after done
}

// terminatedBySignal reports whether err says that the process was ended by SIGTERM before it could handle it.
func terminatedBySignal(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM
}

// startProcess starts bin with args, logging to dir/file.
func startProcess(name, dir, file, bin string, args ...string) (*process, error) {
	p := &process{name: name, log: filepath.Join(dir, file), done: make(chan struct{})}
	f, err := os.Create(p.log)
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.SysProcAttr = ownProcessGroup() // Ctrl-C reaches the demo only, which then stops the others
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// diedError describes a process that ended on its own, with the end of its log.
func (p *process) diedError() error {
	return fmt.Errorf("%s exited unexpectedly (%v); last lines of %s:\n%s", p.name, p.err, p.log, p.tail(15))
}

// tail returns the last n lines of the process log, indented.
func (p *process) tail(n int) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return "  (" + err.Error() + ")"
	}
	lines := strings.Split(string(bytes.TrimRight(b, "\n")), "\n")
	lines = lines[max(0, len(lines)-n):]
	return "  | " + strings.Join(lines, "\n  | ")
}

// waitReady polls ready every 50ms until it succeeds, the process exits, or ctx ends.
func (p *process) waitReady(ctx context.Context, ready func(context.Context) error) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := ready(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return p.diedError()
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (log: %s)", p.name, err, p.log)
		case <-tick.C:
		}
	}
}

// stopAll sends SIGTERM to every running process, waits up to timeout for all of them, then kills the rest. It
// returns one error per process that did not end cleanly.
func stopAll(procs []*process, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for _, p := range procs {
		if p.exited() {
			continue
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		wg.Go(func() {
			select {
			case <-p.done:
				if p.err != nil && !terminatedBySignal(p.err) {
					mu.Lock()
					errs = append(errs, fmt.Errorf("%s ended with %v after SIGTERM (log: %s)", p.name, p.err, p.log))
					mu.Unlock()
				}
			case <-ctx.Done():
				p.cmd.Process.Kill()
				<-p.done
				mu.Lock()
				errs = append(errs, fmt.Errorf("%s still running %v after SIGTERM: killed (log: %s)", p.name, timeout, p.log))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
