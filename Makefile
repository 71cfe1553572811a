# envgate. `make demo` runs the gateway on loopback with no cluster; `make test`
# runs every test. Tools are pinned here, installed with `go install` into
# ./bin, and rebuilt only when their version changes.

SHELL       := bash
.SHELLFLAGS := -eu -o pipefail -c
GO          ?= go
BIN         := $(CURDIR)/bin
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
SOAK        ?= 10m
# The build of `make build` is the Dockerfiles' build line, word for word
# (a test compares them and builds its binaries with it).
GOBUILD     := CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w -X main.version=$(VERSION)'

# Versions. The interop client and server, and protoc-gen-go, follow go.mod.
GRPC_VERSION               := $(shell $(GO) list -m -f '{{.Version}}' google.golang.org/grpc)
PROTOBUF_VERSION           := $(shell $(GO) list -m -f '{{.Version}}' google.golang.org/protobuf)
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
BUF_VERSION                := v1.75.0
GRPCURL_VERSION            := v1.9.4
# ghz v0.93.0 (the proxy's newest "latest") is built on grpc-go v1.34.0,
# whose client races its BDP window growth against new streams and resets
# a stream the server sent a granted window on (grpc/grpc-go#5358, fixed
# in #5494): 1 in about 150,000 64 KiB calls failed with "Internal:
# unexpected EOF" through envgate. v0.120.0 is built on v1.56.3.
GHZ_VERSION                := v0.120.0
PEBBLE_VERSION             := v2.10.1
H2SPEC_VERSION             := v2.2.1+incompatible

# The control plane of the Kubernetes tests: kube-apiserver and
# kube-controller-manager built from k8s.io/kubernetes (hack/kube/go.mod pins
# it), etcd from Debian's etcd-server. With KUBEBUILDER_ASSETS set, the tests
# use the binaries there instead.
KUBE_VERSION := $(shell cd hack/kube && $(GO) list -m -f '{{.Version}}' k8s.io/kubernetes)
KUBE_LDFLAGS := -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) \
	-X k8s.io/component-base/version.gitMajor=$(word 1,$(subst ., ,$(patsubst v%,%,$(KUBE_VERSION)))) \
	-X k8s.io/component-base/version.gitMinor=$(word 2,$(subst ., ,$(KUBE_VERSION))) \
	-X k8s.io/component-base/version.gitTreeState=clean

# Istio's CRDs for validating the istio overlay: istio.io/istio tags are not
# Go semver, so the module is pinned by its pseudo-version.
ISTIO_VERSION := v0.0.0-20260827124520-eed52ebb66ad

# The monitoring CRDs the manifests' ServiceMonitor (prometheus-operator) and
# PodMonitoring (Google Managed Prometheus) are validated against, and
# promtool for `promtool check metrics`.
PROM_OPERATOR_VERSION := v0.89.0
GMP_VERSION           := v0.12.0
PROMETHEUS_VERSION    := v0.316.0

TOOLS := $(addprefix $(BIN)/,buf protoc-gen-go protoc-gen-go-grpc grpcurl ghz interop-client interop-server \
	kube-apiserver kube-controller-manager etcd curl crds/istio.yaml crds/monitoring.yaml istio-dashboards promtool \
	pebble pebble-challtestsrv pebble-certs/pebble.minica.pem h2spec)

.PHONY: all build test demo proto bench lint tools clean fuzz soak kube crds \
	docker-build kind-up kind-load kind-deploy kind-demo kind-down gke-deploy
.DEFAULT_GOAL := build

all: lint test

build: ## the gateway, echo, helloserver and loadgen binaries, as the Dockerfiles build them
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w -X main.version=$(VERSION)' -o $(BIN)/gateway ./gateway
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w -X main.version=$(VERSION)' -o $(BIN)/echo ./echo
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w -X main.version=$(VERSION)' -o $(BIN)/helloserver ./helloserver
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w -X main.version=$(VERSION)' -o $(BIN)/loadgen ./loadgen

test: tools ## every test, with the race detector
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 30m ./...
	# The gateway's suite again with sharedHTTP2 off: a connection whose
	# first request is gRPC is then gRPC's own server's.
	ENVGATE_TEST_SHARED_HTTP2=false $(GO) test -count=1 -timeout 30m ./gateway/

