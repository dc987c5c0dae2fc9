"""A layer unpacked while its blob downloads: the GrowingBlob a download feeds and its readers,
and the Puller unpacking behind a download it can hold half-way (an image source in memory
writing through a real IngestFile, as the registry client does)."""
from __future__ import annotations

import asyncio
import glob
import gzip
import hashlib
import io
import json
import os
import tarfile
import threading

import pytest

from image.compression import GZIP
from image.growing_blob import Abandoned, GrowingBlob
from image.ingest import IngestFile
from image.pull import Puller
from image.reference import parse_reference
from image.registry import RegistryError, Resolved
from image.store import ImageStore
from image.unpack import LayerError
from tests.fixtures.layers import compress, entry, tar_bytes

GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_in_thread(reader, size: int = 1 << 20):
    """Start reading everything from `reader` in a thread; returns (thread, result dict)."""
    out: dict = {"data": b""}

    def run():
        try:
            while piece := reader.read(size):
                out["data"] += piece
        except Exception as e:
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, out


# -- the blob and its readers ------------------------------------------------------------------


def test_a_reader_waits_at_the_written_end_and_ends_only_when_the_blob_is_verified(tmp_path):
    path = str(tmp_path / "ingest")
    with open(path, "wb") as f:
        f.write(b"first")
    blob = GrowingBlob()
    blob.opened(path, 5)
    t, out = read_in_thread(blob.reader())
    t.join(0.2)
    assert t.is_alive() and out["data"] == b"first"  # all that is written, and waiting for more
    with open(path, "ab") as f:
        f.write(b" second")
    blob.wrote(12)
    t.join(0.2)
    assert t.is_alive() and out["data"] == b"first second"
    blob.complete(path)
    t.join(5)
    assert not t.is_alive() and out == {"data": b"first second"}
    blob.close()


@pytest.mark.parametrize("how", ["restarted", "closed unverified", "stopped"])
def test_a_reader_gives_up_when_the_download_starts_over_fails_or_is_stopped(tmp_path, how):
    path = str(tmp_path / "ingest")
    with open(path, "wb") as f:
        f.write(b"old bytes")
    blob = GrowingBlob()
    blob.opened(path, 9)
    reader = blob.reader()
    t, out = read_in_thread(reader)
    t.join(0.2)
    assert t.is_alive() and out["data"] == b"old bytes"
    if how == "restarted":
        blob.restarted()
    elif how == "closed unverified":
        blob.close()
    else:
        reader.stop()
    t.join(5)
    assert not t.is_alive() and isinstance(out.get("error"), Abandoned)
    blob.close()


def test_a_reader_that_begins_after_the_download_reads_the_stored_blob(tmp_path):
    stored = str(tmp_path / "blob")
    with open(stored, "wb") as f:
        f.write(b"the whole blob")
    blob = GrowingBlob()  # the download never opened an ingest it announced (an archive's copy)
    blob.complete(stored)
    blob.close()
    reader = blob.reader()
    assert reader.read() == b"the whole blob"
    reader.close()


def test_a_blob_never_opened_and_closed_abandons_its_readers():
    blob = GrowingBlob()
    blob.close()
    with pytest.raises(Abandoned):
        blob.reader().read(10)


def test_an_ingest_restart_abandons_the_reader_before_it_truncates(tmp_path):
    async def main():
        blob = GrowingBlob()
        sink = await IngestFile.open(str(tmp_path / "ingest"), 100, blob)
        await sink.write(b"x" * (1 << 20))  # a whole buffer: handed to the writer
        await sink.write(b"y")
        await sink.flush()
        reader = blob.reader()
        assert len(reader.read(2 << 20)) == (1 << 20) + 1
        sink.restart()
        with pytest.raises(Abandoned):
            reader.read(10)
        sink.close()
        blob.close()
        reader.close()

    asyncio.run(main())


# -- the Puller unpacking behind the download --------------------------------------------------


