# meshlet — build, test, demo and benchmark. `make help` lists the targets.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null)$(shell git diff --quiet HEAD 2>/dev/null || echo -dirty)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
# IMAGE is what `make image` builds from deploy/Dockerfile: the sidecar image that `meshlet inject` and `meshlet
# webhook` of the same VERSION inject by default (IMAGE_REPO is cmd/meshlet's DefaultImageRepo; a test checks).
IMAGE_REPO ?= ghcr.io/meshlet-dev/meshlet
IMAGE      ?= $(IMAGE_REPO):$(shell echo '$(VERSION)' | tr -c 'A-Za-z0-9_.\n-' '-')
PLATFORMS  ?= linux/amd64,linux/arm64
BENCH_FLAGS ?=

.PHONY: image image-multiarch all build test vet fuzz demo bench scale heads reqpath soak clean help consul helm

all: build

help:
	@echo "make build   build bin/meshlet (static, CGO_ENABLED=0)"
	@echo "make image   docker build deploy/Dockerfile as IMAGE (default: the image meshlet inject uses by default)"
	@echo "make image-multiarch  docker buildx build for PLATFORMS (cross-compiled, no emulation) and push IMAGE"
	@echo "make test    go vet + go test -race ./..."
	@echo "make fuzz    run each fuzz target for FUZZTIME (default 10s), one after another"
	@echo "make demo    run a local demo mesh on loopback (two services, two sidecars); DISCOVERY=consul: found through a Consul dev agent"
	@echo "make consul  build a real Consul agent (tools/consul, MPL-2.0) once, cached, into bin/consul"
	@echo "make helm    build Helm's CLI (tools/helm, Apache-2.0) once, cached, into bin/helm (for the chart tests)"
	@echo "make bench   measure direct vs one vs two meshlets (HTTP/1.1, h2c, gRPC), and as root one meshlet by transparent interception (intercepted) vs its explicit listener; BENCH_FLAGS=-quick for a short run"
	@echo "make scale   meshlet's growth figures, each one number beside its target: RSS idle, at 1k req/s, per idle upstream, per endpoint, per idle h2c and HTTP/1.1 connection; CPU per request at 10,000 endpoints vs 1 (also with subset_size 100, and nginx's as the reference when nginx is on PATH)"
	@echo "make heads   hold HEADS (10000) connections with 60 KiB of an unfinished request head each; report meshlet's RSS"
	@echo "make reqpath  list the files and functions one outbound HTTP call runs through (app → sidecar → sidecar → app)"
	@echo "make soak    SOAK_DURATION (default 10m) of mixed HTTP/gRPC traffic through two sidecars while endpoints churn, certificates rotate and the config reloads; fails on any error or unbounded memory growth"

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/meshlet ./cmd/meshlet

IMAGE_ARGS = -f deploy/Dockerfile --build-arg VERSION=$(VERSION) \
	--build-arg REVISION=$(shell git rev-parse HEAD 2>/dev/null || echo unknown) -t $(IMAGE)
image:
	docker build $(IMAGE_ARGS) .
image-multiarch:
	docker buildx build --platform $(PLATFORMS) $(IMAGE_ARGS) --push .

vet:
	$(GO) vet ./...

# test builds Consul and Helm first (cached after the first time) so that the Consul and chart tests run, never skip.
test: vet consul helm
	$(GO) test -race -count=1 -timeout 20m ./...

