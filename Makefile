# rsp: build, run, test.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
BIN     := bin/rsp
SHELL   := /bin/bash

PKG_VERSION ?= $(shell packaging/version)
PKG_ARCH    ?= $(shell $(GO) env GOARCH)
RPM_ARCH    := $(if $(filter amd64,$(PKG_ARCH)),x86_64,$(if $(filter arm64,$(PKG_ARCH)),aarch64,$(PKG_ARCH)))
DEB         := dist/rsp_$(PKG_VERSION)_$(PKG_ARCH).deb
RPM         := dist/rsp-$(PKG_VERSION).$(RPM_ARCH).rpm
# nfpm, pinned in tools/go.mod and built by the Go toolchain.
NFPM        := $(GO) tool -modfile=tools/go.mod nfpm

.PHONY: all build run test soak contract lint vulncheck fuzz test-unit test-e2e test-system package bench bench-nobody bench-quick bench-peers cross vet clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/rsp

# Starts rsp in front of a built-in echo backend: nothing else needed.
run: build
	./$(BIN) demo

# vet and staticcheck, unit tests under the race detector, the end-to-end
# tests through the built binary (which also cross-compile for darwin and
# freebsd), then a bounded run of each fuzz target.
test: vet lint test-unit test-e2e fuzz

vet:
	$(GO) vet ./...
	$(GO) vet -tags system ./tests/
	$(GO) vet -tags soak ./tests/
	$(GO) vet -tags rsptest ./internal/splice/
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

# staticcheck, pinned in tools/go.mod.
lint:
	$(GO) tool -modfile=tools/go.mod staticcheck ./...
	$(GO) tool -modfile=tools/go.mod staticcheck -tags system ./tests/
	$(GO) tool -modfile=tools/go.mod staticcheck -tags soak ./tests/
	$(GO) tool -modfile=tools/go.mod staticcheck -tags rsptest ./internal/splice/

# govulncheck, pinned in tools/go.mod; needs to reach vuln.go.dev.
vulncheck:
	$(GO) tool -modfile=tools/go.mod govulncheck ./...

# Each fuzz target for FUZZTIME, after its committed seed corpus
# (testdata/fuzz/) has passed as part of the unit tests. A count, not a
# duration: with a duration, Go 1.26's fuzz coordinator can report its own
# deadline as a failure ("context deadline exceeded", no crasher;
# golang/go#75804, fixed in Go 1.27). 300,000 runs take 10-20 s here.
FUZZTIME ?= 300000x
fuzz:
	$(GO) test -count=1 -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./internal/config/
	$(GO) test -count=1 -run '^$$' -fuzz '^FuzzParseArgs$$' -fuzztime $(FUZZTIME) ./cmd/rsp/
	$(GO) test -count=1 -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./internal/proxyproto/
	$(GO) test -count=1 -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./internal/tlshello/

test-unit:
	$(GO) test -count=1 -race -timeout 10m ./internal/... ./cmd/...

test-e2e:
	$(GO) test -count=1 -timeout 20m ./tests/

# A steady mixed load on rsp for SOAK (default 10m, at least 6m; RELAY=copy for the
# copy relay), with RSS, fds, goroutines and pipes sampled every 10 s into
# soak/soak.csv and soak/soak.svg; fails if any keeps growing. Not in CI.
SOAK  ?= 10m
RELAY ?= splice
soak:
	$(GO) test -tags soak -count=1 -v -run '^TestSoak$$' -timeout 0 ./tests/ \
		-args -soak=$(SOAK) -soak-relay=$(RELAY) -soak-out=$(abspath soak)

# The stream contract (tests/contract_test.go) over CONTRACT_N scenarios
# drawn from seeds CONTRACT_BASE on (a new base each run unless given), each
# run directly and through rsp; test-e2e runs a bounded 300. Repeat one
# failing scenario with CONTRACT_SEED=N make contract. Not in CI.
CONTRACT_N    ?= 5000
CONTRACT_BASE ?= $(shell date +%s)
contract:
	$(GO) test -count=1 -v -run '^TestContract' -timeout 0 ./tests/ \
		-args -contract.n=$(CONTRACT_N) -contract.base=$(CONTRACT_BASE)

# dist/rsp_<version>_<arch>.deb and dist/rsp-<version>.<arch>.rpm.
package:
	GO=$(GO) packaging/stage dist/pkg $(PKG_VERSION)
	VERSION=$(PKG_VERSION) GOARCH=$(PKG_ARCH) $(NFPM) pkg -f packaging/nfpm.yaml -p deb -t $(DEB)
	VERSION=$(PKG_VERSION) GOARCH=$(PKG_ARCH) $(NFPM) pkg -f packaging/nfpm.yaml -p rpm -t $(RPM)

# The packages checked as files (lintian, rpm) and then installed and run
# under a real systemd in a Debian 12 container (systemd-nspawn; root).
# A few minutes; the container root is cached in /var/cache/rsp-tests.
# On failure it ends with each failing test's messages (tests/failures.awk).
test-system: package
	set -o pipefail; RSP_DEB=$(abspath $(DEB)) RSP_RPM=$(abspath $(RPM)) $(GO) test -tags system -count=1 -v -timeout 20m \
		-run '^(TestPackageFiles|TestSystemd)$$' ./tests/ 2>&1 | tee dist/test-system.log \
		|| { awk -f tests/failures.awk dist/test-system.log; exit 1; }

# Measures rsp against direct loopback, a plain Go io.Copy proxy and the
# installed peers (make bench-peers, with wrk and iperf3); writes
# docs/bench-root.md and docs/bench.svg. About 20 minutes with every peer;
# bench-quick takes about 4. bench-nobody runs rsp and the peers as the
# unprivileged user nobody, as the package runs rsp (about 13 minutes);
# docs/bench.md sums both up.
bench: build
	mkdir -p docs
	./$(BIN) bench -out docs/bench-root.md -chart docs/bench.svg $(BENCH_FLAGS)

bench-nobody: build
	mkdir -p docs
	d=$$(mktemp -d) && cp $(BIN) $$d/rsp && chmod 755 $$d $$d/rsp && \
	$$d/rsp bench -user nobody -only "rsp splice,rsp copy,Go io.Copy proxy,HAProxy,nginx stream,systemd-socket-proxyd" \
		-out docs/bench-nobody.md -chart docs/bench-nobody.svg $(BENCH_FLAGS); rc=$$?; rm -rf $$d; exit $$rc

bench-quick: build
	./$(BIN) bench -quick -out bench-quick.md -chart bench-quick.svg $(BENCH_FLAGS)

# Installs the proxies rsp is compared with, from Debian's packages.
bench-peers:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx-light libnginx-mod-stream systemd wrk iperf3

cross:
	GOOS=darwin  GOARCH=arm64 CGO_ENABLED=0 $(GO) build -o /dev/null ./cmd/rsp
	GOOS=freebsd GOARCH=amd64 CGO_ENABLED=0 $(GO) build -o /dev/null ./cmd/rsp

clean:
	rm -rf bin dist
