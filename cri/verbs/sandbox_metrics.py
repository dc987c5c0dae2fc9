"""ListMetricDescriptors, ListPodSandboxMetrics and StreamPodSandboxMetrics (the same list, in pages):
cadvisor's container metrics, from the runtime.

With kubelet's PodAndContainerStatsFromCRI, /metrics/cadvisor is built from
these instead of from cadvisor. The names, help texts and label keys are
cadvisor's (and containerd's, which serves the same); each metric's label
values are the container's ID and name, then its own extra labels. A pod's
own metrics (its network) carry the pod's ID and name.

Every container descriptor is answered for every running container, a figure
the kernel does not keep as 0 (as cadvisor reports it), so that a consumer
finds each series it was promised; only per-device I/O has as many series as
devices the container used, which may be none. Reading takes a walk of the
writable layer and of every process's descriptors, so it runs off the event loop.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from api.runtime.v1 import api_pb2 as pb
from cri.errors import handle_errors
from cri.layout import Layout
from cri.paging import streams_pages
from cri.records import RUNNING
from cri.runtime import Container, Runtime, Sandbox
from cri.stats import (
    FsUsage,
    device_name,
    network_pids,
    open_files,
    open_files_limit,
    read_network,
    writable_layer_usage,
)
from linux.cgroups import Cgroup, CgroupError, CgroupMetrics, CgroupStats

BASE_LABELS = ("id", "name")
C, G = pb.COUNTER, pb.GAUGE


@dataclass(frozen=True)
class Descriptor:
    name: str
    help: str
    kind: pb.MetricType  # pb.COUNTER or pb.GAUGE
    extra_labels: tuple[str, ...] = ()

    def to_cri(self) -> pb.MetricDescriptor:
        return pb.MetricDescriptor(name=self.name, help=self.help, label_keys=[*BASE_LABELS, *self.extra_labels])


def _d(name: str, help: str, kind: pb.MetricType, *extra_labels: str) -> Descriptor:
    return Descriptor("container_" + name, help, kind, extra_labels)


# One series per container, by the figure it reports.
_CONTAINER = {
    "cpu_usage": _d("cpu_usage_seconds_total", "Cumulative CPU time consumed in seconds.", C),
    "cpu_user": _d("cpu_user_seconds_total", "Cumulative user cpu time consumed in seconds.", C),
    "cpu_system": _d("cpu_system_seconds_total", "Cumulative system cpu time consumed in seconds.", C),
    "cfs_periods": _d("cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.", C),
    "cfs_throttled_periods": _d("cpu_cfs_throttled_periods_total", "Number of throttled period intervals.", C),
    "cfs_throttled": _d("cpu_cfs_throttled_seconds_total", "Total time duration the container has been throttled.",
                        C),
    "memory_usage": _d("memory_usage_bytes", "Current memory usage in bytes, including all memory regardless of "
                       "when it was accessed", G),
    "memory_working_set": _d("memory_working_set_bytes", "Current working set in bytes.", G),
    "memory_rss": _d("memory_rss", "Size of RSS in bytes.", G),
    "memory_cache": _d("memory_cache", "Number of bytes of page cache memory.", G),
    "memory_kernel": _d("memory_kernel_usage", "Size of kernel memory allocated in bytes.", G),
    "memory_mapped_file": _d("memory_mapped_file", "Size of memory mapped files in bytes.", G),
    "memory_swap": _d("memory_swap", "Container swap usage in bytes.", G),
    "memory_failcnt": _d("memory_failcnt", "Number of memory usage hits limits", C),
    "memory_max_usage": _d("memory_max_usage_bytes", "Maximum memory usage recorded in bytes", G),
    "oom_events": _d("oom_events_total", "Count of out of memory events observed for the container", C),
    "processes": _d("processes", "Number of processes running inside the container.", G),
    "threads": _d("threads", "Number of threads running inside the container", G),
    "threads_max": _d("threads_max", "Maximum number of threads allowed inside the container, infinity if value "
                      "is zero", G),
    "file_descriptors": _d("file_descriptors", "Number of open file descriptors for the container.", G),
    "sockets": _d("sockets", "Number of open sockets for the container.", G),
    "start_time": _d("start_time_seconds", "Start time of the container since unix epoch in seconds.", G),
    "last_seen": _d("last_seen", "Last time a container was seen by the exporter", G),
    "spec_cpu_period": _d("spec_cpu_period", "CPU period of the container.", G),
    "spec_cpu_quota": _d("spec_cpu_quota", "CPU quota of the container.", G),
    "spec_cpu_shares": _d("spec_cpu_shares", "CPU share of the container.", G),
    "spec_memory_limit": _d("spec_memory_limit_bytes", "Memory limit for the container.", G),
    "spec_memory_reservation": _d("spec_memory_reservation_limit_bytes",
                                  "Memory reservation limit for the container.", G),
    "spec_memory_swap_limit": _d("spec_memory_swap_limit_bytes", "Memory swap limit for the container.", G),
}
_MEMORY_FAILURES = _d("memory_failures_total", "Cumulative count of memory allocation failures.", C,
                      "failure_type", "scope")
_ULIMITS = _d("ulimits_soft", "Soft ulimit values for the container root process. Unlimited if -1, except "
              "priority and nice", G, "ulimit")
# The writable layer's filesystem, by its device.
_FS = {
    "inodes_free": _d("fs_inodes_free", "Number of available Inodes", G, "device"),
    "inodes_total": _d("fs_inodes_total", "Number of Inodes", G, "device"),
    "limit": _d("fs_limit_bytes", "Number of bytes that can be consumed by the container on this filesystem.", G,
                "device"),
    "used": _d("fs_usage_bytes", "Number of bytes that are consumed by the container on this filesystem.", G,
               "device"),
}
# I/O by block device: as many series as devices the container used.
_IO = {
    "read_bytes": _d("fs_reads_bytes_total", "Cumulative count of bytes read", C, "device"),
    "reads": _d("fs_reads_total", "Cumulative count of reads completed", C, "device"),
    "write_bytes": _d("fs_writes_bytes_total", "Cumulative count of bytes written", C, "device"),
    "writes": _d("fs_writes_total", "Cumulative count of writes completed", C, "device"),
}
_BLKIO = _d("blkio_device_usage_total", "Blkio Device bytes usage", C, "device", "major", "minor", "operation")
# The pod's, by interface, in NetCounters' order (tests/unit/test_metrics.py holds them to it).
_NETWORK = {
    "rx_bytes": _d("network_receive_bytes_total", "Cumulative count of bytes received", C, "interface"),
    "rx_packets": _d("network_receive_packets_total", "Cumulative count of packets received", C, "interface"),
    "rx_errors": _d("network_receive_errors_total", "Cumulative count of errors encountered while receiving", C,
                    "interface"),
    "rx_dropped": _d("network_receive_packets_dropped_total", "Cumulative count of packets dropped while receiving",
                     C, "interface"),
    "tx_bytes": _d("network_transmit_bytes_total", "Cumulative count of bytes transmitted", C, "interface"),
    "tx_packets": _d("network_transmit_packets_total", "Cumulative count of packets transmitted", C, "interface"),
    "tx_errors": _d("network_transmit_errors_total", "Cumulative count of errors encountered while transmitting", C,
                    "interface"),
    "tx_dropped": _d("network_transmit_packets_dropped_total",
                     "Cumulative count of packets dropped while transmitting", C, "interface"),
}
# Every container's, always; and those that per-device I/O may leave out.
CONTAINER_DESCRIPTORS = (*_CONTAINER.values(), _MEMORY_FAILURES, _ULIMITS, *_FS.values())
PER_DEVICE_DESCRIPTORS = (*_IO.values(), _BLKIO)
DESCRIPTORS = (*CONTAINER_DESCRIPTORS, *PER_DEVICE_DESCRIPTORS, *_NETWORK.values())

_NS = 1_000_000_000
_UNLIMITED = 1 << 62  # a v1 memory limit at least this large is the page counter's "none"


@dataclass
class Sample:
    """What is read of one running container for its metrics."""
    stats: CgroupStats = field(default_factory=CgroupStats)
    cgroup: CgroupMetrics = field(default_factory=CgroupMetrics)
    fds: int = 0
    sockets: int = 0
    open_files_limit: int = 0
    fs: FsUsage | None = None


def read_sample(layout: Layout, c: Container) -> Sample:
    """Blocking: cgroup files, /proc and a walk of the writable layer."""
    out = Sample()
    path = (c.rec.spec.get("linux") or {}).get("cgroupsPath")
    if path:
        group = Cgroup(path)
        try:
            out.stats, out.cgroup = group.stats(), group.metrics()
            out.fds, out.sockets = open_files(group.pids())
        except CgroupError:
            pass  # exited a moment ago: its cgroup is gone, and its figures with it
    out.open_files_limit = open_files_limit(c.rec.pid) if c.rec.pid else 0
    out.fs = writable_layer_usage(f"{layout.container_dir(c.id)}/upper")
    return out


def container_series(sample: Sample, spec: dict, started_at: int, now: int) -> list[tuple[Descriptor, list[str], int]]:
    """Each series of one container: its descriptor, its extra label values, its value. Times are
    whole seconds: the CRI's metric values are integers."""
    s, m = sample.stats, sample.cgroup
    resources = (spec.get("linux") or {}).get("resources") or {}
    cpu, memory = resources.get("cpu") or {}, resources.get("memory") or {}
    figures = {
        "cpu_usage": s.cpu_usage_ns // _NS, "cpu_user": m.cpu_user_ns // _NS, "cpu_system": m.cpu_system_ns // _NS,
        "cfs_periods": m.cfs_periods, "cfs_throttled_periods": m.cfs_throttled_periods,
        "cfs_throttled": m.cfs_throttled_ns // _NS,
        "memory_usage": s.memory_usage, "memory_working_set": s.memory_working_set, "memory_rss": s.memory_rss,
        "memory_cache": s.memory_cache, "memory_kernel": m.memory_kernel, "memory_mapped_file": m.memory_mapped_file,
        "memory_swap": m.memory_swap, "memory_failcnt": m.memory_failcnt, "memory_max_usage": m.memory_max_usage,
        "oom_events": s.oom_kills, "processes": s.pids_current, "threads": m.threads, "threads_max": m.threads_max,
        "file_descriptors": sample.fds, "sockets": sample.sockets,
        "start_time": started_at // _NS, "last_seen": now // _NS,
        # What was asked for (and updated since), as cadvisor reads a container's spec; 0 where
        # nothing was, and a limit too large to be one is none (cadvisor's specMemoryValue).
        "spec_cpu_period": cpu.get("period") or 0, "spec_cpu_quota": cpu.get("quota") or 0,
        "spec_cpu_shares": cpu.get("shares") or 0,
        "spec_memory_limit": _memory_value(memory.get("limit")),
        "spec_memory_reservation": _memory_value(memory.get("reservation")),
        "spec_memory_swap_limit": _memory_value(memory.get("swap")),
    }
    out: list[tuple[Descriptor, list[str], int]] = [(d, [], figures[key]) for key, d in _CONTAINER.items()]
    for kind, own, hierarchy in (("pgfault", m.pgfault, m.hierarchy_pgfault),
                                 ("pgmajfault", m.pgmajfault, m.hierarchy_pgmajfault)):
        out += [(_MEMORY_FAILURES, [kind, "container"], own), (_MEMORY_FAILURES, [kind, "hierarchy"], hierarchy)]
    out.append((_ULIMITS, ["max_open_files"], sample.open_files_limit))
    fs = sample.fs or FsUsage("", 0, 0, 0, 0)  # the layer went with the container a moment ago
    out += [(d, [fs.device], getattr(fs, key)) for key, d in _FS.items()]
    for device, io in sorted(m.io.items()):
        major, _, minor = device.partition(":")
        name = device_name(int(major), int(minor)) if major.isdigit() and minor.isdigit() else device
        out += [(d, [name], getattr(io, key)) for key, d in _IO.items()]
        out += [(_BLKIO, [name, major, minor, "Read"], io.read_bytes),
                (_BLKIO, [name, major, minor, "Write"], io.write_bytes)]
    return out


