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

// injectCmd is `meshlet inject`: Kubernetes YAML from a file or stdin to stdout, with the sidecar added.
func injectCmd(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("inject", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := injectFlags(fs)
	file := fs.String("f", "-", "Kubernetes YAML to inject (one or more documents); - for stdin")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "meshlet inject: unexpected argument %q (use -f FILE)\n", fs.Arg(0))
		return 2
	}
	in := stdin
	if *file != "-" {
		f, err := os.Open(*file)
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
	fs.StringVar(&cfg.Image, "image", os.Getenv("MESHLET_IMAGE"), "meshlet image (required; default $MESHLET_IMAGE)")
	fs.StringVar(&cfg.ImagePullPolicy, "image-pull-policy", "", "imagePullPolicy of the sidecar (default: the cluster's)")
	fs.IntVar(&cfg.AdminPort, "admin-port", 15000, "admin port of the sidecar (probes, /metrics)")
	fs.IntVar(&cfg.InboundPort, "inbound-port", 21000, "inbound port, unless a pod sets meshlet.dev/inbound-port")
	fs.StringVar(&cfg.Consul, "consul", "$(HOST_IP):8500", "Consul agent address, unless a pod sets meshlet.dev/consul")
	fs.BoolVar(&cfg.Classic, "classic", false, "inject a regular container held by `meshlet wait` instead of a native sidecar (Kubernetes < 1.29)")
	fs.BoolVar(&cfg.Transparent, "transparent", false, "transparent interception for every pod (the meshlet-init container), unless a pod sets meshlet.dev/transparent: \"false\"")
	fs.IntVar(&cfg.OutboundPort, "outbound-port", 15001, "outbound listener port (127.0.0.1) of transparent pods, where redirected connections arrive")
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
