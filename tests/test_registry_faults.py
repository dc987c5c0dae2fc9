"""A failing registry, end to end: a real cricketd pulling through tests/fault_proxy.py, which
sits in front of the real test registry and fails on cue.

A connection reset mid-blob is resumed with a Range request; a registry that stalls is given
up on after [image] pull_timeout_seconds without a byte, naming the blob; 5xx answers are
retried with backoff ([image] pull_retries), then reported; a blob whose bytes do not match
its digest is DataLoss; a manifest larger than any sane one is refused before it is read
whole. After each failure nothing of the pull is left: no image, no blob, no snapshot, and no
partial download in the content store's ingest directory.
"""
from __future__ import annotations

import os

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from image.limits import MANIFEST_LIMIT
from tests.daemon import Cricketd, need_root
from tests.fault_proxy import FaultProxy

pytestmark = pytest.mark.usefixtures("root_only")


@pytest.fixture(scope="module")
def root_only():
    need_root()


@pytest.fixture
def proxy(registry):
    with FaultProxy(registry.url) as p:
        yield p


@pytest.fixture
def daemon(tmp_path, proxy):
    """A cricketd that reaches the proxy's host directly (no mirror to fall back on)."""
    made: list[Cricketd] = []

    def make(retries: int = 3, timeout: float = 30.0) -> Cricketd:
        config = (f'[registries."{proxy.host}"]\ninsecure = true\n'
                  f"[image]\npull_retries = {retries}\npull_timeout_seconds = {timeout}\n")
        d = Cricketd(str(tmp_path / f"d{len(made)}"), config)
        made.append(d)
        return d.start()

    yield make
    for d in made:
        d.stop()


def refusal(d: Cricketd, image: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        d.pull(image, timeout=60)
    return e.value


def ingests(d: Cricketd) -> list[str]:
    return os.listdir(os.path.join(d.root, "content", "ingest"))


def left_behind(d: Cricketd) -> list[str]:
    """Images, blobs, snapshots (committed or half-made) and partial downloads of the daemon's."""
    blobs = os.listdir(os.path.join(d.root, "content", "blobs", "sha256"))
    snapshots = os.listdir(os.path.join(d.root, "snapshots"))
    return [i.id for i in d.list()] + blobs + snapshots + [f"ingest/{n}" for n in ingests(d)]


def still_serving(d: Cricketd) -> None:
    assert d.runtime is not None
    assert d.runtime.Version(pb.VersionRequest(), timeout=5).runtime_name


def test_a_reset_mid_blob_is_resumed_with_a_range_request(daemon, proxy, test_images):
    info = test_images["busybox"]
    layer = info.layers[0]
    proxy.arm("reset", path=layer, after=info.size // 2)
    d = daemon()
    assert d.pull(f"{proxy.host}/busybox") == info.config_digest
    first, second = proxy.to(layer)
    assert first.fault == "reset" and first.header("Range") is None
    assert 0 < first.sent < info.size
    # Every byte the client acknowledged before the reset is kept; the retry asks for the rest.
    assert second.header("Range") == f"bytes={first.sent}-" and second.status == 206
    assert ingests(d) == []
    assert os.path.exists(os.path.join(d.root, "content", "blobs", "sha256", layer[7:]))


@pytest.mark.parametrize("where", ["blob", "manifest"])
def test_a_stalled_registry_is_given_up_on_naming_what_it_was_sending(daemon, proxy, test_images, where):
    info = test_images["busybox"]
    layer = info.layers[0]
    if where == "blob":
        proxy.arm("stall", path=layer, after=info.size // 3, times=None)  # a third, then silence
    else:
        proxy.arm("stall", path="/manifests/", after=None, times=None)  # not even the headers
    d = daemon(retries=1, timeout=1.0)
    ref = f"{proxy.host}/busybox:latest"
    err = refusal(d, ref)
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    assert ref in err.details()
    assert "for 1s" in err.details() and "[image] pull_timeout_seconds" in err.details()
    if where == "blob":
        # busybox has one layer: info.size is its size. Each try gets a third further.
        third = info.size // 3
        assert f"blob {layer}" in err.details() and f"at byte {2 * third} of {info.size}" in err.details()
        _, second = proxy.to(layer)
        assert second.header("Range") == f"bytes={third}-"  # the retry resumed
    else:
        assert "sent no answer" in err.details()
        assert len(proxy.to("/manifests/")) == 2
    assert left_behind(d) == []
    still_serving(d)
    proxy.disarm()
    assert d.pull(ref) == info.config_digest
    assert ingests(d) == []


@pytest.mark.parametrize("path", ["/manifests/", "/blobs/"])
def test_5xx_answers_are_retried_then_reported(daemon, proxy, path):
    proxy.arm("status", path=path, status=503, times=None)
    d = daemon(retries=2)
    ref = f"{proxy.host}/busybox:latest"
    err = refusal(d, ref)
    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    assert ref in err.details() and "503 Service Unavailable" in err.details()
    assert "fault proxy answers 503" in err.details()  # the registry's own words
    assert "gave up after 3 tries" in err.details()
    spoiled = [e for e in proxy.to(path) if e.fault == "status"]
    assert len(spoiled) == 3  # one try and two retries; the first blob fetched fails the pull
    assert left_behind(d) == []
    still_serving(d)


def test_5xx_answers_that_pass_are_ridden_out(daemon, proxy, test_images):
    info = test_images["busybox"]
    proxy.arm("status", path=info.layers[0], status=502, times=2)
    proxy.arm("status", path="/manifests/", status=500, times=1)
    d = daemon(retries=2)
    assert d.pull(f"{proxy.host}/busybox") == info.config_digest
    assert [e.status for e in proxy.to(info.layers[0])] == [502, 502, 200]
    assert ingests(d) == []


def test_a_blob_that_does_not_match_its_digest_is_data_loss(daemon, proxy, test_images):
    info = test_images["busybox"]
    layer = info.layers[0]
    proxy.arm("corrupt", path=layer)
    d = daemon()
    ref = f"{proxy.host}/busybox:latest"
    err = refusal(d, ref)
    assert err.code() == grpc.StatusCode.DATA_LOSS, err.details()
    assert ref in err.details() and f"blob {layer}" in err.details() and f"want {layer}" in err.details()
    assert len(proxy.to(layer)) == 1  # bytes that arrived whole and wrong are not fetched again
    assert left_behind(d) == []  # nothing committed to the content store
    proxy.disarm()
    assert d.pull(ref) == info.config_digest


@pytest.mark.parametrize("declared", [1 << 30, None], ids=["declared", "chunked"])
@pytest.mark.parametrize("which", ["tag", "index-entry"])
def test_a_huge_manifest_is_refused_before_it_is_read_whole(daemon, proxy, test_images, declared, which):
    if which == "tag":
        name, path = "busybox", "/manifests/latest"
    else:
        index = test_images["multiarch"]
        name, path = "multiarch", f"/manifests/{index.manifests['linux/amd64'].manifest_digest}"
    proxy.arm("endless", path=path, declare=declared)
    d = daemon()
    err = refusal(d, f"{proxy.host}/{name}:latest")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert f"{MANIFEST_LIMIT} byte limit of a manifest" in err.details()
    if declared is not None:
        assert f"is {declared} bytes" in err.details()
    [spoiled] = [e for e in proxy.to(path) if e.fault == "endless"]  # refused, not retried
    # The client hung up: what the proxy got out is at most the limit and what sockets buffer.
    assert spoiled.sent < 8 * MANIFEST_LIMIT, spoiled.sent
    assert left_behind(d) == []
    still_serving(d)
