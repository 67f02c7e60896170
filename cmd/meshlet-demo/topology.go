package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"meshlet.dev/meshlet/internal/meshlettest"
)

// meshletConfig is a meshlet config file, in meshlet's own config types; the demo reads where everything listens.
type meshletConfig = meshlettest.File

// topology is the demo mesh, read from the two meshlet configs so that they are the one place that names ports.
type topology struct {
	WebConfig, APIConfig string // paths of the meshlet config files

	WebAddr  string // the web app
	APIAddr  string // the api app
	APIGRPC  string // web's meshlet upstream listener for api's gRPC
	APIHTTP  string // web's meshlet upstream listener for api's HTTP
	Inbound  string // api's meshlet inbound listener
	WebAdmin string // web's meshlet admin
	APIAdmin string // api's meshlet admin
	// CertsDir is where the configs expect the certificates made by `meshlet certs` (the directory of their
	// tls.cert_file); empty when they take none from files.
	CertsDir string
	// Services are the service names of web's and api's meshlets, whose certificates the demo issues.
	Services []string
	// Consul is the address of the Consul agent the meshlets use (discovery.consul.address); empty for the static
	// demo. The demo runs a dev agent there: HTTP on it, its other ports at Consul+100 and up (consulPorts).
	Consul string
}

// loadTopology reads web-meshlet.yaml and api-meshlet.yaml in dir.
func loadTopology(dir string) (*topology, error) {
	t := &topology{
		WebConfig: filepath.Join(dir, "web-meshlet.yaml"),
		APIConfig: filepath.Join(dir, "api-meshlet.yaml"),
	}
	web, err := readConfig(t.WebConfig)
	if err != nil {
		return nil, err
	}
	api, err := readConfig(t.APIConfig)
	if err != nil {
		return nil, err
	}
	t.WebAddr, t.APIAddr, t.Inbound = web.Service.Address, api.Service.Address, api.Inbound.Listen
	if api.TLS.CertFile != "" && web.TLS.CertFile != "" {
		t.CertsDir = filepath.Dir(api.TLS.CertFile)
		t.Services = []string{web.Service.Name, api.Service.Name}
	}
	t.WebAdmin, t.APIAdmin = orDefault(web.Admin.Listen), orDefault(api.Admin.Listen)
	for _, u := range web.Upstreams {
		switch u.Name {
		case "api-grpc":
			t.APIGRPC = u.Listen
		case "api-http":
			t.APIHTTP = u.Listen
		}
	}

	var errs []error
	if (web.Discovery.Consul == nil) != (api.Discovery.Consul == nil) {
		errs = append(errs, errors.New("both meshlet configs use discovery.consul, or neither"))
	} else if web.Discovery.Consul != nil {
		t.Consul = web.Discovery.Consul.Address
		if a := api.Discovery.Consul.Address; a != t.Consul {
			errs = append(errs, fmt.Errorf("the two configs name different Consul agents (%q, %q)", t.Consul, a))
		}
		if _, err := t.consulPorts(); err != nil {
			errs = append(errs, fmt.Errorf("%s: discovery.consul.address: %w", t.WebConfig, err))
		}
	}
	for _, f := range []struct{ val, what string }{
		{t.WebAddr, t.WebConfig + ": service.address"},
		{t.APIAddr, t.APIConfig + ": service.address"},
		{t.Inbound, t.APIConfig + ": inbound.listen"},
		{t.APIGRPC, t.WebConfig + `: upstream "api-grpc" listen`},
		{t.APIHTTP, t.WebConfig + `: upstream "api-http" listen`},
	} {
		if f.val == "" {
			errs = append(errs, fmt.Errorf("%s: missing, the demo needs it", f.what))
		}
	}
	return t, errors.Join(errs...)
}

func readConfig(path string) (*meshletConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var c meshletConfig
	if err := yaml.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &c, nil
}

// orDefault applies meshlet's default admin address.
func orDefault(admin string) string {
	if admin == "" {
		return "127.0.0.1:15000"
	}
	return admin
}

// ports lists every address the demo listens on, with what listens there.
func (t *topology) ports() [][2]string {
	out := [][2]string{
		{t.WebAddr, "web"},
		{t.APIGRPC, "web's meshlet, upstream api-grpc"},
		{t.APIHTTP, "web's meshlet, upstream api-http"},
		{t.WebAdmin, "web's meshlet, admin"},
		{t.Inbound, "api's meshlet, inbound"},
		{t.APIAdmin, "api's meshlet, admin"},
		{t.APIAddr, "api"},
	}
	if ps, err := t.consulPorts(); err == nil && t.Consul != "" {
		for _, name := range []string{"http", "dns", "serf_lan", "serf_wan", "server"} {
			out = append(out, [2]string{net.JoinHostPort("127.0.0.1", strconv.Itoa(ps[name])), "consul, " + name})
		}
	}
	return out
}

// consulPorts are the ports of the demo's Consul dev agent: HTTP where the configs say, the others next to it
// (+100 dns, +101 serf_lan, +102 serf_wan, +103 server), so that a local Consul on its usual ports is left alone.
func (t *topology) consulPorts() (map[string]int, error) {
	host, port, err := net.SplitHostPort(strings.TrimPrefix(t.Consul, "http://"))
	if err != nil {
		return nil, err
	}
	if host != "127.0.0.1" {
		return nil, fmt.Errorf("%q: the demo runs its Consul agent on 127.0.0.1", t.Consul)
	}
	http, err := strconv.Atoi(port)
	if err != nil || http < 1 || http > 65535-103 {
		return nil, fmt.Errorf("%q: bad port", t.Consul)
	}
	return map[string]int{"http": http, "dns": http + 100, "serf_lan": http + 101, "serf_wan": http + 102, "server": http + 103}, nil
}

// checkPortsFree reports the demo ports that something already listens on.
func (t *topology) checkPortsFree() error {
	var taken []string
	for _, p := range t.ports() {
		l, err := net.Listen("tcp", p[0])
		if err != nil {
			taken = append(taken, fmt.Sprintf("  %s (%s): %v", p[0], p[1], errors.Unwrap(err)))
			continue
		}
		l.Close()
	}
	if len(taken) == 0 {
		return nil
	}
	return fmt.Errorf("demo ports in use (is a demo already running? ss -ltnp shows who holds them):\n%s",
		strings.Join(taken, "\n"))
}