# fuzz runs each fuzz target (package:FuzzName) for FUZZTIME, one after another (tools/fuzz.sh, which bounds
# minimizing by FUZZMINIMIZETIME, default 2s, and runs a target again, up to four runs, after a bare deadline error
# of Go's fuzz coordinator); the seed corpora (f.Add and testdata/fuzz) also run as plain tests under `make test`.
# CI runs `make fuzz FUZZTIME=5s`. The slow targets (each input serves a connection with two servers, or a server
# with two clients; their seeds alone take 5 to 15 s) run for FUZZTIME_SLOW.
FUZZTIME ?= 10s
FUZZTIME_SLOW ?= 30s
FUZZ_SLOW_TARGETS = ./proxy:FuzzH2Agreement ./proxy:FuzzH2ClientAgreement
FUZZ_TARGETS = ./cmd/meshlet:FuzzConfig ./proxy:FuzzRouteLookup ./grpcwire:FuzzParseTimeout ./grpcwire:FuzzEncodeMessage \
	./grpcwire:FuzzTimeoutRoundTrip ./resilience:FuzzRetryCondition ./mtls:FuzzParseID ./proxy:FuzzHeaderRewrite ./proxy/h1guard:FuzzH1Guard \
	./proxy/h1guard:FuzzH1GuardAgreement ./proxy:FuzzNormalizePath ./proxy:FuzzH1Agreement ./proxy:FuzzH1ClientAgreement \
	./proxy:FuzzForwardAgreement ./proxy:FuzzH2HeadersAgreement
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		GO=$(GO) tools/fuzz.sh $${t%%:*} $${t##*:} $(FUZZTIME); \
	done; for t in $(FUZZ_SLOW_TARGETS); do \
		GO=$(GO) tools/fuzz.sh $${t%%:*} $${t##*:} $(FUZZTIME_SLOW); \
	done

# DISCOVERY=consul runs the Consul variant (examples/demo/consul): a Consul dev agent from `make consul`, api's
# sidecar registers itself, web's finds it by name. The default (static) lists the endpoints in the configs.
DISCOVERY ?= static
DEMO_CONFIGS = $(if $(filter consul,$(DISCOVERY)),examples/demo/consul,examples/demo)
demo: build $(if $(filter consul,$(DISCOVERY)),consul)
	@case "$(DISCOVERY)" in static|consul) ;; *) echo "DISCOVERY must be static or consul"; exit 2;; esac
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/ ./examples/api ./examples/web ./cmd/meshlet-demo
	./bin/meshlet-demo -meshlet bin/meshlet -bin bin -configs $(DEMO_CONFIGS) -consul bin/consul $(DEMO_FLAGS)

# consul: a real Consul agent for tests, CI and the demo, built from tools/consul (its own module) once and cached
# under $(CONSUL_CACHE), keyed by the sha256 of tools/consul/go.sum; bin/consul is a copy of the cached binary.
CONSUL_CACHE ?= $(HOME)/.cache/meshlet
CONSUL_KEY    = $(shell sha256sum tools/consul/go.sum | cut -c1-16)
consul:
	@mkdir -p bin $(CONSUL_CACHE)
	@if [ ! -x $(CONSUL_CACHE)/consul-$(CONSUL_KEY) ]; then \
		echo "building Consul (tools/consul, ~7 min on 2 cores) into $(CONSUL_CACHE)/consul-$(CONSUL_KEY)"; \
		cd tools/consul && CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' \
			-o $(CONSUL_CACHE)/consul-$(CONSUL_KEY).tmp github.com/hashicorp/consul && \
		mv $(CONSUL_CACHE)/consul-$(CONSUL_KEY).tmp $(CONSUL_CACHE)/consul-$(CONSUL_KEY); \
	fi
	cp $(CONSUL_CACHE)/consul-$(CONSUL_KEY) bin/consul
	@bin/consul version | head -1