class FollowedSource:
    """An image source whose blobs go through a real IngestFile, as the registry client's do.
    `hold[digest]` (an asyncio.Event) stops that blob's download half-way until it is set;
    `restart` writes half of every blob, starts over, then writes it whole; `fail` breaks off
    half-way."""

    def __init__(self):
        self.blobs: dict[str, bytes] = {}
        self.manifest = b""
        self.hold: dict[str, asyncio.Event] = {}
        self.halfway = asyncio.Event()
        self.restart = False
        self.fail = False

    def add(self, layers: list[bytes], diff_ids: list[str]) -> None:
        for data in layers:
            self.blobs[digest_of(data)] = data
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
        self.blobs[digest_of(config)] = config
        self.manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(config),
                       "size": len(config)},
            "layers": [{"mediaType": GZIP_LAYER, "digest": digest_of(x), "size": len(x)} for x in layers],
        }).encode()

    async def resolve(self, ref, creds=None) -> Resolved:
        return Resolved(ref, "memory://", digest_of(self.manifest), "application/vnd.oci.image.manifest.v1+json",
                        self.manifest)

    async def fetch_manifest(self, resolved, digest, creds=None) -> bytes:
        raise AssertionError("no indexes here")

    async def fetch_blob(self, resolved, digest, size, dest, creds=None, progress=None, follower=None) -> None:
        data = self.blobs[digest]
        half = len(data) // 2
        sink = await IngestFile.open(dest, size, follower)
        try:
            await sink.write(data[:half])
            await sink.flush()
            self.halfway.set()
            if digest in self.hold:
                await self.hold[digest].wait()
            if self.fail:
                raise RegistryError("pull: broke off half-way", None)
            if self.restart:
                sink.restart()
                await sink.write(data[:half])
            await sink.write(data[half:])
            await sink.flush()
            assert sink.digest() == digest
        finally:
            sink.close()


@pytest.fixture
def store(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("unpacking a layer sets its files' owners: needs root")
    s = ImageStore(str(tmp_path / "root"))
    yield s
    s.close()


def layer(files: int = 40, size: int = 200_000) -> tuple[bytes, str]:
    """A gzip layer of `files` files of random bytes, and its diff ID."""
    tar = tar_bytes(*(entry(f"f{i:03d}", data=os.urandom(size)) for i in range(files)))
    return compress(tar, GZIP), digest_of(tar)


def staged(store: ImageStore) -> list[str]:
    """Files in snapshot directories not yet committed."""
    return [p for d in glob.glob(os.path.join(store.snapshots.root, "new-*")) for p in os.listdir(d)]


def test_a_layer_is_unpacked_while_its_blob_still_downloads(store):
    source = FollowedSource()
    blob, diff_id = layer()
    source.add([blob], [diff_id])
    source.hold[digest_of(blob)] = asyncio.Event()

    async def main():
        pulling = asyncio.ensure_future(Puller(store, source).pull(parse_reference("example.com/app")))
        await asyncio.wait_for(source.halfway.wait(), 10)
        # The first half's files land while the second half is held back (the unpack reads 1 MiB
        # at a time: the held half is some 4 MB).
        for _ in range(500):
            if staged(store):
                break
            await asyncio.sleep(0.01)
        during = staged(store)
        assert not pulling.done()
        source.hold[digest_of(blob)].set()
        return during, await pulling

    during, record = asyncio.run(main())
    assert during and set(during) <= {f"f{i:03d}" for i in range(40)}
    assert record.chain_id == diff_id
    snap = store.snapshots.path(store.snapshots.get(diff_id))
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as t:
        for member in t.getmembers():
            with open(os.path.join(snap, member.name), "rb") as f:
                assert f.read() == t.extractfile(member).read()
    assert staged(store) == []


def test_a_download_that_starts_over_still_gives_the_right_snapshot(store):
    source = FollowedSource()
    source.restart = True
    blob, diff_id = layer()
    source.add([blob], [diff_id])
    record = asyncio.run(Puller(store, source).pull(parse_reference("example.com/app")))
    snap = store.snapshots.path(store.snapshots.get(record.chain_id))
    assert sorted(os.listdir(snap)) == [f"f{i:03d}" for i in range(40)]
    assert staged(store) == []


def test_a_failed_download_fails_the_pull_with_its_own_error_and_leaves_no_snapshot(store):
    source = FollowedSource()
    source.fail = True
    blob, diff_id = layer()
    source.add([blob], [diff_id])
    with pytest.raises(RegistryError, match="broke off half-way"):
        asyncio.run(Puller(store, source).pull(parse_reference("example.com/app")))
    assert staged(store) == [] and store.snapshots.get(diff_id) is None


def test_a_corrupt_layer_is_reported_once_its_blob_is_verified(store):
    source = FollowedSource()
    blob = compress(b"this is not a tar archive" * 100, GZIP)
    source.add([blob], [digest_of(b"x")])
    with pytest.raises(LayerError):
        asyncio.run(Puller(store, source).pull(parse_reference("example.com/app")))
    assert staged(store) == []
