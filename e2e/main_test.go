// Package e2e_test holds meshlet's end-to-end tests: real meshlet processes (built once with -race by TestMain)
// on loopback, driven with real clients and servers, Consul agents and certificates; internal/meshlettest is
// their harness.
package e2e_test

import (
	"testing"

	"meshlet.dev/meshlet/internal/meshlettest"
)

func TestMain(m *testing.M) { meshlettest.Main(m) }
