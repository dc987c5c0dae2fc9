"""Size-based rotation of container logs by the shim, for nodes where no kubelet rotates."""
from __future__ import annotations

import os
import time

import pytest

from api.runtime.v1 import api_pb2 as pb
from tests.daemon import registry_config
from tests.pods import Pods, serving

MAX_SIZE = 4096


@pytest.fixture(scope="module")
def daemon(registry, test_images, tmp_path_factory):
    config = registry_config(registry) + f"\n[container_logs]\nmax_size = {MAX_SIZE}\nmax_files = 3\n"
    with serving(str(tmp_path_factory.mktemp("cricketd")), config, [test_images["busybox"].reference(registry)]) as d:
        yield d


def numbers(path: str) -> list[int]:
    """The N of each "line-N" CRI line in a log file."""
    with open(path, "rb") as f:
        return [int(line.rsplit(b"line-", 1)[1]) for line in f.read().splitlines() if b"line-" in line]


def test_logs_rotate_by_size_keeping_whole_lines_in_order(daemon, registry, test_images, tmp_path):
    pods = Pods(daemon, str(tmp_path / "logs"))
    pod = pods.run_pod()
    cid = pods.run(pod, test_images["busybox"].reference(registry),
                   ["sh", "-c", "i=1; while [ $i -le 400 ]; do echo line-$i; i=$((i+1)); done"])
    deadline = time.monotonic() + 20
    while pods.status(cid).status.state != pb.CONTAINER_EXITED:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    path = pods.status(cid).status.log_path
    files = [path + ".2", path + ".1", path]
    assert all(os.path.exists(f) for f in files) and not os.path.exists(path + ".3")
    assert all(os.path.getsize(f) <= MAX_SIZE for f in files)
    kept = [n for f in files for n in numbers(f)]
    # The oldest lines went with the oldest file; the rest are all there, in order, each whole.
    assert kept == list(range(kept[0], 401)) and kept[0] > 1
    pods.remove_all()
