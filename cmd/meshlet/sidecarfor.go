package main

// meshlet run -sidecar-for (sidecar_for): the service, inbound listener, upstreams, mode and expose paths taken
// from the sidecar's connect-proxy registration on the local Consul agent, merged into the file's config
// (explicit settings win) and followed: each change is applied through the proxy's reload path, as Consul's
// config entries are (consulentries.go).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"meshlet.dev/meshlet/consul"
	"meshlet.dev/meshlet/mtls"
	"meshlet.dev/meshlet/proxy"
)

// defaultSidecarForAdmin is admin.listen with sidecar_for when neither the file nor $MESHLET_ADMIN_LISTEN sets
// it: Envoy's admin address under `consul connect envoy`, so that a sidecar_service check written for Envoy's
// /ready (http://127.0.0.1:19000/ready) checks meshlet's.
const defaultSidecarForAdmin = "127.0.0.1:19000"

// sidecarForWait bounds how long meshlet waits at start for an agent it cannot reach; a registration that is
// wrong (unknown ID, not a connect-proxy) fails at once.
const sidecarForWait = 30 * time.Second

// loadConfigFor reads the config at path as loadConfig does, with sidecarFor (the -sidecar-for flag) over the
// file's sidecar_for. With sidecar_for, path may be "" (no file: every setting from the registration and the
// defaults), discovery.consul and tls.source consul are implied when the file has none, admin.listen defaults to
// defaultSidecarForAdmin, and validation waits for the registration (withRegistration).
func loadConfigFor(path, sidecarFor string) (*fileConfig, error) {
	cfg := &fileConfig{}
	if path != "" {
		data, err := readConfigSource(path)
		if err != nil {
			return nil, err
		}
		if cfg, err = decodeConfig(data); err != nil {
			return nil, perLine(path, err)
		}
	}
	if sidecarFor == "" {
		sidecarFor = cfg.SidecarFor
	}
	if sidecarFor == "" {
		if path == "" {
			return nil, errors.New("no config file and no sidecar_for")
		}
		return finishConfig(path, cfg)
	}
	cfg.SidecarFor = sidecarFor
	if cfg.Discovery.Consul == nil {
		cfg.Discovery.Consul = &consul.Config{}
	}
	if !cfg.TLS.Configured() {
		cfg.TLS.Source = mtls.SourceConsul
	}
	applyEnv(cfg, os.Getenv)
	if cfg.Admin.Listen == "" {
		cfg.Admin.Listen = defaultSidecarForAdmin
	}
	cfg.keepExplicit() // (discovery.consul is set above)
	cfg.setDefaults()
	return cfg, nil
}

// withRegistration returns base (as loadConfigFor returned it) with the registration's settings where base
// leaves them unset, defaults applied and validated, and the warnings of the merge (what the registration says
// that meshlet refused, or that the file overrides).
func withRegistration(base *fileConfig, sc consul.SidecarConfig) (*fileConfig, []string, error) {
	cfg := *base
	warnings := slices.Clone(sc.Warnings)
	if cfg.Service.Name == "" {
		cfg.Service.Name = sc.Service
	} else if cfg.Service.Name != sc.Service {
		warnings = append(warnings, fmt.Sprintf("service.name %s is not the registration's destination service %s: the file's wins", cfg.Service.Name, sc.Service))
	}
	if cfg.Service.Address == "" {
		cfg.Service.Address = sc.App
	}
	if cfg.Inbound.Listen == "" {
		cfg.Inbound.Listen = sc.Inbound
	}
	if sc.Transparent && !cfg.Outbound.Transparent.Enabled {
		cfg.Outbound.Transparent.Enabled = true
		if cfg.Outbound.Listen == "" {
			cfg.Outbound.Listen = net.JoinHostPort("127.0.0.1", strconv.Itoa(sc.OutboundPort))
		}
	}
	cfg.expose = exposePaths(sc.Expose, cfg.Inbound.Listen, cfg.Service.Address)
	cfg.explicit, cfg.fromRegistration = mergeUpstreams(base.explicit, sc.Upstreams, &warnings)
	cfg.explicit = writtenUpstreams(cfg.explicit)
	cfg.Upstreams = slices.Clone(cfg.explicit)
	defaultTCP(cfg.Upstreams, cfg.fromRegistration)
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, warnings, fmt.Errorf("the config with the registration of %s: %w", sc.ProxyID, err)
	}
	return &cfg, warnings, nil
}

