"""SPDY/3.1 framing, header compression and connection state, on bytes only.

Frames the tests decode are built here by hand from the spec's layouts, and header
blocks are compressed with plain zlib and the dictionary, so the parser is checked
against something other than this module's own encoder.
"""
import os
import struct
import zlib

import pytest

from cri.streaming import spdy
from cri.streaming.spdy import (
    CANCEL,
    FLOW_CONTROL_ERROR,
    INVALID_STREAM,
    PROTOCOL_ERROR,
    STREAM_ALREADY_CLOSED,
    Connection,
    DataFrame,
    FrameParser,
    GoAway,
    GoAwayStatus,
    HeaderCompressor,
    HeaderDecompressor,
    Headers,
    LocalProtocolError,
    Ping,
    PingAcknowledged,
    ProtocolError,
    RstStream,
    Settings,
    SettingsId,
    StreamClosedError,
    StreamError,
    StreamState,
    SynReply,
    SynStream,
    WindowUpdate,
    encode_frame,
)

DICT = spdy.HEADER_DICTIONARY


# ------------------------------------------------------------ hand-made wire bytes

def control(frame_type, flags, payload, version=3):
    return struct.pack(">HHI", 0x8000 | version, frame_type, flags << 24 | len(payload)) + payload


def data(stream_id, payload, flags=0):
    return struct.pack(">II", stream_id, flags << 24 | len(payload)) + payload


def raw_block(pairs):
    out = struct.pack(">I", len(pairs))
    for name, value in pairs:
        out += struct.pack(">I", len(name)) + name + struct.pack(">I", len(value)) + value
    return out


class PlainZlib:
    """One direction's compression context, using only the standard library."""

    def __init__(self):
        self.c = zlib.compressobj(zdict=DICT)

    def block(self, pairs):
        return self.c.compress(raw_block(pairs)) + self.c.flush(zlib.Z_SYNC_FLUSH)


def syn_stream_bytes(z, stream_id, pairs, flags=0, associated=0, priority=0, slot=0):
    fields = struct.pack(">IIBB", stream_id, associated, priority << 5, slot)
    return control(1, flags, fields + z.block(pairs))


# ---------------------------------------------------------------- dictionary

def test_dictionary_is_the_spec_one():
    assert len(DICT) == 1423
    assert zlib.adler32(DICT) == 0xE3C6A7C2  # the dictionary id peers put in the zlib header
    assert DICT.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert DICT.endswith(b"charset=iso-8859-1,utf-,*,enq=0.")


# -------------------------------------------------------- decoding hand-built frames

def test_decode_hand_built_syn_stream():
    z = PlainZlib()
    wire = syn_stream_bytes(z, 3, [(b"streamtype", b"stdout"), (b"port", b"80\x0081")],
                            flags=0x01 | 0x02, associated=1, priority=5, slot=9)
    (frame,) = FrameParser().feed(wire)
    assert frame == SynStream(3, 1, 5, [("streamtype", "stdout"), ("port", "80"), ("port", "81")],
                              fin=True, unidirectional=True, slot=9)
    assert frame.get_header("streamType") == "stdout"


def test_decode_hand_built_fixed_frames():
    wire = (data(5, b"abc", flags=1) + data(7, b"")
            + control(3, 0, struct.pack(">II", 5, 5))
            + control(4, 1, struct.pack(">III", 1, 0x01000007, 1024))
            + control(6, 0, struct.pack(">I", 42))
            + control(7, 0, struct.pack(">II", 9, 2))
            + control(9, 0, struct.pack(">II", 0, 4096)))
    assert FrameParser().feed(wire) == [
        DataFrame(5, b"abc", fin=True), DataFrame(7, b"", fin=False),
        RstStream(5, CANCEL), Settings(((7, 1024, 1),), clear=True), Ping(42),
        GoAway(9, GoAwayStatus.INTERNAL_ERROR), WindowUpdate(0, 4096)]


def test_decode_hand_built_syn_reply_and_headers():
    z = PlainZlib()
    wire = (control(2, 0, struct.pack(">I", 1) + z.block([]))
            + control(8, 1, struct.pack(">I", 1) + z.block([(b"x-a", b"1")])))
    assert FrameParser().feed(wire) == [SynReply(1, ()), Headers(1, {"x-a": "1"}, fin=True)]


