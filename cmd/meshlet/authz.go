package main

import (
	"meshlet.dev/meshlet/consul"
	"meshlet.dev/meshlet/mtls"
)

// authzWarnings are the config's authorization choices that are valid but let callers through unchecked or
// refuse them all: `meshlet check` prints them and `meshlet run` logs them at start.
func (c *fileConfig) authzWarnings() []string {
	in := c.Inbound.TLS
	if c.Inbound.Listen == "" {
		return nil
	}
	mode := in.Mode
	if mode == "" {
		mode = mtls.ModeDisabled
		if c.TLS.Configured() {
			mode = mtls.ModeMTLS
		}
	}
	intentions := c.TLS.Configured() && c.Discovery.Consul != nil
	decided := len(in.Allow) > 0 || intentions
	var w []string
	switch {
	case in.AllowPlaintext && decided && mode == mtls.ModePermissive:
		w = append(w, "inbound.tls.allow_plaintext: true in permissive mode: plaintext callers skip inbound.tls.allow "+
			"and Consul's intentions; anyone who can reach inbound.listen can call the app")
	case in.AllowPlaintext && decided && mode == mtls.ModeDisabled:
		w = append(w, "inbound.tls.allow_plaintext: true with inbound.tls.mode: disabled: every caller is plaintext "+
			"and skips inbound.tls.allow and Consul's intentions")
	case !in.AllowPlaintext && decided && mode == mtls.ModeDisabled:
		w = append(w, "inbound.tls.mode: disabled with inbound.tls.allow or Consul's intentions (tls and "+
			"discovery.consul): every caller is plaintext, has no identity and is denied")
	case in.AllowPlaintext && mode == mtls.ModeMTLS:
		w = append(w, "inbound.tls.allow_plaintext: has no effect in mtls mode (plaintext connections are refused)")
	}
	return w
}

// readyWarnings are the lines /ready adds to its 200 answer: meshlet routes and refuses safely, but refuses more
// than Consul would (the default intention policy is unknown, so callers no intention names are denied).
func (s *sidecar) readyWarnings() []string {
	if s.intentions == nil {
		return nil
	}
	select {
	case <-s.intentions.Loaded():
	default:
		return nil // /ready fails anyway
	}
	if p, err := s.intentions.DefaultPolicy(); p == mtls.DefaultUnknown {
		return []string{"intentions: callers no intention names are denied: " + err.Error()}
	}
	return nil
}

// registerDefaultPolicy exposes what meshlet knows of Consul's default intention policy:
// meshlet_authz_default_policy{policy="allow|deny|unknown"} is 1 for the current one, 0 for the others.
func (s *sidecar) registerDefaultPolicy(it *consul.Intentions) {
	s.m.RegisterAuthzDefault([]string{string(mtls.DefaultAllow), string(mtls.DefaultDeny), string(mtls.DefaultUnknown)},
		func() string { p, _ := it.DefaultPolicy(); return string(p) })
}
