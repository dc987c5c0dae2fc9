"""Test helpers for the cgroup2 hierarchy: a scratch directory on it, processes that try device
nodes from inside a cgroup, and "a v2 host" on a hybrid one.

A hybrid host (v1 controllers under /sys/fs/cgroup, cgroup2 at /sys/fs/cgroup/unified) runs
Cricket in v1 mode, so its v2 code does not run there by itself. as_v2_host() runs a command
in a mount namespace where /sys/fs/cgroup is that same cgroup2 hierarchy and in a cgroup
namespace rooted at a scratch directory: linux.cgroups finds "v2" in the mount table as it
would on a v2 host, and every cgroup it makes lands under the scratch directory, where the
test removes it. The device programs it attaches are the kernel's own, as on a v2 host.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import stat
import tempfile
import time

import pytest

from linux import cgroups


def mount_point() -> str | None:
    """Where this host's cgroup2 hierarchy is mounted, if anywhere."""
    if cgroups.mode() == "v2":
        return cgroups.CGROUP_ROOT
    return cgroups.hierarchies().get("unified")


@contextlib.contextmanager
def scratch_dir(prefix: str = "cricket-test-cg2"):
    """A new directory on the cgroup2 hierarchy; afterwards whatever runs under it is killed and
    the tree removed, deepest first."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make cgroups and load BPF programs")
    point = mount_point()
    if point is None:
        pytest.skip("no cgroup2 hierarchy mounted on this host")
    top = os.path.join(point, f"{prefix}-{secrets.token_hex(4)}")
    os.mkdir(top)
    try:
        yield top
    finally:
        remove_tree(top)


def remove_tree(top: str) -> None:
    for _ in range(200):
        pids = [int(p) for d, _, _ in os.walk(top) for p in _read(os.path.join(d, "cgroup.procs")).split()]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # only what a test started runs under its scratch directory
        time.sleep(0.02)
    for d, _, _ in os.walk(top, topdown=False):
        for _ in range(200):
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)
        else:
            raise AssertionError(f"could not remove cgroup {d}")


def procs(directory: str) -> list[int]:
    """The processes in a cgroup2 directory (not in its children)."""
    return [int(p) for p in _read(os.path.join(directory, "cgroup.procs")).split()]


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def as_v2_host(root: str, argv: list[str]) -> list[str]:
    """A command that runs `argv` as on a host whose /sys/fs/cgroup is the unified hierarchy,
    rooted at the cgroup2 directory `root` (see the module's docstring)."""
    if not shutil.which("unshare"):
        pytest.skip("needs unshare: apt-get install util-linux")
    # Whatever is at /sys/fs/cgroup goes first: on a v2 host it is cgroup2 already, and the kernel
    # refuses a mount of the same superblock on the same mount point (EBUSY). Then the command
    # moves into a leaf, "init", as a daemon on a v2 host runs in a leaf of its own (systemd's
    # service cgroup): a cgroup with processes cannot enable controllers for its children ("no
    # internal processes"), so if it stayed in the namespace's root, the cgroups it makes there
    # would get no memory, cpu or pids controller on a v2 host.
    inner = ("{ umount -l /sys/fs/cgroup 2>/dev/null; mount -t cgroup2 cgroup2 /sys/fs/cgroup; } && "
             "mkdir -p /sys/fs/cgroup/init && echo $$ > /sys/fs/cgroup/init/cgroup.procs && exec " + shlex.join(argv))
    # Into `root` first: a cgroup namespace is rooted where its creator stands. Slave propagation
    # keeps the host's later mounts visible, and the cgroup2 mount from leaking back to it.
    procs = shlex.quote(os.path.join(root, "cgroup.procs"))
    return ["sh", "-c", f"echo $$ > {procs} && exec unshare --cgroup --mount --propagation slave "
                        f"sh -c {shlex.quote(inner)}"]


def block_device() -> tuple[int, int] | None:
    """A block device of this host that opens for reading here (major, minor), preferring the
    disk under / and ones with data: what a container must not open. Some hosts refuse even
    root the disk they boot from, so each candidate is tried through a node of its own."""
    try:
        names = os.listdir("/sys/dev/block")
    except FileNotFoundError:
        return None
    root = os.stat("/").st_dev
    names.sort(key=lambda n: (n != f"{os.major(root)}:{os.minor(root)}",
                              _read(f"/sys/dev/block/{n}/size").strip() in ("", "0"), n))
    with tempfile.TemporaryDirectory(prefix="cricket-blk-") as tmp:
        for name in names:
            major, _, minor = name.partition(":")
            node = os.path.join(tmp, name)
            os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(int(major), int(minor)))
            try:
                os.close(os.open(node, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
                return int(major), int(minor)
            except OSError:
                continue
            finally:
                os.unlink(node)
    return None


def make_nodes(directory: str, nodes: dict[str, tuple[str, int, int]]) -> dict[str, str]:
    """mknod each name -> ("c" or "b", major, minor) in `directory`; name -> path."""
    out = {}
    for name, (kind, major, minor) in nodes.items():
        path = os.path.join(directory, name)
        os.mknod(path, 0o600 | (stat.S_IFCHR if kind == "c" else stat.S_IFBLK), os.makedev(major, minor))
        out[name] = path
    return out


def probe(cgroup_dir: str, attempts: list[tuple]) -> list[int]:
    """From a child moved into `cgroup_dir` (on cgroup2), try each ("open", path, flags) or
    ("mknod", path, kind, major, minor); the errno of each, 0 for success. A node made is
    removed again."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # only os calls from here: the child of a pytest process must not run its code
        code = 1
        try:
            os.close(r)
            fd = os.open(os.path.join(cgroup_dir, "cgroup.procs"), os.O_WRONLY)
            os.write(fd, b"0")
            os.close(fd)
            results: list[int | None] = []
            for action, path, *args in attempts:
                try:
                    if action == "open":
                        os.close(os.open(path, args[0] | os.O_NONBLOCK | os.O_CLOEXEC))
                    else:
                        kind, major, minor = args
                        os.mknod(path, 0o600 | (stat.S_IFCHR if kind == "c" else stat.S_IFBLK),
                                 os.makedev(major, minor))
                        os.unlink(path)
                    results.append(0)
                except OSError as e:
                    results.append(e.errno)
            os.write(w, json.dumps(results).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data, "the probing child failed"
    return json.loads(data)
