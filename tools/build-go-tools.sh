#!/usr/bin/env bash
# Build the Go tools the tests drive — crictl and critest (tools/cri-tools), the Kubernetes
# 1.36 binaries, etcd and CoreDNS (tools/k8s) — into one directory, with the ordinary go
# command from the versions the go.mod files pin. A module whose go.mod, go.sum and sources
# are unchanged since its last build is skipped.
#
# Usage: tools/build-go-tools.sh BIN_DIR [e2e]   (e2e: also the e2e suite, its images' programs and ginkgo, for make e2e)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:?usage: build-go-tools.sh BIN_DIR}
mkdir -p "$bin"
bin=$(cd "$bin" && pwd)

command -v go >/dev/null || { echo "build-go-tools: needs the go command (Go 1.26) on PATH" >&2; exit 1; }
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
flags=(-trimpath -ldflags=-s\ -w)

# stamp MODULE_DIR: what the module's binaries were built from.
stamp() { (cd "$1" && cat go.mod go.sum $(find . -name '*.go' | sort) | sha256sum | cut -d' ' -f1; go version); }

# fresh NAME MODULE_DIR BINARIES...: true when every binary exists and the stamp matches.
fresh() {
  local name=$1 dir=$2; shift 2
  for b in "$@"; do [ -f "$bin/$b" ] || return 1; done  # -f: the key pair is no executable
  [ "$(cat "$bin/.$name.stamp" 2>/dev/null)" = "$(stamp "$dir")" ]
}

build() {
  local name=$1 dir=$2 start=$SECONDS; shift 2
  if fresh "$name" "$dir" "$@"; then
    echo "build-go-tools: $name is up to date in $bin"
    return
  fi
  echo "build-go-tools: building $name ($*) ..."
  (cd "$dir" && "build_$name")
  stamp "$dir" > "$bin/.$name.stamp"
  echo "build-go-tools: $name built in $((SECONDS - start)) s"
}

build_cri-tools() {
  go build "${flags[@]}" -o "$bin/crictl" sigs.k8s.io/cri-tools/cmd/crictl
  # critest is a compiled test binary, as cri-tools' own Makefile makes it.
  go test -c "${flags[@]}" -o "$bin/critest" sigs.k8s.io/cri-tools/cmd/critest
}

build_k8s() {
  # One go build for all: the packages they share are compiled once.
  go build "${flags[@]}" -o "$bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl
  go build "${flags[@]}" -o "$bin/etcd" go.etcd.io/etcd/server/v3
  go build "${flags[@]}" -o "$bin/coredns" ./coredns
}

build_e2e() {
  # Kubernetes' e2e suite, a compiled test binary as its Makefile makes it, and agnhost, the
  # image most of its specs run (tools/e2e lays it into an image).
  go test -c "${flags[@]}" -o "$bin/e2e.test" k8s.io/kubernetes/test/e2e
  go build "${flags[@]}" -o "$bin/agnhost" k8s.io/kubernetes/test/images/agnhost
  # Ginkgo's command, which runs the suite's specs in parallel processes, at the version the suite uses.
  go build "${flags[@]}" -o "$bin/ginkgo" github.com/onsi/ginkgo/v2/ginkgo
  # nonewprivs' program, which prints its effective uid (its image makes it setuid root).
  go build "${flags[@]}" -o "$bin/nnp" k8s.io/kubernetes/test/images/nonewprivs
  # The key pair agnhost's image carries at /localhost.crt and /localhost.key (its https servers).
  local porter
  porter="$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)/test/images/agnhost/porter"
  install -m 0644 "$porter/localhost.crt" "$bin/agnhost-localhost.crt"
  install -m 0644 "$porter/localhost.key" "$bin/agnhost-localhost.key"
}

build cri-tools "$here/cri-tools" crictl critest
build k8s "$here/k8s" kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd coredns
if [ "${2:-}" = e2e ]; then
  build e2e "$here/k8s" e2e.test agnhost ginkgo nnp agnhost-localhost.crt agnhost-localhost.key
fi
