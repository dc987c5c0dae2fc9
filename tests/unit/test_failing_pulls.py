"""Pulls that fail, without a registry or root: the Puller over an image source in memory and an
image store in a temporary directory; the registry client's retries with the sleeping recorded;
a full disk under the content store, the snapshotter and the image database; and the gRPC status
and words each failure gets. (tests/test_registry_faults.py and tests/test_out_of_disk.py do
the same end to end.)"""
from __future__ import annotations

import asyncio
import builtins
import errno
import hashlib
import json
import os
import sqlite3

import grpc
import pytest

from cri.errors import message_for, status_for
from image import content as content_module
from image import registry as registry_module
from image.metadata import ImageRecord, Metadata
from image.pull import Puller
from image.reference import parse_reference
from image.registry import DigestMismatchError, RegistryClient, RegistryError, Resolved
from image.snapshots import Snapshotter
from image.space import OutOfSpace, room_for
from image.store import ImageStore

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Source:
    """An ImageSource serving images from memory. `hooks[digest]` is an async fn(dest) run in
    place of that blob's download: it may write part of it, wait, or raise."""

    def __init__(self):
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}
        self.hooks: dict = {}

    def add(self, repository: str, layers: list[bytes]) -> list[str]:
        for data in layers:
            self.blobs[digest_of(data)] = data
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [digest_of(x) for x in layers]}}).encode()
        self.blobs[digest_of(config)] = config
        self.manifests[repository] = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(config),
                       "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest_of(x),
                        "size": len(x)} for x in layers],
        }).encode()
        return [digest_of(x) for x in layers]

    async def resolve(self, ref, creds=None) -> Resolved:
        data = self.manifests[ref.repository]
        return Resolved(ref, "memory://", digest_of(data), OCI_MANIFEST, data)

    async def fetch_manifest(self, resolved, digest, creds=None) -> bytes:
        raise AssertionError("no indexes here")

    async def fetch_blob(self, resolved, digest, size, dest, creds=None, progress=None, follower=None) -> None:
        hook = self.hooks.get(digest)
        if hook is not None:
            await hook(dest)
            return
        with open(dest, "wb") as f:
            f.write(self.blobs[digest])


@pytest.fixture
def store(tmp_path):
    s = ImageStore(str(tmp_path / "root"))
    yield s
    s.close()


def ingests(store: ImageStore) -> list[str]:
    return os.listdir(os.path.join(store.content.root, "ingest"))


