package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"
)

// meshletConfig is the part of a meshlet config file that the demo needs to know: where everything listens.
type meshletConfig struct {
	Service struct {
		Name    string `yaml:"name"`
		Address string `yaml:"address"`
	} `yaml:"service"`
	Inbound struct {
		Listen string `yaml:"listen"`
	} `yaml:"inbound"`
	Upstreams []struct {
		Name     string `yaml:"name"`
		Listen   string `yaml:"listen"`
		Protocol string `yaml:"protocol"`
	} `yaml:"upstreams"`
	Admin struct {
		Listen string `yaml:"listen"`
	} `yaml:"admin"`
}

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
	return [][2]string{
		{t.WebAddr, "web"},
		{t.APIGRPC, "web's meshlet, upstream api-grpc"},
		{t.APIHTTP, "web's meshlet, upstream api-http"},
		{t.WebAdmin, "web's meshlet, admin"},
		{t.Inbound, "api's meshlet, inbound"},
		{t.APIAdmin, "api's meshlet, admin"},
		{t.APIAddr, "api"},
	}
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
