"""Out of disk: cricketd's root directory on a small filesystem the test makes (a tmpfs with a
size), filled on purpose.

A pull that runs out of space, downloading or unpacking, fails with RESOURCE_EXHAUSTED naming
the path it could not write, leaves no partial blob or snapshot, and works once space is
freed. A container whose writable layer fills the disk gets ENOSPC inside, and the daemon
keeps serving: Version, ListContainers and a new exec answer, and a pull that finds no room
says so.
"""
from __future__ import annotations

import contextlib
import os
import subprocess

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from tests.daemon import Cricketd, need_root, registry_config
from tests.pods import Pods, rpc_error

DISK_SIZE = 64 << 20

pytestmark = pytest.mark.usefixtures("root_only")


@pytest.fixture(scope="module")
def root_only():
    need_root()


@contextlib.contextmanager
def small_disk(path: str, size: int):
    """A tmpfs of `size` bytes mounted at `path`, unmounted afterwards whatever is left on it."""
    os.makedirs(path, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0711", "cricket-test-disk", path],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", path], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", path], check=True, capture_output=True)


@pytest.fixture
def daemon(tmp_path, registry):
    """A cricketd whose root dir is a 64 MiB tmpfs; its pods are removed, it is stopped, and the
    tmpfs unmounted after the test, whatever happened."""
    workdir = str(tmp_path / "d")
    with small_disk(os.path.join(workdir, "root"), DISK_SIZE):
        d = Cricketd(workdir, registry_config(registry))
        try:
            d.start()
            yield d
        finally:
            try:
                if d.proc is not None:
                    Pods(d, "").remove_all()
            finally:
                d.stop()


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def leave_free(d: Cricketd, free: int) -> str:
    """Fill the daemon's disk with a ballast file until `free` bytes are left; its path."""
    path = os.path.join(d.root, "ballast")
    have = free_bytes(d.root)
    assert have > free, f"only {have} bytes free on {d.root}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.posix_fallocate(fd, 0, have - free)
    finally:
        os.close(fd)
    return path


def left_behind(d: Cricketd) -> list[str]:
    """Images, blobs, snapshots (committed or half-made) and partial downloads of the daemon's."""
    blobs = os.listdir(os.path.join(d.root, "content", "blobs", "sha256"))
    snapshots = os.listdir(os.path.join(d.root, "snapshots"))
    ingest = os.listdir(os.path.join(d.root, "content", "ingest"))
    return [i.id for i in d.list()] + blobs + snapshots + [f"ingest/{n}" for n in ingest]


@pytest.mark.parametrize("phase", ["download", "unpack"])
def test_a_pull_out_of_space_fails_naming_the_path_leaves_nothing_and_works_once_freed(
        daemon, registry, test_images, phase):
    d = daemon
    info = test_images["busybox"]  # one layer: info.size is its blob's size, about half the unpacked size
    layer = info.layers[0]
    # Room for the manifest and config but not the layer's blob; or for the blob but not its files.
    ballast = leave_free(d, 256 << 10 if phase == "download" else info.size + (512 << 10))
    ref = info.reference(registry)
    err = rpc_error(d.pull, ref)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert ref in err.details() and "no space left on device" in err.details()
    if phase == "download":
        assert os.path.join(d.root, "content", "ingest", layer[7:]) in err.details()
    else:
        assert os.path.join(d.root, "snapshots", "new-") in err.details() and "bin/busybox" in err.details()
    assert left_behind(d) == []
    os.unlink(ballast)
    assert d.pull(ref) == info.config_digest
    assert [i.id for i in d.list()] == [info.config_digest]


def test_a_container_filling_the_disk_gets_enospc_and_the_daemon_keeps_serving(
        daemon, registry, test_images, tmp_path):
    d = daemon
    busybox = test_images["busybox"].reference(registry)
    d.pull(busybox)
    pods = Pods(d, str(tmp_path / "logs"))
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sleep", "1000"])

    filled = pods.exec(cid, ["busybox", "dd", "if=/dev/zero", "of=/fill", "bs=1M", f"count={2 * DISK_SIZE >> 20}"],
                       timeout=60)
    assert filled.exit_code != 0
    assert b"No space left on device" in filled.stderr, filled.stderr
    assert free_bytes(d.root) < 1 << 20

    assert d.runtime is not None
    assert d.runtime.Version(pb.VersionRequest()).runtime_name == "cricket"
    [listed] = d.runtime.ListContainers(pb.ListContainersRequest()).containers
    assert listed.id == cid and listed.state == pb.CONTAINER_RUNNING
    assert pods.sh(cid, "echo still here") == "still here\n"
    # A pull finds no room and says so, naming where; so does a new container, which leaves nothing.
    special = test_images["special"].reference(registry)
    err = rpc_error(d.pull, special)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert d.root in err.details()
    err = rpc_error(pods.run, pod, busybox, ["sleep", "1000"])
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert "CreateContainer" in err.details()
    assert [c.id for c in d.runtime.ListContainers(pb.ListContainersRequest()).containers] == [cid]
    assert os.listdir(os.path.join(d.root, "containers")) == [cid]

    # The container frees what it took; then the pull and a new container have their room.
    pods.sh(cid, "busybox rm /fill")
    assert d.pull(special) == test_images["special"].config_digest
    other = pods.run(pod, busybox, ["sleep", "1000"])
    assert pods.sh(other, "echo started") == "started\n"
    pods.stop(other)
    pods.remove(other)
    pods.stop(cid)
    pods.remove(cid)
    pods.stop_pod(pod)
    pods.remove_pod(pod)