def test_reserved_bits_are_ignored():
    wire = control(9, 0, struct.pack(">II", 0x80000003, 0x80000010))
    assert FrameParser().feed(wire) == [WindowUpdate(3, 16)]


# ---------------------------------------------------------- round trips

ALL_FRAMES = [
    DataFrame(1, b"hello", fin=False), DataFrame(3, b"", fin=True),
    DataFrame(spdy.MAX_STREAM_ID, os.urandom(70000), fin=True),
    SynStream(1, 0, 0, {"streamtype": "error"}),
    SynStream(5, 3, 7, [("a", "1"), ("a", "2"), ("b", "")], fin=True, unidirectional=True, slot=2),
    SynReply(2, {}), SynReply(4, {"status": "200"}, fin=True),
    Headers(6, {"x": "y" * 1000}, fin=False),
    RstStream(9, FLOW_CONTROL_ERROR), Settings({}), Settings({SettingsId.INITIAL_WINDOW_SIZE: 1 << 20}),
    Settings(((4, 100, 2), (7, 5, 0)), clear=True), Ping(1), Ping(0xFFFFFFFE),
    GoAway(0), GoAway(7, GoAwayStatus.PROTOCOL_ERROR), WindowUpdate(0, 1), WindowUpdate(11, spdy.MAX_WINDOW_SIZE),
]


def test_round_trip_every_frame_type():
    compressor = HeaderCompressor()
    wire = b"".join(encode_frame(f, compressor) for f in ALL_FRAMES)
    assert FrameParser().feed(wire) == ALL_FRAMES


def test_one_byte_chunks_give_the_same_frames():
    compressor = HeaderCompressor()
    wire = b"".join(encode_frame(f, compressor) for f in ALL_FRAMES)
    parser, got = FrameParser(), []
    for i in range(len(wire)):
        got += parser.feed(wire[i:i + 1])
    assert got == ALL_FRAMES and parser.pending == 0


def test_encoder_lowercases_and_merges_repeated_names():
    compressor = HeaderCompressor()
    wire = encode_frame(SynReply(2, [("StreamType", "a"), ("x", "1"), ("streamtype", "b")]), compressor)
    block = zlib.decompressobj(zdict=DICT).decompress(wire[12:])
    assert block == raw_block([(b"streamtype", b"a\x00b"), (b"x", b"1")])


# ------------------------------------------- interoperability with plain zlib

def test_plain_zlib_blocks_share_one_context_across_frames():
    z = PlainZlib()
    blocks = [[(b"streamtype", b"error")], [(b"streamtype", b"stdin")], [(b"streamtype", b"stdout")]]
    wire = b"".join(syn_stream_bytes(z, 1 + 2 * i, pairs) for i, pairs in enumerate(blocks))
    frames = FrameParser().feed(wire)
    assert [f.get_header("streamtype") for f in frames] == ["error", "stdin", "stdout"]
    # A later block leans on the earlier ones: a fresh context cannot decode it.
    with pytest.raises(ProtocolError):
        HeaderDecompressor().decompress(z.block([(b"streamtype", b"stdin")]))


def test_encoder_blocks_decode_with_plain_zlib():
    compressor = HeaderCompressor()
    d = zlib.decompressobj(zdict=DICT)
    for i, value in enumerate(["stdin", "stdout", "stdin", "resize"]):
        wire = encode_frame(SynStream(1 + 2 * i, headers={"streamtype": value}), compressor)
        fields, block = wire[8:18], wire[18:]
        assert struct.unpack(">IIBB", fields) == (1 + 2 * i, 0, 0, 0)
        assert d.decompress(block) == raw_block([(b"streamtype", value.encode())])


def test_decompressor_is_not_reset_between_blocks():
    compressor, decompressor = HeaderCompressor(), HeaderDecompressor()
    for n in range(5):
        headers = spdy.normalize_headers({"requestid": str(n), "port": "8080"})
        assert decompressor.decompress(compressor.compress(headers)) == headers


# --------------------------------------------------------------- malformed input

