"""Image archives, both ways: docker-archive and OCI image layout archives.

docker-archive is what `docker save` writes and `docker load` reads: a tar with
manifest.json (per image: its config file, its names, its layer files), each
config as <id>.json and each layer as an uncompressed tar, <diff ID>.tar. An
OCI archive is an image layout in a tar: oci-layout, index.json naming each
image's manifest, and blobs/sha256/<hex> holding the manifests, configs and
layers exactly as stored, so an image comes back with the same manifest digest.

Loading goes through the puller, with an ArchiveSource standing in for the
registry: the images are unpacked, verified and recorded the way pulls are.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from typing import BinaryIO

from image.compression import GZIP, ZSTD, open_decompressed, sniff
from image.manifest import (
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_ZSTD,
    Index,
    parse_manifest,
)
from image.metadata import ImageRecord
from image.reference import Reference, parse_reference
from image.registry import Resolved
from image.store import ImageStore

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"  # the OCI layout's name of an image (often just its tag)
FULL_NAME = "io.containerd.image.name"  # containerd's (and ours): the full reference
UNNAMED_REPOSITORY = "localhost/loaded"  # for an image an archive names by tag alone
_CHUNK = 1 << 20


class ArchiveError(Exception):
    """The archive is not one of the two formats, or is inconsistent."""


# -- writing ---------------------------------------------------------------------------------


def _info(name: str, size: int) -> tarfile.TarInfo:
    # Fixed owner, mode and time: the same images make the same archive.
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_info(name, len(data)), io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, name: str, path: str) -> None:
    with open(path, "rb") as f:
        tar.addfile(_info(name, os.fstat(f.fileno()).st_size), f)


def _manifest(store: ImageStore, rec: ImageRecord):
    doc = parse_manifest(store.content.read(rec.manifest_digest), rec.manifest_media_type)
    if isinstance(doc, Index):
        raise ArchiveError(f"image {rec.id}: its manifest is an index")
    return doc


def save(store: ImageStore, images: list[tuple[ImageRecord, list[str]]], docker: bool, out: BinaryIO,
         scratch: str) -> None:
    """Write `images` (each with the names to give it) to `out` as a docker-archive, or as an OCI
    archive when not `docker`. Layers are decompressed for a docker-archive in `scratch`."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        if docker:
            _save_docker(store, images, tar, scratch)
        else:
            _save_oci(store, images, tar)


def _save_docker(store: ImageStore, images, tar: tarfile.TarFile, scratch: str) -> None:
    entries, written = [], set()
    for rec, names in images:
        doc = _manifest(store, rec)
        config_name = rec.id.split(":", 1)[1] + ".json"
        if config_name not in written:
            _add_bytes(tar, config_name, store.content.read(rec.id))
            written.add(config_name)
        layer_names = []
        for layer, diff_id in zip(doc.layers, rec.config["rootfs"]["diff_ids"]):
            name = diff_id.split(":", 1)[1] + ".tar"
            layer_names.append(name)
            if name in written:
                continue
            written.add(name)
            if layer.media_type == DOCKER_LAYER or layer.media_type.endswith(".tar"):
                _add_file(tar, name, store.content.path(layer.digest))
                continue
            # The tar header needs the size first: decompress into a file, then add it.
            plain = os.path.join(scratch, name)
            with open_decompressed(store.content.path(layer.digest), layer.media_type) as src, \
                    open(plain, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
            try:
                _add_file(tar, name, plain)
            finally:
                os.unlink(plain)
        entries.append({"Config": config_name, "RepoTags": [n for n in names if "@" not in n],
                        "Layers": layer_names})
    _add_bytes(tar, "manifest.json", json.dumps(entries).encode())


def _save_oci(store: ImageStore, images, tar: tarfile.TarFile) -> None:
    _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
    manifests, written = [], set()
    for rec, names in images:
        doc = _manifest(store, rec)
        for digest in (rec.manifest_digest, rec.id, *(layer.digest for layer in doc.layers)):
            if digest not in written:
                written.add(digest)
                _add_file(tar, "blobs/" + digest.replace(":", "/", 1), store.content.path(digest))
        descriptor = {"mediaType": rec.manifest_media_type, "digest": rec.manifest_digest,
                      "size": store.content.size(rec.manifest_digest)}
        tags = [n for n in names if "@" not in n]
        for name in tags:
            ref = parse_reference(name)
            manifests.append({**descriptor, "annotations": {FULL_NAME: name, REF_NAME: ref.tag or "latest"}})
        if not tags:
            manifests.append(descriptor)
    _add_bytes(tar, "index.json", json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                              "manifests": manifests}).encode())


# -- reading ---------------------------------------------------------------------------------


def _sha256_file(path: str) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


