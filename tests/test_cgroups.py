"""linux/cgroups.py on this machine's real cgroups, and its pure parts on text."""
from __future__ import annotations

import errno
import os
import secrets
import signal
import subprocess
import time
from typing import cast

import pytest

from cri.oci_spec import device_rules
from linux import cgroups, devices_bpf
from linux.cgroups import Cgroup, CgroupError, CgroupNotFound
from tests import cgroup2


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
    # Whatever a test left running in any cgroup under the parent is killed (sh's children too),
    # then the whole tree goes, deepest first.
    paths = {os.path.relpath(dp, top) for top in root.dirs() for dp, _, _ in os.walk(top)}
    for rel in paths:
        Cgroup(os.path.normpath(f"{root.path}/{rel}")).kill_all(signal.SIGKILL)
    root.remove(recursive=True)
    assert not root.exists()


def spawn(procs, cg: Cgroup, script: str) -> subprocess.Popen:
    p = subprocess.Popen(["sh", "-c", script], preexec_fn=lambda: cg.add(0))
    procs.append(p)
    return p


def wait_for(predicate, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


v1_only = pytest.mark.skipif(cgroups.mode() != "v1", reason="this host's cgroups are v2")


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


@v1_only
def test_a_create_cut_short_is_finished_by_the_next(parent):
    # As if a crash came between the mkdir and the cpuset copy: the level exists, empty.
    root, procs = parent
    Cgroup(root.path).create()
    cpuset = cgroups._mount_of("cpuset")
    if cpuset is None:
        pytest.skip("no cpuset hierarchy mounted")
    os.mkdir(os.path.join(cpuset, root.path.lstrip("/"), "half"))
    cg = Cgroup(root.path + "/half/leaf")
    cg.create()
    assert read(cg._file("cpuset", "cpuset.cpus")) == read(os.path.join(cpuset, "cpuset.cpus"))
    p = spawn(procs, cg, "exec sleep 100")
    wait_for(lambda: p.pid in cg.pids())


def test_stats_of_a_busy_process(parent):
    root, procs = parent
    cg = Cgroup(root.path + "/busy")
    cg.create()
    spawn(procs, cg, "x=$(head -c 3000000 /dev/zero | tr '\\0' a); while :; do :; done")
    time.sleep(0.5)
    s = cg.stats()
    assert s.cpu_usage_ns > 0 and s.memory_usage > 0
    assert 0 < s.memory_working_set <= s.memory_usage
    assert s.memory_rss > 0 and s.page_faults > 0
    assert s.pids_current >= 1 and s.memory_limit is None and s.oom_kills == 0


def test_limits_are_written_and_read_back(parent):
    root, _ = parent
    cg = Cgroup(root.path + "/limited")
    cg.create()
    cg.apply({"memory": {"limit": 64 << 20}, "pids": {"limit": 20}, "cpu": {"quota": 50000, "period": 100000}})
    assert cg.stats().memory_limit == 64 << 20
    pids = cg._file("pids", "pids.max")
    assert read(pids) == "20"
    if cgroups.mode() == "v1":
        assert read(cg._file("cpu", "cpu.cfs_quota_us")) == "50000"
    else:
        assert read(cg._file("cpu", "cpu.max")) == "50000 100000"
    with pytest.raises(CgroupError, match="'4095' to .*cpuset.cpus"):
        cg.apply({"cpu": {"cpus": "4095"}})  # no such CPU: the kernel refuses, and the error names both
    cg.apply({"pids": {"limit": -1}})
    assert read(pids) == "max"


@v1_only
def test_memory_and_swap_limits_go_up_and_down_in_an_order_the_kernel_takes(parent):
    root, _ = parent
    cg = Cgroup(root.path + "/memsw")
    cg.create()
    limit, memsw = cg._file("memory", "memory.limit_in_bytes"), cg._file("memory", "memory.memsw.limit_in_bytes")
    if not os.path.exists(memsw):
        pytest.skip("no swap accounting (memory.memsw.*) on this kernel")
    unlimited = read(limit)
    for mem, swap in ((64 << 20, 128 << 20), (256 << 20, 512 << 20), (32 << 20, 48 << 20), (300 << 20, 300 << 20)):
        cg.apply({"memory": {"limit": mem, "swap": swap}})
        assert (int(read(limit)), int(read(memsw))) == (mem, swap)
    cg.apply({"memory": {"limit": -1}})  # lifting the limit lifts memsw too, or the kernel refuses
    assert read(limit) == read(memsw) == unlimited
    with pytest.raises(CgroupError, match="memsw"):
        cg.apply({"memory": {"limit": 64 << 20, "swap": 32 << 20}})  # memory+swap below memory


@v1_only
def test_unified_keys_on_v1(parent):
    root, _ = parent
    cg = Cgroup(root.path + "/unified")
    cg.create()
    cg.apply({"unified": {"pids.max": "7"}})
    assert read(cg._file("pids", "pids.max")) == "7"
    with pytest.raises(CgroupError, match="memory.high"):
        cg.apply({"unified": {"memory.high": "1000000"}})


def test_kill_all_and_remove_of_a_busy_cgroup(parent):
    root, procs = parent
    cg = Cgroup(root.path + "/victims")
    cg.create()
    ps = [spawn(procs, cg, "sleep 100") for _ in range(3)]
    deadline = time.monotonic() + 5
    while len(cg.pids()) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(CgroupError, match="processes in it") as e:
        cg.remove(wait=False)
    assert all(str(p.pid) in str(e.value) for p in ps) and cg.path in str(e.value)
    cg.kill_all(signal.SIGKILL)
    for p in ps:
        assert p.wait(5) == -signal.SIGKILL
    cg.remove()
    assert not cg.exists()


def test_kill_all_reaches_children_forked_meanwhile(parent):
    # A shell that keeps forking: every process in the cgroup at the signal dies, the
    # grandchildren Popen never sees included.
    root, procs = parent
    cg = Cgroup(root.path + "/forker")
    cg.create()
    p = spawn(procs, cg, "while :; do sleep 100 & sleep 0.01; done")
    wait_for(lambda: len(cg.pids()) >= 5)
    cg.kill_all(signal.SIGKILL)
    assert p.wait(5) == -signal.SIGKILL
    wait_for(lambda: cg.pids() == [])
    cg.remove()


def test_kill_all_with_a_catchable_signal(parent):
    root, procs = parent
    cg = Cgroup(root.path + "/term")
    cg.create()
    p = spawn(procs, cg, "trap 'exit 7' TERM; while :; do sleep 0.01; done")
    wait_for(lambda: len(cg.pids()) >= 2)  # a sleep of the loop: the trap is set
    cg.kill_all(signal.SIGTERM)
    assert p.wait(5) == 7  # delivered after the thaw, and handled


def test_kill_all_of_an_empty_cgroup_freezes_nothing(parent, monkeypatch):
    root, _ = parent
    cg = Cgroup(root.path + "/empty")
    cg.create()
    writes: list[str] = []
    real = cgroups._write
    monkeypatch.setattr(cgroups, "_write", lambda path, value: (writes.append(path), real(path, value))[1])
    cg.kill_all(signal.SIGKILL)
    assert not [w for w in writes if "freezer" in w]
    cg.remove()


def test_recursive_remove_takes_sub_cgroups_deepest_first(parent):
    root, _ = parent
    top = Cgroup(root.path + "/ctr")
    Cgroup(top.path + "/made/by/the/container").create()
    Cgroup(top.path + "/sibling").create()
    with pytest.raises(CgroupError):
        top.remove(wait=False)  # not recursive: a parent with children stays
    assert top.exists()
    top.remove(recursive=True)
    top.remove(recursive=True)
    assert not top.exists() and Cgroup(root.path).exists()


def test_stats_of_a_missing_cgroup_is_not_found():
    cg = Cgroup(f"/cricket-test-missing-{secrets.token_hex(4)}")
    with pytest.raises(CgroupNotFound, match=cg.path):
        cg.stats()
    assert cg.pids() == [] and not cg.exists()
    cg.remove()


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


def test_v2_swap_max_as_runc_converts():
    mib = 1 << 20
    assert cgroups.v2_swap_max(64 * mib, 96 * mib) == 32 * mib  # OCI swap is memory+swap; v2's is swap alone
    assert cgroups.v2_swap_max(64 * mib, 64 * mib) == 0  # no swap at all
    assert cgroups.v2_swap_max(64 * mib, -1) == -1
    assert cgroups.v2_swap_max(64 * mib, None) is None and cgroups.v2_swap_max(None, None) is None
    assert cgroups.v2_swap_max(-1, None) == -1  # unlimited memory: unlimited swap too, as on v1
    assert cgroups.v2_swap_max(-1, 96 * mib) == 96 * mib
    with pytest.raises(CgroupError, match="below"):
        cgroups.v2_swap_max(64 * mib, 32 * mib)
    with pytest.raises(CgroupError, match="needs a memory.limit"):
        cgroups.v2_swap_max(None, 32 * mib)


def test_v2_cpu_max():
    assert cgroups.v2_cpu_max(50000, 100000) == "50000 100000"
    assert cgroups.v2_cpu_max(-1, 100000) == "max 100000"
    assert cgroups.v2_cpu_max(None, 20000) == "max 20000"
    assert cgroups.v2_cpu_max(25000, None) == "25000"  # the kernel keeps the period it has
    assert cgroups.v2_cpu_max(None, None) is None and cgroups.v2_cpu_max(0, 0) is None


def test_v1_memory_writes_keep_memsw_above_limit_at_every_step():
    mib, unlimited = 1 << 20, 9223372036854771712
    lim, sw = "memory.limit_in_bytes", "memory.memsw.limit_in_bytes"
    # raising above the current limit: memsw first
    assert cgroups.v1_memory_writes(256 * mib, 512 * mib, 64 * mib, True) == [(sw, 512 * mib), (lim, 256 * mib)]
    # lowering below it: the limit first
    assert cgroups.v1_memory_writes(32 * mib, 48 * mib, 256 * mib, True) == [(lim, 32 * mib), (sw, 48 * mib)]
    # from unlimited: the limit first, memsw is unlimited until its own write
    assert cgroups.v1_memory_writes(64 * mib, 128 * mib, unlimited, True) == [(lim, 64 * mib), (sw, 128 * mib)]
    assert cgroups.v1_memory_writes(-1, None, 64 * mib, True) == [(sw, -1), (lim, -1)]
    assert cgroups.v1_memory_writes(-1, None, 64 * mib, False) == [(lim, -1)]
    assert cgroups.v1_memory_writes(64 * mib, 128 * mib, unlimited, False) == [(lim, 64 * mib)]
    assert cgroups.v1_memory_writes(None, 128 * mib, 64 * mib, True) == [(sw, 128 * mib)]
    assert cgroups.v1_memory_writes(None, None, 64 * mib, True) == []
    # every sequence, replayed against the kernel's rule, never puts memsw under the limit
    for new_lim, new_sw, cur_lim, cur_sw in ((256, 512, 64, 64), (32, 48, 256, 256), (-1, None, 64, 128),
                                             (100, 100, 50, 300), (50, 60, 100, 100)):
        state = {lim: cur_lim * mib, sw: cur_sw * mib}
        new_lim = new_lim * mib if new_lim > 0 else new_lim
        for name, value in cgroups.v1_memory_writes(new_lim, new_sw and new_sw * mib, cur_lim * mib, True):
            state[name] = unlimited if value == -1 else value
            assert state[sw] >= state[lim], (new_lim, new_sw, cur_lim, cur_sw, name)


def test_mount_fstype_takes_the_last_mount_at_a_path():
    text = (
        "25 1 0:23 / /sys rw - sysfs sysfs rw\n"
        "31 25 0:28 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n"
        "90 31 0:50 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    )
    assert cgroups.mount_fstype(text, "/sys/fs/cgroup") == "tmpfs"
    assert cgroups.mount_fstype(text.splitlines()[1], "/sys/fs/cgroup") == "cgroup2"
    assert cgroups.mount_fstype(text, "/proc") is None


def test_device_rules_go_on_v1_and_on_a_hybrid_hosts_cgroup2_directory(parent, tmp_path):
    root, _ = parent
    cg = Cgroup(root.path + "/devices")
    cg.create()
    cg.apply({"devices": device_rules(privileged=False)})
    listing = cg._file("devices", "devices.list") if cgroups.mode() == "v1" else None
    if listing:
        assert read(listing).splitlines()[:2] == ["c 1:3 rwm", "c 1:5 rwm"]
    v2 = cg.v2_dir()
    if v2 is None:
        pytest.skip("no cgroup2 hierarchy on this host")
    assert len(_attached(v2)) == 1
    # The program on its own, for a process in the cgroup2 directory alone (not the v1 cgroups):
    # /dev/null opens, a tun device does not.
    nodes = cgroup2.make_nodes(str(tmp_path), {"null": ("c", 1, 3), "tun": ("c", 10, 200)})
    assert cgroup2.probe(v2, [("open", nodes["null"], os.O_RDWR), ("open", nodes["tun"], os.O_RDWR)]) == \
        [0, errno.EPERM]


def test_a_malformed_device_rule_is_refused_before_any_is_written(parent):
    root, _ = parent
    cg = Cgroup(root.path + "/bad")
    cg.create()
    with pytest.raises(CgroupError, match=r"device rules for cgroup .*/bad: devices\[1\]\.type: want a, b or c"):
        cg.apply({"devices": [{"allow": False, "access": "rwm"}, {"allow": True, "type": "x", "access": "r"}]})
    listing = cg._file("devices", "devices.list") if cgroups.mode() == "v1" else None
    if listing:
        assert read(listing) == "a *:* rwm"  # still what it inherited: not the deny-all before the bad rule
    v2 = cg.v2_dir()
    if v2:
        assert _attached(v2) == []


@v1_only
def test_on_a_hybrid_host_the_v1_controller_is_enough_when_no_program_attaches(parent):
    root, _ = parent
    if root.v2_dir() is None or root._file("devices", "devices.list") is None:
        pytest.skip("needs a hybrid host with the v1 devices controller")
    cg = Cgroup(root.path + "/locked/ctr")
    cg.create()
    # An exclusive program on an ancestor forbids the container's own: the v1 rules still hold.
    locked = cast(str, Cgroup(root.path + "/locked").v2_dir())
    prog = devices_bpf.load(devices_bpf.assemble([{"allow": True, "access": "rwm"}]))
    fd = os.open(locked, os.O_RDONLY | os.O_DIRECTORY)
    try:
        devices_bpf.attach(fd, prog, flags=0)
    finally:
        os.close(fd)
        os.close(prog)
    cg.apply({"devices": device_rules(privileged=False)})
    assert _attached(cast(str, cg.v2_dir())) == []
    assert read(cast(str, cg._file("devices", "devices.list"))).splitlines()[0] == "c 1:3 rwm"


def _attached(directory: str) -> list[int]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return devices_bpf.attached(fd)
    finally:
        os.close(fd)