demo: build $(BIN)/grpcurl ## echo and helloserver for env1 and env2, the gateway, grpcurl and curl through one port
	BIN=$(BIN) ./scripts/demo.sh

proto: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc ## regenerate proto/echopb
	cd proto && $(BIN)/buf generate

lint: ## go vet and gofmt
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

fuzz: ## each fuzz target for a while (FUZZTIME, default 30s)
	$(GO) test -run XXX -fuzz FuzzRoute -fuzztime $${FUZZTIME:-30s} ./gateway/internal/route
	$(GO) test -run XXX -fuzz FuzzVirtualHost -fuzztime $${FUZZTIME:-30s} ./gateway/internal/route
	$(GO) test -run XXX -fuzz FuzzDirector -fuzztime $${FUZZTIME:-30s} ./gateway/internal/proxy
	$(GO) test -run XXX -fuzz FuzzParseRequest -fuzztime $${FUZZTIME:-30s} ./gateway/internal/h1
	$(GO) test -run XXX -fuzz FuzzHeadEnd -fuzztime $${FUZZTIME:-30s} ./gateway/internal/h1
	$(GO) test -run XXX -fuzz FuzzServeConn -fuzztime $${FUZZTIME:-30s} ./gateway/internal/h2front

bench: build $(BIN)/ghz ## micro-benchmarks, then whole-system load against direct, envgate, the grpc-go floor, grpc-proxy, nginx, haproxy
	$(GO) test -run XXX -bench . -benchmem ./gateway/...
	$(GOBUILD) -o $(BIN)/bench-grpcproxy ./scripts/bench/grpcproxy
	$(GOBUILD) -o $(BIN)/bench-floor ./scripts/bench/floor
	$(GOBUILD) -o $(BIN)/bench-httpfloor ./scripts/bench/httpfloor
	$(GOBUILD) -o $(BIN)/bench-load ./scripts/bench/load
	$(GOBUILD) -o $(BIN)/bench-manyecho ./scripts/bench/manyecho
	BIN=$(BIN) ./scripts/bench.sh

soak: ## 10 minutes (SOAK) of mixed load, backend crashes and attacks through the real binary; not part of test
	$(GO) test -tags soak -count=1 -run TestSoak -timeout 40m -v ./gateway/ -soak.duration=$(SOAK)

tools: $(TOOLS)

# For a user with Docker and kind (neither runs on the CI machines, where the
# Dockerfiles' build line is checked by the tests instead).
IMAGE_TAG ?= dev
KIND_CLUSTER ?= envgate

docker-build: ## the gateway, echo, helloserver and loadgen images
	docker build -f Dockerfile.gateway --build-arg VERSION=$(VERSION) -t envgate/gateway:$(IMAGE_TAG) .
	docker build -f Dockerfile.echo --build-arg VERSION=$(VERSION) -t envgate/echo:$(IMAGE_TAG) .
	docker build -f Dockerfile.helloserver --build-arg VERSION=$(VERSION) -t envgate/helloserver:$(IMAGE_TAG) .
	docker build -f Dockerfile.loadgen --build-arg VERSION=$(VERSION) -t envgate/loadgen:$(IMAGE_TAG) .

kind-up: ## a kind cluster whose port mappings reach the gateway from 127.0.0.1:8080
	kind create cluster --name $(KIND_CLUSTER) --config k8s/kind/cluster.yaml

kind-load: docker-build ## the images into the kind cluster
	kind load docker-image --name $(KIND_CLUSTER) envgate/gateway:$(IMAGE_TAG) envgate/echo:$(IMAGE_TAG) envgate/helloserver:$(IMAGE_TAG) envgate/loadgen:$(IMAGE_TAG)

kind-deploy: ## the gateway (kind overlay) and environments env1 and env2
	kubectl apply -k k8s/overlays/kind
	kubectl apply -k k8s/envs/env1
	kubectl apply -k k8s/envs/env2
	kubectl -n env1 set image deployment/app app=envgate/echo:$(IMAGE_TAG)
	kubectl -n env2 set image deployment/app app=envgate/echo:$(IMAGE_TAG)
	for ns in env1 env2; do \
	  kubectl -n $$ns set image deployment/helloserver main=envgate/helloserver:$(IMAGE_TAG); \
	  kubectl -n $$ns set image deployment/loadgenerator main=envgate/loadgen:$(IMAGE_TAG); \
	done
	kubectl -n envgate-system rollout status deployment/envgate --timeout=120s
	kubectl -n env1 rollout status deployment/app --timeout=120s
	kubectl -n env2 rollout status deployment/app --timeout=120s