class ArchiveSource:
    """An extracted archive, read as a registry would be: the puller's client for a load."""

    def __init__(self, root: str):
        self.root = root
        self.blobs: dict[str, str] = {}  # digest -> file
        self.manifests: dict[str, tuple[str, bytes]] = {}  # digest -> (media type, bytes), made up ones too
        self.images: list[tuple[str, str]] = []  # (name, manifest digest)
        if os.path.exists(os.path.join(root, "oci-layout")):
            self._read_oci()
        elif os.path.exists(os.path.join(root, "manifest.json")):
            self._read_docker()
        else:
            raise ArchiveError("neither an OCI image layout (oci-layout, index.json) "
                               "nor a docker-archive (manifest.json)")

    def _path(self, name: str) -> str:
        path = os.path.normpath(os.path.join(self.root, name))
        if not path.startswith(self.root + os.sep) or not os.path.isfile(path):
            raise ArchiveError(f"the archive has no file {name!r}")
        return path

    def _json(self, name: str):
        try:
            with open(self._path(name), "rb") as f:
                return json.load(f)
        except ValueError as e:
            raise ArchiveError(f"{name} is not JSON: {e}") from None

    def _read_oci(self) -> None:
        index = self._json("index.json")
        for entry in index.get("manifests") or ():
            digest, media_type = entry.get("digest", ""), entry.get("mediaType", "")
            with open(self._blob_path(digest), "rb") as f:
                self.manifests[digest] = (media_type, f.read())
            annotations = entry.get("annotations") or {}
            name = annotations.get(FULL_NAME) or annotations.get(REF_NAME) or ""
            self.images.append((_full_name(name, digest), digest))

    def _blob_path(self, digest: str) -> str:
        if ":" not in digest:
            raise ArchiveError(f"bad digest {digest!r} in the archive")
        path = self._path("blobs/" + digest.replace(":", "/", 1))
        self.blobs[digest] = path
        return path

    def _read_docker(self) -> None:
        for entry in self._json("manifest.json"):
            config_path = self._path(entry["Config"])
            config_digest, config_size = _sha256_file(config_path)
            self.blobs[config_digest] = config_path
            layers = []
            for name in entry.get("Layers") or ():
                path = self._path(name)
                digest, size = _sha256_file(path)
                self.blobs[digest] = path
                with open(path, "rb") as f:
                    kind = sniff(f.read(8))
                media_type = {GZIP: DOCKER_LAYER_GZIP, ZSTD: DOCKER_LAYER_ZSTD}.get(kind, DOCKER_LAYER)
                layers.append({"mediaType": media_type, "size": size, "digest": digest})
            # A docker-archive has no manifest: one is made, as docker load makes its own.
            manifest = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                                   "config": {"mediaType": DOCKER_CONFIG, "size": config_size,
                                              "digest": config_digest},
                                   "layers": layers}).encode()
            digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
            self.manifests[digest] = (DOCKER_MANIFEST, manifest)
            for name in entry.get("RepoTags") or [""]:
                self.images.append((_full_name(name, config_digest), digest))

    # The puller's client interface.

    async def resolve(self, ref: Reference, creds=None) -> Resolved:
        digest = ref.digest or next(d for name, d in self.images if name == str(ref))
        media_type, data = self.manifests[digest]
        return Resolved(reference=ref, endpoint="archive", digest=digest, media_type=media_type, data=data)

    async def fetch_manifest(self, resolved: Resolved, digest: str, creds=None) -> bytes:
        if digest in self.manifests:
            return self.manifests[digest][1]
        with open(self._blob_path(digest), "rb") as f:
            return f.read()

    async def fetch_blob(self, resolved: Resolved, digest: str, size: int, dest: str, creds=None,
                         progress=None) -> None:
        src = self.blobs.get(digest) or self._blob_path(digest)
        h = hashlib.sha256()
        with open(src, "rb") as f, open(dest, "wb") as out:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
        if "sha256:" + h.hexdigest() != digest:
            os.unlink(dest)
            raise ArchiveError(f"blob {digest} in the archive does not match its digest")


def _full_name(name: str, digest: str) -> str:
    """The name an image gets in the store: the archive's full reference; a bare tag goes
    under UNNAMED_REPOSITORY, and no name at all under its digest's short form."""
    if not name:
        return f"{UNNAMED_REPOSITORY}:{digest.split(':', 1)[1][:12]}"
    if "/" not in name and ":" not in name and "." not in name:
        return f"{UNNAMED_REPOSITORY}:{name}"
    return str(parse_reference(name))


def extract(archive: BinaryIO, dest: str) -> None:
    """Unpack an archive's tar safely (no links out, no devices, no absolute paths)."""
    try:
        with tarfile.open(fileobj=archive, mode="r|*") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise ArchiveError(f"not a readable tar archive: {e}") from None