def partly(data: bytes, error: BaseException):
    """A hook that writes the first half of `data`, then fails with `error`."""
    async def hook(dest):
        with open(dest, "wb") as f:
            f.write(data[: len(data) // 2])
        raise error
    return hook


# -- what a failed pull leaves -------------------------------------------------------------


def test_a_failed_pull_leaves_no_partial_download(store):
    source = Source()
    [layer] = source.add("example.com/app", [b"layer bytes " * 1000])
    source.hooks[layer] = partly(source.blobs[layer], RegistryError("pull example.com/app: broke off", None))
    with pytest.raises(RegistryError):
        asyncio.run(Puller(store, source).pull(parse_reference("example.com/app")))
    assert ingests(store) == []
    assert store.content.digests() == [] and store.list() == []


@pytest.mark.parametrize("pullers", [1, 2], ids=["one-puller", "a-load's-puller-beside"])
def test_a_failed_pull_spares_a_download_another_pull_still_waits_for(store, pullers):
    source = Source()
    [shared] = source.add("example.com/one", [b"shared layer " * 1000])
    shared_again, broken = source.add("example.com/two", [b"shared layer " * 1000, b"broken layer " * 1000])
    assert shared_again == shared
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(dest):
        with open(dest, "wb") as f:
            f.write(source.blobs[shared][:100])
        started.set()
        await release.wait()
        raise RegistryError("pull: given up", None)

    source.hooks[shared] = slow
    source.hooks[broken] = partly(source.blobs[broken], RegistryError("pull example.com/two: broke off", None))

    async def main():
        puller = Puller(store, source)
        # A load pulls from its archive through a Puller of its own, over the same store.
        other = puller if pullers == 1 else Puller(store, source)
        one = asyncio.ensure_future(puller.pull(parse_reference("example.com/one")))
        await started.wait()
        with pytest.raises(RegistryError, match="broke off"):
            await other.pull(parse_reference("example.com/two"))
        # The second pull failed; the first still waits on the shared download, whose file stays.
        assert ingests(store) == [shared[7:]]
        release.set()
        with pytest.raises(RegistryError, match="given up"):
            await one

    asyncio.run(main())
    assert ingests(store) == []


def test_two_pullers_over_one_store_share_a_download(store):
    """A load's Puller and the daemon's: one download of a blob both need, into its one ingest
    file (two would write the same file at once)."""
    source = Source()
    [layer] = source.add("example.com/app", [b"layer bytes " * 1000])
    calls, release = [], asyncio.Event()

    async def slow(dest):
        calls.append(dest)
        await release.wait()
        raise RegistryError("pull example.com/app: given up", None)

    source.hooks[layer] = slow

    async def main():
        ref = parse_reference("example.com/app")
        pulls = [asyncio.ensure_future(Puller(store, source).pull(ref)) for _ in range(2)]
        while not calls:
            await asyncio.sleep(0)
        for _ in range(10):
            await asyncio.sleep(0)  # the second pull reaches the layer too
        release.set()
        return await asyncio.gather(*pulls, return_exceptions=True)

    results = asyncio.run(main())
    assert [type(r) for r in results] == [RegistryError, RegistryError]
    assert len(calls) == 1
    assert ingests(store) == []


# -- a full disk ----------------------------------------------------------------------------


def test_a_download_out_of_space_is_out_of_space_naming_the_ingest_file(store):
    source = Source()
    [layer] = source.add("example.com/app", [b"layer bytes " * 1000])
    source.hooks[layer] = partly(source.blobs[layer], OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OutOfSpace) as e:
        asyncio.run(Puller(store, source).pull(parse_reference("example.com/app")))
    path = store.content.ingest_path(layer)
    assert str(e.value).startswith(f"pull example.com/app:latest: no space left on device writing blob {layer} "
                                   f"at {path}")
    assert e.value.path == path and e.value.errno == errno.ENOSPC
    assert status_for(e.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ingests(store) == [] and store.content.digests() == []


def test_a_small_blob_out_of_space_leaves_no_ingest_file(store, monkeypatch):
    class Full:
        def __init__(self, path):
            self._f = builtins.open(path, "wb")

        def write(self, data):
            self._f.write(data[:10])
            self._f.flush()
            raise OSError(errno.EDQUOT, "Disk quota exceeded")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    monkeypatch.setattr(content_module, "open", lambda path, mode: Full(path), raising=False)
    data = b'{"schemaVersion": 2}'
    with pytest.raises(OutOfSpace, match="disk quota exceeded writing blob") as e:
        store.content.write(digest_of(data), data)
    assert e.value.errno == errno.EDQUOT
    assert ingests(store) == [] and store.content.digests() == []


def test_room_for_names_the_path_and_keeps_other_errors(tmp_path):
    with pytest.raises(OutOfSpace) as e, room_for("writing x", "/some/where"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert str(e.value) == ("no space left on device writing x at /some/where; "
                            "free space on its filesystem and try again")
    with pytest.raises(OutOfSpace) as again, room_for("writing y", "/else"):
        raise e.value  # already named: passed on as it is
    assert again.value is e.value
    with pytest.raises(OSError) as other, room_for("writing x", "/some/where"):
        raise OSError(errno.EIO, "Input/output error")
    assert not isinstance(other.value, OutOfSpace)


def full_database(md: Metadata) -> None:
    """The database may grow no more: SQLITE_FULL on the next page it needs, as on a full disk."""
    pages = md._db.execute("PRAGMA page_count").fetchone()[0]
    md._db.execute(f"PRAGMA max_page_count = {pages}")


def record(n: int) -> ImageRecord:
    return ImageRecord(f"sha256:{n:064x}", "sha256:" + "b" * 64, OCI_MANIFEST, {"pad": "x" * 50_000}, "", 1, 0.0)


def test_a_full_image_database_is_out_of_space_and_the_next_write_works(tmp_path):
    md = Metadata(str(tmp_path / "images.db"))
    try:
        full_database(md)
        # Before: SQLite had already rolled the transaction back, and the ROLLBACK after it
        # failed with "cannot rollback - no transaction is active", hiding the full disk.
        with pytest.raises(OutOfSpace) as e:
            md.put_image(record(1), [("example.com/app:1", False)], [])
        assert e.value.path == md.path and md.path in str(e.value)
        assert status_for(e.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert not md._db.in_transaction and md.images() == []
        md._db.execute("PRAGMA max_page_count = 1073741823")
        md.put_image(record(2), [("example.com/app:2", False)], [])
        assert [r.repo_tags for r in md.images()] == [["example.com/app:2"]]
    finally:
        md.close()


def test_a_snapshot_whose_row_is_not_committed_leaves_no_directory(tmp_path):
    class Refusing:
        """Metadata whose transaction fails after the directory was placed (a COMMIT refused)."""

        def add_snapshot(self, chain_id, parent, diff_id, size, inodes, place):
            place(7)
            raise OutOfSpace("no space left on device recording to images.db", "images.db")

    snapshots = Snapshotter(str(tmp_path / "snapshots"), Refusing())  # type: ignore[arg-type]
    new = snapshots.new_dir()
    with open(os.path.join(new, "file"), "w") as f:
        f.write("data")
    with pytest.raises(OutOfSpace):
        snapshots.commit(new, "sha256:" + "c" * 64, "", "sha256:" + "c" * 64, 4, 1)
    assert os.listdir(snapshots.root) == []


# -- retries -------------------------------------------------------------------------------


def test_transient_failures_back_off_doubling_then_say_how_many_tries(monkeypatch):
    slept: list[float] = []

    async def sleep(delay):
        slept.append(delay)

    monkeypatch.setattr(registry_module.asyncio, "sleep", sleep)
    calls = []

    async def attempt():
        calls.append(1)
        raise registry_module._TransientError("pull x: blob y: 503 Service Unavailable", 503, "x",
                                              "blob y: 503 Service Unavailable")

    client = RegistryClient(max_retries=3)
    with pytest.raises(RegistryError) as e:
        asyncio.run(client._retrying(attempt, 4))
    assert len(calls) == 4 and slept == [0.2, 0.4, 0.8]
    assert str(e.value) == "pull x: blob y: 503 Service Unavailable (gave up after 4 tries; [image] pull_retries)"
    assert e.value.detail.endswith("(gave up after 4 tries; [image] pull_retries)") and e.value.status == 503
    assert status_for(e.value) == grpc.StatusCode.UNAVAILABLE


def test_a_registry_error_noted_keeps_its_class_and_fields():
    e = DigestMismatchError("pull x: got y", 200, "x", "got y")
    noted = e.noted(" (and more)")
    assert type(noted) is DigestMismatchError and str(noted) == "pull x: got y (and more)"
    assert (noted.status, noted.reference, noted.detail) == (200, "x", "got y (and more)")
    assert str(e) == "pull x: got y"


# -- gRPC codes and words -------------------------------------------------------------------


@pytest.mark.parametrize("status,code", [
    (500, grpc.StatusCode.UNAVAILABLE), (502, grpc.StatusCode.UNAVAILABLE), (503, grpc.StatusCode.UNAVAILABLE),
    (504, grpc.StatusCode.UNAVAILABLE), (408, grpc.StatusCode.UNAVAILABLE), (None, grpc.StatusCode.UNAVAILABLE),
    (429, grpc.StatusCode.RESOURCE_EXHAUSTED), (404, grpc.StatusCode.NOT_FOUND), (418, grpc.StatusCode.UNKNOWN),
])
def test_registry_failures_map_to_codes(status, code):
    assert status_for(RegistryError("pull x: no", status)) == code


def test_a_bare_full_disk_from_any_verb_is_resource_exhausted_with_its_words():
    bare = OSError(errno.ENOSPC, "No space left on device", "/var/lib/cricket/containers/abc/upper")
    assert status_for(bare) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert message_for(bare, "CreateContainer") == (
        "CreateContainer: No space left on device at /var/lib/cricket/containers/abc/upper; "
        "free space on that filesystem (the root or state directory's) and try again")
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    assert status_for(full) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert message_for(full, "RunPodSandbox").startswith("RunPodSandbox: database or disk is full; free space")
    assert status_for(OSError(errno.EIO, "Input/output error")) is None  # a bug or a broken disk: INTERNAL
