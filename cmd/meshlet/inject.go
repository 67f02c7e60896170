package main

// meshlet inject, and the env:NAME config source that injected sidecars use.

import (
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"

	"meshlet.dev/meshlet/inject"
)

// injectCmd is `meshlet inject [FILE]`: Kubernetes YAML from a file (the argument or -f) or stdin to stdout, with
// the sidecar added.
func injectCmd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := newFlags("inject", stderr)
	cfg := injectFlags(fs)
	fileSet := false
	file := "-"
	fs.Func("f", "Kubernetes YAML to inject (one or more documents); - for stdin (the default); or give FILE as the argument", func(s string) error {
		file, fileSet = s, true
		return nil
	})
	if code, ok := parseFlags(fs, injectHelp, args, stdout, stderr); !ok {
		return code
	}
	switch {
	case fs.NArg() > 1:
		fmt.Fprintf(stderr, "meshlet inject: unexpected argument %q (one FILE, or -f FILE)\n", fs.Arg(1))
		return 2
	case fs.NArg() == 1 && fileSet:
		fmt.Fprintf(stderr, "meshlet inject: both -f %s and the argument %q name the input: give one (use -f FILE or FILE)\n", file, fs.Arg(0))
		return 2
	case fs.NArg() == 1:
		file = fs.Arg(0)
	}
	in := stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			fmt.Fprintf(stderr, "meshlet inject: %v\n", err)
			return 1
		}
		defer f.Close()
		in = f
	}
	st, err := inject.Inject(stdout, in, *cfg)
	if err != nil {
		fmt.Fprintf(stderr, "meshlet inject: %v\n", err)
		return 1
	}
	for _, w := range st.Warnings {
		fmt.Fprintf(stderr, "meshlet inject: warning: %s\n", w)
	}
	fmt.Fprintf(stderr, "meshlet inject: %d pod templates injected, %d opted out", st.Injected, st.Skipped)
	if st.Unmeshed > 0 {
		fmt.Fprintf(stderr, ", %d left without the sidecar (see the warnings)", st.Unmeshed)
	}
	fmt.Fprintln(stderr)
	return 0
}

// injectFlags defines the flags that say what to inject, shared by inject and webhook.
func injectFlags(fs *flag.FlagSet) *inject.Config {
	cfg := new(inject.Config)
	fs.StringVar(&cfg.Image, "image", firstNonEmpty(os.Getenv("MESHLET_IMAGE"), defaultImage()),
		"meshlet image of the sidecar: $MESHLET_IMAGE if set, else the image this version's deploy/Dockerfile builds ("+DefaultImageRepo+":VERSION, built by make image)")
	fs.StringVar(&cfg.ImagePullPolicy, "image-pull-policy", "", "imagePullPolicy of the sidecar (default: the cluster's)")
	fs.IntVar(&cfg.AdminPort, "admin-port", 15000, "admin port of the sidecar (probes, /metrics)")
	fs.IntVar(&cfg.InboundPort, "inbound-port", 21000, "inbound port, unless a pod sets meshlet.dev/inbound-port")
	fs.StringVar(&cfg.Consul, "consul", "$(HOST_IP):8500", "Consul agent address, unless a pod sets meshlet.dev/consul")
	fs.BoolVar(&cfg.Classic, "classic", false, "inject a regular container held by meshlet wait instead of a native sidecar (Kubernetes < 1.29)")
	fs.BoolVar(&cfg.Transparent, "transparent", false, "transparent interception for every pod (the meshlet-init container), unless a pod sets meshlet.dev/transparent: \"false\"")
	fs.IntVar(&cfg.OutboundPort, "outbound-port", 15001, "outbound listener port (127.0.0.1) of transparent pods, where redirected connections arrive")
	fs.StringVar(&cfg.CPURequest, "proxy-cpu-request", "50m", "the sidecar's CPU request, unless a pod sets meshlet.dev/proxy-cpu-request")
	fs.StringVar(&cfg.CPULimit, "proxy-cpu-limit", "", "the sidecar's CPU limit, unless a pod sets meshlet.dev/proxy-cpu-limit (default none)")
	fs.StringVar(&cfg.MemoryRequest, "proxy-memory-request", "32Mi", "the sidecar's memory request, unless a pod sets meshlet.dev/proxy-memory-request")
	fs.StringVar(&cfg.MemoryLimit, "proxy-memory-limit", "128Mi", "the sidecar's memory limit (GOMEMLIMIT: 90% of it), unless a pod sets meshlet.dev/proxy-memory-limit")
	cfg.ProxyUID = 5995
	fs.Func("proxy-uid", "UID the sidecar runs as in transparent pods, whose connections are never redirected; no app container may run as it (default 5995)", func(s string) error {
		u, err := strconv.ParseInt(s, 10, 64)
		if err != nil || u < 1 || u > math.MaxInt32 {
			return fmt.Errorf("%q must be a UID 1..%d (not root)", s, math.MaxInt32)
		}
		cfg.ProxyUID = u
		return nil
	})
	return cfg
}

// DefaultImageRepo is the repository of the image that deploy/Dockerfile builds and `make image` tags; with this
// binary's version as the tag (defaultImage) it is the sidecar image `meshlet inject` and `meshlet webhook` inject
// unless -image or $MESHLET_IMAGE says otherwise. The Makefile's IMAGE_REPO must stay equal to it (a test checks).
const DefaultImageRepo = "ghcr.io/meshlet-dev/meshlet"

// defaultImage is DefaultImageRepo tagged with this binary's version (main.version, set by `make build` to the
// same VERSION `make image` passes to the Dockerfile), made a valid image tag: characters other than letters,
// digits, '_', '.' and '-' become '-' (Go's VCS-stamped versions carry "+dirty"), at most 128 of them.
func defaultImage() string {
	return DefaultImageRepo + ":" + imageTag(buildVersion())
}

func imageTag(v string) string {
	b := []byte(v)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			b[i] = '-'
		}
	}
	if len(b) > 128 {
		b = b[:128]
	}
	if len(b) == 0 || b[0] == '.' || b[0] == '-' { // a tag starts with a letter, a digit or '_'
		return "dev"
	}
	return string(b)
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// readConfigSource reads the config named by -config: a file path, or env:NAME for the YAML held in the
// environment variable NAME (what injected sidecars use: no ConfigMap, no writable file system needed).
func readConfigSource(path string) ([]byte, error) {
	name, ok := strings.CutPrefix(path, "env:")
	if !ok {
		return os.ReadFile(path)
	}
	v, set := os.LookupEnv(name)
	if !set {
		return nil, fmt.Errorf("environment variable %s is not set", name)
	}
	return []byte(v), nil
}