@pytest.mark.parametrize("wire, message", [
    (control(6, 0, struct.pack(">I", 1), version=2), "version 2"),
    (control(6, 0, b"\x00\x00\x01"), "PING frame has 3 bytes"),
    (control(3, 0, b"\x00" * 12), "RST_STREAM frame has 12"),
    (control(7, 0, b"\x00" * 4), "GOAWAY frame has 4"),
    (control(9, 0, b"\x00" * 9), "WINDOW_UPDATE"),
    (control(4, 0, struct.pack(">I", 2) + b"\x00" * 8), "SETTINGS claims 2"),
    (control(1, 0, b"\x00" * 6), "SYN_STREAM frame has 6"),
    (control(2, 0, struct.pack(">I", 1) + b"not zlib at all"), "not valid zlib"),
    (data(0, b"x"), "stream 0"),
    (control(3, 0, struct.pack(">II", 0, 1)), "stream 0"),
])
def test_malformed_frames_are_refused(wire, message):
    with pytest.raises(ProtocolError, match=message):
        FrameParser().feed(wire)


@pytest.mark.parametrize("pairs, message", [
    ([(b"StreamType", b"x")], "not lowercase"),
    ([(b"a", b"1"), (b"a", b"2")], "twice"),
    ([(b"", b"x")], "empty header name"),
])
def test_bad_header_blocks_are_refused(pairs, message):
    with pytest.raises(ProtocolError, match=message):
        FrameParser().feed(syn_stream_bytes(PlainZlib(), 1, pairs))


@pytest.mark.parametrize("raw", [
    struct.pack(">I", 0xFFFFFFFF),  # a count no block could hold
    raw_block([(b"a", b"b")])[:-1],  # value cut short
    raw_block([]) + b"junk",  # bytes after the last entry
    b"\x00",  # shorter than the count
])
def test_inconsistent_header_blocks_are_refused(raw):
    z = zlib.compressobj(zdict=DICT)
    block = z.compress(raw) + z.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(ProtocolError):
        FrameParser().feed(control(2, 0, struct.pack(">I", 1) + block))


def test_header_bomb_is_refused():
    z = PlainZlib()
    wire = syn_stream_bytes(z, 1, [(b"x", b"a" * (spdy.MAX_HEADER_BLOCK + 1))])
    assert len(wire) < 2000
    with pytest.raises(ProtocolError, match="inflates"):
        FrameParser().feed(wire)


def test_frame_length_limit():
    parser = FrameParser(max_frame_length=1024)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        parser.feed(data(1, b"")[:4] + struct.pack(">I", 1025))  # refused before the payload


def test_unknown_control_types_are_skipped():
    wire = control(10, 0, b"credential payload") + control(0x7F, 3, b"") + control(6, 0, struct.pack(">I", 2))
    assert FrameParser().feed(wire) == [Ping(2)]


def test_encoder_refuses_out_of_range_fields():
    with pytest.raises(ValueError):
        encode_frame(DataFrame(0, b""))
    with pytest.raises(ValueError):
        encode_frame(SynStream(1, priority=8), HeaderCompressor())
    with pytest.raises(ValueError):
        encode_frame(WindowUpdate(1, 0))
    with pytest.raises(ValueError):
        encode_frame(SynReply(1))  # headers need a compressor


# ------------------------------------------------------------------ connections

def pair(**options):
    client_options = {"flow_control": True, **options.pop("client", {})}
    server_options = {"flow_control": True, **options.pop("server", {})}
    return Connection(client=True, **client_options), Connection(client=False, **server_options)


def pump(client, server, rounds=1000):
    """Carry bytes both ways until both sides are quiet; return each side's events."""
    client_events, server_events = [], []
    for _ in range(rounds):
        to_server, to_client = client.data_to_send(), server.data_to_send()
        if not to_server and not to_client:
            return client_events, server_events
        server_events += server.receive_data(to_server)
        client_events += client.receive_data(to_client)
    raise AssertionError("the connections never went quiet")


def received(events, stream_id):
    return b"".join(e.data for e in events if isinstance(e, DataFrame) and e.stream_id == stream_id)


