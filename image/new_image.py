"""Images made on this node — built, committed or imported — rather than pulled.

A new layer is an uncompressed tar (its digest is its diff ID) that goes into the content
store as it is, and is unpacked once into a snapshot as a pulled layer is, so a container
of the new image stacks it like any other. An image is its config and an OCI manifest
written as blobs, and a record naming them.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import BinaryIO, cast

from image.limits import ImageLimits
from image.manifest import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, parse_manifest
from image.metadata import ImageRecord
from image.store import ImageStore
from image.unpack import LayerError, unpack_layer
from linux import libc

_CHUNK = 1 << 20


class HashingWriter:
    """A file being written whose sha256 is taken on the way: a layer's digest without a second read."""

    def __init__(self, out: BinaryIO):
        self._out = out
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self._hash.update(data)
        self.size += len(data)
        return self._out.write(data)

    def flush(self) -> None:
        self._out.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def next_chain_id(parent: str, diff_id: str) -> str:
    """The chain ID of a layer `diff_id` on the chain `parent` ("" for a first layer)."""
    if not parent:
        return diff_id
    return "sha256:" + hashlib.sha256(f"{parent} {diff_id}".encode()).hexdigest()


@dataclass
class Layer:
    descriptor: dict  # as the manifest lists it
    diff_id: str
    chain_id: str


def add_layer(store: ImageStore, tar_path: str, digest: str, parent_chain: str, limits: ImageLimits) -> Layer:
    """Move the uncompressed layer tar at `tar_path` (on the content store's filesystem; its
    sha256 `digest`) into the content store and unpack it into a snapshot on `parent_chain`.
    Blocking: run it in a thread. The caller holds leases on the digest and chain ID."""
    size = os.stat(tar_path).st_size
    if store.content.has(digest):
        os.unlink(tar_path)
    else:
        with open(tar_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tar_path, store.content.path(digest))
    chain_id = next_chain_id(parent_chain, digest)
    if store.snapshots.get(chain_id) is None:
        new_dir = store.snapshots.new_dir()
        try:
            result = unpack_layer(store.content.path(digest), OCI_LAYER, new_dir, limits)
            if result.diff_id != digest:
                raise LayerError(f"layer {digest} changed on its way into the content store")
            libc.syncfs(new_dir)
            store.snapshots.commit(new_dir, chain_id, parent_chain, digest, result.size, result.inodes)
        except BaseException:
            store.snapshots.discard(new_dir)
            raise
    return Layer({"mediaType": OCI_LAYER, "digest": digest, "size": size}, digest, chain_id)


def base_layers(store: ImageStore, rec: ImageRecord) -> list[dict]:
    """The layer descriptors of an image's manifest, as stored: a new image on it lists them as they are."""
    doc = parse_manifest(store.content.read(rec.manifest_digest), rec.manifest_media_type)
    return [{"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
            for layer in getattr(doc, "layers", [])]


def _blob(store: ImageStore, doc: dict) -> tuple[str, int]:
    data = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store.content.write(digest, data)
    return digest, len(data)


def record_image(store: ImageStore, config: dict, layers: list[dict], chain_id: str, names: list[str]) -> ImageRecord:
    """Write `config` and a manifest of `layers` as blobs and record the image under `names`
    (normalised references with tags). An image with the same config is the same image: it
    only gains the names."""
    config_digest, config_size = _blob(store, config)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
                "layers": layers}
    manifest_digest, manifest_size = _blob(store, manifest)
    rec = ImageRecord(id=config_digest, manifest_digest=manifest_digest, manifest_media_type=OCI_MANIFEST,
                      config=config, chain_id=chain_id,
                      size=manifest_size + config_size + sum(layer["size"] for layer in layers),
                      created=time.time())
    blobs = [manifest_digest, config_digest, *(layer["digest"] for layer in layers)]
    store.metadata.put_image(rec, [(name, False) for name in names], blobs)
    return cast(ImageRecord, store.metadata.image(rec.id))  # just put


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
