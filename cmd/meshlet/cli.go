package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
)

// newFlags returns the flag set of the subcommand name, whose help text (usage lines, what it does, examples) is
// help; parseFlags prints it, followed by the flags.
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {} // parseFlags prints the help: on stdout for -h, on stderr after a bad flag
	return fs
}

// parseFlags parses args into fs. -h or -help prints help and the flags on stdout and returns 0, false; a bad flag
// (flag's message already on stderr) prints them on stderr and returns 2, false.
func parseFlags(fs *flag.FlagSet, help string, args []string, stdout, stderr io.Writer) (int, bool) {
	err := fs.Parse(args)
	if err == nil {
		return 0, true
	}
	code, w := 2, stderr
	if errors.Is(err, flag.ErrHelp) {
		code, w = 0, stdout
	}
	printHelp(w, fs, help)
	return code, false
}

// printHelp writes help and fs's flags to w.
func printHelp(w io.Writer, fs *flag.FlagSet, help string) {
	fmt.Fprint(w, help)
	fmt.Fprintln(w, "\nFlags:")
	out := fs.Output()
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(out)
}

const runHelp = `Usage: meshlet run -config FILE
       meshlet run -sidecar-for ID [-config FILE]

Runs the sidecar on the config FILE (YAML; $MESHLET_CONFIG when -config is not given; env:NAME reads the config
from the variable NAME) until SIGTERM or SIGINT, which drain it; SIGHUP reloads the config.

With -sidecar-for ID (or sidecar_for: ID in the file), meshlet is the sidecar of the service ID registered with
the local Consul agent (connect { sidecar_service { ... } }; ID may also be the connect-proxy's own ID): it reads
the proxy's registration, merged with central config, and takes from it the service name and local address, the
inbound listener (the proxy's address and port), the upstreams (name, datacenter, local bind address and port,
protocol, connect_timeout_ms), transparent mode and its outbound port; it follows changes to the registration
without a restart. What the file sets wins. The file is optional: the agent is $CONSUL_HTTP_ADDR (Consul's
environment variables apply), certificates come from Consul's CA, and admin.listen is 127.0.0.1:19000 (Envoy's
admin address; $MESHLET_ADMIN_LISTEN changes it). meshlet does not register anything then: point the
registration's check at http://127.0.0.1:19000/ready. Expose paths are served as plain HTTP listeners that
forward that one path to the app (for probes); prepared-query and peered upstreams are left out with a warning.

Examples:
  meshlet run -config /etc/meshlet/meshlet.yaml
  MESHLET_CONFIG=meshlet.yaml meshlet run
  CONSUL_HTTP_ADDR=127.0.0.1:8500 meshlet run -sidecar-for web-1
  meshlet run -sidecar-for web-1 -config access-log.yaml
`

const checkHelp = `Usage: meshlet check -config FILE

Validates the config FILE as meshlet run would read it, without binding or calling anything: every problem with
its field path, and warnings; exit 0 when valid, 1 when not.

Examples:
  meshlet check -config meshlet.yaml
  MESHLET_CONFIG=meshlet.yaml meshlet check
`

const injectHelp = `Usage: meshlet inject [flags] [FILE | -f FILE]

Adds the sidecar to Kubernetes YAML (Deployments, StatefulSets, DaemonSets, Jobs, CronJobs, Pods; several
documents) from FILE, or stdin when no file or - is given, and writes it to stdout. Pods opt out with the
annotation meshlet.dev/inject: "false" (or disabled); injecting twice changes nothing.

Examples:
  meshlet inject deploy.yaml | kubectl apply -f -
  kubectl get deploy web -o yaml | meshlet inject | kubectl apply -f -
  meshlet inject -transparent -image registry.example.com/meshlet:v1.2.0 deploy.yaml
`

const waitHelp = `Usage: meshlet wait [-admin HOST:PORT] [-timeout D] [-interval D]

Waits until the meshlet at -admin answers GET /ready with 200 (exit 0), or -timeout passes (exit 1): for an app
container's command or postStart hook, so that the app starts once its sidecar is ready.

Examples:
  meshlet wait && exec ./app
  meshlet wait -admin 127.0.0.1:15000 -timeout 30s
`

const webhookHelp = `Usage: meshlet webhook -tls-cert FILE -tls-key FILE [-image IMAGE] [inject flags]

Serves the injection as a Kubernetes mutating admission webhook: POST /inject (AdmissionReview) and GET /healthz
over HTTPS on -listen, until SIGTERM or SIGINT. The certificate files are reloaded when they change. It takes the
flags of meshlet inject as the cluster-wide defaults.

Examples:
  meshlet webhook -tls-cert /tls/tls.crt -tls-key /tls/tls.key
  meshlet webhook -tls-cert /tls/tls.crt -tls-key /tls/tls.key -transparent -listen :9443
`

const certsCAHelp = `Usage: meshlet certs ca -dir DIR -trust-domain DOMAIN [-lifetime D]

Creates a CA for a local trust domain: DIR/ca.crt and DIR/ca.key (the key mode 0600), for the static-discovery
demo and tests (Consul's CA or cert-manager issue certificates in production).

Examples:
  meshlet certs ca -dir certs -trust-domain example.mesh
`

const certsIssueHelp = `Usage: meshlet certs issue -dir DIR -service NAME [-namespace NS] [-datacenter DC] [-lifetime D]

Issues DIR/NAME.crt and DIR/NAME.key, signed by the CA in DIR, with the SPIFFE ID
spiffe://<trust-domain>/ns/<NS>/dc/<DC>/svc/<NAME> in its URI SAN.

Examples:
  meshlet certs issue -dir certs -service api
  meshlet certs issue -dir certs -service web -namespace shop -lifetime 24h
`