def test_stream_open_reply_data_both_ways_and_half_close():
    client, server = pair()
    sid = client.open_stream({"streamType": "stdin"})
    assert sid == 1 and client.stream_state(sid) is StreamState.OPEN
    _, server_events = pump(client, server)
    assert server_events == [SynStream(1, headers={"streamtype": "stdin"})]
    server.reply(sid, {})
    client.send_data(sid, b"ls -l\n", fin=True)
    client_events, server_events = pump(client, server)
    assert client_events == [SynReply(1, ())]
    assert server_events == [DataFrame(1, b"ls -l\n", fin=True)]
    assert client.stream_state(sid) is StreamState.HALF_CLOSED_LOCAL
    assert server.stream_state(sid) is StreamState.HALF_CLOSED_REMOTE
    server.send_data(sid, b"total 0\n")
    server.end_stream(sid)
    client_events, _ = pump(client, server)
    assert client_events == [DataFrame(1, b"total 0\n"), DataFrame(1, b"", fin=True)]
    assert client.stream_state(sid) is server.stream_state(sid) is StreamState.CLOSED
    assert client.open_streams == server.open_streams == []
    with pytest.raises(StreamClosedError):
        server.send_data(sid, b"late")


def test_server_opened_streams_are_even():
    client, server = pair()
    sid = server.open_stream({"x": "1"})
    assert sid == 2
    client_events, _ = pump(client, server)
    assert client_events == [SynStream(2, headers={"x": "1"})]


def test_headers_frame_and_unidirectional_stream():
    client, server = pair()
    sid = client.open_stream({"a": "b"}, unidirectional=True)
    client.send_headers(sid, {"trailer": "yes"})
    client.send_data(sid, b"push", fin=True)
    _, events = pump(client, server)
    assert events == [SynStream(1, headers={"a": "b"}, unidirectional=True),
                      Headers(1, {"trailer": "yes"}), DataFrame(1, b"push", fin=True)]
    assert client.open_streams == server.open_streams == []


def test_reply_is_required_before_data_on_the_peers_stream():
    client, server = pair()
    sid = client.open_stream()
    pump(client, server)
    with pytest.raises(LocalProtocolError):
        server.send_data(sid, b"x")
    server.reply(sid)
    with pytest.raises(LocalProtocolError):
        server.reply(sid)


def test_data_on_unknown_stream_is_reset_invalid_stream():
    _, server = pair()
    server.receive_data(data(9, b"stray"))
    assert FrameParser().feed(server.data_to_send()) == [RstStream(9, INVALID_STREAM)]


def test_data_after_fin_is_reset_stream_already_closed():
    client, server = pair()
    sid = client.open_stream(fin=True)
    pump(client, server)
    events = server.receive_data(data(sid, b"after fin"))
    assert events == [StreamError(sid, STREAM_ALREADY_CLOSED)]
    assert FrameParser().feed(server.data_to_send()) == [RstStream(sid, STREAM_ALREADY_CLOSED)]
    assert server.stream_state(sid) is StreamState.CLOSED


def test_data_before_syn_reply_is_a_stream_protocol_error():
    client, server = pair()
    sid = client.open_stream()
    server.receive_data(client.data_to_send())
    events = client.receive_data(data(sid, b"too early"))
    assert events == [StreamError(sid, PROTOCOL_ERROR)]


def test_peer_reset_closes_stream_and_drops_buffered_data():
    client, server = pair()
    sid = client.open_stream()
    pump(client, server)
    server.reply(sid)
    assert server.send_data(sid, b"x" * 200_000) > 0
    client.reset(sid, CANCEL)
    client.receive_data(server.data_to_send())
    events = server.receive_data(client.data_to_send())
    assert events == [RstStream(sid, CANCEL)]
    assert server.buffered_amount(sid) == 0 and server.open_streams == []
    with pytest.raises(StreamClosedError):
        server.send_data(sid, b"more")
    # Frames the peer had in flight after our reset are dropped without another reset.
    assert client.receive_data(data(sid, b"late")) == []
    assert client.data_to_send() == b""


