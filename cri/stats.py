"""Stats read from cgroups and a pod's network namespace, for the stats and metrics calls.

CPU use in nano-cores is a rate, so it is computed from the previous sample of
the same cgroup; the first sample of a container has none."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import NamedTuple

from api.runtime.v1 import api_pb2 as pb
from cri.records import RUNNING
from cri.runtime import Container, Runtime, Sandbox
from linux.cgroups import Cgroup, CgroupNotFound


def disk_usage(path: str) -> tuple[int, int]:
    """Bytes (allocated blocks, as du counts them) and inodes under `path`."""
    used = inodes = 0
    seen: set[tuple[int, int]] = set()
    stack = [path]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                used += st.st_blocks * 512
                inodes += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return used, inodes


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
    used, _ = disk_usage(upper)
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
    """The previous CPU sample of each cgroup, to turn usage into a rate."""

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


def container_stats(rt: Runtime, rates: CpuRates, c: Container) -> pb.ContainerStats:
    config = pb.ContainerConfig.FromString(c.rec.config)
    now = time.time_ns()
    out = pb.ContainerStats(attributes=pb.ContainerAttributes(
        id=c.id, metadata=config.metadata, labels=config.labels, annotations=config.annotations))
    path = (c.rec.spec.get("linux") or {}).get("cgroupsPath")
    if path:
        cpu, mem, _ = _cpu_and_memory(rates, path, now)
        out.cpu.CopyFrom(cpu)
        out.memory.CopyFrom(mem)
    upper = os.path.join(rt.layout.container_dir(c.id), "upper")
    used, inodes = disk_usage(upper)
    out.writable_layer.timestamp = now
    out.writable_layer.fs_id.mountpoint = upper
    out.writable_layer.used_bytes.value = used
    out.writable_layer.inodes_used.value = inodes
    return out


def sandbox_stats(rt: Runtime, rates: CpuRates, s: Sandbox) -> pb.PodSandboxStats:
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
                out.linux.containers.append(container_stats(rt, rates, c))
            except CgroupNotFound:
                pass  # exited a moment ago
    return out


def labels_match(labels, selector) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())
