package consul_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/consul"
	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/discovery/discoverytest"
)

// TestConsulWatchOptions: per-watch tag and datacenter narrow the answer; watches with different options are
// separate, those with the same share; a datacenter that does not exist is an error Err reports.
func TestConsulWatchOptions(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	client := agent.Client()
	for _, in := range []struct {
		id   string
		port int
		tag  string
	}{{"api-1", 9301, "v1"}, {"api-2", 9302, "v2"}} {
		err := client.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: in.id, Name: "api", Address: "127.0.0.1",
			Port: in.port, Tags: []string{in.tag}, Check: &api.AgentServiceCheck{TTL: "1h", Status: api.HealthPassing}})
		if err != nil {
			t.Fatal(err)
		}
	}
	c := newSource(t, consul.Config{Address: agent.HTTPAddr, Mode: consul.ModeService})
	ctx := t.Context()
	tests := []struct {
		name string
		opts discovery.WatchOptions
		want string
	}{
		{"no options", discovery.WatchOptions{}, "127.0.0.1:9301,127.0.0.1:9302"},
		{"tag v2", discovery.WatchOptions{Tag: "v2"}, "127.0.0.1:9302"},
		{"tag v1 in dc1", discovery.WatchOptions{Tag: "v1", Datacenter: "dc1"}, "127.0.0.1:9301"},
		{"datacenter dc1", discovery.WatchOptions{Datacenter: "dc1"}, "127.0.0.1:9301,127.0.0.1:9302"},
		{"unknown tag", discovery.WatchOptions{Tag: "v3"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ch, err := discovery.Watch(ctx, c, "api", tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			next(t, ch, 5*time.Second, tc.name, func(s discovery.Snapshot) bool { return addrs(s) == tc.want })
		})
	}

	// A datacenter that does not exist: no snapshot, and Err says why.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if _, err := c.WatchWith(wctx, "api", discovery.WatchOptions{Datacenter: "nowhere"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "Err names the watch and the datacenter", func() bool {
		err := c.Err()
		return err != nil && strings.Contains(err.Error(), "api[dc=nowhere]") && strings.Contains(err.Error(), "datacenter")
	})
	t.Logf("Err: %v", c.Err())
}
