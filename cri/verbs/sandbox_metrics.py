"""ListMetricDescriptors and ListPodSandboxMetrics: cadvisor's container metrics, from the runtime.

With kubelet's PodAndContainerStatsFromCRI, /metrics/cadvisor is built from
these instead of from cadvisor. The names, help texts and label keys are
cadvisor's (and containerd's, which serves the same); each metric's label
values are the container's ID and name, then its own extra labels. A pod's
own metrics (its network) carry the pod's ID and name.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from api.runtime.v1 import api_pb2 as pb
from cri.errors import handle_errors
from cri.records import RUNNING
from cri.runtime import Container, Runtime, Sandbox
from cri.stats import network_counters
from linux.cgroups import Cgroup, CgroupError, CgroupStats

BASE_LABELS = ("id", "name")


@dataclass(frozen=True)
class Descriptor:
    name: str
    help: str
    kind: pb.MetricType  # pb.COUNTER or pb.GAUGE
    extra_labels: tuple[str, ...] = ()

    def to_cri(self) -> pb.MetricDescriptor:
        return pb.MetricDescriptor(name=self.name, help=self.help, label_keys=[*BASE_LABELS, *self.extra_labels])


_CPU = Descriptor("container_cpu_usage_seconds_total", "Cumulative CPU time consumed in seconds.", pb.COUNTER)
_MEMORY = {
    "usage": Descriptor("container_memory_usage_bytes", "Current memory usage in bytes, including all memory "
                        "regardless of when it was accessed", pb.GAUGE),
    "working_set": Descriptor("container_memory_working_set_bytes", "Current working set in bytes.", pb.GAUGE),
    "rss": Descriptor("container_memory_rss", "Size of RSS in bytes.", pb.GAUGE),
    "cache": Descriptor("container_memory_cache", "Number of bytes of page cache memory.", pb.GAUGE),
}
_OOM = Descriptor("container_oom_events_total", "Count of out of memory events observed for the container",
                  pb.COUNTER)
_PROCESSES = Descriptor("container_processes", "Number of processes running inside the container.", pb.GAUGE)
_START = Descriptor("container_start_time_seconds", "Start time of the container since unix epoch in seconds.",
                    pb.GAUGE)
_NETWORK = {
    "rx_bytes": Descriptor("container_network_receive_bytes_total", "Cumulative count of bytes received",
                           pb.COUNTER, ("interface",)),
    "rx_errors": Descriptor("container_network_receive_errors_total",
                            "Cumulative count of errors encountered while receiving", pb.COUNTER, ("interface",)),
    "tx_bytes": Descriptor("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted",
                           pb.COUNTER, ("interface",)),
    "tx_errors": Descriptor("container_network_transmit_errors_total",
                            "Cumulative count of errors encountered while transmitting", pb.COUNTER, ("interface",)),
}
DESCRIPTORS = (_CPU, *_MEMORY.values(), _OOM, _PROCESSES, _START, *_NETWORK.values())


def _metric(d: Descriptor, labels: list[str], value: int, now: int) -> pb.Metric:
    m = pb.Metric(name=d.name, timestamp=now, metric_type=d.kind, label_values=labels)
    m.value.value = max(0, int(value))
    return m


def container_metrics(c: Container, now: int) -> pb.ContainerMetrics:
    config = pb.ContainerConfig.FromString(c.rec.config)
    labels = [c.id, config.metadata.name]
    out = pb.ContainerMetrics(container_id=c.id)
    path = (c.rec.spec.get("linux") or {}).get("cgroupsPath")
    try:
        stats = Cgroup(path).stats() if path else CgroupStats()
    except CgroupError:
        stats = CgroupStats()  # exited a moment ago: its cgroup is gone
    # Whole seconds: the CRI's metric values are integers.
    out.metrics.append(_metric(_CPU, labels, stats.cpu_usage_ns // 1_000_000_000, now))
    for field, d in _MEMORY.items():
        out.metrics.append(_metric(d, labels, getattr(stats, f"memory_{field}"), now))
    out.metrics.append(_metric(_OOM, labels, stats.oom_kills, now))
    out.metrics.append(_metric(_PROCESSES, labels, stats.pids_current, now))
    out.metrics.append(_metric(_START, labels, c.rec.started_at // 1_000_000_000, now))
    return out


def sandbox_metrics(rt: Runtime, s: Sandbox, now: int) -> pb.PodSandboxMetrics:
    config = pb.PodSandboxConfig.FromString(s.rec.config)
    out = pb.PodSandboxMetrics(pod_sandbox_id=s.id)
    for name, counters in sorted((network_counters(rt, s) or {}).items()):
        if name == "lo":
            continue
        labels = [s.id, config.metadata.name, name]
        for value, d in zip(counters, _NETWORK.values()):
            out.metrics.append(_metric(d, labels, value, now))
    for c in rt.containers_of(s.id):
        if c.rec.state == RUNNING:
            out.container_metrics.append(container_metrics(c, now))
    return out


class SandboxMetrics:
    rt: Runtime

    @handle_errors
    async def ListMetricDescriptors(self, request, context):
        return pb.ListMetricDescriptorsResponse(descriptors=[d.to_cri() for d in DESCRIPTORS])

    @handle_errors
    async def ListPodSandboxMetrics(self, request, context):
        now = time.time_ns()
        return pb.ListPodSandboxMetricsResponse(
            pod_metrics=[sandbox_metrics(self.rt, s, now) for s in list(self.rt.sandboxes.values())])
