"""Where the one-node cluster keeps everything, and its addresses.

The node is a network namespace of its own, as a kind node is a container of its own: etcd,
the control plane, kubelet, kube-proxy, the runtime and the image registry all run in it, so
the cluster's bridge, veths and iptables rules never touch the host's network, and removing
the namespace removes them. A veth pair joins it to the host, which reaches the API server,
NodePorts and hostPorts at the node's address.
"""
from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Everything the cluster writes; `make cluster-down` removes both.
CLUSTER_DIR = os.environ.get("CRICKET_CLUSTER_DIR", "/var/lib/cricket-cluster")
STATE_DIR = os.environ.get("CRICKET_CLUSTER_STATE", "/run/cricket-cluster")
# The Go tools, built by `make go-tools` (tools/build-go-tools.sh).
BIN_DIR = os.environ.get("CRICKET_TOOLS_BIN", os.path.join(REPO, ".cache", "tools", "bin"))

NODE_NAME = "cricket-node"
NETNS = "cricket-node"
HOST_IF, NODE_IF = "ckn-host", "ckn-node"
HOST_IP, NODE_IP, LINK_PREFIX = "10.213.0.1", "10.213.0.2", 30

POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/16"
API_SERVICE_IP = "10.96.0.1"
DNS_SERVICE_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"

API_PORT = 6443
ETCD_PORT = 2379
# Not 5000: Kubernetes' private-registry e2e specs run a registry pod on the node's port 5000.
REGISTRY_PORT = 5001
KUBELET_PORT = 10250

# Registries the images are named after; the runtime reaches each through the node's registry.
MIRRORED = ("docker.io", "registry.k8s.io", "gcr.io", "quay.io", "public.ecr.aws")

RUNTIMES = ("cricket", "containerd")


def path(*parts: str) -> str:
    return os.path.join(CLUSTER_DIR, *parts)


def state(*parts: str) -> str:
    return os.path.join(STATE_DIR, *parts)


def binary(name: str) -> str:
    return os.path.join(BIN_DIR, name)


LOG_DIR = path("logs")
KUBECONFIG = path("kubeconfig", "admin.kubeconfig")
API_URL = f"https://{NODE_IP}:{API_PORT}"
REGISTRY_HOST = f"{NODE_IP}:{REGISTRY_PORT}"  # as the host reaches it; the node says 127.0.0.1
