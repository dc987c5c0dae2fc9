"""shim/cgroups.py on this machine's real cgroups, and its pure parts on text."""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time

import pytest

from shim import cgroups
from shim.cgroups import Cgroup, CgroupError, CgroupNotFound


@pytest.fixture
def parent():
    if os.geteuid() != 0:
        pytest.skip("needs root to make cgroups")
    root = Cgroup(f"/cricket-test-{secrets.token_hex(4)}")
    procs: list[subprocess.Popen] = []
    yield root, procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    # Deepest first; whatever a test left running in one is killed (sh's children too).
    paths = {os.path.relpath(os.path.join(dp, n), top) for top in root.dirs() if os.path.isdir(top)
             for dp, dirs, _ in os.walk(top) for n in dirs}
    for rel in sorted(paths, key=len, reverse=True):
        leaf = Cgroup(f"{root.path}/{rel}")
        leaf.kill_all(signal.SIGKILL)
        leaf.remove()
    root.remove()


def spawn(procs, cg: Cgroup, script: str) -> subprocess.Popen:
    p = subprocess.Popen(["sh", "-c", script], preexec_fn=lambda: cg.add(0))
    procs.append(p)
    return p


def test_create_is_idempotent_and_remove_too(parent):
    root, _ = parent
    cg = Cgroup(root.path + "/a/b")
    cg.create()
    cg.create()
    assert cg.exists()
    cg.remove()
    cg.remove()
    assert not cg.exists() and Cgroup(root.path + "/a").exists()


def test_a_process_joins_a_fresh_nested_cgroup(parent):
    root, procs = parent
    cg = Cgroup(root.path + "/x/y")
    cg.create()  # a fresh cpuset needs cpus and mems before it takes a task
    p = spawn(procs, cg, "exec sleep 100")
    deadline = time.monotonic() + 5
    while p.pid not in cg.pids() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cg.pids() == [p.pid]


def test_stats_of_a_busy_process(parent):
    root, procs = parent
    cg = Cgroup(root.path + "/busy")
    cg.create()
    spawn(procs, cg, "x=$(head -c 3000000 /dev/zero | tr '\\0' a); while :; do :; done")
    time.sleep(0.5)
    s = cg.stats()
    assert s.cpu_usage_ns > 0 and s.memory_usage > 0
    assert 0 < s.memory_working_set <= s.memory_usage
    assert s.pids_current >= 1 and s.memory_limit is None


def test_limits_are_written_and_read_back(parent):
    root, procs = parent
    cg = Cgroup(root.path + "/limited")
    cg.create()
    cg.apply({"memory": {"limit": 64 << 20}, "pids": {"limit": 20}, "cpu": {"quota": 50000, "period": 100000}})
    assert cg.stats().memory_limit == 64 << 20
    pids = cg._file("pids", "pids.max")
    assert open(pids).read().strip() == "20"
    if cgroups.mode() == "v1":
        assert open(cg._file("cpu", "cpu.cfs_quota_us")).read().strip() == "50000"
    else:
        assert open(cg._file("cpu", "cpu.max")).read().strip() == "50000 100000"
    with pytest.raises(CgroupError, match="cpuset.cpus"):
        cg.apply({"cpu": {"cpus": "4095"}})  # no such CPU: the kernel's EINVAL, naming the file


def test_kill_all_and_remove_of_a_busy_cgroup(parent):
    root, procs = parent
    cg = Cgroup(root.path + "/victims")
    cg.create()
    ps = [spawn(procs, cg, "sleep 100") for _ in range(3)]
    deadline = time.monotonic() + 5
    while len(cg.pids()) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(CgroupError, match="processes in it"):
        cg.remove(wait=False)
    cg.kill_all(signal.SIGKILL)
    for p in ps:
        assert p.wait(5) == -signal.SIGKILL
    cg.remove()
    assert not cg.exists()


def test_stats_of_a_missing_cgroup_is_not_found():
    with pytest.raises(CgroupNotFound):
        Cgroup(f"/cricket-test-missing-{secrets.token_hex(4)}").stats()


# -- pure parts ----------------------------------------------------------------------------


def test_shares_to_weight_as_runc_converts():
    assert cgroups.shares_to_weight(2) == 1
    assert cgroups.shares_to_weight(1024) == 39
    assert cgroups.shares_to_weight(262144) == 10000
    assert cgroups.shares_to_weight(0) == 0


def test_parse_mountinfo_finds_v1_hierarchies_only():
    text = (
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
        "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
    )
    assert cgroups.parse_mountinfo(text) == {
        "cpu,cpuacct": "/sys/fs/cgroup/cpu,cpuacct", "memory": "/sys/fs/cgroup/memory",
        "name=systemd": "/sys/fs/cgroup/systemd", "unified": "/sys/fs/cgroup/unified",
    }


def test_parse_flat_keyed():
    assert cgroups.parse_flat_keyed("anon 10\nfile 20\nweird\nneg -1\n") == {"anon": 10, "file": 20, "neg": -1}
