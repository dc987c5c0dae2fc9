"""Fuzz target: image archives to load (image/archive.py): the tar walked member by member, and the
docker-archive manifest.json or OCI index.json read from what it held, as `cricket load` does.

The first byte picks the way in: a whole archive (plain or compressed) extracted and then read
as a source, or — so that the JSON is reached without the fuzzer having to build tars — a
docker-archive's manifest.json or an OCI layout's index.json over fixed files. Every image the
source then names must resolve, and its manifest be fetched, as the puller asks."""
from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import json
import os
import shutil
import tarfile

from fuzz.harness import instrumented, run, scratch

with instrumented(__name__ == "__main__"):
    from image.archive import ArchiveError, ArchiveSource, extract
    from image.reference import parse_reference

EXPECTED = (ArchiveError,)
_FILESYSTEM_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EIO}  # not EROFS: see unpack.py
# Small bounds, as for layers: the fuzzer's inputs are small.
_BOUNDS = {"max_members": 1000, "max_member_size": 16 << 20, "max_size": 64 << 20}

_LAYER = b"layer bytes\n" * 10
_CONFIG = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(_LAYER).hexdigest()]}}
                     ).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


_MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                   "digest": _digest(_CONFIG), "size": len(_CONFIG)},
                        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                    "digest": _digest(_LAYER), "size": len(_LAYER)}]}).encode()


def _write(root: str, name: str, data: bytes) -> None:
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _docker_dir(root: str, manifest_json: bytes) -> None:
    _write(root, "manifest.json", manifest_json)
    _write(root, "config.json", _CONFIG)
    _write(root, _digest(_CONFIG)[7:] + ".json", _CONFIG)
    _write(root, "layer.tar", _LAYER)
    _write(root, _digest(_LAYER)[7:] + ".tar", _LAYER)


def _oci_dir(root: str, index_json: bytes) -> None:
    _write(root, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
    _write(root, "index.json", index_json)
    for blob in (_MANIFEST, _CONFIG, _LAYER):
        _write(root, "blobs/sha256/" + _digest(blob)[7:], blob)


async def _read(source: ArchiveSource) -> None:
    for name, digest in source.images:
        ref = parse_reference(name)  # what `cricket load` pulls by: a name the source made must parse
        resolved = await source.resolve(ref)
        assert resolved.digest == digest
        await source.fetch_manifest(resolved, digest)


_loop = asyncio.new_event_loop()


def check(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 3, data[1:]
    work = scratch()
    root = os.path.join(work, "root")
    shutil.rmtree(root, ignore_errors=True)
    os.mkdir(root)
    try:
        if mode == 0:
            extract(io.BytesIO(body), root, **_BOUNDS)
        elif mode == 1:
            _docker_dir(root, body)
        else:
            _oci_dir(root, body)
        source = ArchiveSource(root)
    except OSError as e:
        if e.errno not in _FILESYSTEM_FAILURES:
            raise
        return
    _loop.run_until_complete(_read(source))


def tar(members: dict[str, bytes]) -> bytes:
    """A plain tar of these files, for seeds."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            t.addfile(info, io.BytesIO(content))
    return out.getvalue()


if __name__ == "__main__":
    run(check, EXPECTED, confine=True)
