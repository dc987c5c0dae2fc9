"""Bounds on what an image controls, end to end: a real cricketd pulling hostile images from a
real registry. Over a bound a pull fails with ResourceExhausted naming it, and leaves nothing;
under them a sparse layer stays sparse. ExecSync's answer is bounded to what kubelet takes."""
from __future__ import annotations

import os
import shutil
import tempfile

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from api.runtime.v1 import api_pb2_grpc as pb_grpc
from image.limits import CONFIG_LIMIT, MANIFEST_LIMIT
from image.registry import TOKEN_LIMIT
from tests.daemon import Cricketd, need_root, registry_config
from tests.fixtures import images
from tests.fixtures.proxy import Reply
from tests.pods import Pods, serving

pytestmark = pytest.mark.usefixtures("root_only")

KUBELET_MAX_MESSAGE = 16 << 20  # k8s.io/cri-client's maxMsgSize


@pytest.fixture(scope="module")
def root_only():
    need_root()


@pytest.fixture(scope="module")
def bound_images(registry):
    workdir = tempfile.mkdtemp(prefix="cricket-bounds-")
    try:
        built = images.build_bound_images(workdir)
        images.push_all(built, registry, ["bounds-sparse", "bounds-entries"])
        yield built
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def daemon(tmp_path, registry):
    made: list[Cricketd] = []

    def make(extra: str = "") -> Cricketd:
        d = Cricketd(str(tmp_path / f"d{len(made)}"), registry_config(registry) + extra)
        made.append(d)
        return d.start()

    yield make
    for d in made:
        d.stop()


