"""Device programs in the kernel: linux/devices_bpf.py's programs loaded, attached to a real
cgroup2 directory, and asked by a process in it that opens and makes device nodes; and
linux/cgroups.py attaching them as on a v2 host (tests/cgroup2.py's as_v2_host)."""
from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import textwrap

import pytest

from cri.oci_spec import device_rules
from linux import devices_bpf as bpf
from linux.devices_bpf import ACC_MKNOD, ACC_READ, ACC_WRITE, DEV_BLOCK, DEV_CHAR
from tests import cgroup2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def scratch():
    with cgroup2.scratch_dir() as top:
        yield top


@pytest.fixture
def nodes(tmp_path):
    """Device nodes in a temporary directory: name -> (kind, major, minor, path). Each opens as
    root outside any device program (the kernel here may lack /dev/mem, so kmsg and tun stand
    for the character devices a container must not have)."""
    wanted = {"null": ("c", 1, 3), "zero": ("c", 1, 5), "kmsg": ("c", 1, 11), "tun": ("c", 10, 200)}
    disk = cgroup2.block_device()
    if disk:
        wanted["disk"] = ("b", *disk)
    paths = cgroup2.make_nodes(str(tmp_path), wanted)
    return {name: (*wanted[name], paths[name]) for name in wanted}


def opens(cgroup_dir: str, nodes: dict, names, flags: int = os.O_RDONLY) -> dict[str, int]:
    names = [n for n in names if n in nodes]
    results = cgroup2.probe(cgroup_dir, [("open", nodes[n][3], flags) for n in names])
    return dict(zip(names, results))


def attached(directory: str) -> list[int]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return bpf.attached(fd)
    finally:
        os.close(fd)


def test_the_default_rules_deny_a_disk_and_others_and_allow_dev_null(scratch, nodes, tmp_path):
    # Without a program the same process opens every node: what the program must take away.
    assert set(opens(scratch, nodes, nodes).values()) == {0}
    bpf.set_device_program(scratch, device_rules(privileged=False))
    assert opens(scratch, nodes, ["null", "zero"], os.O_RDWR) == {"null": 0, "zero": 0}
    denied = [n for n in ("kmsg", "tun", "disk") if n in nodes]
    assert opens(scratch, nodes, denied) == dict.fromkeys(denied, errno.EPERM)
    made = cgroup2.probe(scratch, [("mknod", str(tmp_path / "null2"), "c", 1, 3),
                                   ("mknod", str(tmp_path / "mem2"), "c", 1, 1),
                                   ("mknod", str(tmp_path / "disk2"), "b", 8, 0)])
    assert made == [0, errno.EPERM, errno.EPERM]


def test_a_privileged_containers_program_allows_every_device(scratch, nodes):
    bpf.set_device_program(scratch, device_rules(privileged=True))
    assert set(opens(scratch, nodes, nodes).values()) == {0}


def test_a_new_program_replaces_the_old_one(scratch, nodes):
    allow_tun = [*device_rules(privileged=False), {"allow": True, "type": "c", "major": 10, "minor": 200,
                                                   "access": "rw"}]
    bpf.set_device_program(scratch, allow_tun)
    first = attached(scratch)
    assert len(first) == 1
    assert opens(scratch, nodes, ["tun"], os.O_RDWR) == {"tun": 0}
    bpf.set_device_program(scratch, device_rules(privileged=False))
    second = attached(scratch)
    assert len(second) == 1 and second != first
    assert opens(scratch, nodes, ["tun"], os.O_RDWR) == {"tun": errno.EPERM}