def test_syn_stream_with_wrong_parity_or_decreasing_id_fails_the_session():
    client, server = pair()
    with pytest.raises(ProtocolError, match="parity"):
        client.receive_data(encode_frame(SynStream(1), HeaderCompressor()))
    assert FrameParser().feed(client.data_to_send()) == [GoAway(0, GoAwayStatus.PROTOCOL_ERROR)]
    compressor = HeaderCompressor()
    server.receive_data(encode_frame(SynStream(5), compressor))
    with pytest.raises(ProtocolError, match="ids must increase"):
        server.receive_data(encode_frame(SynStream(3), compressor))
    assert FrameParser().feed(server.data_to_send()) == [GoAway(5, GoAwayStatus.PROTOCOL_ERROR)]
    with pytest.raises(ProtocolError):
        server.receive_data(b"")


def test_garbage_fails_the_session_and_keeps_earlier_events():
    _, server = pair()
    compressor = HeaderCompressor()
    with pytest.raises(ProtocolError) as failure:
        server.receive_data(encode_frame(SynStream(1), compressor) + control(6, 0, b"", version=1))
    assert failure.value.events == [SynStream(1)]
    assert FrameParser().feed(server.data_to_send()) == [GoAway(1, GoAwayStatus.PROTOCOL_ERROR)]


def test_ping_is_answered():
    client, server = pair()
    ping_id = client.ping()
    assert ping_id % 2 == 1
    client_events, server_events = pump(client, server)
    assert server_events == [Ping(ping_id)]
    assert client_events == [PingAcknowledged(ping_id)]
    server_ping = server.ping()
    client_events, server_events = pump(client, server)
    assert server_events == [PingAcknowledged(server_ping)] and server_ping % 2 == 0
    # An echo of a ping this side never sent is ignored.
    assert server.receive_data(encode_frame(Ping(100))) == [] and server.data_to_send() == b""


def test_goaway():
    client, server = pair()
    sid = client.open_stream()
    pump(client, server)
    server.reply(sid)
    server.goaway()
    late = client.open_stream()  # crosses the GOAWAY in flight
    client_events, server_events = pump(client, server)
    assert GoAway(sid, GoAwayStatus.OK) in client_events
    assert server_events == []  # the late stream is ignored, not reset
    assert late not in server.open_streams
    with pytest.raises(LocalProtocolError):
        client.open_stream()
    # Streams opened before the GOAWAY carry on.
    server.send_data(sid, b"still here", fin=True)
    client_events, _ = pump(client, server)
    assert received(client_events, sid) == b"still here"


# ------------------------------------------------------------------- flow control

def open_replied(client, server, **headers):
    sid = client.open_stream(headers)
    pump(client, server)
    server.reply(sid)
    pump(client, server)
    return sid


def test_sender_stops_at_the_peer_window_and_resumes_on_window_update():
    client, server = pair(client={"auto_window_update": False})
    sid = open_replied(client, server)
    payload = os.urandom(200_000)
    waiting = server.send_data(sid, payload, fin=True)
    assert waiting == 200_000 - 65536 and server.buffered_amount(sid) == waiting
    client_events, _ = pump(client, server)
    assert len(received(client_events, sid)) == 65536  # nothing more without credit
    assert server.send_window(sid) == 0 and server.send_window(0) == 0
    # Stream credit alone is not enough in SPDY/3.1: the session window is exhausted too.
    client.window_update(sid, 10_000)
    client_events, _ = pump(client, server)
    assert received(client_events, sid) == b""
    client.window_update(0, 10_000)
    client_events, _ = pump(client, server)
    assert len(received(client_events, sid)) == 10_000
    got = payload[:75536]
    while server.buffered_amount(sid) or server.stream_state(sid) is not StreamState.CLOSED:
        client.acknowledge_received_data(sid, 65536)
        client_events, _ = pump(client, server)
        got += received(client_events, sid)
        if any(isinstance(e, DataFrame) and e.fin for e in client_events):
            break
    assert got == payload
    assert client.stream_state(sid) is StreamState.HALF_CLOSED_REMOTE


def test_session_window_is_shared_between_streams():
    client, server = pair(client={"auto_window_update": False})
    first, second = open_replied(client, server), open_replied(client, server)
    server.send_data(first, b"a" * 40_000)
    assert server.send_data(second, b"b" * 40_000) == 80_000 - 65536
    client_events, _ = pump(client, server)
    assert len(received(client_events, first)) + len(received(client_events, second)) == 65536
    client.window_update(0, 20_000)
    client_events, _ = pump(client, server)
    assert received(client_events, second) == b"b" * (80_000 - 65536)


