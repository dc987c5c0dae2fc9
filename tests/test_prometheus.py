"""The opt-in Prometheus endpoint: CRI calls counted and timed, pulls, what runs."""
from __future__ import annotations

import socket

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.runtime.v1 import api_pb2 as pb
from tests.daemon import registry_config
from tests.pods import Pods, rpc_error, serving


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def daemon(registry, tmp_path_factory):
    address = f"127.0.0.1:{free_port()}"
    with serving(str(tmp_path_factory.mktemp("cricketd")),
                 registry_config(registry) + f'\n[metrics]\naddress = "{address}"\n') as d:
        d.metrics_url = f"http://{address}/metrics"
        yield d


def scrape(d) -> dict[tuple, float]:
    text = httpx.get(d.metrics_url, timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_calls_pulls_and_running_containers(daemon, registry, test_images, tmp_path):
    image = test_images["busybox"].reference(registry)
    for _ in range(3):
        daemon.runtime.Version(pb.VersionRequest())
    daemon.pull(image)
    assert rpc_error(daemon.runtime.ContainerStatus, pb.ContainerStatusRequest(container_id="nope"))
    pods = Pods(daemon, str(tmp_path / "logs"))
    pods.run(pods.run_pod(), image, ["sleep", "1000"])
    seen = scrape(daemon)
    assert seen[("cricket_cri_requests_total", (("code", "OK"), ("method", "Version")))] >= 3
    assert seen[("cricket_cri_requests_total", (("code", "NOT_FOUND"), ("method", "ContainerStatus")))] == 1
    assert seen[("cricket_cri_request_duration_seconds_count", (("method", "Version"),))] >= 3
    assert seen[("cricket_image_pulls_total", (("result", "ok"),))] == 1
    assert seen[("cricket_image_pull_bytes_total", ())] > 0
    assert seen[("cricket_containers_running", ())] == 1 and seen[("cricket_pod_sandboxes_ready", ())] == 1
    pods.remove_all()
    assert scrape(daemon)[("cricket_containers_running", ())] == 0