def test_the_kernel_answers_as_the_rules_mean(scratch, nodes, tmp_path):
    rng = random.Random(7)
    chars = ["null", "zero", "kmsg", "tun"]
    rule_lists = [
        [{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 1, "access": "r"},
         {"allow": False, "type": "c", "major": 1, "minor": 1, "access": "rwm"}],
        [{"allow": True, "type": "a", "access": "rwm"}, {"allow": False, "type": "c", "major": 1, "minor": 5,
                                                         "access": "w"}],
        [{"allow": False, "access": "rwm"}, {"allow": True, "type": "b", "access": "r"}],
    ]
    for _ in range(6):
        rule_lists.append([{"allow": False, "access": "rwm"}] + [
            {"allow": rng.random() < 0.7, "type": rng.choice("abc"), "major": rng.choice([1, -1]),
             "minor": rng.choice([3, 5, 11, 200, -1]), "access": "".join(a for a in "rwm" if rng.random() < 0.7)}
            for _ in range(rng.randrange(1, 5))])
    flags = {ACC_READ: os.O_RDONLY, ACC_WRITE: os.O_WRONLY, ACC_READ | ACC_WRITE: os.O_RDWR}
    for rules in rule_lists:
        bpf.set_device_program(scratch, rules)
        parsed = bpf.parse_rules(rules)
        attempts: list[tuple] = []
        wants: list[bool] = []
        for name in [*chars, "disk"] if "disk" in nodes else chars:
            kind, major, minor, path = nodes[name]
            dev_type = DEV_CHAR if kind == "c" else DEV_BLOCK
            for access, flag in flags.items():
                if name == "disk" and access & ACC_WRITE:
                    continue  # not even an open for writing of this host's disk
                attempts.append(("open", path, flag))
                wants.append(bpf.allows(parsed, dev_type, major, minor, access))
            attempts.append(("mknod", str(tmp_path / f"{name}-made"), kind, major, minor))
            wants.append(bpf.allows(parsed, dev_type, major, minor, ACC_MKNOD))
        got = cgroup2.probe(scratch, attempts)
        assert [e != errno.EPERM for e in got] == wants, (rules, list(zip(attempts, got)))
        assert all(e in (0, errno.EPERM) for e in got), got
    assert len(attached(scratch)) == 1


def test_an_ancestors_exclusive_program_makes_the_attach_fail(scratch):
    locked = os.path.join(scratch, "locked")
    os.mkdir(locked)
    _attach_exclusive(locked)
    child = os.path.join(locked, "ctr")
    os.mkdir(child)
    with pytest.raises(PermissionError, match="attaching the device program"):
        bpf.set_device_program(child, device_rules(privileged=False))


def _attach_exclusive(directory: str) -> None:
    # Attached without BPF_F_ALLOW_MULTI or BPF_F_ALLOW_OVERRIDE: the kernel lets no cgroup under it
    # have a device program of its own. Removing the directory detaches it.
    prog = bpf.load(bpf.assemble([{"allow": True, "access": "rwm"}]))
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        bpf.attach(fd, prog, flags=0)
    finally:
        os.close(fd)
        os.close(prog)


# -- linux/cgroups.py on a v2 host --------------------------------------------------------------

_ON_V2 = textwrap.dedent("""
    import sys
    from linux import cgroups
    from linux.cgroups import Cgroup, CgroupError
    from cri.oci_spec import device_rules
    assert cgroups.mode() == "v2", cgroups.mode()
    cg = Cgroup(sys.argv[1])
    cg.create()
    try:
        cg.apply({"devices": device_rules(privileged=False)})
    except CgroupError as e:
        print(e)
        sys.exit(3)
    print("applied")
""")


def on_v2_host(scratch: str, path: str) -> subprocess.CompletedProcess:
    """Make cgroup `path` and apply the default device rules, in a process that sees a v2 host."""
    return subprocess.run(cgroup2.as_v2_host(scratch, [sys.executable, "-c", _ON_V2, path]), cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def test_on_a_v2_host_apply_attaches_the_program_to_the_containers_cgroup(scratch, nodes):
    run = on_v2_host(scratch, "/pod/ctr")
    assert run.returncode == 0 and run.stdout.strip() == "applied", run.stdout + run.stderr
    ctr = os.path.join(scratch, "pod", "ctr")  # the same directory, seen from the host
    assert len(attached(ctr)) == 1 and attached(os.path.join(scratch, "pod")) == []
    denied = [n for n in ("tun", "disk") if n in nodes]
    assert opens(ctr, nodes, ["null", *denied]) == {"null": 0, **dict.fromkeys(denied, errno.EPERM)}


def test_on_a_v2_host_apply_refuses_when_the_program_cannot_be_attached(scratch):
    locked = os.path.join(scratch, "locked")
    os.mkdir(locked)
    _attach_exclusive(locked)
    run = on_v2_host(scratch, "/locked/ctr")
    assert run.returncode == 3, run.stdout + run.stderr
    assert "device rules for cgroup /locked/ctr" in run.stdout and "Operation not permitted" in run.stdout
    assert "not run without" in run.stdout
