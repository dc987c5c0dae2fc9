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


def test_pod_and_container_metrics(daemon, registry, test_images, tmp_path):
    pods = Pods(daemon, str(tmp_path / "logs"))
    pod = pods.run_pod()
    before = time.time()
    cid = pods.run(pod, test_images["busybox"].reference(registry),
                   ["sh", "-c", "sleep 1000 & sleep 1000 & wait"], name="busy")
    time.sleep(0.5)
    answer = daemon.runtime.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest())
    [ours] = [m for m in answer.pod_metrics if m.pod_sandbox_id == pod]
    [container] = ours.container_metrics
    assert container.container_id == cid
    by_name = {m.name: m for m in container.metrics}
    assert all(list(m.label_values) == [cid, "busy"] for m in container.metrics)
    assert by_name["container_processes"].value.value == 3  # sh and its two sleeps
    assert by_name["container_memory_usage_bytes"].value.value > 0
    assert by_name["container_cpu_usage_seconds_total"].metric_type == pb.COUNTER
    assert abs(by_name["container_start_time_seconds"].value.value - before) < 30
    pods.remove_all()
