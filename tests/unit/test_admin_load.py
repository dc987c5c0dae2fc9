"""`cricket load` in the daemon (cri/admin.py, Load): the stream is bounded on disk, the archive is
read off the event loop, and the daemon's layer bounds hold for a loaded image as for a pulled one.

Admin.Load runs here in-process against a real image store in a temporary directory, with a
gRPC context that records how the call was aborted."""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
import threading
import types

import grpc
import pytest

from api.admin.v1 import admin_pb2 as apb
from cri import admin as admin_module
from cri.admin import Admin, archive_limit
from image.limits import ImageLimits
from image.pull import Puller
from image.store import ImageStore


class Context:
    """What Load needs of a grpc.aio.ServicerContext: abort(), recorded."""

    def __init__(self):
        self.code: grpc.StatusCode | None = None
        self.details = ""

    async def abort(self, code, details):
        self.code, self.details = code, details
        raise grpc.aio.AbortError()


def _tar(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


def docker_archive(tags=("localhost/loaded-test:1",), file_size: int = 4096) -> bytes:
    layer = _tar({"data": b"x" * file_size})
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": list(tags), "Layers": [diff_id[7:] + ".tar"]}]
    return _tar({"manifest.json": json.dumps(manifest).encode(), config_name: config, diff_id[7:] + ".tar": layer})


@pytest.fixture
def made(tmp_path):
    """make(limits=None, max_archive_size=None) -> Admin over a fresh store; its scratch dir."""
    stores = []

    def make(limits: ImageLimits | None = None, max_archive_size: int | None = None) -> Admin:
        store = ImageStore(str(tmp_path / f"root{len(stores)}"))
        stores.append(store)
        rt = types.SimpleNamespace(config=types.SimpleNamespace(state_dir=str(tmp_path / "state")))
        return Admin(rt, store, Puller(store, None, limits=limits), None, max_archive_size)  # type: ignore[arg-type]

    yield make
    for store in stores:
        store.close()


def load(admin: Admin, data: bytes, chunk: int = 1 << 16) -> tuple[Context, apb.LoadResponse | None]:
    context = Context()

    async def chunks():
        for at in range(0, len(data), chunk):
            yield apb.Chunk(data=data[at:at + chunk])

    async def call():
        try:
            return await admin.Load(chunks(), context)
        except grpc.aio.AbortError:
            return None

    return context, asyncio.run(call())


def test_an_archive_over_the_bound_is_resource_exhausted_and_removed(made):
    admin = made(max_archive_size=100_000)
    context, response = load(admin, b"\0" * 300_000, chunk=10_000)
    assert response is None and context.code == grpc.StatusCode.RESOURCE_EXHAUSTED, context.details
    assert "over 100000 bytes" in context.details
    assert os.listdir(admin.scratch) == []  # the partial file went with its directory


def test_the_bound_follows_the_layer_bound():
    assert archive_limit(ImageLimits()) == 4 * ((64 << 30) + (1 << 30))
    assert archive_limit(ImageLimits(max_layer_size=1 << 30)) == 4 * (2 << 30)


def test_the_daemons_layer_bounds_hold_for_a_loaded_image(made):
    admin = made(limits=ImageLimits(max_layer_size=1000))
    context, response = load(admin, docker_archive(file_size=4096))
    assert response is None and context.code == grpc.StatusCode.RESOURCE_EXHAUSTED, context.details
    assert "max_layer_size" in context.details
    assert os.listdir(admin.scratch) == []


def test_the_archive_is_read_off_the_event_loop(made, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("unpacking a layer sets its files' owners: needs root")
    threads = []
    real = admin_module.ArchiveSource

    def source(root):
        threads.append(threading.current_thread())
        return real(root)

    monkeypatch.setattr(admin_module, "ArchiveSource", source)
    admin = made()
    context, response = load(admin, docker_archive())
    assert response is not None, context.details
    assert [i.split(" ")[0] for i in response.images] == ["localhost/loaded-test:1"]
    assert threads and threads[0] is not threading.main_thread()


def test_a_name_that_is_no_reference_is_invalid_argument(made):
    admin = made()
    context, response = load(admin, docker_archive(tags=["localhost/UPPER:1"]))
    assert response is None and context.code == grpc.StatusCode.INVALID_ARGUMENT, context.details
    assert "UPPER" in context.details
