"""The content store, snapshotter and image records, without a registry."""
import hashlib
import os

import pytest

from image.content import ContentError, sha256_digest
from image.metadata import ImageRecord
from image.snapshots import chain_ids
from image.store import ImageNotFound, ImageStore


def blob(store: ImageStore, data: bytes) -> str:
    digest = sha256_digest(data)
    store.content.write(digest, data)
    return digest


def snapshot(store: ImageStore, chain_id: str, parent: str = "", name: str = "f") -> str:
    new = store.snapshots.new_dir()
    with open(os.path.join(new, name), "w") as f:
        f.write(chain_id)
    store.snapshots.commit(new, chain_id, parent, chain_id, 10, 1)
    return chain_id


def image(store: ImageStore, config: bytes, names, chain_id="", extra_blobs=()):
    cfg = blob(store, config)
    store.metadata.put_image(
        ImageRecord(cfg, "sha256:" + "m" * 64, "application/vnd.oci.image.manifest.v1+json", {}, chain_id, 1, 0.0),
        [(n, "@" in n) for n in names],
        [cfg, *extra_blobs],
    )
    return cfg


@pytest.fixture
def store(tmp_path):
    s = ImageStore(str(tmp_path))
    yield s
    s.close()


def test_chain_ids_follow_the_oci_definition():
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    want2 = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    assert chain_ids([a, b]) == [a, want2]
    assert chain_ids([]) == []


def test_content_refuses_bytes_that_do_not_match(store):
    with pytest.raises(ContentError, match="hashes to"):
        store.content.write("sha256:" + "0" * 64, b"hello")
    assert store.content.digests() == []
    with pytest.raises(ContentError, match="malformed digest"):
        store.content.path("md5:abc")


def test_content_roundtrip_and_read_of_missing(store):
    d = blob(store, b"hello")
    assert store.content.read(d) == b"hello"
    with pytest.raises(ContentError, match="not in the content store"):
        store.content.read("sha256:" + "1" * 64)


def test_lookup_by_tag_digest_and_short_id(store):
    cfg = image(store, b'{"a":1}', ["docker.io/library/busybox:latest", "docker.io/library/busybox@sha256:" + "c" * 64])
    assert store.lookup("busybox")[0].id == cfg
    assert store.lookup(cfg)[0].id == cfg
    assert store.lookup(cfg[7:19])[0].id == cfg
    assert store.lookup("busybox@sha256:" + "c" * 64)[0].id == cfg
    with pytest.raises(ImageNotFound):
        store.lookup("alpine")
    with pytest.raises(ImageNotFound):
        store.lookup("sha256:" + "e" * 64)


def test_a_full_id_of_no_image_is_not_found_not_a_bad_reference(store):
    # kubelet and critest remove and ask after images by bare ID: gone is an answer, not an error
    image(store, b'{"c":1}', ["docker.io/library/c:1"])
    unknown = "f" * 64
    with pytest.raises(ImageNotFound, match=unknown):
        store.lookup(unknown)
    assert store.find(unknown) is None
    assert store.remove(unknown) is False


def test_removing_one_of_two_tags_only_untags(store):
    cfg = image(store, b'{"b":1}', ["docker.io/library/a:1", "docker.io/library/a:2"])
    assert store.remove("a:1") is False  # nothing to collect
    rec = store.lookup(cfg)[0]
    assert rec.repo_tags == ["docker.io/library/a:2"]
    assert store.content.has(cfg)
    assert store.remove("a:2") is True
    store.collect_garbage()
    assert store.find(cfg) is None
    assert not store.content.has(cfg)


def test_gc_keeps_shared_snapshots_and_blobs(store):
    base = snapshot(store, "sha256:" + "1" * 64)
    top_a = snapshot(store, "sha256:" + "2" * 64, base)
    top_b = snapshot(store, "sha256:" + "3" * 64, base)
    shared = blob(store, b"shared layer")
    a = image(store, b'{"img":"a"}', ["docker.io/library/a:1"], top_a, [shared])
    image(store, b'{"img":"b"}', ["docker.io/library/b:1"], top_b, [shared])
    store.remove(a)
    store.collect_garbage()
    assert store.snapshots.get(base) and store.snapshots.get(top_b)
    assert store.snapshots.get(top_a) is None
    assert store.content.has(shared)
    store.remove("b:1")
    store.collect_garbage()
    assert store.metadata.snapshots() == []
    assert store.content.digests() == []
    assert os.listdir(store.snapshot_root) == []


def test_gc_spares_what_a_pull_holds(store):
    held = snapshot(store, "sha256:" + "4" * 64)
    d = blob(store, b"being pulled")
    store.collect_garbage(in_flight={held, d})
    assert store.snapshots.get(held) and store.content.has(d)
    store.collect_garbage()
    assert store.snapshots.get(held) is None and not store.content.has(d)


def test_sweep_removes_what_a_crash_left(store):
    kept = snapshot(store, "sha256:" + "5" * 64)
    half_unpacked = store.snapshots.new_dir()
    os.makedirs(os.path.join(store.snapshot_root, "999"))  # renamed in, row never committed
    store.snapshots.sweep()
    assert sorted(os.listdir(store.snapshot_root)) == [str(store.snapshots.get(kept).id)]
    assert not os.path.exists(half_unpacked)


def test_usage_counts_snapshots_and_blobs(store):
    snapshot(store, "sha256:" + "6" * 64)
    blob(store, b"12345")
    assert store.usage() == (10 + 5, 1 + 1)
