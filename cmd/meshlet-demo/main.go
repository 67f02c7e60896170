// Command meshlet-demo runs a small service mesh on 127.0.0.1 and shows what meshlet does with it.
//
// It starts the demo apps api and web (examples/api, examples/web) and a meshlet next to each, with the configs in
// examples/demo, waits until all four are ready, sends a short bounded stream of requests to web (which calls api
// over gRPC and HTTP through the two meshlets), and prints what the users saw, what the meshlets counted
// (/metrics, /debug/upstreams) and how to look around. Then it stops everything it started, or with -keep waits for
// Ctrl-C first. It exits 0 when every request succeeded, 1 otherwise, 2 when the mesh could not start.
//
// See examples/README.md for the topology and the ports.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

type options struct {
	meshlet, bin, configs     string
	consul                    string
	requests, concurrency     int
	rate                      float64
	keep                      bool
	startTimeout, stopTimeout time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.meshlet, "meshlet", "bin/meshlet", "path of the meshlet binary")
	flag.StringVar(&o.bin, "bin", "bin", "directory of the api and web binaries (go build -o bin/ ./examples/api ./examples/web)")
	flag.StringVar(&o.configs, "configs", "examples/demo", "directory of web-meshlet.yaml and api-meshlet.yaml (examples/demo/consul: the Consul variant)")
	flag.StringVar(&o.consul, "consul", "bin/consul", "path of the Consul binary, for configs that use discovery.consul (make consul builds it)")
	flag.IntVar(&o.requests, "n", 200, "number of requests to send to web")
	flag.IntVar(&o.concurrency, "c", 4, "requests in flight at most")
	flag.Float64Var(&o.rate, "rate", 50, "requests per second at most")
	flag.BoolVar(&o.keep, "keep", false, "keep the mesh running after the report, until Ctrl-C")
	flag.DurationVar(&o.startTimeout, "start-timeout", 20*time.Second, "how long to wait for everything to be ready")
	flag.DurationVar(&o.stopTimeout, "stop-timeout", 15*time.Second, "how long to wait after SIGTERM before killing")
	flag.Parse()
	if o.requests < 1 || o.concurrency < 1 || o.rate <= 0 {
		fmt.Fprintln(os.Stderr, "meshlet-demo: -n, -c and -rate must be positive")
		os.Exit(2)
	}
	os.Exit(run(o))
}

func run(o options) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	topo, err := loadTopology(o.configs)
	if err == nil {
		err = checkBinaries(o, topo.Consul != "")
	}
	if err == nil {
		err = topo.checkPortsFree()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "meshlet-demo:", err)
		return 2
	}
	logDir, err := os.MkdirTemp("", "meshlet-demo-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "meshlet-demo:", err)
		return 2
	}

	fmt.Printf("meshlet demo: starting a mesh on 127.0.0.1 (logs in %s)\n", logDir)
	var consul *process
	if topo.CertsDir != "" {
		err = makeCerts(o.meshlet, topo)
	}
	if err == nil && topo.Consul != "" {
		consul, err = startConsul(ctx, o, topo, logDir)
	}
	var procs []*process
	if err == nil {
		procs, err = startMesh(ctx, o, topo, logDir)
	}
	code, verdict := 2, "the mesh did not start"
	if err != nil {
		fmt.Fprintln(os.Stderr, "meshlet-demo:", err)
	} else {
		code, verdict = exercise(ctx, o, topo, logDir, procs)
	}
	if len(procs) > 0 {
		fmt.Println("\nstopping the mesh (SIGTERM) ...")
		start := time.Now()
		if err := stopAll(procs, o.stopTimeout); err != nil {
			fmt.Fprintln(os.Stderr, "meshlet-demo:", err)
			code, verdict = max(code, 1), verdict+"; the mesh did not stop cleanly"
		} else {
			fmt.Printf("stopped in %.1fs\n", time.Since(start).Seconds())
		}
	}
	if consul != nil { // last: the meshlets deregister on their way out
		if err := stopConsul(consul, o.stopTimeout); err != nil {
			fmt.Fprintln(os.Stderr, "meshlet-demo:", err)
			code, verdict = max(code, 1), verdict+"; consul did not stop cleanly"
		} else {
			fmt.Println("consul stopped")
		}
	}
	if code == 0 {
		fmt.Println("meshlet demo:", verdict)
	} else {
		fmt.Fprintln(os.Stderr, "meshlet demo FAILED:", verdict)
	}
	return code
}

