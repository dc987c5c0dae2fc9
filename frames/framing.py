"""Frames of the shim protocol: a 4-byte big-endian length, then that many bytes of one message."""
from __future__ import annotations

import struct

_HEADER = struct.Struct(">I")
MAX_FRAME = 16 << 20  # far above any real message; guards against garbage lengths


class FrameError(ValueError):
    pass


def encode(payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise FrameError(f"frame of {len(payload)} bytes is over the {MAX_FRAME} byte limit")
    return _HEADER.pack(len(payload)) + payload


class FrameReader:
    """Collects bytes as they arrive and hands back each complete frame's payload."""

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames = []
        while len(self._buf) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buf)
            if size > MAX_FRAME:
                raise FrameError(f"frame announces {size} bytes, over the {MAX_FRAME} byte limit")
            end = _HEADER.size + size
            if len(self._buf) < end:
                break
            frames.append(bytes(self._buf[_HEADER.size:end]))
            del self._buf[:end]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)