def _memory_value(limit: int | None) -> int:
    return 0 if not limit or limit < 0 or limit >= _UNLIMITED else limit


def _metric(d: Descriptor, labels: list[str], value: int, now: int) -> pb.Metric:
    m = pb.Metric(name=d.name, timestamp=now, metric_type=d.kind, label_values=labels)
    m.value.value = max(0, int(value))
    return m


def container_metrics(layout: Layout, c: Container, now: int) -> pb.ContainerMetrics:
    config = pb.ContainerConfig.FromString(c.rec.config)
    labels = [c.id, config.metadata.name]
    series = container_series(read_sample(layout, c), c.rec.spec, c.rec.started_at, now)
    return pb.ContainerMetrics(container_id=c.id,
                               metrics=[_metric(d, labels + extra, value, now) for d, extra, value in series])


def sandbox_metrics(layout: Layout, s: Sandbox, running: list[Container], net_pids: list[int],
                    now: int) -> pb.PodSandboxMetrics:
    """Blocking: what the loop picked (the pod's running containers, the processes to read its
    network through) is read here."""
    config = pb.PodSandboxConfig.FromString(s.rec.config)
    out = pb.PodSandboxMetrics(pod_sandbox_id=s.id)
    for name, counters in sorted((read_network(net_pids) or {}).items()):
        if name == "lo":
            continue
        labels = [s.id, config.metadata.name, name]
        out.metrics.extend(_metric(d, labels, value, now) for value, d in zip(counters, _NETWORK.values()))
    out.container_metrics.extend(container_metrics(layout, c, now) for c in running)
    return out


