# rsp: build, run, test.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
BIN     := bin/rsp
SHELL   := /bin/bash

.PHONY: all build run test test-unit test-e2e bench bench-quick bench-peers cross vet clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/rsp

# Starts rsp in front of a built-in echo backend: nothing else needed.
run: build
	./$(BIN) demo

# Everything CI runs: vet, unit tests under the race detector, then the
# end-to-end tests through the built binary (which also cross-compile for
# darwin and freebsd).
test: vet test-unit test-e2e

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

test-unit:
	$(GO) test -count=1 -race -timeout 10m ./internal/... ./cmd/...

test-e2e:
	$(GO) test -count=1 -timeout 20m ./tests/

# Measures rsp against direct loopback, a plain Go io.Copy proxy and the
# installed peers (make bench-peers); writes docs/bench.md and
# docs/bench.svg. About 8 minutes; bench-quick takes about 2.
bench: build
	mkdir -p docs
	./$(BIN) bench -out docs/bench.md -chart docs/bench.svg $(BENCH_FLAGS)

bench-quick: build
	./$(BIN) bench -quick -out bench-quick.md -chart bench-quick.svg $(BENCH_FLAGS)

# Installs the proxies rsp is compared with, from Debian's packages.
bench-peers:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx-light libnginx-mod-stream systemd

cross:
	GOOS=darwin  GOARCH=arm64 CGO_ENABLED=0 $(GO) build -o /dev/null ./cmd/rsp
	GOOS=freebsd GOARCH=amd64 CGO_ENABLED=0 $(GO) build -o /dev/null ./cmd/rsp

clean:
	rm -rf bin dist
