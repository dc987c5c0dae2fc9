"""Stats read from cgroups and a pod's network namespace, for the stats and metrics calls.

CPU use in nano-cores is a rate, so it is computed from the previous sample of
the same cgroup; the first sample of a container has none."""
from __future__ import annotations

import asyncio
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from typing import NamedTuple

from api.runtime.v1 import api_pb2 as pb
from cri.records import RUNNING
from cri.runtime import Container, Runtime, Sandbox
from linux.cgroups import Cgroup, CgroupNotFound

log = logging.getLogger(__name__)


# A container's writable layer is the container's to fill: a walk of it is bounded. Past either
# bound the walk stops and reports what it counted so far — an undercount, flagged `complete=False`
# and logged — rather than hold a stats call (and a thread) for minutes over millions of files.
MAX_WALK_ENTRIES = 1_000_000
MAX_WALK_DEPTH = 512
# kubelet asks every few seconds, for every container (ListContainerStats, ListPodSandboxStats, the
# metrics); a walk's answer is reused this long, and walks of the same layer at once are one walk.
DISK_USAGE_TTL = 5.0

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class DiskUsage(NamedTuple):
    used: int  # bytes of allocated blocks, as du counts them
    inodes: int
    complete: bool  # False: a bound stopped the walk, and the figures are what it counted until then


def disk_usage(path: str, max_entries: int = MAX_WALK_ENTRIES, max_depth: int = MAX_WALK_DEPTH) -> DiskUsage:
    """Bytes (allocated blocks, as du counts them) and inodes under `path`, a hard-linked file once.

    The tree is the container's while it runs, and it may swap any directory for a symlink at
    any moment: the walk goes by descriptor, each directory opened under its parent's with
    O_NOFOLLOW, so a symlink is counted as itself and never followed, and it never leaves the
    tree's filesystem (a mount on it is counted, not entered). Blocking: call it off the event
    loop. Bounded by `max_entries` and `max_depth` (see MAX_WALK_ENTRIES)."""
    try:
        root = os.open(path, _DIR_FLAGS)
    except OSError:  # gone (the container was removed), or not a directory
        return DiskUsage(0, 0, True)
    used = inodes = 0
    seen: set[tuple[int, int]] = set()
    device = os.fstat(root).st_dev
    complete = True
    # Open directories, deepest last: (descriptor, its entries being read). At most max_depth.
    stack = [(root, os.scandir(root))]
    try:
        while stack:
            fd, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                entries.close()
                os.close(fd)
                stack.pop()
                continue
            if inodes >= max_entries:
                complete = False
                break
            try:
                st = entry.stat(follow_symlinks=False)  # fstatat(fd, name, AT_SYMLINK_NOFOLLOW)
            except OSError:
                continue  # gone meanwhile
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            used += st.st_blocks * 512
            inodes += 1
            if not stat.S_ISDIR(st.st_mode) or st.st_dev != device:
                continue
            if len(stack) >= max_depth:
                complete = False
                continue
            try:
                child = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue  # gone, or swapped for a symlink or a file since the stat: not entered
            stack.append((child, os.scandir(child)))
    finally:
        for fd, entries in stack:
            entries.close()
            os.close(fd)
    if not complete:
        log.warning("the walk of %s stopped at %d entries or %d levels: its disk usage is counted up to there",
                    path, max_entries, max_depth)
    return DiskUsage(used, inodes, complete)


class DiskUsageCache:
    """disk_usage() of each path, reused for DISK_USAGE_TTL seconds; callers asking for a path
    being walked wait for that walk. Thread-safe: walks run in worker threads."""

    def __init__(self, ttl: float = DISK_USAGE_TTL, walk=disk_usage):
        self.ttl = ttl
        self._walk = walk
        self._lock = threading.Lock()
        self._known: dict[str, tuple[float, DiskUsage]] = {}
        self._walking: dict[str, threading.Event] = {}

    def get(self, path: str) -> DiskUsage:
        while True:
            with self._lock:
                now = time.monotonic()
                known = self._known.get(path)
                if known is not None and known[0] > now:
                    return known[1]
                walking = self._walking.get(path)
                if walking is None:
                    self._walking[path] = threading.Event()
                    break
            walking.wait()
        try:
            result = self._walk(path)
            with self._lock:
                now = time.monotonic()
                # What expired goes: the layers of removed containers are asked for no more.
                self._known = {p: k for p, k in self._known.items() if k[0] > now}
                self._known[path] = (now + self.ttl, result)
            return result
        finally:
            with self._lock:
                self._walking.pop(path).set()  # those waiting take the answer, or walk themselves

    def fresh(self, path: str) -> DiskUsage | None:
        """The answer for `path` if one is still fresh, without walking or waiting; else None."""
        with self._lock:
            known = self._known.get(path)
            return known[1] if known is not None and known[0] > time.monotonic() else None

    async def aget(self, path: str) -> DiskUsage:
        """get(), in a worker thread when it has to walk: a fresh answer (kubelet asks every
        second for every container; a walk is kept DISK_USAGE_TTL) costs no trip to a thread."""
        known = self.fresh(path)
        return known if known is not None else await asyncio.to_thread(self.get, path)