def _all_pods(layout: Layout, picked: list[tuple[Sandbox, list[Container], list[int]]],
              now: int) -> list[pb.PodSandboxMetrics]:
    return [sandbox_metrics(layout, s, running, pids, now) for s, running, pids in picked]


class SandboxMetrics:
    rt: Runtime

    @handle_errors
    async def ListMetricDescriptors(self, request, context):
        return pb.ListMetricDescriptorsResponse(descriptors=[d.to_cri() for d in DESCRIPTORS])

    @handle_errors
    async def ListPodSandboxMetrics(self, request, context):
        return pb.ListPodSandboxMetricsResponse(pod_metrics=await self._list_sandbox_metrics())

    @streams_pages(pb.StreamPodSandboxMetricsResponse, "pod_sandbox_metrics")
    async def StreamPodSandboxMetrics(self, request, context):
        return await self._list_sandbox_metrics()

    async def _list_sandbox_metrics(self) -> list[pb.PodSandboxMetrics]:
        now = time.time_ns()
        # Which pods and containers is decided here, on the loop that changes them.
        picked = [(s, [c for c in self.rt.containers_of(s.id) if c.rec.state == RUNNING], network_pids(self.rt, s))
                  for s in list(self.rt.sandboxes.values())]
        return await asyncio.to_thread(_all_pods, self.rt.layout, picked, now)
