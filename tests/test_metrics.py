"""ListMetricDescriptors and ListPodSandboxMetrics: cadvisor's metrics, served by the runtime."""
from __future__ import annotations

import time

import pytest

from api.runtime.v1 import api_pb2 as pb
from tests.daemon import registry_config
from tests.pods import Pods, serving


@pytest.fixture(scope="module")
def daemon(registry, test_images, tmp_path_factory):
    with serving(str(tmp_path_factory.mktemp("cricketd")), registry_config(registry),
                 [test_images["busybox"].reference(registry)]) as d:
        yield d


def test_descriptors_are_cadvisors(daemon):
    descriptors = {d.name: list(d.label_keys) for d in
                   daemon.runtime.ListMetricDescriptors(pb.ListMetricDescriptorsRequest()).descriptors}
    assert descriptors["container_cpu_usage_seconds_total"] == ["id", "name"]
    assert descriptors["container_memory_working_set_bytes"] == ["id", "name"]
    assert descriptors["container_network_receive_bytes_total"] == ["id", "name", "interface"]


# Series there may be none of: per-device I/O, when the container has read and written nothing
# through the block layer (all from the page cache, or a disk that keeps no per-cgroup count).
PER_DEVICE = {"container_blkio_device_usage_total", "container_fs_reads_bytes_total", "container_fs_reads_total",
              "container_fs_writes_bytes_total", "container_fs_writes_total"}


def test_pod_and_container_metrics(daemon, registry, test_images, tmp_path):
    pods = Pods(daemon, str(tmp_path / "logs"))
    pod = pods.run_pod()
    before = time.time()
    config = pods.container_config(test_images["busybox"].reference(registry),
                                   ["sh", "-c", "sleep 1000 & sleep 1000 & wait"], name="busy")
    config.linux.resources.CopyFrom(pb.LinuxContainerResources(cpu_period=100000, cpu_quota=20000, cpu_shares=1024,
                                                                memory_limit_in_bytes=64 << 20))
    cid = pods.create(pod, config)
    pods.start(cid)
    time.sleep(0.5)
    descriptors = {d.name: list(d.label_keys) for d in
                   daemon.runtime.ListMetricDescriptors(pb.ListMetricDescriptorsRequest()).descriptors}
    answer = daemon.runtime.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest())
    [ours] = [m for m in answer.pod_metrics if m.pod_sandbox_id == pod]
    [container] = ours.container_metrics
    assert container.container_id == cid
    # As critest checks: every container descriptor has its series, with a value per label key.
    for m in container.metrics:
        assert m.label_values[:2] == [cid, "busy"] and len(m.label_values) == len(descriptors[m.name]), m
    by_name = {m.name: m for m in container.metrics}
    pod_level = {n for n in descriptors if n.startswith("container_network_")}
    assert set(descriptors) - pod_level - PER_DEVICE <= set(by_name)
    assert by_name["container_processes"].value.value == 3  # sh and its two sleeps
    assert by_name["container_threads"].value.value == 3
    assert by_name["container_memory_usage_bytes"].value.value > 0
    assert by_name["container_cpu_usage_seconds_total"].metric_type == pb.COUNTER
    assert abs(by_name["container_start_time_seconds"].value.value - before) < 30
    assert by_name["container_file_descriptors"].value.value >= 3 * 3  # stdio, at least, of each
    assert by_name["container_spec_memory_limit_bytes"].value.value == 64 << 20
    assert by_name["container_spec_cpu_quota"].value.value == 20000
    assert by_name["container_ulimits_soft"].value.value > 0
    assert by_name["container_fs_limit_bytes"].value.value > 0
    pods.remove_all()
