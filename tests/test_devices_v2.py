"""The device cgroup on a cgroup v2 host, through a real cricketd: a container whose image holds
device nodes opens the standard ones and not the others.

On cgroup v2 only the eBPF device program linux/cgroups.py attaches stands between a container
and a device node in its image (it has CAP_MKNOD, and layers keep device nodes). On a hybrid
host the daemon runs here as on a v2 host: tests/cgroup2.py's as_v2_host() gives it a mount
namespace whose /sys/fs/cgroup is the cgroup2 hierarchy, rooted by a cgroup namespace at a
scratch directory, so linux.cgroups detects "v2" from the mount table, pods and containers are
made in that directory's subtree and no v1 devices controller is involved. On a v2 host the
same wrapper only adds a level (`python -m tools.cgroup2_vm` runs these tests on one).
"""
from __future__ import annotations

import os

import pytest

from api.runtime.v1 import api_pb2 as pb
from linux import devices_bpf
from linux.cgroups import mount_fstype
from tests import cgroup2
from tests.daemon import Cricketd, need_root, registry_config
from tests.fixtures import images
from tests.pods import Pods, rpc_error

# The container's view of each node in its image: null is a standard device, tun and fuse are
# not, and open without any capability, so only the device cgroup can refuse them.
NODES = {"null": (1, 3), "tun": (10, 200), "fuse": (10, 229)}
# Opened for reading and writing, in a subshell: a failed redirection ends a shell.
PROBE = ("for n in null tun fuse; do "
         "if (: <>/devnodes/$n) 2>/tmp/err; then echo $n opened; else echo $n $(cat /tmp/err); fi; done")


class V2Cricketd(Cricketd):
    """A cricketd that sees a cgroup v2 host rooted at `cgroup_root` (a cgroup2 directory)."""

    def __init__(self, workdir: str, config: str, cgroup_root: str):
        super().__init__(workdir, config)
        self.cgroup_root = cgroup_root

    def command(self) -> list[str]:
        return cgroup2.as_v2_host(self.cgroup_root, super().command())


@pytest.fixture(scope="module")
def devnodes(registry, tmp_path_factory) -> str:
    """An image with device nodes under /devnodes, pushed to the test registry."""
    layout = images._Layout(str(tmp_path_factory.mktemp("devnodes") / "layout"))
    entries = (images.directory("devnodes"),
               *(images.chardev(f"devnodes/{name}", *dev) for name, dev in NODES.items()))
    info = layout.image("devnodes", [images.Layer(images.base_entries()), images.Layer(entries)])
    layout.finish()
    images.push(layout.root, "devnodes", registry)
    return info.reference(registry)


@pytest.fixture(scope="module")
def daemon(registry, devnodes, tmp_path_factory):
    need_root()
    with cgroup2.scratch_dir("cricket-test-v2host") as top:
        d = V2Cricketd(str(tmp_path_factory.mktemp("cricketd-v2")), registry_config(registry), top)
        d.start()
        try:
            d.pull(devnodes)
            yield d
        finally:
            try:
                if d.proc is None:
                    d.start()
                Pods(d, "").remove_all()
            finally:
                d.stop()


@pytest.fixture
def pods(daemon, tmp_path):
    p = Pods(daemon, str(tmp_path / "logs"))
    yield p
    p.remove_all()


def probe(pods: Pods, cid: str) -> dict[str, str]:
    """From a process exec'd in the container: each node "opened", "refused" (EPERM) or the
    shell's message for another error."""
    return _results(pods.sh(cid, PROBE).splitlines())


def _results(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        name, _, result = line.partition(" ")
        out[name] = "refused" if result.endswith("Operation not permitted") else result
    return out


def test_the_daemon_sees_a_v2_host(daemon):
    with open(f"/proc/{daemon.proc.pid}/mountinfo") as f:
        assert mount_fstype(f.read(), "/sys/fs/cgroup") == "cgroup2"


def test_a_container_opens_the_standard_devices_in_its_image_and_not_others(pods, daemon, devnodes):
    pod = pods.run_pod()
    cid = pods.run(pod, devnodes, ["sleep", "1000"])
    assert probe(pods, cid) == {"null": "opened", "tun": "refused", "fuse": "refused"}
    # The container's first process as well as those exec'd into it.
    first = pods.run(pod, devnodes, ["sh", "-c", PROBE])
    pods.wait_exited(first)
    lines = [content.decode() for stream, _, content in pods.log_lines(first) if stream == "stdout"]
    assert _results(lines) == {"null": "opened", "tun": "refused", "fuse": "refused"}
    # Made at run time with its CAP_MKNOD, a node of the host's disk is refused as well.
    disk = cgroup2.block_device()
    if disk:
        out = pods.exec(cid, ["sh", "-c", f"mknod /tmp/disk b {disk[0]} {disk[1]}"])
        assert out.exit_code != 0 and b"Operation not permitted" in out.stderr, out
    # The program sits on the container's own cgroup, found under the daemon's cgroup root.
    ctr_dirs = [d for d, _, _ in os.walk(daemon.cgroup_root) if os.path.basename(d) == cid]
    assert len(ctr_dirs) == 1 and _attached(ctr_dirs[0]) == 1


def test_a_privileged_container_opens_them_all(pods, devnodes):
    config = pods.pod_config()
    config.linux.security_context.privileged = True
    pod = pods.run_pod(config)
    cid = pods.run(pod, devnodes, ["sleep", "1000"], security=pb.LinuxContainerSecurityContext(privileged=True))
    assert probe(pods, cid) == {"null": "opened", "tun": "opened", "fuse": "opened"}


def test_a_container_whose_program_cannot_be_attached_does_not_start(pods, daemon, devnodes):
    pod = pods.run_pod()
    pod_dir = os.path.join(daemon.cgroup_root, "cricket", pod)
    assert os.path.isdir(pod_dir)
    # An exclusive device program on the pod's cgroup: the kernel refuses the container's own.
    prog = devices_bpf.load(devices_bpf.assemble([{"allow": True, "access": "rwm"}]))
    fd = os.open(pod_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        devices_bpf.attach(fd, prog, flags=0)
    finally:
        os.close(fd)
        os.close(prog)
    # The shim builds the container after CreateContainer returns; StartContainer reports its error.
    cid = pods.create(pod, pods.container_config(devnodes, ["sleep", "1000"]))
    err = rpc_error(pods.start, cid)
    assert "device rules for cgroup /cricket/" in err.details() and "not run without" in err.details(), err
    assert pods.state(cid) != pb.CONTAINER_RUNNING
    ctr_dir = os.path.join(pod_dir, cid)
    assert not os.path.exists(ctr_dir) or cgroup2.procs(ctr_dir) == []


def _attached(directory: str) -> int:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return len(devices_bpf.attached(fd))
    finally:
        os.close(fd)
