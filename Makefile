# The README's commands. Each target does every set-up step it needs on a fresh
# Debian machine and is safe to run again.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PROTO  := api/runtime/v1/api.proto
STUBS  := api/runtime/v1/api_pb2.py api/runtime/v1/api_pb2.pyi api/runtime/v1/api_pb2_grpc.py
SHIM_PROTO := api/shim/v1/shim.proto
SHIM_STUBS := api/shim/v1/shim_pb2.py
ADMIN_PROTO := api/admin/v1/admin.proto
ADMIN_STUBS := api/admin/v1/admin_pb2.py api/admin/v1/admin_pb2_grpc.py

# Debian packages: what the daemon runs with, and what the tests and
# benchmarks run against (a real registry, skopeo, busybox for test images,
# containerd + runc as the peer, the reference CNI plugins to compare with).
RUN_DEBS   := iproute2 iptables libseccomp2
TEST_DEBS  := docker-registry skopeo busybox-static buildah apache2-utils openssl curl runc crun containernetworking-plugins criu
BENCH_DEBS := containerd runc
# What the e2e images take from the host for agnhost (tests/fixtures/images.py, E2E_HOST_TOOLS).
E2E_DEBS   := curl netcat-openbsd iproute2 bash

# The Go tools the tests drive (crictl, critest, the Kubernetes binaries, etcd, CoreDNS), built
# from the go.mod files under tools/ into a directory git ignores.
TOOLS_BIN := $(CURDIR)/.cache/tools/bin
export CRICKET_TOOLS_BIN := $(TOOLS_BIN)
# The runtime under the cluster tests: cricket, or containerd to check a test against the peer.
RUNTIME ?= cricket

.PHONY: install run test unit lint fuzz bench test-cgroup2 proto deps-run deps-test deps-bench deps-e2e clean go-tools critest cluster cluster-down cluster-test e2e e2e-compare

install: deps-run $(VENV)/.installed proto
	$(VENV)/bin/cricket-cni-install

run: install
	$(VENV)/bin/cricketd $(ARGS)

# pytest (unit, integration, and the one-node cluster's workload tests), critest, then the
# smoke selection of Kubernetes' e2e node-conformance specs on a cluster over Cricket.
test: deps-test deps-e2e install go-tools
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
	$(VENV)/bin/python -m tools.critest
	@tools/build-go-tools.sh $(TOOLS_BIN) e2e
	$(VENV)/bin/python -m tools.e2e --smoke

go-tools:
	@tools/build-go-tools.sh $(TOOLS_BIN)

critest: deps-test install go-tools
	$(VENV)/bin/python -m tools.critest $(ARGS)

cluster: deps-test install go-tools
	$(VENV)/bin/python -m tools.cluster up --runtime $(RUNTIME)

# Kubernetes' e2e node-conformance specs on the cluster (RUNTIME=cricket|containerd);
# ARGS="--smoke" for the CI-sized selection, ARGS="--focus REGEX" for your own.
e2e: deps-test deps-bench deps-e2e install go-tools
	@tools/build-go-tools.sh $(TOOLS_BIN) e2e
	$(VENV)/bin/python -m tools.e2e --runtime $(RUNTIME) $(ARGS)

# The two runtimes' reports of make e2e side by side; fails if containerd passed a spec Cricket did not.
e2e-compare: $(VENV)/.installed
	$(VENV)/bin/python -m tools.e2e.compare $(ARGS)

cluster-down: $(VENV)/.installed
	$(VENV)/bin/python -m tools.cluster down

cluster-test: deps-test deps-bench install go-tools
	CLUSTER_RUNTIME=$(RUNTIME) $(VENV)/bin/python -m pytest tests/cluster $(PYTEST_ARGS)

# The tests that need neither root nor Debian packages: the venv is enough.
unit: $(VENV)/.installed proto
	$(VENV)/bin/python -m pytest tests/unit $(PYTEST_ARGS)

lint: $(VENV)/.installed proto
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The cgroup, device, resource and OOM tests on a cgroup v2-only host: a Debian VM of the
# project's own under qemu (tools/cgroup2_vm), its image built once into .cache/cgroup2-vm.
test-cgroup2: $(VENV)/.installed proto
	$(VENV)/bin/python -m tools.cgroup2_vm $(ARGS)

# Coverage-guided fuzzing of every parser of untrusted bytes (fuzz/), FUZZ_SECONDS per target,
# from the committed corpus; findings are written under .cache/fuzz and fail the run.
FUZZ_SECONDS ?= 60
fuzz: $(VENV)/.installed proto
	$(VENV)/bin/python -m fuzz --seconds $(FUZZ_SECONDS) $(ARGS)

bench: deps-test deps-bench install go-tools
	$(VENV)/bin/python -m bench $(ARGS)

proto: $(STUBS) $(SHIM_STUBS) $(ADMIN_STUBS)

$(STUBS): $(PROTO) $(VENV)/.installed
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO)

# The shim protocol is frames over a unix socket, not gRPC: messages only.
$(SHIM_STUBS): $(SHIM_PROTO) $(VENV)/.installed
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. $(SHIM_PROTO)

$(ADMIN_STUBS): $(ADMIN_PROTO) $(VENV)/.installed
	$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. $(ADMIN_PROTO)

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $@

deps-run:
	@./.ci/apt-install $(RUN_DEBS)

deps-test:
	@./.ci/apt-install $(RUN_DEBS) $(TEST_DEBS)

deps-bench:
	@./.ci/apt-install $(BENCH_DEBS)

deps-e2e:
	@./.ci/apt-install $(E2E_DEBS)

clean:
	rm -rf $(VENV) api/*/v1/*_pb2*.py api/*/v1/*_pb2*.pyi *.egg-info .mypy_cache .ruff_cache
