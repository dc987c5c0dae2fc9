"""Stats read from cgroups and a pod's network namespace, for the stats and metrics calls.

CPU use in nano-cores is a rate, so it is computed from the previous sample of
the same cgroup; the first sample of a container has none."""
from __future__ import annotations

import os
import time

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


def parse_net_dev(text: str) -> dict[str, tuple[int, int, int, int]]:
    """/proc/net/dev: interface -> (rx bytes, rx errors, tx bytes, tx errors)."""
    out = {}
    for line in text.splitlines()[2:]:
        name, _, counters = line.partition(":")
        fields = counters.split()
        if len(fields) >= 11:
            out[name.strip()] = (int(fields[0]), int(fields[2]), int(fields[8]), int(fields[10]))
    return out


def network_counters(rt: Runtime, s: Sandbox) -> dict[str, tuple[int, int, int, int]] | None:
    """The pod's interface counters (see parse_net_dev), read through a process of the pod's
    network namespace; None on the host's network or with no process to read through."""
    if not s.rec.netns:
        return None  # on the host's network: the node's counters are not the pod's
    pids = [c.rec.pid for c in rt.containers_of(s.id) if c.rec.state == RUNNING and c.rec.pid]
    pids += [s.rec.pod_init_pid] if s.rec.pod_init_pid else []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/net/dev") as f:
                return parse_net_dev(f.read())
        except OSError:
            continue
    return None


def network_usage(rt: Runtime, s: Sandbox, now: int) -> pb.NetworkUsage | None:
    """The pod's interface counters as the CRI's stats carry them."""
    counters = network_counters(rt, s)
    if counters is None:
        return None
    usage = pb.NetworkUsage(timestamp=now)
    for name, (rx, rx_err, tx, tx_err) in sorted(counters.items()):
        if name == "lo":
            continue
        iface = pb.NetworkInterfaceUsage(name=name)
        iface.rx_bytes.value, iface.rx_errors.value = rx, rx_err
        iface.tx_bytes.value, iface.tx_errors.value = tx, tx_err
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
