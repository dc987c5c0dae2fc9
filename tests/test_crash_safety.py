"""Crash safety beyond the walk of crash points (tests/test_crash_walk.py): a reboot (the state
dir gone, the root dir kept), a damaged metadata store, and cricketd's helpers (the zygote, a
shim, the network worker) killed by their pids while cricketd runs on.

Every test ends by removing everything and checking that nothing of the daemon's is left on
the host: mounts, namespaces, veths, addresses, iptables chains, cgroups, processes, files.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import time

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from api.shim.v1 import shim_pb2 as shim_pb
from linux.cgroups import Cgroup
from tests import crash_checks as cc
from tests.daemon import Cricketd, registry_config
from tests.pods import Pods, rpc_error
from tests.test_network import OwnNetwork


@pytest.fixture
def busybox(registry, test_images):
    return test_images["busybox"].reference(registry)


@pytest.fixture
def daemon(registry, network, tmp_path):
    d = Cricketd(str(tmp_path / "cricketd"), registry_config(registry) + network.daemon_config())
    pods = Pods(d, str(tmp_path / "logs"))
    try:
        yield d, pods
    finally:
        _clean_up(d, pods)


def _clean_up(d: Cricketd, pods: Pods) -> None:
    """Whatever a failed test left: removed by the daemon (started again if need be), then any
    process of its family that remains is killed."""
    try:
        if d.proc is not None and d.proc.poll() is not None:
            d.stop()
        if d.proc is None:
            cc.start(d)
        try:
            cc.remove_everything(d, pods)
        except grpc.RpcError:
            pass
    except RuntimeError:
        pass  # it will not start: what it left is killed below
    finally:
        d.stop()
        deadline = time.monotonic() + 5
        while cc.family(d) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid, _ in cc.family(d):
            cc.kill(pid)


def _pod_config(pods: Pods) -> pb.PodSandboxConfig:
    config = pods.pod_config(pid=pb.POD)
    config.port_mappings.append(pb.PortMapping(protocol=pb.TCP, container_port=80,
                                               host_port=random.randint(30000, 39999)))
    return config


def _info(pods: Pods, cid: str) -> dict:
    return json.loads(pods.status(cid, verbose=True).info["info"])


def _finish(d: Cricketd, pods: Pods, network: OwnNetwork, seen: cc.Seen, images_removed: bool = True) -> None:
    cc.remove_everything(d, pods)
    d.stop()
    leaks = cc.leaks(d, network, seen, images_removed)
    assert leaks == [], leaks


# -- a reboot ---------------------------------------------------------------------------------


def _reboot(d: Cricketd, seen: cc.Seen) -> None:
    """What a reboot does to Cricket's world: every process gone (the daemon, its zygote, shims,
    pod inits, network worker, containers), every mount gone, the state dir (a tmpfs) empty.
    The root dir, the CNI plugins' address store and (here, unlike a reboot) the host's
    iptables rules stay: removing the pods must clean those up from what the root dir kept."""
    d.stop(signal.SIGKILL)
    for pid, _ in cc.family(d):
        cc.kill(pid)
    for pid in seen.pids:
        if seen.pids[pid][0] is not None and cc.start_time(pid) == seen.pids[pid][0]:
            cc.kill(pid)
    for ident in cc.ids_in_log(d):  # and whatever else ran in the pods' cgroups
        for d_ in Cgroup(f"/cricket/{ident}").dirs():
            for sub, _, _ in os.walk(d_):
                try:
                    with open(os.path.join(sub, "cgroup.procs")) as f:
                        for pid in f.read().split():
                            cc.kill(int(pid))
                except OSError:
                    pass
    mounts = [line.split()[4] for line in open("/proc/self/mountinfo") if line.split()[4].startswith(d.state + "/")]
    for target in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], check=False)
    shutil.rmtree(d.state)


def test_a_reboot_exits_everything_keeps_the_images_and_leaks_nothing(daemon, busybox, network):
    d, pods = daemon
    cc.start(d)
    image_id = d.pull(busybox)
    seen = cc.Seen()
    pod = pods.run_pod(_pod_config(pods))
    running = pods.run(pod, busybox, ["sleep", "1000"], pid=pb.POD)
    created = pods.create(pod, pods.container_config(busybox, ["true"], pid=pb.POD))
    host_pod = pods.run_pod(network=pb.NODE)
    host_running = pods.run(host_pod, busybox, ["sleep", "1000"])
    seen.note(pods)
    assert network.allocations(), "the pod got no address"

    _reboot(d, seen)
    cc.start(d)

    for p in (pod, host_pod):
        assert pods.pod_status(p).status.state == pb.SANDBOX_NOTREADY
    for cid in (running, created, host_running):
        status = pods.status(cid).status
        assert (status.state, status.exit_code, status.reason) == (pb.CONTAINER_EXITED, 255, "Unknown"), cid
    assert [i.id for i in d.list()] == [image_id], "an image was lost"
    # The images are whole: a new pod runs a container of them.
    again = pods.run_pod(_pod_config(pods))
    cid = pods.run(again, busybox, ["sleep", "1000"], pid=pb.POD)
    assert pods.sh(cid, "echo alive") == "alive\n"
    seen.note(pods)
    _finish(d, pods, network, seen)


# -- a damaged store --------------------------------------------------------------------------


def _truncate_half(path: str) -> None:
    os.truncate(path, os.path.getsize(path) // 2)


def _truncate_empty(path: str) -> None:
    os.truncate(path, 0)


def _overwrite_middle(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 3)
        f.write(os.urandom(min(8192, size // 3)))


def _bad_record(path: str) -> None:
    db = sqlite3.connect(path)
    table, column = ("containers", "record") if path.endswith("runtime.db") else ("images", "config")
    db.execute(f"UPDATE {table} SET {column}='{{not json' WHERE rowid=(SELECT min(rowid) FROM {table})")
    db.commit()
    db.close()


DAMAGE = {"empty": _truncate_empty, "half": _truncate_half, "overwritten": _overwrite_middle,
          "bad-record": _bad_record}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("database", ["runtime.db", "images.db"])
def test_a_damaged_store_stops_the_daemon_with_one_clear_line(daemon, busybox, network, database, damage):
    d, pods = daemon
    cc.start(d)
    d.pull(busybox)
    pod = pods.run_pod(_pod_config(pods))
    for _ in range(8):  # records over several pages
        pods.run(pod, busybox, ["sleep", "1000"], pid=pb.POD)
    seen = cc.Seen()
    seen.note(pods)
    d.stop()  # cleanly: the database is checkpointed, the WAL is gone; the containers run on
    path = os.path.join(d.root, database)
    assert not os.path.exists(path + "-wal") or os.path.getsize(path + "-wal") == 0
    backup = path + ".backup"
    shutil.copy(path, backup)
    DAMAGE[damage](path)
    with open(path, "rb") as f:
        damaged = f.read()

    with pytest.raises(RuntimeError, match="cricketd exited with 1"):
        cc.start(d)
    d.stop()
    lines = [line for line in d.log().splitlines() if line.startswith("cricketd:")]
    assert len(lines) == 1 and path in lines[0] and "damaged" in lines[0] and ".dump" in lines[0], lines
    with open(path, "rb") as f:
        assert f.read() == damaged, "the damaged store was written to"
    assert all(cc.start_time(pid) == start for pid, (start, _) in seen.pids.items()), \
        "a refused start touched the running containers"

    # Restored, nothing was lost: every pod and container is there, and all of it can go.
    os.replace(backup, path)
    for leftover in (path + "-wal", path + "-shm"):
        if os.path.exists(leftover):
            os.unlink(leftover)
    cc.start(d)
    assert [p.id for p in pods.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items] == [pod]
    states = [c.state for c in pods.rt.ListContainers(pb.ListContainersRequest()).containers]
    assert states == [pb.CONTAINER_RUNNING] * 8
    _finish(d, pods, network, seen)


# -- helpers killed by their pids ------------------------------------------------------------


def test_a_killed_zygote_is_started_again_and_its_shims_live_on(daemon, busybox, network):
    d, pods = daemon
    cc.start(d)
    d.pull(busybox)
    seen = cc.Seen()
    pod = pods.run_pod(_pod_config(pods))
    first = pods.run(pod, busybox, ["sleep", "1000"], pid=pb.POD)
    zygote = cc.helper(d, "cricket-zygote")
    assert zygote
    cc.kill(zygote)
    assert cc.wait_for(lambda: cc.start_time(zygote) is None)
    assert pods.sh(first, "echo still here") == "still here\n"
    second = pods.run(pod, busybox, ["sleep", "1000"], pid=pb.POD)
    assert pods.sh(second, "echo born after") == "born after\n"
    assert cc.helper(d, "cricket-zygote") not in (0, zygote)
    seen.note(pods)
    _finish(d, pods, network, seen)


def test_a_killed_shim_of_a_running_container_leaves_it_exited_and_nothing_behind(daemon, busybox, network):
    d, pods = daemon
    cc.start(d)
    d.pull(busybox)
    seen = cc.Seen()
    pod = pods.run_pod(_pod_config(pods))
    cid = pods.run(pod, busybox, ["sleep", "1000"], pid=pb.POD)
    seen.note(pods)
    info = _info(pods, cid)
    cc.kill(info["shimPid"])
    status = pods.wait_exited(cid)
    assert (status.exit_code, status.reason) == (255, "Unknown")
    assert cc.wait_for(lambda: cc.start_time(info["pid"]) is None), "the container outlived its shim"
    _finish(d, pods, network, seen)


def test_a_killed_shim_of_a_created_container_fails_its_start_cleanly(daemon, busybox, network):
    d, pods = daemon
    cc.start(d)
    d.pull(busybox)
    seen = cc.Seen()
    pod = pods.run_pod(_pod_config(pods))
    cid = pods.create(pod, pods.container_config(busybox, ["sleep", "1000"], pid=pb.POD))
    assert cc.wait_for(lambda: cc.shim_state(d, cid) == shim_pb.CREATED)
    seen.note(pods)
    cc.kill(_info(pods, cid)["shimPid"])
    e = rpc_error(pods.start, cid)
    assert "cannot start" in e.details()
    assert pods.status(cid).status.state == pb.CONTAINER_EXITED
    _finish(d, pods, network, seen)


def test_a_killed_network_worker_is_started_again(daemon, busybox, network):
    d, pods = daemon
    cc.start(d)
    d.pull(busybox)
    seen = cc.Seen()
    first = pods.run_pod(_pod_config(pods))
    worker = cc.helper(d, "cricket-net")
    assert worker
    cc.kill(worker)
    assert cc.wait_for(lambda: cc.start_time(worker) is None)
    second = pods.run_pod(_pod_config(pods))
    assert pods.pod_status(second).status.network.ip
    for p in (first, second):
        pods.stop_pod(p)
    seen.note(pods)
    _finish(d, pods, network, seen)
