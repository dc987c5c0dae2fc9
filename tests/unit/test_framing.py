"""Frames of the shim protocol on bytes."""
import struct

import pytest

from frames.framing import MAX_FRAME, FrameError, FrameReader, encode


def test_round_trip_byte_by_byte():
    payloads = [b"", b"x", b"hello world" * 100]
    stream = b"".join(encode(p) for p in payloads)
    reader = FrameReader()
    got = []
    for i in range(len(stream)):
        got += reader.feed(stream[i:i + 1])
    assert got == payloads and reader.pending == 0


def test_several_frames_in_one_read():
    reader = FrameReader()
    assert reader.feed(encode(b"a") + encode(b"bc") + encode(b"d")[:3]) == [b"a", b"bc"]
    assert reader.feed(encode(b"d")[3:]) == [b"d"]


def test_garbage_length_is_refused():
    with pytest.raises(FrameError):
        FrameReader().feed(struct.pack(">I", MAX_FRAME + 1))
    with pytest.raises(FrameError):
        encode(b"x" * (MAX_FRAME + 1))