kind-demo: $(BIN)/grpcurl kind-up kind-load kind-deploy ## the seed's grpcurl check and curl (HTTP/1.1, HTTP/2) against the kind port mapping
	for env in env1 env2; do \
	  $(BIN)/grpcurl -plaintext -proto proto/echo.proto -rpc-header "env: $$env" 127.0.0.1:8080 echo.EchoService/Call; \
	  curl -sS --http1.1 -H "env: $$env" http://127.0.0.1:8080/; \
	  curl -sS --http2-prior-knowledge -H "env: $$env" http://127.0.0.1:8080/; \
	done

kind-down:
	kind delete cluster --name $(KIND_CLUSTER)

gke-deploy: ## the gke overlay and env1, env2 (create the edge2mesh Secret first: see k8s/overlays/gke)
	kubectl apply -k k8s/overlays/gke
	kubectl apply -k k8s/envs/env1
	kubectl apply -k k8s/envs/env2

kube: $(BIN)/kube-apiserver $(BIN)/kube-controller-manager $(BIN)/etcd ## the Kubernetes test control plane

$(BIN)/kube-apiserver $(BIN)/kube-controller-manager: $(BIN)/.stamp-kube@$(KUBE_VERSION)
$(BIN)/.stamp-kube@$(KUBE_VERSION): hack/kube/go.mod hack/kube/go.sum
	@mkdir -p $(BIN)
	cd hack/kube && CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(KUBE_LDFLAGS)' -o $(BIN)/kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
	cd hack/kube && CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(KUBE_LDFLAGS)' -o $(BIN)/kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
	rm -f $(BIN)/.stamp-kube@*
	touch $@

crds: $(BIN)/crds/istio.yaml ## Istio's networking CRDs, from the istio.io/istio module

