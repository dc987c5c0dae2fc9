"""An ingest: a blob being downloaded into the content store's ingest directory, hashed as it
is written, and kept across a broken transfer so that the next attempt resumes where it stopped."""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os

from image.growing_blob import GrowingBlob

_CHUNK = 1 << 20  # bytes gathered before a worker writes and hashes them


class IngestFile:
    """A download's destination file and the running hash of the bytes in it.

    Received chunks are gathered into 1 MiB buffers that a worker thread writes
    and hashes while the event loop receives the next ones (hashlib and file
    writes let go of the GIL), one buffer in flight at a time so the file is
    written in order. `offset` counts the bytes received, written or not yet.
    A `follower`, if given, hears how far the file is written, so that an unpack
    can read the blob as it arrives.
    """

    def __init__(self, path: str, f, hasher, offset: int, follower: GrowingBlob | None = None):
        self.path = path
        self._f = f
        self._hasher = hasher
        self.offset = offset
        self._written = offset  # bytes in the file (the worker's count)
        self._follower = follower
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._inflight: concurrent.futures.Future | None = None

    @classmethod
    async def open(cls, path: str, size: int, follower: GrowingBlob | None = None) -> IngestFile:
        hasher, offset = await asyncio.to_thread(_hash_file, path, size)
        f = open(path, "ab")
        sink = cls(path, f, hasher, offset, follower)
        if follower is not None:
            follower.opened(path, offset)
        if offset > size:
            sink.restart()
        return sink

    async def write(self, chunk: bytes) -> None:
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        self.offset += len(chunk)
        if self._pending_size >= _CHUNK:
            await self._submit()

    async def flush(self) -> None:
        """Wait until every byte received is in the file and the hash."""
        await self._submit()
        if self._inflight is not None:
            await asyncio.wrap_future(self._inflight)
            self._inflight = None

    async def _submit(self) -> None:
        if self._inflight is not None:
            await asyncio.wrap_future(self._inflight)  # raises the worker's error, if any
            self._inflight = None
        if self._pending:
            buf = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
            self._pending, self._pending_size = [], 0
            self._inflight = _WRITERS.submit(self._write_and_hash, buf)

    def _write_and_hash(self, buf: bytes) -> None:
        self._f.write(buf)
        self._hasher.update(buf)
        self._written += len(buf)
        if self._follower is not None:
            self._f.flush()  # what a follower is told is written must be in the file
            self._follower.wrote(self._written)

    def _settle(self) -> None:
        # Synchronous on purpose: it runs in cleanup after a cancellation too,
        # and a worker must never be left writing to a closed or truncated file.
        if self._inflight is not None:
            try:
                self._inflight.result()
            except OSError:
                pass
            self._inflight = None

    def restart(self) -> None:
        self._settle()
        if self._follower is not None:
            self._follower.restarted()  # before the truncation, so no reader takes new bytes for old
        self._pending, self._pending_size = [], 0
        self._f.truncate(0)
        self._hasher = hashlib.sha256()
        self.offset = self._written = 0

    def digest(self) -> str:
        assert self._inflight is None and not self._pending, "flush() first"
        return "sha256:" + self._hasher.hexdigest()

    def close(self) -> None:
        """Close the file, keeping whatever was received for a later resume."""
        if self._f.closed:
            return
        self._settle()
        try:
            for buf in self._pending:
                self._f.write(buf)
        except OSError:
            pass
        self._pending = []
        self._f.close()

    def discard(self) -> None:
        self._pending = []
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


# Shared by all downloads; each keeps at most one buffer in it at a time.
_WRITERS = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="blob-writer")


def _hash_file(path: str, size: int):
    hasher = hashlib.sha256()
    offset = 0
    try:
        with open(path, "rb") as f:
            # Past `size` the bytes are wrong anyway; IngestFile.open starts over.
            while offset <= size:
                block = f.read(_CHUNK)
                if not block:
                    break
                hasher.update(block)
                offset += len(block)
    except FileNotFoundError:
        pass
    return hasher, offset
