"""Image archives, both ways: docker-archive and OCI image layout archives.

docker-archive is what `docker save` writes and `docker load` reads: a tar with
manifest.json (per image: its config file, its names, its layer files), each
config as <id>.json and each layer as an uncompressed tar, <diff ID>.tar. An
OCI archive is an image layout in a tar: oci-layout, index.json naming each
image's manifest, and blobs/sha256/<hex> holding the manifests, configs and
layers exactly as stored, so an image comes back with the same manifest digest.

Loading goes through the puller, with an ArchiveSource standing in for the
registry: the images are unpacked, verified and recorded the way pulls are.

An archive to load is hostile input, unpacked by root. It is walked member by member
with the checks of layer unpacking (image/unpack.py), not with tarfile's extraction
filters: Python 3.11.7's "data" filter resolves paths with os.path.realpath, which gives
up on long paths, and lets a crafted archive write outside the directory
(CVE-2025-4517). Only files and directories are made; links, devices and sparse files
have no place in either format and are refused, naming the member, but for one kind of
symlink: an alias of a file the archive already holds, as skopeo writes a legacy
<id>/layer.tar, which is passed over and never made.
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import json
import os
import posixpath
import shutil
import stat
import tarfile
from typing import BinaryIO

from image.compression import GZIP, ZSTD, LayerError, decompressed_archive, open_decompressed, sniff
from image.content import ContentError, check_digest
from image.limits import MANIFEST_LIMIT, ImageLimits, LimitExceeded
from image.manifest import (
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_ZSTD,
    Index,
    parse_manifest,
)
from image.metadata import ImageRecord
from image.reference import Reference, ReferenceError, parse_reference
from image.registry import Resolved
from image.store import ImageStore
from image.unpack import UnsafeLayerError, _clean, _entries, _TarStream

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"  # the OCI layout's name of an image (often just its tag)
FULL_NAME = "io.containerd.image.name"  # containerd's (and ours): the full reference
UNNAMED_REPOSITORY = "localhost/loaded"  # for an image an archive names by tag alone
_CHUNK = 1 << 20
# An archive holds a few files per image and layer (skopeo's docker-archive three per
# layer); this many members is far beyond any real one.
MAX_MEMBERS = 100_000
# One member is at most a layer (a layer tar is a little over its files' sizes); all of
# them together at most a few such layers. What bounds a compressed archive's expansion.
MAX_MEMBER_SIZE = ImageLimits().max_layer_size + (1 << 30)
MAX_SIZE = 4 * MAX_MEMBER_SIZE
# index.json, manifest.json, a manifest: read whole into memory, so bounded as manifests are.
JSON_LIMIT = MANIFEST_LIMIT
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


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

    def _path(self, name) -> str:
        if not isinstance(name, str) or not name:
            raise ArchiveError(f"the archive names a file by {name!r}, which is not a file name")
        path = os.path.normpath(os.path.join(self.root, name))
        # lstat: extract() makes no symlinks, and nothing here may follow one.
        try:
            regular = path.startswith(self.root + os.sep) and stat.S_ISREG(os.lstat(path).st_mode)
        except OSError:
            regular = False
        if not regular:
            raise ArchiveError(f"the archive has no file {name!r}")
        return path

    def _read_small(self, path: str, what: str) -> bytes:
        with open(path, "rb") as f:
            data = f.read(JSON_LIMIT + 1)
        if len(data) > JSON_LIMIT:
            raise ArchiveError(f"{what} in the archive is over the {JSON_LIMIT} byte limit of a manifest")
        return data

    def _json(self, name: str, want: type):
        try:
            doc = json.loads(self._read_small(self._path(name), name))
        except (ValueError, RecursionError) as e:
            raise ArchiveError(f"{name} is not JSON: {e}") from None
        if not isinstance(doc, want):
            raise ArchiveError(f"{name} is not a JSON {'object' if want is dict else 'array'}")
        return doc

    def _read_oci(self) -> None:
        index = self._json("index.json", dict)
        for entry in _objects(index.get("manifests") or [], "index.json manifests"):
            digest, media_type = entry.get("digest", ""), entry.get("mediaType", "")
            self.manifests[digest] = (media_type, self._read_small(self._blob_path(digest), f"manifest {digest}"))
            annotations = entry.get("annotations")
            annotations = annotations if isinstance(annotations, dict) else {}
            self.images.append((_full_name(annotations.get(FULL_NAME) or annotations.get(REF_NAME) or "", digest),
                                digest))

    def _blob_path(self, digest: str) -> str:
        # Strictly sha256:<64 hex>: a looser spelling ("…/", upper case) would name the same file
        # under a second digest, and the image's record would not match what was verified.
        try:
            hex_part = check_digest(digest) if isinstance(digest, str) else None
        except ContentError:
            hex_part = None
        if hex_part is None:
            raise ArchiveError(f"bad digest {digest!r} in the archive (want sha256:<64 hex>)")
        path = self._path("blobs/sha256/" + hex_part)
        self.blobs[digest] = path
        return path

    def _read_docker(self) -> None:
        for entry in _objects(self._json("manifest.json", list), "manifest.json"):
            config_path = self._path(entry.get("Config"))
            config_digest, config_size = _sha256_file(config_path)
            self.blobs[config_digest] = config_path
            layers = []
            for name in entry.get("Layers") or []:
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
        return self._read_small(self._blob_path(digest), f"manifest {digest}")

    async def fetch_blob(self, resolved: Resolved, digest: str, size: int, dest: str, creds=None,
                         progress=None, follower=None) -> None:
        # Not followed: the puller unpacks the layer once it is copied (a local copy is quick).
        src = self.blobs.get(digest) or self._blob_path(digest)
        # A layer is gigabytes: copied in a thread, and waited for if the pull is cancelled, so
        # that the pull's clean-up does not race it.
        copying = asyncio.get_running_loop().run_in_executor(None, _copy_blob, src, digest, size, dest)
        try:
            await asyncio.shield(copying)
        except asyncio.CancelledError:
            await asyncio.wait([copying])
            raise


def _copy_blob(src: str, digest: str, size: int, dest: str) -> None:
    h, copied = hashlib.sha256(), 0
    # No more than the manifest says: the puller's bounds are on the sizes it declares.
    with open(src, "rb") as f, open(dest, "wb") as out:
        while copied <= size and (chunk := f.read(min(_CHUNK, size + 1 - copied))):
            h.update(chunk)
            out.write(chunk)
            copied += len(chunk)
    if copied != size or "sha256:" + h.hexdigest() != digest:
        os.unlink(dest)
        raise ArchiveError(f"blob {digest} in the archive does not match its digest and size ({size} bytes)")


def _full_name(name: str, digest: str) -> str:
    """The name an image gets in the store: the archive's full reference; a bare tag goes
    under UNNAMED_REPOSITORY, and no name at all under its digest's short form."""
    if not isinstance(name, str):
        raise ArchiveError(f"the archive names an image {name!r}, which is not a name")
    if not name:
        return f"{UNNAMED_REPOSITORY}:{digest.split(':', 1)[1][:12]}"
    try:
        if "/" not in name and ":" not in name and "." not in name:
            return str(parse_reference(f"{UNNAMED_REPOSITORY}:{name}"))
        return str(parse_reference(name))
    except ReferenceError as e:
        # The archive's name for an image, not the caller's: the archive is at fault.
        raise ArchiveError(f"the archive names an image {name!r}: {e}") from None


