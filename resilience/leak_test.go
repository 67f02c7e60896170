package resilience

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine is still running when they end: every goroutine meshlet
// starts has an owner and an exit (DESIGN.md), and the tests close what they start.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