// mergeUpstreams returns the file's upstreams with the registration's: one the file names too gets the
// registration's listen, datacenter, protocol and connect timeout where the file leaves them unset; the others
// are added (their names: the destination service, else <service>-<datacenter> when two share it). It returns
// the names of the upstreams that came from the registration, and adds a warning for each one it refuses.
func mergeUpstreams(file []proxy.UpstreamConfig, reg []consul.SidecarUpstream, warnings *[]string) ([]proxy.UpstreamConfig, map[string]bool) {
	out := slices.Clone(file)
	from := map[string]bool{}
	index := map[string]int{}
	for i, u := range out {
		index[u.Name] = i
	}
	for _, ru := range reg {
		name := ru.Name
		if from[name] {
			name = ru.Name + "-" + ru.Datacenter
		}
		if !proxy.ValidName(name) {
			*warnings = append(*warnings, fmt.Sprintf("upstream %s: its name is no lowercase DNS label: left out", name))
			continue
		}
		switch ru.Protocol {
		case "", proxy.ProtocolHTTP, proxy.ProtocolHTTP2, proxy.ProtocolGRPC, proxy.ProtocolTCP:
		default:
			*warnings = append(*warnings, fmt.Sprintf("upstream %s: protocol %q unknown: taken as tcp", name, ru.Protocol))
			ru.Protocol = proxy.ProtocolTCP
		}
		from[name] = true
		i, ok := index[name]
		if !ok {
			out = append(out, proxy.UpstreamConfig{Name: name, Service: ru.Name})
			i = len(out) - 1
			index[name] = i
		}
		u := &out[i]
		if u.Listen == "" {
			u.Listen = ru.Listen
		}
		if u.Datacenter == "" && u.Endpoints == nil {
			u.Datacenter = ru.Datacenter
		}
		if u.Protocol == "" {
			u.Protocol = ru.Protocol
		}
		if u.ConnectTimeout == 0 {
			u.ConnectTimeout = ru.ConnectTimeout
		}
	}
	return out, from
}

// defaultTCP gives the registration's upstreams that still have no protocol Consul's default, tcp (Consul's
// config entries, merged before, may have given one).
func defaultTCP(ups []proxy.UpstreamConfig, fromRegistration map[string]bool) {
	for i := range ups {
		if ups[i].Protocol == "" && fromRegistration[ups[i].Name] {
			ups[i].Protocol = proxy.ProtocolTCP
		}
	}
}

// exposePaths are the registration's expose paths as the proxy serves them: each on its listener port at the
// inbound listener's host (0.0.0.0 without one), forwarded to its local path port at the app's host (127.0.0.1
// without one).
func exposePaths(paths []consul.ExposePath, inbound, app string) []proxy.ExposePath {
	listenHost, appHost := "0.0.0.0", "127.0.0.1"
	if h, _, err := net.SplitHostPort(inbound); err == nil && h != "" {
		listenHost = h
	}
	if h, _, err := net.SplitHostPort(app); err == nil && h != "" {
		appHost = h
	}
	var out []proxy.ExposePath
	for _, p := range paths {
		out = append(out, proxy.ExposePath{Listen: net.JoinHostPort(listenHost, strconv.Itoa(p.ListenerPort)), Path: p.Path,
			Target: net.JoinHostPort(appHost, strconv.Itoa(p.LocalPathPort)), Protocol: p.Protocol})
	}
	return out
}