def _objects(items, where: str) -> list[dict]:
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ArchiveError(f"{where}: want a list of JSON objects")
    return items


def extract(archive: BinaryIO, dest: str, max_members: int = MAX_MEMBERS, max_member_size: int = MAX_MEMBER_SIZE,
            max_size: int = MAX_SIZE) -> None:
    """Unpack an image archive's tar (plain, or compressed as docker load allows) from the
    seekable file `archive` into the empty directory `dest`: its files and directories only,
    every name checked, nothing made through a symlink, member count, sizes and headers
    bounded. Raises ArchiveError naming the member (or the bound) at fault; `dest` may then
    hold part of the archive, for the caller to delete."""
    name = getattr(archive, "name", "")
    # Walked as a layer is (image/unpack.py): tarfile only parses headers, with a bound on
    # what it may read for them, and never extracts anything itself.
    stream = _TarStream(decompressed_archive(archive, name if isinstance(name, str) else ""), hashing=False)
    extractor = _Extractor(dest, max_members, max_member_size, max_size)
    try:
        extractor.run(stream)
    except (tarfile.TarError, LayerError) as e:
        raise ArchiveError(f"not a readable tar archive: {e}") from None
    except LimitExceeded as e:
        raise ArchiveError(str(e)) from None


class _Extractor:
    def __init__(self, dest: str, max_members: int, max_member_size: int, max_size: int):
        self.dest = dest
        self.max_members = max_members
        self.max_member_size = max_member_size
        self.max_size = max_size
        self.size = 0
        self.made: dict[str, bool] = {"": True}  # name -> is a directory, for what this archive made
        self.aliases: set[str] = set()  # symlinks passed over: nothing may lie beneath them

    def run(self, stream: _TarStream) -> None:
        root = os.open(self.dest, _DIR_FLAGS)
        try:
            for count, (_, member) in enumerate(_entries(stream), 1):
                if count > self.max_members:
                    raise ArchiveError(f"the archive has more than {self.max_members} members, the limit of "
                                       f"an image archive ({member.name!r} is one too many)")
                self._member(stream, root, member)
        finally:
            os.close(root)

    def _member(self, stream: _TarStream, root: int, member: tarfile.TarInfo) -> None:
        try:
            name = _clean(member.name, f"archive member {member.name!r}", "the archive")
        except UnsafeLayerError as e:
            raise ArchiveError(str(e)) from None
        if member.issym():
            self._alias(member, name)
            return
        if member.islnk():
            raise ArchiveError(f"archive member {member.name!r} is a hard link: an image archive needs none")
        if member.issparse() or member.type == tarfile.GNUTYPE_SPARSE:
            raise ArchiveError(f"archive member {member.name!r} is a sparse file: an image archive needs none")
        if not (member.isreg() or member.isdir()):
            raise ArchiveError(f"archive member {member.name!r} is a device, FIFO or other special file: "
                               "an image archive holds only files and directories")
        if not name:
            if member.isdir():
                return  # "./": the extraction directory itself
            raise ArchiveError(f"archive member {member.name!r} would replace the extraction directory")
        parent, _, base = name.rpartition("/")
        fd = self._directory(root, parent, member.name)
        try:
            if member.isdir():
                self._mkdir(fd, name, base, member.name)
            else:
                self._file(stream, fd, name, base, member)
        finally:
            if fd != root:
                os.close(fd)

    def _alias(self, member: tarfile.TarInfo, name: str) -> None:
        # Resolved by name, never on disk: the target must be a file this archive already made.
        target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
        if member.linkname.startswith("/") or self.made.get(target) is not False:
            raise ArchiveError(f"archive member {member.name!r} is a symlink to {member.linkname!r}, which is "
                               "not a file of the archive: an image archive needs no links")
        if name in self.made:
            raise ArchiveError(f"archive member {member.name!r} is a symlink in place of a file or directory "
                               "of the archive")
        self.aliases.add(name)

    def _directory(self, root: int, rel: str, member: str) -> int:
        """An fd of directory `rel`, made if missing, opened component by component without
        following a symlink; `root` itself for the top."""
        if not rel:
            return root
        fd, done = root, []
        try:
            for part in rel.split("/"):
                done.append(part)
                path = "/".join(done)
                if path in self.aliases:
                    raise ArchiveError(f"archive member {member!r} lies under the symlink {path!r}")
                if self.made.get(path) is False:
                    raise ArchiveError(f"archive member {member!r} lies under {path!r}, which is a file")
                if path not in self.made:
                    os.mkdir(part, 0o700, dir_fd=fd)
                    self.made[path] = True
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise ArchiveError(f"archive member {member!r}: {path!r} is not a directory") from None
                    raise
                if fd != root:
                    os.close(fd)
                fd = child
            return fd
        except BaseException:
            if fd != root:
                os.close(fd)
            raise

    def _mkdir(self, fd: int, name: str, base: str, member: str) -> None:
        if name in self.aliases or self.made.get(name) is False:
            raise ArchiveError(f"archive member {member!r} is a directory in place of a file or symlink")
        if name not in self.made:
            os.mkdir(base, 0o700, dir_fd=fd)
            self.made[name] = True

    def _file(self, stream: _TarStream, fd: int, name: str, base: str, member: tarfile.TarInfo) -> None:
        if member.size > self.max_member_size:
            raise ArchiveError(f"archive member {member.name!r} is {member.size} bytes, over the "
                               f"{self.max_member_size} byte limit of one member")
        if self.size + member.size > self.max_size:
            raise ArchiveError(f"archive member {member.name!r} takes the archive past {self.max_size} bytes, "
                               "the limit of an image archive")
        if name in self.aliases or self.made.get(name):
            raise ArchiveError(f"archive member {member.name!r} is a file in place of a directory or symlink")
        if name in self.made:
            os.unlink(base, dir_fd=fd)  # a later copy of a file wins, as tar has it
        self.size += member.size
        out = os.open(base, _FILE_FLAGS, 0o600, dir_fd=fd)
        self.made[name] = False
        try:
            stream.skip_to(member.offset_data)
            buf = memoryview(bytearray(min(_CHUNK, member.size)))
            left = member.size
            while left:
                n = stream.readinto(buf[:min(left, len(buf))])
                if not n:
                    raise ArchiveError(f"the archive ends inside member {member.name!r}")
                done = 0
                while done < n:
                    done += os.write(out, buf[done:n])
                left -= n
        finally:
            os.close(out)