def test_large_transfers_complete_both_ways():
    client, server = pair()
    up, down = os.urandom(1 << 20), os.urandom(3 << 20)
    stdin = open_replied(client, server, streamtype="stdin")
    stdout = open_replied(client, server, streamtype="stdout")
    client.send_data(stdin, up, fin=True)
    server.send_data(stdout, down, fin=True)
    client_events, server_events = pump(client, server)
    assert received(server_events, stdin) == up
    assert received(client_events, stdout) == down
    assert client.buffered_amount(stdin) == server.buffered_amount(stdout) == 0


def test_peer_settings_resize_open_stream_windows():
    client, server = pair(client={"initial_window_size": 16_384, "auto_window_update": False})
    sid = open_replied(client, server)
    assert server.send_window(sid) == 16_384
    assert server.send_data(sid, b"z" * 20_000) == 20_000 - 16_384
    client.send_settings({SettingsId.INITIAL_WINDOW_SIZE: 32_768})
    client_events, server_events = pump(client, server)
    assert Settings({SettingsId.INITIAL_WINDOW_SIZE: 32_768}) in server_events
    assert len(received(client_events, sid)) == 20_000
    assert server.send_window(sid) == 32_768 - 20_000


def test_bigger_initial_window_also_grows_the_session():
    client, server = pair(client={"initial_window_size": 1 << 20, "auto_window_update": False})
    sid = open_replied(client, server)
    assert server.send_window(0) == 1 << 20
    server.send_data(sid, b"q" * (1 << 20))
    client_events, _ = pump(client, server)
    assert len(received(client_events, sid)) == 1 << 20


def test_overrunning_a_stream_window_is_reset_flow_control_error():
    careless = Connection(client=True, flow_control=False)
    strict = Connection(client=False, flow_control=True, initial_window_size=16_384,
                        auto_window_update=False)
    sid = careless.open_stream()
    strict.receive_data(careless.data_to_send())
    strict.reply(sid)
    careless.receive_data(strict.data_to_send())
    careless.send_data(sid, b"o" * 20_000)
    events = strict.receive_data(careless.data_to_send())
    assert events == [StreamError(sid, FLOW_CONTROL_ERROR)]
    assert RstStream(sid, FLOW_CONTROL_ERROR) in FrameParser().feed(strict.data_to_send())


def test_overrunning_the_session_window_fails_the_session():
    careless = Connection(client=True, flow_control=False)
    strict = Connection(client=False, flow_control=True, auto_window_update=False)
    sid = careless.open_stream()
    strict.receive_data(careless.data_to_send())
    strict.reply(sid)
    careless.receive_data(strict.data_to_send())
    careless.send_data(sid, b"o" * 70_000)
    with pytest.raises(ProtocolError, match="session window"):
        strict.receive_data(careless.data_to_send())


def test_without_flow_control_a_silent_peer_does_not_stall_us():
    # Like spdystream: never grants credit, never polices ours.
    client, server = pair(client={"flow_control": False, "auto_window_update": False},
                          server={"flow_control": False})
    sid = open_replied(client, server)
    payload = os.urandom(1 << 20)
    assert server.send_data(sid, payload, fin=True) == 0
    client_events = client.receive_data(server.data_to_send())
    assert received(client_events, sid) == payload
    assert client.data_to_send() == b""  # no resets, no updates
    client.send_data(sid, payload)
    assert received(server.receive_data(client.data_to_send()), sid) == payload


def test_window_update_overflow_resets_the_stream():
    client, server = pair()
    sid = open_replied(client, server)
    events = server.receive_data(encode_frame(WindowUpdate(sid, spdy.MAX_WINDOW_SIZE)))
    assert events == [StreamError(sid, FLOW_CONTROL_ERROR)]
    with pytest.raises(ProtocolError):
        server.receive_data(encode_frame(WindowUpdate(0, spdy.MAX_WINDOW_SIZE)))
