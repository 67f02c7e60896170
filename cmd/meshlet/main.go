// Command meshlet is a service-mesh sidecar proxy: it carries a local app's calls to its upstreams and other
// sidecars' calls to the local app, over HTTP/1.1, HTTP/2, gRPC and TCP.
//
// Usage:
//
//	meshlet run -config meshlet.yaml     run the sidecar
//	meshlet run -sidecar-for web-1       run the sidecar of a service registered with Consul
//	meshlet check -config meshlet.yaml   validate a config file and print every problem
//	meshlet inject app.yaml              add the sidecar to Kubernetes YAML
//	meshlet wait -admin 127.0.0.1:15000  block until a meshlet is ready
//	meshlet version                      print the version
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=..."; otherwise the module version is used.
var version = ""

// commit is set at build time (-ldflags "-X main.commit=..."; make build sets it from git); empty: Go's VCS stamp.
var commit = ""

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// buildCommit is the commit the binary was built from: the one make build sets, else Go's VCS stamp (12 hex
// digits, "-dirty" when the working tree had changes), or "" when the build recorded none.
func buildCommit() string {
	if commit != "" {
		return commit
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		return ""
	}
	return rev + dirty
}

const usage = `meshlet is a service-mesh sidecar proxy.

Usage:
  meshlet run -config FILE     run the sidecar (FILE defaults to $MESHLET_CONFIG; env:NAME reads $NAME)
  meshlet run -sidecar-for ID  run the sidecar of Consul service ID, configured from its registration
  meshlet check -config FILE   validate FILE; print every problem with its field path
  meshlet certs ca|issue ...   make a local trust domain CA and SPIFFE certificates (meshlet certs for help)
  meshlet inject [FILE]        add the sidecar to Kubernetes YAML (FILE, -f FILE or stdin), write it to stdout
  meshlet wait -admin ADDR     block until the meshlet at ADDR answers /ready with 200
  meshlet webhook -tls-cert F -tls-key F [-image I]   the injection as a mutating admission webhook (HTTPS /inject)
  meshlet redirect-traffic -proxy-uid UID ...   install transparent interception rules (-delete removes them)
  meshlet version              print the version, the Go version and the commit

meshlet COMMAND -h prints a command's usage, examples and flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run dispatches a subcommand and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		path, sidecarFor, code, ok := runFlags(args[1:], stdout, stderr)
		if !ok {
			return code
		}
		return runSidecar(path, sidecarFor, stderr)
	case "check":
		path, code, ok := configFlag("check", checkHelp, args[1:], stdout, stderr)
		if !ok {
			return code
		}
		return check(path, stdout, stderr)
	case "certs":
		return certs(args[1:], stdout, stderr)
	case "inject":
		return injectCmd(args[1:], os.Stdin, stdout, stderr)
	case "wait":
		return waitCmd(args[1:], stdout, stderr)
	case "webhook":
		return webhookCmd(args[1:], stdout, stderr)
	case "redirect-traffic":
		return redirectCmd(args[1:], stdout, stderr)
	case "version", "-version", "--version":
		// "meshlet VERSION GOVERSION", then " commit REV" when the build recorded one: the first three fields stay
		// where scripts read them.
		line := fmt.Sprintf("meshlet %s %s", buildVersion(), runtime.Version())
		if c := buildCommit(); c != "" {
			line += " commit " + c
		}
		fmt.Fprintln(stdout, line)
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "meshlet: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

// configFlag parses the flags of run and check: the config path, or the exit code and false (0 after -h).
func configFlag(name, help string, args []string, stdout, stderr io.Writer) (string, int, bool) {
	fs := newFlags(name, stderr)
	path := fs.String("config", os.Getenv("MESHLET_CONFIG"), "config file (YAML); $MESHLET_CONFIG when not given")
	if code, ok := parseFlags(fs, help, args, stdout, stderr); !ok {
		return "", code, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "meshlet %s: unexpected argument %q\n", name, fs.Arg(0))
		return "", 2, false
	}
	if *path == "" {
		fmt.Fprintf(stderr, "meshlet %s: -config is required (or set MESHLET_CONFIG)\n", name)
		return "", 2, false
	}
	return *path, 0, true
}

// runFlags parses the flags of run: the config path and -sidecar-for (with which the config file is optional), or
// the exit code and false (0 after -h).
func runFlags(args []string, stdout, stderr io.Writer) (path, sidecarFor string, code int, ok bool) {
	fs := newFlags("run", stderr)
	p := fs.String("config", os.Getenv("MESHLET_CONFIG"), "config file (YAML); $MESHLET_CONFIG when not given; optional with -sidecar-for")
	sf := fs.String("sidecar-for", "", "run as the sidecar of this service ID (or its connect-proxy's ID) registered with the local Consul agent:\nservice, inbound listener, upstreams and mode from its registration; wins over the file's sidecar_for")
	if code, ok := parseFlags(fs, runHelp, args, stdout, stderr); !ok {
		return "", "", code, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "meshlet run: unexpected argument %q\n", fs.Arg(0))
		return "", "", 2, false
	}
	if *p == "" && *sf == "" {
		fmt.Fprintln(stderr, "meshlet run: -config is required (or set MESHLET_CONFIG), unless -sidecar-for is given")
		return "", "", 2, false
	}
	return *p, *sf, 0, true
}

// check validates the config file at path, then the certificate files it names (checkTLSFiles): warnings go
// to stderr and leave the exit code 0.
func check(path string, stdout, stderr io.Writer) int {
	cfg, err := loadConfigFor(path, "")
	if err == nil && cfg.SidecarFor != "" {
		cfg, err = checkSidecarFor(cfg, stderr)
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	warnings, err := cfg.checkTLSFiles()
	epWarnings, epErrs := cfg.endpointsProblems()
	for _, w := range append(append(warnings, cfg.authzWarnings()...), epWarnings...) {
		fmt.Fprintln(stderr, "warning:", w)
	}
	if err = errors.Join(append([]error{err}, epErrs...)...); err != nil {
		fmt.Fprintln(stderr, perLine(path, err))
		return 1
	}
	fmt.Fprintln(stdout, "config ok")
	return 0
}
