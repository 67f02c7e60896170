package main

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"meshlet.dev/meshlet/internal/meshlettest"
)

// process is one program the demo started (meshlettest.StartCmd). Its stdout and stderr go to a log file.
type process = meshlettest.Proc

// terminatedBySignal reports whether err says that the process was ended by SIGTERM before it could handle it.
func terminatedBySignal(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM
}

// startProcess starts bin with args, logging to dir/file, in its own process group.
func startProcess(name, dir, file, bin string, args ...string) (*process, error) {
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = ownProcessGroup() // Ctrl-C reaches the demo only, which then stops the others
	return meshlettest.StartCmd(name, "", "", filepath.Join(dir, file), cmd)
}

// diedError describes a process that ended on its own, with the end of its log.
func diedError(p *process) error {
	return fmt.Errorf("%s exited unexpectedly (%v); last lines of %s:\n%s", p.Name, p.WaitErr(), p.LogPath, meshlettest.LogTail(p.LogPath, 15))
}

// waitReady polls ready until it succeeds, the process exits, or ctx ends (meshlettest.Proc.WaitFor).
func waitReady(ctx context.Context, p *process, ready func(context.Context) error) error {
	return p.WaitFor(ctx, 0, ready)
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
		if !p.Alive() {
			continue
		}
		p.Cmd.Process.Signal(syscall.SIGTERM)
		wg.Go(func() {
			select {
			case <-p.Exited():
				if err := p.WaitErr(); err != nil && !terminatedBySignal(err) {
					mu.Lock()
					errs = append(errs, fmt.Errorf("%s ended with %v after SIGTERM (log: %s)", p.Name, err, p.LogPath))
					mu.Unlock()
				}
			case <-ctx.Done():
				p.Kill()
				mu.Lock()
				errs = append(errs, fmt.Errorf("%s still running %v after SIGTERM: killed (log: %s)", p.Name, timeout, p.LogPath))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
