# meshlet — build, test, demo and benchmark. `make help` lists the targets.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
BENCH_FLAGS ?=

.PHONY: all build test vet demo bench clean help

all: build

help:
	@echo "make build   build bin/meshlet (static, CGO_ENABLED=0)"
	@echo "make test    go vet + go test -race ./..."
	@echo "make demo    run a local demo mesh on loopback (two services, two sidecars)"
	@echo "make bench   measure direct vs one vs two meshlets (HTTP/1.1, h2c, gRPC); BENCH_FLAGS=-quick for a short run"

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/meshlet ./cmd/meshlet

vet:
	$(GO) vet ./...

test: vet
	$(GO) test -race -count=1 -timeout 20m ./...

demo: build
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/ ./examples/api ./examples/web ./cmd/meshlet-demo
	./bin/meshlet-demo -meshlet bin/meshlet -bin bin $(DEMO_FLAGS)

bench: build
	$(GO) run ./cmd/meshlet-bench -meshlet bin/meshlet $(BENCH_FLAGS)

clean:
	rm -rf bin
