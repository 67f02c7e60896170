package main

import (
	"errors"
	"fmt"
	"io"
	"time"

	"meshlet.dev/meshlet/consul"
	"meshlet.dev/meshlet/mtls"
)

// validateTLS checks the tls section and what depends on it.
func (c *fileConfig) validateTLS() []error {
	var errs []error
	if err := c.TLS.Validate("tls"); err != nil {
		errs = append(errs, err)
	}
	if m := c.Inbound.TLS.Mode; (m == mtls.ModeMTLS || m == mtls.ModePermissive) && !c.TLS.Configured() {
		errs = append(errs, fmt.Errorf("inbound.tls.mode: %s needs the tls section (cert_file, key_file, ca_file)", m))
	}
	if len(c.Inbound.TLS.Allow) > 0 && !c.TLS.Configured() {
		errs = append(errs, errors.New("inbound.tls.allow: needs the tls section (callers are known by their certificates)"))
	}
	for i, u := range c.Upstreams {
		if u.TLS.Mode == mtls.ModeMTLS && !c.TLS.Configured() {
			// At run time such an upstream refuses every call (never plaintext); say so before.
			errs = append(errs, fmt.Errorf("upstreams[%d].tls.mode: mtls needs the tls section (cert_file, key_file, ca_file)", i))
		}
	}
	if c.TLS.Source == mtls.SourceConsul && c.Discovery.Consul == nil {
		errs = append(errs, errors.New("tls.source: consul needs discovery.consul"))
	}
	return errs
}

// startTLS starts the certificate source of the tls section (files, or Consul's Connect CA) as the part
// "certificates" and exposes the certificate's expiry and the rotations as metrics. It returns nil (no TLS)
// without a tls section.
func (s *sidecar) startTLS() (mtls.Source, error) {
	if !s.cfg.TLS.Configured() {
		return nil, nil
	}
	var src mtls.Source
	rotations := s.m.RegisterTLS(func() float64 { // (scraped once the admin server runs, src set by then)
		if src == nil {
			return 0
		}
		if b := src.Bundle(); b != nil {
			return time.Until(b.Leaf.NotAfter).Seconds()
		}
		return 0
	})
	onReload := func(_ *mtls.Bundle, err error) {
		if err != nil {
			rotations.WithLabelValues("failure").Inc()
			return
		}
		rotations.WithLabelValues("success").Inc()
	}
	log := s.log.With("component", "mtls")
	if s.cfg.TLS.Source == mtls.SourceConsul {
		cs := consul.NewCASource(s.consul.Client(), s.cfg.Service.Name, log)
		cs.OnReload = onReload
		s.parts.add(partCertificates, cs)
		src = cs
	} else {
		fs, err := mtls.NewFileSource(s.cfg.TLS, log)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		fs.OnReload = onReload
		s.parts.add(partCertificates, fs)
		b := fs.Bundle()
		s.log.Info("certificate loaded", "id", b.ID.String(), "not_after", b.Leaf.NotAfter, "trust_domain", b.TrustDomain)
		src = fs
	}
	s.parts.start(partCertificates)
	s.tls = src
	return src, nil
}

const certsUsage = `Usage:
  meshlet certs ca -dir DIR -trust-domain DOMAIN       create DIR/ca.crt and DIR/ca.key
  meshlet certs issue -dir DIR -service NAME            issue DIR/NAME.crt and DIR/NAME.key, signed by DIR/ca.*
`

// certs is `meshlet certs`: a local trust domain CA and SPIFFE certificates for named services, for the
// static-discovery demo and tests (Consul's CA or cert-manager issue them in production).
func certs(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, certsUsage)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, certsUsage)
		return 0
	}
	fs := newFlags("certs "+args[0], stderr)
	dir := fs.String("dir", "certs", "directory of the CA and the certificates")
	switch args[0] {
	case "ca":
		td := fs.String("trust-domain", "", "the trust domain, e.g. example.mesh (required)")
		lifetime := fs.Duration("lifetime", mtls.DefaultCALifetime, "how long the CA is valid")
		if code, ok := parseFlags(fs, certsCAHelp, args[1:], stdout, stderr); !ok {
			return code
		}
		if *td == "" {
			fmt.Fprintln(stderr, "meshlet certs ca: -trust-domain is required")
			return 2
		}
		if err := checkCertNames(*td, "", "", ""); err != nil {
			fmt.Fprintln(stderr, "meshlet certs ca:", err)
			return 2
		}
		ca, err := mtls.NewCA(*td, *lifetime)
		if err == nil {
			err = ca.WriteCA(*dir)
		}
		if err != nil {
			fmt.Fprintln(stderr, "meshlet certs ca:", err)
			return 1
		}
		fmt.Fprintf(stdout, "wrote %s/ca.crt and %s/ca.key for trust domain %s\n", *dir, *dir, *td)
		return 0
	case "issue":
		service := fs.String("service", "", "the service name (required)")
		ns := fs.String("namespace", mtls.DefaultNamespace, "the namespace in the SPIFFE ID")
		dc := fs.String("datacenter", mtls.DefaultDatacenter, "the datacenter in the SPIFFE ID")
		lifetime := fs.Duration("lifetime", mtls.DefaultLeafLifetime, "how long the certificate is valid")
		if code, ok := parseFlags(fs, certsIssueHelp, args[1:], stdout, stderr); !ok {
			return code
		}
		if *service == "" {
			fmt.Fprintln(stderr, "meshlet certs issue: -service is required")
			return 2
		}
		if err := checkCertNames("", *ns, *dc, *service); err != nil {
			fmt.Fprintln(stderr, "meshlet certs issue:", err)
			return 2
		}
		ca, err := mtls.LoadCA(*dir)
		if err != nil {
			fmt.Fprintln(stderr, "meshlet certs issue: no CA (run meshlet certs ca first):", err)
			return 1
		}
		id := mtls.ServiceID(mtls.TrustDomainOf(ca.Cert), *ns, *dc, *service)
		now := time.Now()
		cert, key, err := ca.Issue(id, now.Add(-time.Minute), now.Add(*lifetime))
		if err == nil {
			err = mtls.WriteLeaf(*dir, *service, cert, key)
		}
		if err != nil {
			fmt.Fprintln(stderr, "meshlet certs issue:", err)
			return 1
		}
		fmt.Fprintf(stdout, "wrote %s/%s.crt and %s/%s.key for %s\n", *dir, *service, *dir, *service, id)
		return 0
	default:
		fmt.Fprintf(stderr, "meshlet certs: unknown command %q\n\n%s", args[0], certsUsage)
		return 2
	}
}

// startIntentions logs the config's authorization warnings, then watches Consul's intentions for this service
// when callers are verified (mutual TLS inbound) and Consul is configured; it returns nil otherwise.
func (s *sidecar) startIntentions() *consul.Intentions {
	for _, w := range s.cfg.authzWarnings() {
		s.log.Warn("config: " + w)
	}
	if s.tls == nil || s.consul == nil || s.cfg.Inbound.Listen == "" {
		return nil
	}
	it := consul.NewIntentions(s.consul.Client(), s.cfg.Service.Name, s.log.With("component", "mtls"))
	s.parts.add(partIntentions, it)
	s.parts.start(partIntentions)
	s.intentions = it
	s.registerDefaultPolicy(it)
	return it
}
