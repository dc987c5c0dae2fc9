"""Requests and limits as kubelet hands them to the runtime: the QoS classes' places under
kubelet's kubepods hierarchy, the container cgroups' limits, and OOMKilled at the limit."""
from __future__ import annotations

import json
import os

import pytest

from tests.cluster.kube import Kube, cgroup_dir

MI = 1024 * 1024


def cgroups_path(kube: Kube, ns: str, pod: str) -> str:
    """The container's cgroup path as the runtime made it (its OCI spec's cgroupsPath)."""
    cid = kube.container_status(ns, pod)["containerID"].split("://", 1)[1]
    info = json.loads(kube.crictl("inspect", cid).stdout)["info"]
    return info["runtimeSpec"]["linux"]["cgroupsPath"]


def read(controller: str, path: str, name: str) -> str:
    with open(cgroup_dir(controller, path.lstrip("/"), name)) as f:
        return f.read().strip()


@pytest.mark.parametrize("qos,resources,parent", [
    ("BestEffort", {}, "kubepods/besteffort/pod"),
    ("Burstable", {"requests": {"cpu": "100m", "memory": "32Mi"}, "limits": {"cpu": "500m", "memory": "64Mi"}},
     "kubepods/burstable/pod"),
    ("Guaranteed", {"requests": {"cpu": "250m", "memory": "48Mi"}, "limits": {"cpu": "250m", "memory": "48Mi"}},
     "kubepods/pod"),
])
def test_qos_classes_and_limits_land_in_the_cgroups(kube, ns, qos, resources, parent):
    kube.run_pod(ns, "sized", ["sleep", "3600"], container={"resources": resources})
    pod = kube.wait_ready(ns, "sized")
    assert pod["status"]["qosClass"] == qos
    path = cgroups_path(kube, ns, "sized")
    assert path.lstrip("/").startswith(parent + pod["metadata"]["uid"]), path
    # The container's own processes are in it.
    procs = read("memory", path, "cgroup.procs").split()
    assert procs, f"no process in {path}"
    limits = resources.get("limits", {})
    memory_limit = int(read("memory", path, "memory.limit_in_bytes"))
    quota = int(read("cpu", path, "cpu.cfs_quota_us"))
    shares = int(read("cpu", path, "cpu.shares"))
    if "memory" in limits:
        assert memory_limit == int(limits["memory"][:-2]) * MI
    else:
        assert memory_limit > 1 << 60  # unlimited
    if "cpu" in limits:
        assert quota == int(limits["cpu"][:-1]) * 100  # millicores of a 100 ms period
    else:
        assert quota == -1
    requested = resources.get("requests", {}).get("cpu")
    assert shares == (int(requested[:-1]) * 1024 // 1000 if requested else 2)


def test_a_container_over_its_memory_limit_is_oom_killed(kube, ns):
    # tail keeps a line it never finishes reading in memory: /dev/zero has no newline.
    kube.run_pod(ns, "hog", ["tail", "/dev/zero"], restartPolicy="Never",
                 container={"resources": {"limits": {"memory": "24Mi"}}})
    pod = kube.wait_phase(ns, "hog", "Failed", timeout=120)
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "OOMKilled" and terminated["exitCode"] == 137, terminated


def test_pod_cgroups_go_with_the_pod(kube, ns):
    kube.run_pod(ns, "brief", ["sleep", "3600"])
    pod = kube.wait_ready(ns, "brief")
    path = cgroups_path(kube, ns, "brief")
    assert os.path.isdir(cgroup_dir("memory", path.lstrip("/")))
    kube.kubectl("-n", ns, "delete", "pod", "brief", "--wait=true", timeout=60)
    kube.wait("the container's cgroup removed", lambda: not os.path.isdir(cgroup_dir("memory", path.lstrip("/"))))
    assert pod["metadata"]["uid"] in path
