//go:build unix

package testports

import (
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
)

// claim reports whether port is this process's to hand out: no other live process holds the lock on its file in
// claimDir. The lock is held (its file left open) until the process exits, when the kernel releases it; a port
// this process claimed before is its own again. Without the directory, every port counts as claimed.
func claim(port int) bool {
	claims.mu.Lock()
	defer claims.mu.Unlock()
	if claims.held[port] {
		return true
	}
	dir, err := claimDir()
	if err != nil {
		return true
	}
	f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(port)), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return true
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return false // another test process has it
	}
	claims.held[port], claims.files = true, append(claims.files, f) // kept open: the lock lives with the process
	return true
}

var claims = struct {
	mu    sync.Mutex
	held  map[int]bool
	files []*os.File
}{held: map[int]bool{}}

// claimDir is the directory of the ports' lock files, shared by every test process of the machine.
var claimDir = sync.OnceValues(func() (string, error) {
	dir := filepath.Join(os.TempDir(), "meshlet-testports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return "", err
	}
	os.Chmod(dir, 0o777|os.ModeSticky) // shared by users; each lock file stays its creator's
	return dir, nil
})
