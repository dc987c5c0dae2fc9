"""Recursive read-only mounts and ProcMount, seen from inside containers under every runtime handler.

A host directory with a tmpfs mounted beneath it is bound into containers: read-only
with recursive_read_only, the submount is read-only too (mount_setattr(2) with AT_RECURSIVE);
plain read-only, only the top is, and the submount stays writable. The refusals are
containerd's. kubelet's procMount comes as the context's masked and read-only paths: its
default lists for Default, none for Unmasked.
"""
from __future__ import annotations

import json
import os
import subprocess

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from cri.config import Config, runtime_handlers
from linux import libc
from linux.mounts import mount_of
from tests.pods import Pods, rpc_error

OCI_RUNTIMES = runtime_handlers(Config())  # what a daemon with no [runtimes] table offers here
HANDLERS = ["", *OCI_RUNTIMES]
# kubelet 1.36's lists for procMount Default (pkg/securitycontext/util.go), as it sends them.
KUBELET_MASKED = ["/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys",
                  "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                  "/sys/firmware", "/sys/devices/virtual/powercap"]
KUBELET_READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

needs_mount_setattr = pytest.mark.skipif(not libc.has_mount_setattr(),
                                         reason="needs mount_setattr(2): Linux 5.12 or later")


@pytest.fixture
def pods(daemon, tmp_path):
    p = Pods(daemon, str(tmp_path / "logs"))
    yield p
    p.remove_all()


@pytest.fixture
def busybox(registry, test_images):
    return test_images["busybox"].reference(registry)


@pytest.fixture
def host_tree(tmp_path):
    """A host directory whose `sub` directory has a tmpfs mounted on it. The tmpfs is unmounted
    afterwards, whatever the test did, and checked to be gone."""
    top = tmp_path / "tree"
    sub = top / "sub"
    sub.mkdir(parents=True)
    libc.mount("tmpfs", str(sub), "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "size=1m,mode=0755")
    try:
        yield top
    finally:
        libc.umount(str(sub), libc.MNT_DETACH)
        assert mount_of(str(sub))[0] != str(sub), f"{sub} is still mounted"


def run_pod(pods: Pods, handler: str = "") -> str:
    return pods.rt.RunPodSandbox(pb.RunPodSandboxRequest(config=pods.pod_config(),
                                                         runtime_handler=handler)).pod_sandbox_id


def bind(host_tree, readonly=True, rro=False, propagation=pb.PROPAGATION_PRIVATE) -> pb.Mount:
    return pb.Mount(container_path="/mnt", host_path=str(host_tree), readonly=readonly, recursive_read_only=rro,
                    propagation=propagation)


def mount_table(pods: Pods, cid: str) -> dict[str, set[str]]:
    """The container's mounts: mount point -> the mount's own options (mountinfo's 6th field)."""
    table = {}
    for line in pods.sh(cid, "cat /proc/self/mountinfo").splitlines():
        fields = line.split()
        table[fields[4]] = set(fields[5].split(","))
    return table


def touch(pods: Pods, cid: str, path: str) -> pb.ExecSyncResponse:
    return pods.exec(cid, ["busybox", "touch", path])


# -- recursive read-only mounts ------------------------------------------------------------------


@needs_mount_setattr
@pytest.mark.parametrize("handler", HANDLERS)
def test_a_submount_under_a_recursive_read_only_bind_is_read_only(pods, busybox, host_tree, handler):
    pod = run_pod(pods, handler)
    cid = pods.run(pod, busybox, ["sleep", "1000"], mounts=[bind(host_tree, rro=True)])
    for path in ("/mnt/sub/from-container", "/mnt/from-container"):
        out = touch(pods, cid, path)
        assert out.exit_code != 0 and b"Read-only file system" in out.stderr, (path, out)
    table = mount_table(pods, cid)
    assert "ro" in table["/mnt"] and "ro" in table["/mnt/sub"], table
    # The container's copies are read-only, not the host's tmpfs: the host still writes it, and
    # the container reads what it wrote.
    (host_tree / "sub" / "from-host").write_text("written on the host")
    assert pods.sh(cid, "cat /mnt/sub/from-host") == "written on the host"
    assert not (host_tree / "sub" / "from-container").exists()


@pytest.mark.parametrize("handler", HANDLERS)
def test_a_plain_read_only_bind_leaves_its_submount_writable(pods, busybox, host_tree, handler):
    pod = run_pod(pods, handler)
    cid = pods.run(pod, busybox, ["sleep", "1000"], mounts=[bind(host_tree)])
    out = touch(pods, cid, "/mnt/from-container")
    assert out.exit_code != 0 and b"Read-only file system" in out.stderr, out
    assert touch(pods, cid, "/mnt/sub/from-container").exit_code == 0
    assert (host_tree / "sub" / "from-container").exists()
    table = mount_table(pods, cid)
    assert "ro" in table["/mnt"] and "rw" in table["/mnt/sub"], table


@pytest.mark.parametrize("handler", HANDLERS)
def test_a_read_only_bind_keeps_its_sources_noexec_nosuid_and_nodev(pods, busybox, tmp_path, handler):
    # Remounting a bind read-only sets only the flags it is given: the host mount's noexec must
    # not be lost on the way, or a program on it runs in the container.
    source = tmp_path / "noexec"
    source.mkdir()
    libc.mount("tmpfs", str(source), "tmpfs", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC, "size=4m,mode=0755")
    try:
        subprocess.run(["cp", "/bin/busybox", str(source / "program")], check=True)
        pod = run_pod(pods, handler)
        cid = pods.run(pod, busybox, ["sleep", "1000"],
                       mounts=[pb.Mount(container_path="/mnt", host_path=str(source), readonly=True)])
        out = pods.exec(cid, ["sh", "-c", "/mnt/program true"])
        assert out.exit_code == 126 and b"Permission denied" in out.stderr, out
        assert {"ro", "nosuid", "nodev", "noexec"} <= mount_table(pods, cid)["/mnt"]
        pods.remove_pod(pod)
    finally:
        libc.umount(str(source), libc.MNT_DETACH)


@needs_mount_setattr
@pytest.mark.skipif(not OCI_RUNTIMES, reason="needs an OCI runtime that runs here: apt-get install runc")
def test_the_mounts_are_the_same_under_every_executor(pods, busybox, host_tree):
    def seen(handler: str) -> list[str]:
        pod = run_pod(pods, handler)
        cid = pods.run(pod, busybox, ["sleep", "1000"], mounts=[bind(host_tree, rro=True)])
        lines = sorted(f"{point} {sorted(options)}" for point, options in mount_table(pods, cid).items()
                       if point.startswith("/mnt"))
        pods.remove_pod(pod)
        return lines

    reference = seen("")
    assert len(reference) == 2, reference
    for handler in OCI_RUNTIMES:
        assert seen(handler) == reference, handler


@pytest.mark.parametrize("readonly,propagation,words", [
    (False, pb.PROPAGATION_PRIVATE, "needs readonly"),
    (True, pb.PROPAGATION_HOST_TO_CONTAINER, "needs private propagation, not PROPAGATION_HOST_TO_CONTAINER"),
    (True, pb.PROPAGATION_BIDIRECTIONAL, "needs private propagation, not PROPAGATION_BIDIRECTIONAL"),
], ids=["read-write", "host-to-container", "bidirectional"])
def test_recursive_read_only_refusals(pods, busybox, tmp_path, readonly, propagation, words):
    missing = tmp_path / "never-made"
    pod = run_pod(pods)
    config = pods.container_config(busybox, ["sleep", "1000"], mounts=[
        pb.Mount(container_path="/data", host_path=str(missing), readonly=readonly, recursive_read_only=True,
                 propagation=propagation)])
    err = rpc_error(pods.create, pod, config)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert "mount /data" in err.details() and "recursive_read_only" in err.details(), err.details()
    assert words in err.details(), err.details()
    assert not pods.rt.ListContainers(pb.ListContainersRequest()).containers
    assert not missing.exists()  # refused before anything was made


def _runtime_lists_rro(path: str) -> bool | None:
    """Whether `<runtime> features` lists "rro"; None if the runtime has no such command."""
    done = subprocess.run([path, "features"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return None
    return "rro" in (json.loads(done.stdout).get("mountOptions") or ())


def test_status_offers_recursive_read_only_mounts_per_handler(pods):
    features = {h.name: h.features for h in pods.rt.Status(pb.StatusRequest()).runtime_handlers}
    assert {"", "cricket", *OCI_RUNTIMES} <= set(features)
    assert features[""].recursive_read_only_mounts is libc.has_mount_setattr()
    assert features["cricket"].recursive_read_only_mounts is libc.has_mount_setattr()
    for name, handler in OCI_RUNTIMES.items():
        lists = _runtime_lists_rro(handler.path)
        if lists is not None:
            assert features[name].recursive_read_only_mounts is (lists and libc.has_mount_setattr()), name
    # runc 1.1 can not idmap a bind mount: no user namespaces with it (tests/test_userns.py has the rest).
    assert not any(features[name].user_namespaces for name in OCI_RUNTIMES)


# -- ProcMount -------------------------------------------------------------------------------------


# A file of /proc that kubelet's Default and Cricket's own defaults both mask, present on this host
# (/proc/kcore is not on every kernel).
MASKED_FILE = next((p for p in ("/proc/kcore", "/proc/timer_list", "/proc/keys") if os.path.isfile(p)), None)


def _proc_probe(pods: Pods, cid: str) -> tuple[str, dict[str, set[str]]]:
    """What the masked file is in the container, and the mounts on /proc's paths (point -> options)."""
    kind = pods.sh(cid, f"busybox stat -c %F {MASKED_FILE}").strip()
    points = {point: options for point, options in mount_table(pods, cid).items() if point.startswith("/proc/")}
    return kind, points


def _write_sysctl(pods: Pods, cid: str) -> bytes:
    """The error of writing the pod's own hostname back to its sysctl (the same value: nothing changes)."""
    out = pods.exec(cid, ["sh", "-c", "h=$(cat /proc/sys/kernel/hostname); echo $h > /proc/sys/kernel/hostname"])
    return out.stderr


@pytest.mark.skipif(MASKED_FILE is None, reason="none of the files kubelet masks in /proc is on this kernel")
@pytest.mark.parametrize("handler", HANDLERS)
def test_proc_mount_unmasked_leaves_proc_as_the_kernel_has_it(pods, busybox, handler):
    pod = run_pod(pods, handler)
    default = pods.run(pod, busybox, ["sleep", "1000"], security=pb.LinuxContainerSecurityContext(
        masked_paths=KUBELET_MASKED, readonly_paths=KUBELET_READONLY))
    # kubelet's procMount: Unmasked is both lists empty.
    unmasked = pods.run(pod, busybox, ["sleep", "1000"], proc_mount="Unmasked")

    kind, points = _proc_probe(pods, default)
    assert kind == "character special file", kind  # /dev/null bound over it
    assert MASKED_FILE in points and "ro" in points["/proc/sys"], points
    assert b"Read-only file system" in _write_sysctl(pods, default)

    kind, points = _proc_probe(pods, unmasked)
    assert kind.startswith("regular"), kind
    assert points == {}, f"/proc of an Unmasked container has mounts on it: {points}"
    assert b"Read-only file system" not in _write_sysctl(pods, unmasked)  # refused, if at all, for want of a capability
