"""cricketd killed and started again: running containers keep running and are found again;
a wiped state dir (a reboot) turns everything exited; many containers leave nothing behind."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from api.runtime.v1 import api_pb2 as pb
from linux.cgroups import Cgroup
from tests.daemon import Cricketd, registry_config
from tests.pods import Pods, serving


@pytest.fixture
def daemon(registry, test_images, tmp_path):
    with serving(str(tmp_path / "cricketd"), registry_config(registry),
                 [test_images["busybox"].reference(registry)]) as d:
        yield d


@pytest.fixture
def pods(daemon, tmp_path):
    return Pods(daemon, str(tmp_path / "logs"))


@pytest.fixture
def busybox(registry, test_images):
    return test_images["busybox"].reference(registry)


def info(pods: Pods, cid: str) -> dict:
    return json.loads(pods.status(cid, verbose=True).info["info"])


def test_sigkill_and_restart_finds_everything_in_its_true_state(daemon, pods, busybox, tmp_path):
    pod = pods.run_pod()
    running = pods.run(pod, busybox, ["sleep", "1000"])
    done = pods.run(pod, busybox, ["sh", "-c", "exit 4"])
    created = pods.create(pod, pods.container_config(busybox, ["true"]))
    flag = tmp_path / "go"
    flag.mkdir()
    # This one exits while the daemon is down: it waits for the flag's file to appear.
    later = pods.run(pod, busybox, ["sh", "-c", "while [ ! -e /flag/now ]; do sleep 0.05; done; exit 9"],
                     mounts=[pb.Mount(container_path="/flag", host_path=str(flag))])
    pods.wait_exited(done)
    running_pid = info(pods, running)["pid"]

    daemon.stop(signal.SIGKILL)
    assert os.path.exists(f"/proc/{running_pid}"), "killing cricketd killed a container"
    (flag / "now").touch()
    time.sleep(0.5)
    daemon.start()

    states = {c.id: c.state for c in pods.rt.ListContainers(pb.ListContainersRequest()).containers}
    assert states == {running: pb.CONTAINER_RUNNING, done: pb.CONTAINER_EXITED,
                      created: pb.CONTAINER_CREATED, later: pb.CONTAINER_EXITED}
    assert pods.status(done).status.exit_code == 4
    assert pods.status(later).status.exit_code == 9
    assert pods.pod_status(pod).status.state == pb.SANDBOX_READY
    assert pods.sh(running, "echo still here") == "still here\n"
    pods.start(created)
    pods.stop(running)
    assert pods.status(running).status.state == pb.CONTAINER_EXITED
    pods.remove_pod(pod)
    assert pods.rt.ListContainers(pb.ListContainersRequest()).containers == []


def test_exit_while_down_is_seen_by_the_watch_after_restart(daemon, pods, busybox, tmp_path):
    pod = pods.run_pod()
    flag = tmp_path / "go"
    flag.mkdir()
    cid = pods.run(pod, busybox, ["sh", "-c", "while [ ! -e /flag/now ]; do sleep 0.05; done; exit 5"],
                   mounts=[pb.Mount(container_path="/flag", host_path=str(flag))])
    daemon.stop(signal.SIGKILL)
    daemon.start()
    assert pods.status(cid).status.state == pb.CONTAINER_RUNNING
    (flag / "now").touch()
    assert pods.wait_exited(cid).exit_code == 5


def _reboot(daemon: Cricketd, pods: Pods, containers: list[str]) -> None:
    """What a reboot does to Cricket's world: every process gone, every mount gone, /run empty."""
    shims = [info(pods, c)["shimPid"] for c in containers]
    procs = [info(pods, c)["pid"] for c in containers]
    daemon.stop(signal.SIGKILL)
    for pid in shims + procs:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    mounts = [line.split()[4] for line in open("/proc/self/mountinfo") if daemon.state in line.split()[4]]
    for target in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], check=False)
    shutil.rmtree(daemon.state)


def test_a_wiped_state_dir_makes_everything_exited_and_removal_cleans_up(daemon, pods, busybox):
    pod = pods.run_pod()
    cids = [pods.run(pod, busybox, ["sleep", "1000"]) for _ in range(2)]
    _reboot(daemon, pods, cids)
    daemon.start()
    assert pods.pod_status(pod).status.state == pb.SANDBOX_NOTREADY
    for cid in cids:
        status = pods.status(cid).status
        assert (status.state, status.exit_code, status.reason) == (pb.CONTAINER_EXITED, 255, "Unknown")
    pods.remove_pod(pod)
    assert os.listdir(os.path.join(daemon.root, "containers")) == []
    assert not Cgroup(f"/cricket/{pod}").exists()


def _cricket_mounts(daemon: Cricketd) -> list[str]:
    return [line.split()[4] for line in open("/proc/self/mountinfo")
            if line.split()[4].startswith((daemon.state, daemon.root))]


def _descendants_of_zygote() -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            comm = open(f"/proc/{pid}/comm").read().strip()
        except OSError:
            continue
        if comm in ("cricket-shim", "cricket-podinit"):
            out.append(int(pid))
    return out


def test_a_hundred_containers_leave_nothing_behind(daemon, pods, busybox):
    before_shims = set(_descendants_of_zygote())
    pod = pods.run_pod(pid=pb.POD)
    cids = []
    for i in range(100):
        cids.append(pods.run(pod, busybox, ["sleep", "1000"], pid=pb.POD if i % 2 else pb.CONTAINER))
    assert all(pods.state(c) == pb.CONTAINER_RUNNING for c in cids)
    for cid in cids:
        pods.stop(cid)
        pods.remove(cid)
    pods.remove_pod(pod)
    deadline = time.monotonic() + 10
    while set(_descendants_of_zygote()) - before_shims and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(_descendants_of_zygote()) - before_shims == set(), "shims or pod inits stayed"
    assert _cricket_mounts(daemon) == []
    assert not Cgroup(f"/cricket/{pod}").exists()
    assert os.listdir(os.path.join(daemon.state, "containers")) == []
    assert os.listdir(os.path.join(daemon.state, "sandboxes")) == []
    assert os.listdir(os.path.join(daemon.root, "containers")) == []


def test_what_a_crash_left_in_the_trash_is_deleted_after_the_next_start(daemon, pods, busybox):
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sh", "-c", "echo x > /written; sleep 1000"])
    pods.stop(cid)
    daemon.stop(signal.SIGKILL)
    # As a removal leaves them when cricketd dies before its worker thread deleted them:
    # renamed into the trash of their own filesystem, a writable layer's files and all.
    left = [os.path.join(daemon.root, "trash", f"{cid}-0"), os.path.join(daemon.state, "trash", f"{cid}-0")]
    for path in left:
        os.makedirs(os.path.join(path, "upper", "deep"))
        with open(os.path.join(path, "upper", "deep", "file"), "w") as f:
            f.write("x" * 4096)
    daemon.start()
    deadline = time.monotonic() + 10
    while any(os.path.exists(p) for p in left) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(os.path.exists(p) for p in left), "the trash was not emptied after the start"
    pods.remove(cid)  # the container itself was untouched by that, and goes as ever
    pods.remove_pod(pod)
    assert os.listdir(os.path.join(daemon.root, "containers")) == []
