# anka: every target installs what it needs on a fresh Debian machine.
SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin:$(HOME)/go/bin

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X github.com/anka-net/anka/core/cli.Version=$(VERSION) -X github.com/anka-net/anka/core/cli.Commit=$(COMMIT)
PREFIX ?= /usr/local
PLUGIN_DIR ?= $(PREFIX)/lib/anka/plugins
# The system user plugins run as (the plugin_user default); make install
# creates it.
PLUGIN_USER ?= anka-net
GUEST_DIR := $(CURDIR)/build/guest
PLUGINS := $(patsubst plugins/%/main.go,%,$(wildcard plugins/*/main.go))
# A plugin's binary is anka-net-<folder> unless its type differs: the
# example folder builds the template's type, segment.
BINARY_example := segment
binary = anka-net-$(or $(BINARY_$(1)),$(1))
PLUGIN_BINS := $(foreach p,$(PLUGINS),$(p):$(call binary,$(p)))

# Debian packages the build, the tests and the demo need.
APT_PKGS := qemu-system-x86 busybox-static cpio iproute2 binutils nftables dnsmasq-base
PROTO_PKGS := protobuf-compiler
# make bench-peers: the load generator and one of the peers (gvproxy comes
# from go install, pinned, into build/peers).
PEERS_APT_PKGS := iperf3 passt

.PHONY: all deps go-check build guest test test-unit soak demo demo-stop bench bench-peers bench-split fuzz lint proto install clean

all: build

go-check:
	@command -v go >/dev/null || { echo "Go is missing: install Go 1.26 into /usr/local/go (see README.md)"; exit 1; }

# apt-get only when a package is missing, so the target is idempotent and
# quick on a machine that has everything.
deps:
	@missing=$$(for p in $(APT_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		[ "$$(id -u)" = 0 ] || { echo "installing packages needs root: run make as root (sudo make ...)"; exit 1; }; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

build: go-check
	go build -ldflags '$(LDFLAGS)' -o bin/anka ./cmd/anka
	@for pb in $(PLUGIN_BINS); do d=$${pb%%:*}; b=$${pb#*:}; \
		echo "go build -o bin/$$b ./plugins/$$d"; go build -ldflags '$(LDFLAGS)' -o bin/$$b ./plugins/$$d || exit 1; done

guest: deps go-check
	test/guest/build.sh $(GUEST_DIR)

test: deps guest build lint
	ANKA_GUEST_DIR=$(GUEST_DIR) ANKA_E2E=1 go test -count=1 -timeout 15m ./...
	cd sdk && ANKA_GUEST_DIR=$(GUEST_DIR) ANKA_E2E=1 go test -count=1 -timeout 15m ./...
	FUZZ_JOBS=2 test/fuzz.sh $(FUZZTIME_TEST)

# This project's shared network against gvproxy, passt, the kernel's veth
# and the adapter's own ceiling, in network namespaces it makes (root):
# prints the table, writes docs/benchmarks-peers.json and .png and the
# generated part of docs/benchmarks.md. Harness flags go in
# BENCH_PEERS_FLAGS ('-t 10s -count 5'; build/peers/benchpeers -h lists
# them). See test/benchpeers.
bench-peers: deps go-check build
	@missing=$$(for p in $(PEERS_APT_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		[ "$$(id -u)" = 0 ] || { echo "installing packages needs root: run make as root (sudo make ...)"; exit 1; }; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@if ! build/peers/gvproxy -version 2>/dev/null | grep -qx 'gvproxy version v0.8.9'; then \
		echo "GOBIN=$(CURDIR)/build/peers go install github.com/containers/gvisor-tap-vsock/cmd/gvproxy@v0.8.9"; \
		GOBIN=$(CURDIR)/build/peers go install github.com/containers/gvisor-tap-vsock/cmd/gvproxy@v0.8.9 || exit 1; \
	fi
	go build -o build/peers/benchpeers ./test/benchpeers/cmd/benchpeers
	@[ "$$(id -u)" = 0 ] || { echo "make bench-peers makes network namespaces: run it as root"; exit 1; }
	build/peers/benchpeers run -anka bin/anka -gvproxy build/peers/gvproxy -passt "$$(command -v passt)" \
		-json docs/benchmarks-peers.json -png docs/benchmarks-peers.png -doc docs/benchmarks.md $(BENCH_PEERS_FLAGS)

# The fast path's cost split into bridge, conntrack and the anti-spoofing
# hook (docs/benchmarks.md), in two namespaces of its own.
bench-split: deps
	@missing=$$(for p in iperf3 python3; do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		[ "$$(id -u)" = 0 ] || { echo "installing packages needs root: run make as root (sudo make ...)"; exit 1; }; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	test/fastpath-split/split.sh

# The long versions of the reliability tests (docs/reliability.md): every
# test whose name holds Soak, which skip unless ANKA_SOAK=1 (make test runs
# their short versions).
soak: deps guest build
	ANKA_SOAK=1 ANKA_GUEST_DIR=$(GUEST_DIR) ANKA_E2E=1 go test -count=1 -timeout 90m -run 'Soak' -v ./...
	cd sdk && ANKA_SOAK=1 ANKA_GUEST_DIR=$(GUEST_DIR) ANKA_E2E=1 go test -count=1 -timeout 90m -run 'Soak' -v ./...

# Each fuzz target for FUZZTIME (make fuzz FUZZTIME=10m), one at a time;
# the per-target table (executions, new inputs, crashers) is printed and
# kept in FUZZ_SUMMARY. make test fuzzes two targets at once for
# FUZZTIME_TEST each.
FUZZTIME ?= 60s
FUZZTIME_TEST ?= 3s
FUZZ_SUMMARY ?= build/fuzz-summary.tsv
fuzz: go-check
	@mkdir -p $(dir $(FUZZ_SUMMARY))
	test/fuzz.sh -o $(FUZZ_SUMMARY) $(FUZZTIME)

test-unit: go-check
	go test -short ./... && cd sdk && go test -short ./...

demo: deps guest build
	test/demo.sh

demo-stop:
	test/demo.sh stop

bench: go-check
	go test -run '^$$' -bench . -benchmem ./... && cd sdk && go test -run '^$$' -bench . -benchmem ./...

lint: go-check
	@bad=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$bad" ]; then echo "not gofmt-formatted:"; echo "$$bad"; exit 1; fi
	go vet ./...
	cd sdk && go vet ./...

# Regenerates the plugin protocol's Go code from sdk/proto/**/*.proto.
proto: go-check
	@missing=$$(for p in $(PROTO_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi
	@files=$$(find sdk/proto -name '*.proto' 2>/dev/null); \
	if [ -z "$$files" ]; then echo "no .proto files under sdk/proto yet: nothing to generate"; exit 0; fi; \
	go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.10 && \
	go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1 && \
	cd sdk && protoc --proto_path=. --go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative $$(find proto -name '*.proto')

install: build
	[ "$$(id -u)" = 0 ] || { echo "make install writes to $(PREFIX): run it as root"; exit 1; }
	install -D -m 0755 bin/anka $(DESTDIR)$(PREFIX)/bin/anka
	install -d -m 0755 $(DESTDIR)$(PLUGIN_DIR)
	@for pb in $(PLUGIN_BINS); do install -m 0755 bin/$${pb#*:} $(DESTDIR)$(PLUGIN_DIR)/ || exit 1; done
	install -D -m 0644 configs/anka.service $(DESTDIR)/etc/systemd/system/anka.service
	install -D -m 0644 configs/anka-vms.service $(DESTDIR)/etc/systemd/system/anka-vms.service
	install -D -m 0644 configs/config.example.yaml $(DESTDIR)/etc/anka/config.example.yaml
	@# The user plugins run as (plugin_user); a package does this in its postinst.
	@if [ -z "$(DESTDIR)" ] && ! id -u $(PLUGIN_USER) >/dev/null 2>&1; then \
		echo "useradd --system --no-create-home --shell /usr/sbin/nologin $(PLUGIN_USER)"; \
		useradd --system --no-create-home --shell /usr/sbin/nologin $(PLUGIN_USER) || exit 1; \
	fi
	@command -v systemctl >/dev/null && [ -d /run/systemd/system ] && systemctl daemon-reload || true

clean:
	rm -rf bin build
