"""Fuzz target: SPDY/3.1 frames and header blocks (cri/streaming/spdy.py), as the streaming server
reads them from kubectl, crictl or a kubelet after the upgrade.

Three ways in, picked by the first byte: the frame parser alone (with the connection-wide
header decompressor), a server Connection (flow control on or off) that answers every stream
the peer opens and writes on it as the streaming server does, and one header block
decompressed and unpacked, which must pack back to the same pairs. The bytes arrive in pieces
of a size the input picks. The peer's bytes may raise only ProtocolError; the server's own
calls, StreamClosedError or LocalProtocolError where the peer's frames closed the stream."""
from __future__ import annotations

import zlib

from fuzz.harness import instrumented, run

with instrumented(__name__ == "__main__"):
    from cri.streaming import spdy

EXPECTED = (spdy.ProtocolError,)


def _pieces(data: bytes, size: int):
    for at in range(0, len(data), size):
        yield data[at:at + size]


def _parser(data: bytes, piece: int) -> None:
    parser = spdy.FrameParser()
    for chunk in _pieces(data, piece):
        for frame in parser.feed(chunk):
            if isinstance(frame, spdy.DataFrame):
                assert len(frame.data) <= spdy.MAX_FRAME_LENGTH


def _connection(data: bytes, piece: int, flow_control: bool) -> None:
    conn = spdy.Connection(client=False, flow_control=flow_control)
    for chunk in _pieces(data, piece):
        events = conn.receive_data(chunk)
        for event in events:
            try:
                if isinstance(event, spdy.SynStream) and not event.unidirectional:
                    conn.reply(event.stream_id, {"streamtype": event.get_header("streamtype") or ""})
                    conn.send_data(event.stream_id, b"x" * 70000)  # past a default window
                elif isinstance(event, spdy.DataFrame) and event.fin:
                    conn.end_stream(event.stream_id)
                elif isinstance(event, spdy.GoAway):
                    conn.goaway()
            except spdy.LocalProtocolError:
                pass  # the peer closed or reset the stream in the same bytes: the server's calls say so
        conn.data_to_send()
    if conn.open_streams:
        conn.ping()
        conn.data_to_send()


def _header_block(data: bytes) -> None:
    decompressor = spdy.HeaderDecompressor()
    pairs = decompressor.decompress(data)
    raw = spdy.pack_header_block(pairs)
    assert spdy.unpack_header_block(raw) == pairs, pairs
    compressor = spdy.HeaderCompressor()
    assert spdy.HeaderDecompressor().decompress(compressor.compress(pairs)) == pairs


def check(data: bytes) -> None:
    if len(data) < 2:
        return
    mode, piece, body = data[0] % 4, data[1] * 16 + 1, data[2:]
    if mode == 0:
        _parser(body, piece)
    elif mode in (1, 2):
        _connection(body, piece, flow_control=mode == 2)
    else:
        try:
            _header_block(body)
        except zlib.error as e:  # the compressor's side must never fail
            raise AssertionError(f"compressing a decoded header block failed: {e}") from e


if __name__ == "__main__":
    run(check, EXPECTED)