DISK_USAGE = DiskUsageCache()


# -- what cadvisor's metrics read beyond the cgroups ---------------------------------------


@dataclass
class FsUsage:
    """A container's writable layer and the filesystem it is on (what container_fs_* report)."""
    device: str
    used: int
    limit: int
    inodes_total: int
    inodes_free: int


def mount_source(mountinfo: str, device: str) -> str | None:
    """The source the mount table gives for a "major:minor" device (an overlay's, a tmpfs's name)."""
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) > 2 and fields[2] == device and len(tail) > 1:
            return tail[1]
    return None


def device_name(major: int, minor: int) -> str:
    """A device as cadvisor labels it: /dev/<name> of a block device, else its mount's source,
    else "major:minor"."""
    try:
        with open(f"/sys/dev/block/{major}:{minor}/uevent") as f:
            for line in f:
                if line.startswith("DEVNAME="):
                    return "/dev/" + line.strip().split("=", 1)[1]
    except OSError:
        pass  # not a block device: a filesystem with no device of its own
    with open("/proc/self/mountinfo") as f:
        return mount_source(f.read(), f"{major}:{minor}") or f"{major}:{minor}"


def writable_layer_usage(upper: str) -> FsUsage | None:
    """The writable layer's usage, and the size of the filesystem under it; None when it is gone."""
    try:
        st, vfs = os.stat(upper), os.statvfs(upper)
    except FileNotFoundError:
        return None
    used = DISK_USAGE.get(upper).used
    return FsUsage(device_name(os.major(st.st_dev), os.minor(st.st_dev)), used, vfs.f_blocks * vfs.f_frsize,
                   vfs.f_files, vfs.f_ffree)


def open_files(pids: list[int]) -> tuple[int, int]:
    """Open file descriptors of these processes, and how many of them are sockets. A process
    that ends meanwhile counts for nothing."""
    fds = sockets = 0
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        fds += len(names)
        for name in names:
            try:
                sockets += os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:")
            except OSError:
                pass
    return fds, sockets


def parse_soft_limits(text: str) -> dict[str, int]:
    """/proc/<pid>/limits: soft limits by cadvisor's ulimit name ("Max open files" is
    max_open_files); "unlimited" is -1."""
    out = {}
    for line in text.splitlines()[1:]:
        # "Max open files            1024                 1048576              files"
        words = line.split()
        for i, word in enumerate(words):
            if word == "unlimited" or word.isdigit():
                out["_".join(w.lower() for w in words[:i])] = -1 if word == "unlimited" else int(word)
                break
    return out


def open_files_limit(pid: int) -> int:
    """The soft RLIMIT_NOFILE of a process (0 when it is gone), as cadvisor's container_ulimits_soft."""
    try:
        with open(f"/proc/{pid}/limits") as f:
            return parse_soft_limits(f.read()).get("max_open_files", 0)
    except OSError:
        return 0


class CpuRates:
    """The previous CPU sample of each cgroup, to turn usage into a rate. The list calls forget
    the samples of cgroups no pod or container has any more (live_cgroups): kubelet asks for
    stats of every container, so this would otherwise grow by one entry per container ever run."""

    def __init__(self):
        self._last: dict[str, tuple[int, int]] = {}

    def nano_cores(self, key: str, now: int, usage: int) -> int | None:
        prev = self._last.get(key)
        self._last[key] = (now, usage)
        if prev is None or now <= prev[0] or usage < prev[1]:
            return None
        return (usage - prev[1]) * 1_000_000_000 // (now - prev[0])

    def forget(self, keys: set[str]) -> None:
        for key in list(self._last):
            if key not in keys:
                del self._last[key]


def live_cgroups(rt: Runtime) -> set[str]:
    """The cgroups whose CPU samples are worth keeping: every container's and every pod's."""
    return {(c.rec.spec.get("linux") or {}).get("cgroupsPath", "") for c in rt.containers.values()} \
        | {s.rec.cgroup_parent for s in rt.sandboxes.values()}


def _cpu_and_memory(rates: CpuRates, path: str, now: int) -> tuple[pb.CpuUsage, pb.MemoryUsage, int]:
    stats = Cgroup(path).stats()
    cpu = pb.CpuUsage(timestamp=now)
    cpu.usage_core_nano_seconds.value = stats.cpu_usage_ns
    rate = rates.nano_cores(path, now, stats.cpu_usage_ns)
    if rate is not None:
        cpu.usage_nano_cores.value = rate
    mem = pb.MemoryUsage(timestamp=now)
    mem.working_set_bytes.value = stats.memory_working_set
    mem.usage_bytes.value = stats.memory_usage
    mem.rss_bytes.value = stats.memory_rss
    mem.page_faults.value = stats.page_faults
    mem.major_page_faults.value = stats.major_page_faults
    if stats.memory_limit:
        mem.available_bytes.value = max(0, stats.memory_limit - stats.memory_working_set)
    return cpu, mem, stats.pids_current


