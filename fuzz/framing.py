"""Fuzz target: the frame protocol between cricketd and its helpers (frames/framing.py), and the
shim's and the zygote's requests inside the frames (what a shim reads from its socket).

The bytes arrive in pieces of sizes the input chooses; every frame the reader hands back must
encode to the bytes it came from, and its payload is decoded as a shim request and as a zygote
request, which either parse or raise protobuf's DecodeError."""
from __future__ import annotations

from google.protobuf.message import DecodeError

from fuzz.harness import instrumented, run

with instrumented(__name__ == "__main__"):
    from api.shim.v1 import shim_pb2
    from frames.framing import FrameError, FrameReader, encode

EXPECTED = (FrameError, DecodeError)


def check(data: bytes) -> None:
    if not data:
        return
    # The first byte picks the size of the pieces the stream arrives in (1..256 bytes).
    piece, stream = data[0] + 1, data[1:]
    reader = FrameReader()
    frames: list[bytes] = []
    for at in range(0, len(stream), piece):
        frames += reader.feed(stream[at:at + piece])
    assert b"".join(encode(f) for f in frames) == stream[:len(stream) - reader.pending]
    for payload in frames:
        for message in (shim_pb2.Request, shim_pb2.ZygoteRequest):
            try:
                message.FromString(payload)
            except DecodeError:
                pass


if __name__ == "__main__":
    run(check, EXPECTED)
