package main_test

import (
	"testing"

	"meshlet.dev/meshlet/internal/meshlettest"
)

// TestMain builds the meshlet binary once (with -race) for the tests that run it (inject, webhook, deploy assets).
func TestMain(m *testing.M) { meshlettest.Main(m) }