$(BIN)/crds/istio.yaml: $(BIN)/.stamp-istio-crds@$(ISTIO_VERSION)
$(BIN)/.stamp-istio-crds@$(ISTIO_VERSION):
	@mkdir -p $(BIN)/crds
	dir=$$($(GO) mod download -json istio.io/istio@$(ISTIO_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'); \
	  test -n "$$dir" && cp "$$dir/manifests/charts/base/files/crd-all.gen.yaml" $(BIN)/crds/istio.yaml
	chmod 644 $(BIN)/crds/istio.yaml
	rm -f $(BIN)/.stamp-istio-crds@*
	touch $@

# Istio's Grafana dashboards, from the same module: a test checks that
# every query in them selects labels envgate's istioMetrics export.
$(BIN)/istio-dashboards: $(BIN)/.stamp-istio-dashboards@$(ISTIO_VERSION)
$(BIN)/.stamp-istio-dashboards@$(ISTIO_VERSION):
	@mkdir -p $(BIN)/istio-dashboards
	dir=$$($(GO) mod download -json istio.io/istio@$(ISTIO_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'); \
	  test -n "$$dir" && cp "$$dir/manifests/addons/dashboards/istio-service-dashboard.json" \
	    "$$dir/manifests/addons/dashboards/istio-workload-dashboard.json" \
	    "$$dir/manifests/addons/dashboards/istio-mesh-dashboard.gen.json" $(BIN)/istio-dashboards/
	chmod 644 $(BIN)/istio-dashboards/*.json
	rm -f $(BIN)/.stamp-istio-dashboards@*
	touch $@

$(BIN)/crds/monitoring.yaml: $(BIN)/.stamp-monitoring-crds@$(PROM_OPERATOR_VERSION)-$(GMP_VERSION)
$(BIN)/.stamp-monitoring-crds@$(PROM_OPERATOR_VERSION)-$(GMP_VERSION):
	@mkdir -p $(BIN)/crds
	op=$$($(GO) mod download -json github.com/prometheus-operator/prometheus-operator@$(PROM_OPERATOR_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'); \
	  gmp=$$($(GO) mod download -json github.com/GoogleCloudPlatform/prometheus-engine@$(GMP_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'); \
	  test -n "$$op" && test -n "$$gmp" && \
	  { cat "$$op/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"; echo ---; \
	    cat "$$gmp/charts/operator/crds/monitoring.googleapis.com_podmonitorings.yaml"; } > $(BIN)/crds/monitoring.yaml
	chmod 644 $(BIN)/crds/monitoring.yaml
	rm -f $(BIN)/.stamp-monitoring-crds@*
	touch $@

# deb_tool NAME, PACKAGE: bin/NAME links to the system's NAME, installing
# Debian's PACKAGE when it is missing (as root, or with sudo).
define deb_tool
$(BIN)/$(1):
	@mkdir -p $(BIN)
	if ! command -v $(1) >/dev/null; then \
	  if [ "$$$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$$$SUDO apt-get install -y -qq $(2) >/dev/null; \
	fi
	ln -sf "$$$$(command -v $(1))" $$@
endef
$(eval $(call deb_tool,etcd,etcd-server))
$(eval $(call deb_tool,curl,curl))

clean:
	rm -rf $(BIN)

# go_tool NAME, PACKAGE, VERSION: installs PACKAGE@VERSION as bin/NAME. The
# stamp file names the version, so a new version reinstalls.
define go_tool
$(BIN)/$(1): $(BIN)/.stamp-$(1)@$(3)
$(BIN)/.stamp-$(1)@$(3):
	@mkdir -p $(BIN)/.gobin-$(1)
	GOBIN=$(BIN)/.gobin-$(1) $(GO) install $(2)@$(3)
	mv $(BIN)/.gobin-$(1)/$(notdir $(2)) $(BIN)/$(1)
	rm -rf $(BIN)/.gobin-$(1) $(BIN)/.stamp-$(1)@*
	touch $$@
endef

$(eval $(call go_tool,buf,github.com/bufbuild/buf/cmd/buf,$(BUF_VERSION)))
$(eval $(call go_tool,protoc-gen-go,google.golang.org/protobuf/cmd/protoc-gen-go,$(PROTOBUF_VERSION)))
$(eval $(call go_tool,protoc-gen-go-grpc,google.golang.org/grpc/cmd/protoc-gen-go-grpc,$(PROTOC_GEN_GO_GRPC_VERSION)))
$(eval $(call go_tool,promtool,github.com/prometheus/prometheus/cmd/promtool,$(PROMETHEUS_VERSION)))
$(eval $(call go_tool,grpcurl,github.com/fullstorydev/grpcurl/cmd/grpcurl,$(GRPCURL_VERSION)))
$(eval $(call go_tool,ghz,github.com/bojand/ghz/cmd/ghz,$(GHZ_VERSION)))
$(eval $(call go_tool,interop-client,google.golang.org/grpc/interop/client,$(GRPC_VERSION)))
$(eval $(call go_tool,interop-server,google.golang.org/grpc/interop/server,$(GRPC_VERSION)))
$(eval $(call go_tool,pebble,github.com/letsencrypt/pebble/v2/cmd/pebble,$(PEBBLE_VERSION)))
$(eval $(call go_tool,h2spec,github.com/summerwind/h2spec/cmd/h2spec,$(H2SPEC_VERSION)))
$(eval $(call go_tool,pebble-challtestsrv,github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv,$(PEBBLE_VERSION)))

# Pebble's test certificates (its HTTPS API's, and the root that signs it),
# from the module at the same version.
$(BIN)/pebble-certs/pebble.minica.pem: $(BIN)/.stamp-pebble@$(PEBBLE_VERSION)
	@mkdir -p $(BIN)/pebble-certs
	dir=$$($(GO) mod download -json github.com/letsencrypt/pebble/v2@$(PEBBLE_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'); \
	  test -n "$$dir" && cp "$$dir/test/certs/pebble.minica.pem" "$$dir/test/certs/localhost/cert.pem" "$$dir/test/certs/localhost/key.pem" $(BIN)/pebble-certs/
	chmod 644 $(BIN)/pebble-certs/*
