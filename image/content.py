"""The content store: blobs (manifests, configs, layers) addressed by digest.

A blob is written under ingest/ and only renamed into blobs/ once its digest has
been verified, so a crash can leave partial downloads behind (they are resumed or
swept) but never a committed blob with the wrong bytes.
"""
from __future__ import annotations

import hashlib
import os
import re
import time

from image.space import room_for
from linux.crash_points import crash_point

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class ContentError(Exception):
    """A blob is missing or its bytes do not match its digest."""


def check_digest(digest: str) -> str:
    """Return the hex part of a sha256 digest, refusing anything else."""
    if not _DIGEST.match(digest):
        raise ContentError(f"unsupported or malformed digest {digest!r} (want sha256:<64 hex>)")
    return digest[7:]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ContentStore:
    def __init__(self, root: str):
        self.root = root
        self._blobs = os.path.join(root, "blobs", "sha256")
        self._ingest = os.path.join(root, "ingest")
        os.makedirs(self._blobs, exist_ok=True)
        os.makedirs(self._ingest, exist_ok=True)

    def path(self, digest: str) -> str:
        return os.path.join(self._blobs, check_digest(digest))

    def has(self, digest: str) -> bool:
        return os.path.exists(self.path(digest))

    def ingest_path(self, digest: str) -> str:
        """Where a download of `digest` is written; it survives a crash so it can be resumed."""
        return os.path.join(self._ingest, check_digest(digest))

    def commit(self, digest: str) -> str:
        """Move a verified download from ingest into the store."""
        src = self.ingest_path(digest)
        dst = self.path(digest)
        with open(src, "rb") as f:
            os.fsync(f.fileno())
        crash_point("image_pull.mid_commit")  # verified and synced, not yet in the store
        os.replace(src, dst)
        return dst

    def write(self, digest: str, data: bytes) -> str:
        """Store a small blob held in memory, verifying it first."""
        got = sha256_digest(data)
        if got != digest:
            raise ContentError(f"blob {digest}: content hashes to {got}")
        dst = self.path(digest)
        if os.path.exists(dst):
            return dst
        tmp = self.ingest_path(digest)
        try:
            with room_for(f"writing blob {digest}", tmp):
                with open(tmp, "wb") as f:
                    f.write(data)
                return self.commit(digest)
        except BaseException:
            self.discard_ingest(digest)
            raise

    def read(self, digest: str) -> bytes:
        try:
            with open(self.path(digest), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ContentError(f"blob {digest} is not in the content store") from None

    def delete(self, digest: str) -> None:
        for p in (self.path(digest), self.ingest_path(digest)):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    def discard_ingest(self, digest: str) -> None:
        """Delete a download of `digest` that is not going to be finished."""
        try:
            os.unlink(self.ingest_path(digest))
        except FileNotFoundError:
            pass

    def digests(self) -> list[str]:
        return ["sha256:" + name for name in os.listdir(self._blobs)]

    def stale_ingests(self, age: float) -> list[str]:
        """Partial downloads untouched for `age` seconds."""
        limit = time.time() - age
        out = []
        for entry in os.scandir(self._ingest):
            digest = "sha256:" + entry.name
            if _DIGEST.match(digest) and entry.stat().st_mtime < limit:
                out.append(digest)
        return out

    def size(self, digest: str) -> int:
        return os.stat(self.path(digest)).st_size
