"""The cluster tests: a one-node Kubernetes 1.36 cluster (tools/cluster) on Cricket — or on
containerd with CLUSTER_RUNTIME=containerd, to check that a test asks only what Kubernetes
promises — brought up once for this package and taken down after it, leaving nothing.

CRICKET_CLUSTER_REUSE=1 runs the tests against a cluster `make cluster` already started, and
leaves it running.
"""
from __future__ import annotations

import os
import secrets

import pytest

from tests.cluster.kube import Kube
from tools.cluster import cluster, node
from tools.cluster import settings as s

RUNTIME = os.environ.get("CLUSTER_RUNTIME", "cricket")
REUSE = os.environ.get("CRICKET_CLUSTER_REUSE") == "1"

# What every test cluster's kubelet runs with, beyond tools/cluster's defaults: container logs
# rotate small and often, so that a test sees kubelet rotate them through ReopenContainerLog,
# and every image unused for 30 s goes at kubelet's next image GC (images are pulled again when
# needed), so that a test sees kubelet remove images from the runtime's store.
KUBELET = {
    "containerLogMaxSize": "16Ki", "containerLogMaxFiles": 3, "containerLogMonitorInterval": "3s",
    "imageGCHighThresholdPercent": 1, "imageGCLowThresholdPercent": 0, "imageMinimumGCAge": "30s",
}


def leftovers() -> list[str]:
    """What of a cluster is still on the machine."""
    found = []
    if node.exists():
        found.append(f"network namespace {s.NETNS}")
    if os.path.exists(f"/sys/class/net/{s.HOST_IF}"):
        found.append(f"link {s.HOST_IF}")
    for d in (s.CLUSTER_DIR, s.STATE_DIR):
        if os.path.exists(d):
            found.append(f"directory {d}")
    with open("/proc/self/mountinfo") as f:
        found += [f"mount {line.split()[4]}" for line in f
                  if s.CLUSTER_DIR in line or s.STATE_DIR in line or "/var/lib/kubelet" in line]
    for hierarchy in os.listdir("/sys/fs/cgroup"):
        if os.path.isdir(os.path.join("/sys/fs/cgroup", hierarchy, "kubepods")):
            found.append(f"cgroup /sys/fs/cgroup/{hierarchy}/kubepods")
    return found


@pytest.fixture(scope="package")
def kube():
    if os.geteuid() != 0:
        pytest.skip("the cluster needs root")
    missing = cluster.missing_binaries()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} in {s.BIN_DIR}: make go-tools")
    if REUSE:
        yield Kube(cluster.recorded()["runtime"])
        return
    try:
        cluster.up(RUNTIME, kubelet_overrides=KUBELET)
        yield Kube(RUNTIME)
    finally:
        problems = cluster.down()
        left = leftovers()
        assert not problems and not left, f"the cluster left things behind: {problems + left}"


@pytest.fixture
def ns(kube, request):
    """A namespace of the test's own, deleted (without waiting) when it ends."""
    name = f"t-{request.node.name[5:30].replace('_', '-').strip('-').lower()}-{secrets.token_hex(2)}"
    kube.kubectl("create", "namespace", name)
    # Pods are admitted only once the namespace's default service account exists.
    kube.wait(f"the default service account of {name}",
              lambda: kube.kubectl("-n", name, "get", "serviceaccount", "default", check=False).returncode == 0)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)
