"""Volumes as kubelet prepares them and the runtime mounts them: emptyDir on disk and in memory,
hostPath, configMap, secret, projected with downwardAPI, and subPath."""
from __future__ import annotations

import json
import os
import shutil
import tempfile

from tests.cluster.kube import BUSYBOX


def pod_with(kube, ns: str, name: str, volumes: list, mounts: list, command=("sleep", "3600"), **spec) -> None:
    kube.apply(json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"role": "volumes"}},
        "spec": {"terminationGracePeriodSeconds": 1, "volumes": volumes, **spec, "containers": [
            {"name": "main", "image": BUSYBOX, "command": list(command), "volumeMounts": mounts},
        ]},
    }), ns)
    kube.wait_ready(ns, name)


def mount_type(kube, ns: str, pod: str, path: str) -> str:
    for line in kube.exec(ns, pod, "cat", "/proc/mounts").splitlines():
        fields = line.split()
        if fields[1] == path:
            return fields[2]
    raise AssertionError(f"{path} is not a mount point in {pod}")


def test_empty_dir_on_disk_is_shared_by_the_pods_containers(kube, ns):
    kube.apply(json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pair"},
        "spec": {"terminationGracePeriodSeconds": 1, "volumes": [{"name": "scratch", "emptyDir": {}}], "containers": [
            {"name": "writer", "image": BUSYBOX, "command": ["sh", "-c", "echo shared > /data/f; sleep 3600"],
             "volumeMounts": [{"name": "scratch", "mountPath": "/data"}]},
            {"name": "reader", "image": BUSYBOX, "command": ["sleep", "3600"],
             "volumeMounts": [{"name": "scratch", "mountPath": "/data"}]},
        ]},
    }), ns)
    kube.wait_ready(ns, "pair")
    assert kube.wait("the writer's file", lambda: kube.exec(ns, "pair", "cat", "/data/f", container="reader",
                                                            check=False)) == "shared\n"
    assert mount_type(kube, ns, "pair", "/data") != "tmpfs"


def test_empty_dir_in_memory_is_a_tmpfs(kube, ns):
    pod_with(kube, ns, "mem", [{"name": "m", "emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}}],
             [{"name": "m", "mountPath": "/mem"}])
    assert mount_type(kube, ns, "mem", "/mem") == "tmpfs"
    kube.exec(ns, "mem", "sh", "-c", "echo in memory > /mem/f")
    assert kube.exec(ns, "mem", "cat", "/mem/f") == "in memory\n"


def test_host_path_is_the_nodes_directory(kube, ns):
    host_dir = tempfile.mkdtemp(prefix="cricket-hostpath-")
    try:
        with open(os.path.join(host_dir, "from-node"), "w") as f:
            f.write("node\n")
        pod_with(kube, ns, "hp", [{"name": "h", "hostPath": {"path": host_dir, "type": "Directory"}}],
                 [{"name": "h", "mountPath": "/host"}])
        assert kube.exec(ns, "hp", "cat", "/host/from-node") == "node\n"
        kube.exec(ns, "hp", "sh", "-c", "echo pod > /host/from-pod")
        with open(os.path.join(host_dir, "from-pod")) as f:
            assert f.read() == "pod\n"
        kube.kubectl("-n", ns, "delete", "pod", "hp", "--wait=true", timeout=60)
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)


def test_config_map_secret_and_projected_downward_api(kube, ns):
    kube.kubectl("-n", ns, "create", "configmap", "settings", "--from-literal=color=blue", "--from-literal=size=9")
    kube.kubectl("-n", ns, "create", "secret", "generic", "creds", "--from-literal=password=s3cret")
    pod_with(kube, ns, "cfg", [
        {"name": "cm", "configMap": {"name": "settings"}},
        {"name": "sec", "secret": {"secretName": "creds", "defaultMode": 0o400}},
        {"name": "proj", "projected": {"sources": [
            {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                                       {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
            {"configMap": {"name": "settings", "items": [{"key": "color", "path": "color"}]}},
        ]}},
    ], [
        {"name": "cm", "mountPath": "/etc/settings"},
        {"name": "sec", "mountPath": "/etc/creds", "readOnly": True},
        {"name": "proj", "mountPath": "/etc/info"},
    ])
    assert kube.exec(ns, "cfg", "cat", "/etc/settings/color") == "blue"
    assert kube.exec(ns, "cfg", "cat", "/etc/creds/password") == "s3cret"
    # A secret lives in memory, and its files keep the mode the pod asked for (through the symlink).
    assert mount_type(kube, ns, "cfg", "/etc/creds") == "tmpfs"
    assert kube.exec(ns, "cfg", "stat", "-L", "-c", "%a", "/etc/creds/password").strip() == "400"
    assert kube.exec(ns, "cfg", "cat", "/etc/info/name") == "cfg"
    assert 'role="volumes"' in kube.exec(ns, "cfg", "cat", "/etc/info/labels")
    assert kube.exec(ns, "cfg", "cat", "/etc/info/color") == "blue"
    # configMap volumes follow updates (kubelet rewrites them in place).
    kube.kubectl("-n", ns, "patch", "configmap", "settings", "-p", '{"data":{"color":"green"}}')
    assert kube.wait("the new value in the volume",
                     lambda: kube.exec(ns, "cfg", "cat", "/etc/settings/color") == "green", timeout=150)


def test_sub_path_mounts_one_file_and_one_directory(kube, ns):
    kube.kubectl("-n", ns, "create", "configmap", "one", "--from-literal=app.conf=key=value")
    pod_with(kube, ns, "sub", [
        {"name": "cm", "configMap": {"name": "one"}},
        {"name": "scratch", "emptyDir": {}},
    ], [
        {"name": "cm", "mountPath": "/etc/app.conf", "subPath": "app.conf"},
        {"name": "scratch", "mountPath": "/work", "subPath": "nested/dir"},
    ])
    assert kube.exec(ns, "sub", "cat", "/etc/app.conf") == "key=value"
    # /etc keeps the image's files beside the one mounted there.
    assert "passwd" in kube.exec(ns, "sub", "ls", "/etc").split()
    kube.exec(ns, "sub", "sh", "-c", "echo x > /work/f")
    assert kube.exec(ns, "sub", "cat", "/work/f") == "x\n"
