"""A blob still being downloaded, read as it grows: a layer's unpack runs behind its download.

The download (an IngestFile) says how far the file holds written bytes, when it starts over,
and when the blob is complete and verified; a reader blocks at that watermark until more is
written. A reader never answers the end of the blob before the download has verified it, so an
unpack fed by it can not finish on bytes that turn out wrong. When the download starts over
(a resume that did not verify, a server that will not resume), what was read may not be the
blob's bytes: every reader then fails with Abandoned, and the caller unpacks again from the
stored blob.
"""
from __future__ import annotations

import io
import os
import threading

_ANY = 1 << 30  # as many bytes as a read asks for


class Abandoned(Exception):
    """The stream this reader followed is gone: the download failed, started over or was
    stopped. Nothing it read can be trusted to be the blob."""


class GrowingBlob:
    """The shared state of one download; many readers may follow it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._fd = -1  # the ingest file, opened for reading once the download has opened it
        self._written = 0  # bytes of the file that are written and readable
        self._complete = False  # the download is verified: _written is the blob's size
        self._stored = ""  # where the verified blob is, for readers that start after the download
        self._broken = False  # started over, failed or stopped: readers give up

    # -- what the download tells -------------------------------------------------------------

    def opened(self, path: str, offset: int) -> None:
        """The download opened `path`; its first `offset` bytes are there already (a resume)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        with self._cond:
            if self._fd >= 0 or self._broken:  # a second open is a new attempt: not followed
                os.close(fd)
                self._break()
                return
            self._fd, self._written = fd, offset
            self._cond.notify_all()

    def wrote(self, total: int) -> None:
        """The file now holds `total` written bytes (called from the writer's thread)."""
        with self._cond:
            self._written = total
            self._cond.notify_all()

    def restarted(self) -> None:
        """The download truncated its file to start over."""
        with self._cond:
            self._break()

    def complete(self, stored: str) -> None:
        """The download is verified and stored at `stored`, the whole blob."""
        with self._cond:
            self._complete, self._stored = True, stored
            self._cond.notify_all()

    def close(self) -> None:
        """The download is over, however it ended: readers that still wait give up, and the
        descriptor goes (readers hold their own)."""
        with self._cond:
            if not self._complete:
                self._break()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._cond.notify_all()

    def _break(self) -> None:
        self._broken = True
        self._cond.notify_all()

    # -- what readers ask ----------------------------------------------------------------------

    def reader(self) -> GrowingReader:
        return GrowingReader(self)

    def _dup(self) -> int:
        """A descriptor of the file for one reader, once the download has opened it."""
        with self._cond:
            while self._fd < 0 and not self._broken and not self._complete:
                self._cond.wait()
            if self._broken or (self._fd < 0 and not self._stored):
                raise Abandoned("the download was not followed from its start")
            if self._fd >= 0:
                return os.dup(self._fd)
            return os.open(self._stored, os.O_RDONLY | os.O_CLOEXEC)  # it was over before this reader began

    def _readable(self, pos: int, stop: threading.Event) -> int:
        """Wait until bytes past `pos` are written or the blob ends; return how many can be read."""
        with self._cond:
            while True:
                if self._broken or stop.is_set():
                    raise Abandoned("the download started over or stopped")
                if self._complete:  # verified and no longer written: read to the file's end
                    return _ANY
                if self._written > pos:
                    return self._written - pos
                self._cond.wait()

    def _still_good(self) -> None:
        with self._cond:
            if self._broken:
                raise Abandoned("the download started over while this reader read")


class GrowingReader(io.RawIOBase):
    """One reader of a GrowingBlob from its first byte: a file that blocks at the written end."""

    def __init__(self, blob: GrowingBlob):
        self._blob = blob
        self._fd = -1
        self._pos = 0
        self._stop = threading.Event()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        # Only the codec sniffing at the start seeks, back to where it began.
        if whence != os.SEEK_SET or pos < 0:
            raise io.UnsupportedOperation("a growing blob seeks only to a position from its start")
        self._pos = pos
        return pos

    def readinto(self, b) -> int:
        if self._fd < 0:
            self._fd = self._blob._dup()
        n = min(len(b), self._blob._readable(self._pos, self._stop))
        if n == 0:
            return 0
        got = os.preadv(self._fd, [memoryview(b)[:n]], self._pos)
        # A restart truncates and rewrites the file: bytes read across one are not the blob's.
        self._blob._still_good()
        self._pos += got
        return got

    def stop(self) -> None:
        """Make a blocked or later read fail with Abandoned (from any thread)."""
        self._stop.set()
        with self._blob._cond:
            self._blob._cond.notify_all()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        super().close()
