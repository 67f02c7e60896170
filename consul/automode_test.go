package consul_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"meshlet.dev/meshlet/consul"
	"meshlet.dev/meshlet/discovery"
	"meshlet.dev/meshlet/discovery/discoverytest"
)

// TestConsulAutoModeNeverBypassesSidecars: in auto mode, the plain instances of a service are offered only to
// callers that do not require mutual TLS, and only while the service has no sidecar registered at all: a service
// whose sidecars all fail their checks has no endpoint (the callers get 503), never its plain instances, which
// would skip the sidecars' mutual TLS and intentions.
func TestConsulAutoModeNeverBypassesSidecars(t *testing.T) {
	agent := discoverytest.StartConsul(t, discoverytest.Options{})
	client := agent.Client()
	registerInstance(t, client, "pay-1", "pay", 9301)
	registerCheckedSidecar(t, client, "pay-1", "pay", 21301, api.HealthCritical)
	src := newSource(t, consul.Config{Address: agent.HTTPAddr})
	watch := func(mutualTLS bool) <-chan discovery.Snapshot {
		ch, err := src.WatchWith(t.Context(), "pay", discovery.WatchOptions{MutualTLS: mutualTLS})
		if err != nil {
			t.Fatal(err)
		}
		return ch
	}
	watches := []*latest{{name: "plaintext allowed", ch: watch(false)}, {name: "mutual TLS", ch: watch(true)}}
	steps := []struct {
		name   string
		change func()
		want   [2]string // the addresses each watch must offer ("": none)
	}{
		{"sidecar failing its check", func() {}, [2]string{"", ""}},
		{"sidecar warning", func() { client.Agent().UpdateTTL("check-pay-1-sidecar", "slow", api.HealthWarning) }, [2]string{"", ""}},
		{"sidecar passing", func() { client.Agent().UpdateTTL("check-pay-1-sidecar", "ok", api.HealthPassing) },
			[2]string{"127.0.0.1:21301", "127.0.0.1:21301"}},
		{"sidecar failing again", func() { client.Agent().UpdateTTL("check-pay-1-sidecar", "down", api.HealthCritical) },
			[2]string{"", ""}},
		{"no sidecar registered", func() { client.Agent().ServiceDeregister("pay-1-sidecar-proxy") },
			[2]string{"127.0.0.1:9301", ""}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			st.change()
			for i, w := range watches {
				w.settle(t, st.want[i])
			}
		})
	}
}

// latest follows a watch's channel and keeps its latest snapshot.
type latest struct {
	name string
	ch   <-chan discovery.Snapshot
	snap *discovery.Snapshot
}

// settle waits (5s at most) until the watch offers want, then makes sure it still does a moment later (a change
// still on its way would show by then).
func (l *latest) settle(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	quiet := time.Now().Add(500 * time.Millisecond)
	for {
		wait := time.Until(deadline)
		if l.snap != nil && addrs(*l.snap) == want {
			if wait = time.Until(quiet); wait <= 0 {
				return
			}
		}
		select {
		case s, ok := <-l.ch:
			if !ok {
				t.Fatalf("%s: channel closed", l.name)
			}
			l.snap = &s
		case <-time.After(wait):
			if l.snap == nil || addrs(*l.snap) != want {
				got := "no snapshot"
				if l.snap != nil {
					got = fmt.Sprintf("%q", addrs(*l.snap))
				}
				t.Fatalf("%s: offers %s, want %q", l.name, got, want)
			}
		}
	}
}

// registerCheckedSidecar registers a connect-proxy for service instance id with a TTL check in status.
func registerCheckedSidecar(t *testing.T, c *api.Client, id, name string, port int, status string) {
	t.Helper()
	err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{Kind: api.ServiceKindConnectProxy, ID: id + "-sidecar-proxy",
		Name: name + "-sidecar-proxy", Address: "127.0.0.1", Port: port,
		Proxy: &api.AgentServiceConnectProxyConfig{DestinationServiceName: name, DestinationServiceID: id},
		Check: &api.AgentServiceCheck{CheckID: "check-" + id + "-sidecar", TTL: "1h", Status: status}})
	if err != nil {
		t.Fatal(err)
	}
}