class NetCounters(NamedTuple):
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int


def parse_net_dev(text: str) -> dict[str, NetCounters]:
    """/proc/net/dev: interface -> its counters (of the eight per direction, the first four)."""
    out = {}
    for line in text.splitlines()[2:]:
        name, _, counters = line.partition(":")
        fields = counters.split()
        if len(fields) >= 12:
            out[name.strip()] = NetCounters(*(int(fields[i]) for i in (0, 1, 2, 3, 8, 9, 10, 11)))
    return out


def network_pids(rt: Runtime, s: Sandbox) -> list[int]:
    """Processes of the pod's own network namespace to read its counters through; none on the
    host's network, whose counters are the node's, not the pod's."""
    if not s.rec.netns:
        return []
    pids = [c.rec.pid for c in rt.containers_of(s.id) if c.rec.state == RUNNING and c.rec.pid]
    return pids + ([s.rec.pod_init_pid] if s.rec.pod_init_pid else [])


def read_network(pids: list[int]) -> dict[str, NetCounters] | None:
    """Interface counters through the first of `pids` still there; None when none is."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/net/dev") as f:
                return parse_net_dev(f.read())
        except OSError:
            continue
    return None


def network_counters(rt: Runtime, s: Sandbox) -> dict[str, NetCounters] | None:
    """The pod's interface counters; None on the host's network or with no process to read through."""
    return read_network(network_pids(rt, s))


def network_usage(rt: Runtime, s: Sandbox, now: int) -> pb.NetworkUsage | None:
    """The pod's interface counters as the CRI's stats carry them."""
    counters = network_counters(rt, s)
    if counters is None:
        return None
    usage = pb.NetworkUsage(timestamp=now)
    for name, n in sorted(counters.items()):
        if name == "lo":
            continue
        iface = pb.NetworkInterfaceUsage(name=name)
        iface.rx_bytes.value, iface.rx_errors.value = n.rx_bytes, n.rx_errors
        iface.tx_bytes.value, iface.tx_errors.value = n.tx_bytes, n.tx_errors
        usage.interfaces.append(iface)
        if name == "eth0":
            usage.default_interface.CopyFrom(iface)
    return usage


async def container_stats(rt: Runtime, rates: CpuRates, c: Container) -> pb.ContainerStats:
    """A running container's stats; the walk of its writable layer runs off the event loop."""
    upper = os.path.join(rt.layout.container_dir(c.id), "upper")
    disk = await DISK_USAGE.aget(upper)
    config = pb.ContainerConfig.FromString(c.rec.config)
    now = time.time_ns()
    out = pb.ContainerStats(attributes=pb.ContainerAttributes(
        id=c.id, metadata=config.metadata, labels=config.labels, annotations=config.annotations))
    path = (c.rec.spec.get("linux") or {}).get("cgroupsPath")
    if path:
        cpu, mem, _ = _cpu_and_memory(rates, path, now)
        out.cpu.CopyFrom(cpu)
        out.memory.CopyFrom(mem)
    out.writable_layer.timestamp = now
    out.writable_layer.fs_id.mountpoint = upper
    out.writable_layer.used_bytes.value = disk.used
    out.writable_layer.inodes_used.value = disk.inodes
    return out


async def sandbox_stats(rt: Runtime, rates: CpuRates, s: Sandbox) -> pb.PodSandboxStats:
    config = pb.PodSandboxConfig.FromString(s.rec.config)
    now = time.time_ns()
    out = pb.PodSandboxStats(attributes=pb.PodSandboxAttributes(
        id=s.id, metadata=config.metadata, labels=config.labels, annotations=config.annotations))
    try:
        cpu, mem, pids = _cpu_and_memory(rates, s.rec.cgroup_parent, now)
        out.linux.cpu.CopyFrom(cpu)
        out.linux.memory.CopyFrom(mem)
        out.linux.process.timestamp = now
        out.linux.process.process_count.value = pids
    except CgroupNotFound:
        pass  # a stopped pod whose cgroup is gone has only its containers' stats
    network = network_usage(rt, s, now)
    if network is not None:
        out.linux.network.CopyFrom(network)
    for c in rt.containers_of(s.id):
        if c.rec.state == RUNNING:
            try:
                out.linux.containers.append(await container_stats(rt, rates, c))
            except CgroupNotFound:
                pass  # exited a moment ago
    return out


def labels_match(labels, selector) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())