# helm: Helm's CLI for the chart tests (helm lint and helm template of deploy/helm/meshlet; internal/helmtest),
# built from tools/helm (its own module) once and cached like Consul, keyed by the sha256 of tools/helm/go.sum;
# bin/helm is a copy of the cached binary. The version is stamped as Helm's own Makefile does for a release.
HELM_KEY     = $(shell sha256sum tools/helm/go.sum | cut -c1-16)
HELM_VERSION = $(shell awk '$$1 == "helm.sh/helm/v4" { print $$2 }' tools/helm/go.mod)
helm:
	@mkdir -p bin $(CONSUL_CACHE)
	@if [ ! -x $(CONSUL_CACHE)/helm-$(HELM_KEY) ]; then \
		echo "building Helm $(HELM_VERSION) (tools/helm, ~2 min on 2 cores) into $(CONSUL_CACHE)/helm-$(HELM_KEY)"; \
		cd tools/helm && CGO_ENABLED=0 $(GO) build -trimpath \
			-ldflags='-s -w -X helm.sh/helm/v4/internal/version.version=$(HELM_VERSION)' \
			-o $(CONSUL_CACHE)/helm-$(HELM_KEY).tmp helm.sh/helm/v4/cmd/helm && \
		mv $(CONSUL_CACHE)/helm-$(HELM_KEY).tmp $(CONSUL_CACHE)/helm-$(HELM_KEY); \
	fi
	cp $(CONSUL_CACHE)/helm-$(HELM_KEY) bin/helm
	@bin/helm version --short

# bench: with nginx on PATH (the Debian package nginx) also the nginx paths, the reference peers (one hop, and two
# nginx over mutual TLS for the mesh path; same backend, load and run, pinned to the same CPU as meshlet), and
# meshlet against them per protocol.
bench: build
	$(GO) run ./cmd/meshlet-bench -meshlet bin/meshlet $(BENCH_FLAGS)

# scale: the growth figures of issue 16, each one number with its target and PASS/FAIL (a report: exit status 0
# unless a figure could not be measured). SCALE_FLAGS=-quick shortens the load phases.
SCALE_FLAGS ?=
scale: build
	$(GO) run ./cmd/meshlet-bench -meshlet bin/meshlet -scale $(SCALE_FLAGS)

# heads: what request heads that never end cost (10,000 connections with 60 KiB each; max_pending_header_bytes).
HEADS ?= 10000
heads: build
	$(GO) run ./cmd/meshlet-bench -meshlet bin/meshlet -heads $(HEADS)

# reqpath: the files and functions of meshlet that one outbound HTTP/1.1 call runs through (app → sidecar → sidecar
# → app, in process on loopback), read from coverage counters cleared after a warm-up call (tools/reqpath): a
# measure of the request path, compared before and after a change of its layout.
REQPATH_DIR = .cache/reqpath
reqpath:
	@rm -rf $(REQPATH_DIR) && mkdir -p $(REQPATH_DIR)/call $(REQPATH_DIR)/exit
	@$(GO) build -cover -covermode=atomic -coverpkg=meshlet.dev/meshlet/... -o $(REQPATH_DIR)/reqpath ./tools/reqpath
	@GOCOVERDIR=$(REQPATH_DIR)/exit $(REQPATH_DIR)/reqpath $(REQPATH_DIR)/call
	@$(GO) tool covdata func -i $(REQPATH_DIR)/call | awk '$$NF != "0.0%" && $$1 !~ /tools\/reqpath/ && $$1 != "total" \
		{ sub("meshlet.dev/meshlet/", "", $$1); split($$1, f, ":"); files[f[1]]++; n++; print $$1, $$2 } \
		END { printf "%d functions in %d files\n", n, length(files) }'

# soak: steady mixed HTTP/1.1 and gRPC traffic through meshlet A and three instances behind their own meshlets, over
# mTLS, while instances churn (A's config rewritten + SIGHUP), certificates rotate (meshlet certs issue) and memory is
# watched; a report every SOAK_INTERVAL. CI: `make soak SOAK_DURATION=90s SOAK_INTERVAL=15s SOAK_FLAGS=-churn=10s`.
SOAK_DURATION ?= 10m
SOAK_INTERVAL ?= 1m
SOAK_FLAGS ?=
soak: build
	$(GO) run ./cmd/meshlet-soak -meshlet bin/meshlet -duration $(SOAK_DURATION) -interval $(SOAK_INTERVAL) $(SOAK_FLAGS)

clean:
	rm -rf bin