// startExpose serves the registration's expose paths (sidecar_for), once the proxy's listeners are bound.
func (s *sidecar) startExpose() error {
	if len(s.cfg.expose) == 0 {
		return nil
	}
	e, err := proxy.StartExpose(s.cfg.expose, s.log)
	if err != nil {
		return err
	}
	s.expose = e
	return nil
}

// resolveSidecar finds the registration named by sidecar_for (retrying while the agent cannot be reached, up to
// sidecarForWait) and returns the config merged with it.
func (s *sidecar) resolveSidecar() (*fileConfig, error) {
	s.sidecarFor = consul.NewSidecarFor(s.consul, s.base.SidecarFor)
	ctx, cancel := context.WithTimeout(context.Background(), sidecarForWait)
	defer cancel()
	for n := 1; ; n++ {
		sc, found, err := s.sidecarFor.Resolve(ctx)
		if err == nil {
			s.log.Info("sidecar-for: running from the consul registration", "sidecar_for", s.base.SidecarFor,
				"found", found, "service", sc.Service, "upstreams", len(sc.Upstreams))
			cfg, warnings, err := withRegistration(s.base, sc)
			s.warnRegistration(warnings)
			return cfg, err
		}
		if errors.Is(err, consul.ErrRegistration) {
			return nil, fmt.Errorf("sidecar_for %s: %w", s.base.SidecarFor, err)
		}
		wait := consul.Backoff(n)
		if n == 1 {
			s.log.Warn("sidecar-for: consul agent not answering; retrying", "error", err.Error(), "for_up_to", sidecarForWait.String())
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("sidecar_for %s: no answer from the consul agent within %s: %w", s.base.SidecarFor, sidecarForWait, err)
		case <-time.After(wait):
		}
	}
}

func (s *sidecar) warnRegistration(warnings []string) {
	for _, w := range warnings {
		s.log.Warn("sidecar-for: " + w)
	}
}

// sidecarForPart follows the registration (sidecar_for) and applies each change. Ready fails while the agent
// says the registration was deleted (meshlet keeps serving its last known config).
type sidecarForPart struct{ s *sidecar }

func (p sidecarForPart) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := p.s.sidecarFor.Run(ctx); err != nil {
			p.s.log.Error("sidecar-for: the registration is not followed", "error", err.Error())
		}
	})
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.s.sidecarFor.Changed():
			p.s.applyRegistration()
		}
	}
}

func (p sidecarForPart) Ready() error { return p.s.sidecarFor.Ready() }

// applyRegistration merges the latest registration into the file's config and applies it (as a reload does:
// what needs a restart stays, with a warning). A registration the config cannot take changes nothing.
func (s *sidecar) applyRegistration() {
	s.mu.Lock()
	defer s.mu.Unlock()
	cfg, warnings, err := withRegistration(s.base, s.sidecarFor.Config())
	if err != nil {
		s.log.Error("sidecar-for: registration change not applied; the running config stays", "error", err.Error())
		return
	}
	if _, err = s.applyLocked(cfg, warnings); err != nil { // (it logs the warnings)
		s.log.Error("sidecar-for: registration change not applied; the running config stays", "error", err.Error())
		return
	}
	s.log.Info("sidecar-for: registration change applied", "upstreams", len(s.cfg.Upstreams))
}

// checkSidecarFor validates a config with sidecar_for as meshlet check can, without asking the agent: with a
// registration that fills only what the file needs to be valid (the service, its address), and says that the
// registration itself is read at run time.
func checkSidecarFor(base *fileConfig, stderr io.Writer) (*fileConfig, error) {
	fmt.Fprintf(stderr, "note: sidecar_for %s: the service, inbound listener, upstreams and mode of its registration are read from the Consul agent at run time (not checked here)\n", base.SidecarFor)
	stub := consul.SidecarConfig{ProxyID: base.SidecarFor, Service: base.Service.Name, App: "127.0.0.1:1"}
	if stub.Service == "" {
		stub.Service = "registration"
	}
	cfg, _, err := withRegistration(base, stub)
	return cfg, err
}