def refusal(d: Cricketd, image: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        d.pull(image)
    return e.value


def left_behind(d: Cricketd) -> list[str]:
    """Images, blobs and snapshots (committed or half-made) the daemon holds."""
    blobs = os.listdir(os.path.join(d.root, "content", "blobs", "sha256"))
    snapshots = os.listdir(os.path.join(d.root, "snapshots"))
    return [i.id for i in d.list()] + blobs + snapshots


def test_a_sparse_layer_keeps_its_holes(daemon, registry, bound_images):
    d = daemon()
    d.pull(bound_images["bounds-sparse"].reference(registry))
    [path] = [os.path.join(dirpath, "sparse-bomb") for dirpath, _, files in os.walk(os.path.join(d.root, "snapshots"))
              if "sparse-bomb" in files]
    st = os.stat(path)
    assert st.st_size == images.SPARSE_BOMB_SIZE
    assert st.st_blocks * 512 <= 64 << 10, f"a {images.SPARSE_BOMB_SIZE} byte file takes {st.st_blocks * 512} on disk"
    with open(path, "rb") as f:
        assert os.pread(f.fileno(), 4, images.SPARSE_BOMB_SIZE - 4) == b"end\n"
    # The image's usage is what it holds on disk, not its holes.
    used = d.images.ImageFsInfo(pb.ImageFsInfoRequest()).image_filesystems[0].used_bytes.value
    assert used < 16 << 20


def test_a_layer_over_max_layer_size_fails_the_pull_and_leaves_nothing(daemon, registry, bound_images):
    d = daemon("[image]\nmax_layer_size = 536870912\n")
    err = refusal(d, bound_images["bounds-sparse"].reference(registry))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "'sparse-bomb' (1073741824 bytes)" in err.details() and "[image] max_layer_size" in err.details()
    assert left_behind(d) == []
    # The bound is per layer: busybox, whose layer is under it, still pulls.
    d.pull(bound_images["bounds-entries"].reference(registry))


def test_a_layer_over_max_layer_entries_fails_the_pull_and_leaves_nothing(daemon, registry, bound_images):
    d = daemon(f"[image]\nmax_layer_entries = {images.BOUND_ENTRIES}\n")
    err = refusal(d, bound_images["bounds-entries"].reference(registry))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"more than {images.BOUND_ENTRIES} entries" in err.details() and "max_layer_entries" in err.details()
    assert left_behind(d) == []


def serving_layout(built: images.ImageSet, info: images.ImageInfo):
    """A proxy hook that is a registry for `info`, from the layout: what skopeo will not push."""
    def hook(req, forward):
        if "/manifests/" in req.path:
            return Reply(200, [("Content-Type", info.media_type)], images.layout_blob(built, info.manifest_digest))
        if "/blobs/" in req.path:
            return Reply(200, [("Content-Type", "application/octet-stream")],
                         images.layout_blob(built, req.path.rsplit("/", 1)[1]))
        return forward()
    return hook


def test_a_config_over_its_bound_fails_the_pull_and_leaves_nothing(daemon, registry, proxies, bound_images):
    info = bound_images["bounds-config"]
    proxy = proxies(registry.url, hook=serving_layout(bound_images, info))
    d = daemon(f'[registries."{proxy.host}"]\ninsecure = true\n')
    err = refusal(d, f"{proxy.host}/bounds-config:latest")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"image config {info.config_digest}" in err.details() and f"{CONFIG_LIMIT} byte limit" in err.details()
    assert left_behind(d) == []


def test_a_manifest_over_its_bound_is_resource_exhausted(daemon, registry, proxies):
    def huge_manifest(req, forward):
        if "/manifests/" in req.path:
            return Reply(200, [("Content-Type", images.OCI_MANIFEST)], b" " * (MANIFEST_LIMIT + 1))
        return forward()

    proxy = proxies(registry.url, hook=huge_manifest)
    d = daemon(f'[registries."{proxy.host}"]\ninsecure = true\n')
    err = refusal(d, f"{proxy.host}/busybox:latest")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"over the {MANIFEST_LIMIT} byte limit of a manifest" in err.details()
    assert left_behind(d) == []


def test_a_token_answer_over_its_bound_is_resource_exhausted(daemon, registry, proxies):
    # The registry sends the client to a token server, which answers without end.
    def endless_token(req, forward):
        if req.path.startswith("/token"):
            return Reply(200, [("Content-Type", "application/json")],
                         b'{"token": "' + b"x" * (TOKEN_LIMIT + 1) + b'"}')
        if req.header("Authorization") is None:
            return Reply(401, [("WWW-Authenticate", f'Bearer realm="{proxy.url}/token",service="test"')])
        return forward()

    proxy = proxies(registry.url, hook=endless_token)
    d = daemon(f'[registries."{proxy.host}"]\ninsecure = true\n')
    err = refusal(d, f"{proxy.host}/busybox:latest")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"over {TOKEN_LIMIT} bytes, the limit of a token answer" in err.details()
    assert left_behind(d) == []


def test_exec_sync_output_is_bounded_to_what_kubelet_takes(registry, test_images, tmp_path):
    busybox = test_images["busybox"].reference(registry)
    with serving(str(tmp_path / "d"), registry_config(registry), [busybox]) as d:
        pods = Pods(d, str(tmp_path / "logs"))
        cid = pods.run(pods.run_pod(), busybox, ["sleep", "1000"])
        # kubelet's client: a 16 MiB answer at most.
        with grpc.insecure_channel("unix://" + d.socket,
                                   options=[("grpc.max_receive_message_length", KUBELET_MAX_MESSAGE)]) as channel:
            kubelet = pb_grpc.RuntimeServiceStub(channel)
            # 20 MiB on each stream, then an exit code the caller must still get.
            script = "for i in 1 2 3 4 5 6 7 8 9 10; do cat /bin/busybox; cat /bin/busybox >&2; done; exit 3"
            answer = kubelet.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", script], timeout=60))
        assert answer.exit_code == 3
        assert answer.ByteSize() <= KUBELET_MAX_MESSAGE
        assert len(answer.stdout) + len(answer.stderr) >= 15 << 20
        with open(images.BUSYBOX, "rb") as f:
            busybox_bytes = f.read()
        assert (busybox_bytes * 10).startswith(answer.stdout) and (busybox_bytes * 10).startswith(answer.stderr)
        assert "kept the first" in d.log() and "ExecSync limit" in d.log()
        pods.remove_all()