// exercise sends the requests to web and prints the report, then with -keep waits for Ctrl-C. It returns the exit
// code and a one-line verdict.
func exercise(ctx context.Context, o options, topo *topology, logDir string, procs []*process) (int, string) {
	webURL := "http://" + topo.WebAddr + "/"
	fmt.Printf("\nsending %d requests to %s (%d at a time, at most %.0f/s) ...\n", o.requests, webURL, o.concurrency, o.rate)
	res := sendLoad(ctx, webURL, o.requests, o.concurrency, o.rate)
	printLoad(os.Stdout, res, o.requests)
	if ctx.Err() != nil {
		return 1, "interrupted" // stop without a report
	}
	for _, p := range procs {
		if !p.Alive() {
			fmt.Fprintln(os.Stderr, "meshlet-demo:", diedError(p))
			return 1, p.Name + " died"
		}
	}

	sidecars := []sidecar{{"web's meshlet", topo.WebAdmin}, {"api's meshlet", topo.APIAdmin}}
	reportCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := printMetrics(reportCtx, os.Stdout, sidecars); err != nil {
		fmt.Fprintln(os.Stderr, "meshlet-demo: reading metrics:", err)
	}
	if err := printUpstreams(reportCtx, os.Stdout, sidecars[0]); err != nil {
		fmt.Fprintln(os.Stderr, "meshlet-demo: reading upstreams:", err)
	}
	printLookAround(topo, logDir, o.keep)

	if o.keep {
		fmt.Println("\nthe mesh keeps running; press Ctrl-C to stop it")
		waitInterrupt(ctx, procs)
	}
	if f := res.Failed(); f > 0 {
		return 1, fmt.Sprintf("%d of %d requests failed", f, res.Completed)
	}
	return 0, fmt.Sprintf("ok, %d of %d requests answered through the mesh", res.OK, res.Completed)
}

// checkBinaries reports every program of the demo that is missing.
func checkBinaries(o options, consul bool) error {
	var errs []error
	bins := []struct{ path, build, flag string }{
		{o.meshlet, "go build -o bin/meshlet ./cmd/meshlet", "-meshlet"},
		{o.binPath("api"), "go build -o bin/ ./examples/api", "-bin"},
		{o.binPath("web"), "go build -o bin/ ./examples/web", "-bin"},
	}
	if consul {
		bins = append(bins, struct{ path, build, flag string }{o.consul, "make consul", "-consul"})
	}
	for _, b := range bins {
		if _, err := os.Stat(b.path); err != nil {
			errs = append(errs, fmt.Errorf("%w\n  build it (make demo does, or: %s) or point %s at it", err, b.build, b.flag))
		}
	}
	return errors.Join(errs...)
}

// binPath returns the path of the demo app name (api or web).
func (o options) binPath(name string) string { return filepath.Join(o.bin, name) }

// startMesh starts the four processes and waits until each is ready. It returns the processes it started, also
// on error.
func startMesh(ctx context.Context, o options, t *topology, logDir string) ([]*process, error) {
	type step struct {
		name, log, bin string
		args           []string
		ready          func(context.Context) error
		about          string
	}
	steps := []step{
		{"api", "api.log", o.binPath("api"), []string{"-listen", t.APIAddr}, grpcServing(t.APIAddr),
			t.APIAddr + "  gRPC demo.Greeter and HTTP GET /price, h2c"},
		{"api's meshlet", "api-meshlet.log", o.meshlet, []string{"run", "-config", t.APIConfig}, httpOK("http://" + t.APIAdmin + "/ready"),
			"inbound " + t.Inbound + " -> api; admin http://" + t.APIAdmin},
		{"web's meshlet", "web-meshlet.log", o.meshlet, []string{"run", "-config", t.WebConfig}, httpOK("http://" + t.WebAdmin + "/ready"),
			t.APIGRPC + " (api-grpc), " + t.APIHTTP + " (api-http) -> api's meshlet; admin http://" + t.WebAdmin},
		{"web", "web.log", o.binPath("web"), []string{"-listen", t.WebAddr, "-api-grpc", t.APIGRPC, "-api-http", t.APIHTTP},
			httpOK("http://" + t.WebAddr + "/healthz"), "http://" + t.WebAddr + "/ -> api via " + t.APIGRPC + " (gRPC), " + t.APIHTTP + " (HTTP)"},
	}
	if t.Consul != "" {
		webReady := steps[2].ready
		steps[2].ready = func(ctx context.Context) error {
			if err := webReady(ctx); err != nil {
				return err
			}
			return hasEndpoints(t.WebAdmin, "api-grpc", "api-http")(ctx)
		}
		steps[1].about += "; registered in Consul"
		steps[2].about = t.APIGRPC + " (api-grpc), " + t.APIHTTP + " (api-http) -> api found in Consul; admin http://" + t.WebAdmin
	}
	var procs []*process
	for _, s := range steps {
		p, err := startProcess(s.name, logDir, s.log, s.bin, s.args...)
		if err != nil {
			return procs, err
		}
		procs = append(procs, p)
	}
	start := time.Now()
	readyCtx, cancel := context.WithTimeout(ctx, o.startTimeout)
	defer cancel()
	for i, s := range steps {
		if err := waitReady(readyCtx, procs[i], s.ready); err != nil {
			return procs, err
		}
		fmt.Printf("  %-13s  pid %-6d  %s\n", s.name, procs[i].PID(), s.about)
	}
	fmt.Printf("all ready in %.1fs\n", time.Since(start).Seconds())
	return procs, nil
}

// httpOK is ready when GET url answers 200.
func httpOK(url string) func(context.Context) error {
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := fetch(ctx, url)
		return err
	}
}

// grpcServing is ready when the gRPC health service at addr reports SERVING.
func grpcServing(addr string) func(context.Context) error {
	return func(ctx context.Context) error {
		conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		if s := resp.GetStatus(); s != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("health: %s", s)
		}
		return nil
	}
}

// printLookAround tells where to look while the mesh runs.
func printLookAround(t *topology, logDir string, keep bool) {
	if keep {
		fmt.Println("\nlook around:")
	} else {
		fmt.Println("\nlook around (bin/meshlet-demo -keep keeps the mesh up until Ctrl-C):")
	}
	fmt.Printf("  curl 'http://%s/?name=you&item=tea'   # web, as a user\n", t.WebAddr)
	fmt.Printf("  curl 'http://%s/price?item=tea'        # api's HTTP, through both meshlets\n", t.APIHTTP)
	for _, s := range []sidecar{{"web's meshlet", t.WebAdmin}, {"api's meshlet", t.APIAdmin}} {
		fmt.Printf("  %s admin: http://%s/metrics  /debug/upstreams  /debug/config  /ready\n", s.Name, s.Admin)
	}
	fmt.Printf("  logs (meshlet access logs included): %s\n", logDir)
}

// waitInterrupt waits until ctx ends (Ctrl-C). A process of the mesh that exits meanwhile is reported, and the
// rest keep running: stopping api on purpose shows how the meshlets fail.
func waitInterrupt(ctx context.Context, procs []*process) {
	died := make(chan *process, len(procs))
	for _, p := range procs {
		go func() {
			select {
			case <-p.Exited():
				died <- p
			case <-ctx.Done():
			}
		}()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case p := <-died:
			how := "exit status 0"
			if err := p.WaitErr(); err != nil {
				how = err.Error()
			}
			fmt.Printf("%s exited (%s); the rest keeps running, Ctrl-C stops it\n", p.Name, how)
		}
	}
}

// makeCerts creates a fresh demo trust domain and the sidecars' SPIFFE certificates with `meshlet certs`, where
// the configs expect them, so that the sidecars talk over mutual TLS.
func makeCerts(meshlet string, t *topology) error {
	if err := os.RemoveAll(t.CertsDir); err != nil {
		return err
	}
	cmds := [][]string{{"certs", "ca", "-dir", t.CertsDir, "-trust-domain", "demo.mesh"}}
	for _, s := range t.Services {
		cmds = append(cmds, []string{"certs", "issue", "-dir", t.CertsDir, "-service", s})
	}
	for _, args := range cmds {
		if out, err := exec.Command(meshlet, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("meshlet %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	fmt.Printf("mutual TLS between the sidecars: trust domain demo.mesh, certificates in %s\n", t.CertsDir)
	return nil
}
