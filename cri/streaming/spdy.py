"""SPDY/3.1 over bytes, sans-IO: frames, header compression and one endpoint's state.

Kubernetes runs exec, attach and port-forward over an HTTP connection upgraded to
"SPDY/3.1". Both of its ends (kubectl, crictl, the kubelet) use moby/spdystream. This
module turns received bytes into events and method calls into bytes to send. It never
touches a socket, so the streaming server does the I/O and the tests need none.

Layers, bottom up:
  * frame dataclasses, which are also the events a Connection reports;
  * HeaderCompressor / HeaderDecompressor: one zlib stream per direction for the whole
    connection, primed with the SPDY/3 dictionary, each header block sync-flushed;
  * encode_frame() and FrameParser: pure framing;
  * Connection: stream ids and states, flow control, PING and GOAWAY for one endpoint.

Flow control, and why it has a switch. SPDY/3.1 gives each stream a window (64 KiB
unless SETTINGS says otherwise) and the session another (64 KiB; WINDOW_UPDATE on
stream 0). spdystream implements neither: it never sends WINDOW_UPDATE or SETTINGS,
ignores them when it receives them, and writes every Write() as one DATA frame whatever
its size. A peer that obeyed the windows would stall after 64 KiB of exec output, and a
peer that enforced them would reset `kubectl cp`'s stdin. So Connection takes
`flow_control`:
  * True (the spec): send_data() sends what the peer's stream and session windows
    allow and buffers the rest, which goes out when WINDOW_UPDATE (or SETTINGS) from
    the peer opens the window; DATA beyond our own windows is refused with
    RST_STREAM(FLOW_CONTROL_ERROR) or, for the session window, GOAWAY.
  * False (what Kubernetes peers need): windows are tracked but neither obeyed nor
    enforced; send_data() always sends at once.
Either way the receive side gives credit back with WINDOW_UPDATE. By default this happens
as soon as a DATA frame has been handed to the application, because the streaming server
applies its backpressure at the socket. A caller that wants windows to follow its own
consumption passes auto_window_update=False and calls acknowledge_received_data().
"""
from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar, cast

VERSION = 3

TYPE_SYN_STREAM = 1
TYPE_SYN_REPLY = 2
TYPE_RST_STREAM = 3
TYPE_SETTINGS = 4
TYPE_PING = 6
TYPE_GOAWAY = 7
TYPE_HEADERS = 8
TYPE_WINDOW_UPDATE = 9

FLAG_FIN = 0x01  # DATA, SYN_STREAM, SYN_REPLY, HEADERS
FLAG_UNIDIRECTIONAL = 0x02  # SYN_STREAM
FLAG_SETTINGS_CLEAR_SETTINGS = 0x01  # SETTINGS frame
SETTINGS_FLAG_PERSIST_VALUE = 0x01  # per entry
SETTINGS_FLAG_PERSISTED = 0x02  # per entry


class StatusCode(enum.IntEnum):
    """RST_STREAM status codes."""
    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    INVALID_CREDENTIALS = 10
    FRAME_TOO_LARGE = 11


PROTOCOL_ERROR = StatusCode.PROTOCOL_ERROR
INVALID_STREAM = StatusCode.INVALID_STREAM
REFUSED_STREAM = StatusCode.REFUSED_STREAM
UNSUPPORTED_VERSION = StatusCode.UNSUPPORTED_VERSION
CANCEL = StatusCode.CANCEL
INTERNAL_ERROR = StatusCode.INTERNAL_ERROR
FLOW_CONTROL_ERROR = StatusCode.FLOW_CONTROL_ERROR
STREAM_IN_USE = StatusCode.STREAM_IN_USE
STREAM_ALREADY_CLOSED = StatusCode.STREAM_ALREADY_CLOSED
INVALID_CREDENTIALS = StatusCode.INVALID_CREDENTIALS
FRAME_TOO_LARGE = StatusCode.FRAME_TOO_LARGE


class GoAwayStatus(enum.IntEnum):
    """GOAWAY status codes (a separate numbering from RST_STREAM's)."""
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


class SettingsId(enum.IntEnum):
    UPLOAD_BANDWIDTH = 1
    DOWNLOAD_BANDWIDTH = 2
    ROUND_TRIP_TIME = 3
    MAX_CONCURRENT_STREAMS = 4
    CURRENT_CWND = 5
    DOWNLOAD_RETRANS_RATE = 6
    INITIAL_WINDOW_SIZE = 7
    CLIENT_CERTIFICATE_VECTOR_SIZE = 8


DEFAULT_WINDOW_SIZE = 64 * 1024  # both the initial stream window and the session window
MAX_WINDOW_SIZE = 2**31 - 1
MAX_STREAM_ID = 2**31 - 1
MAX_FRAME_LENGTH = 2**24 - 1  # the length field has 24 bits
# A decompressed header block larger than this is refused: Kubernetes' are a few dozen
# bytes, and the cap stops a small compressed block from inflating without bound.
MAX_HEADER_BLOCK = 256 * 1024
# Outgoing DATA frames are cut to this size so one stream cannot hold the line for long.
DEFAULT_MAX_DATA_FRAME = 64 * 1024
_RESET_MEMORY = 1024


def _build_dictionary() -> bytes:
    # The SPDY/3 header dictionary (spec section 2.6.10.1): 65 length-prefixed tokens
    # followed by plain text. Both ends must prime zlib with exactly these 1423 bytes.
    tokens = (
        "options head post put delete trace accept accept-charset accept-encoding "
        "accept-language accept-ranges age allow authorization cache-control connection "
        "content-base content-encoding content-language content-length content-location "
        "content-md5 content-range content-type date etag expect expires from host "
        "if-match if-modified-since if-none-match if-range if-unmodified-since "
        "last-modified location max-forwards pragma proxy-authenticate "
        "proxy-authorization range referer retry-after server te trailer "
        "transfer-encoding upgrade user-agent vary via warning www-authenticate method "
        "get status"
    ).split() + ["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie",
                 "keep-alive", "origin"]
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416"
        "417502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server "
        "Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug "
        "Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,"
        "text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,"
        "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8"
        "charset=iso-8859-1,utf-,*,enq=0."
    )
    out = bytearray()
    for token in tokens:
        out += struct.pack(">I", len(token)) + token.encode("ascii")
    return bytes(out + tail.encode("ascii"))


HEADER_DICTIONARY = _build_dictionary()


class ProtocolError(Exception):
    """The peer sent something SPDY/3.1 does not allow; the connection cannot go on.

    `goaway_status` is what a GOAWAY answering it should carry.
    """

    def __init__(self, message: str, goaway_status: int = GoAwayStatus.PROTOCOL_ERROR):
        super().__init__(message)
        self.goaway_status = goaway_status
        self.events: list = []  # events decoded before the error, set by Connection


class LocalProtocolError(Exception):
    """This side asked for something the protocol or the stream's state forbids."""


class StreamClosedError(LocalProtocolError):
    """The stream is closed or reset (perhaps by the peer); nothing more goes on it."""


# ---------------------------------------------------------------- frames and events

HeaderPairs = tuple[tuple[str, str], ...]
HeadersArg = Mapping[str, str] | Iterable[tuple[str, str]]
_SettingsEntries = tuple[tuple[int, int, int], ...]


def normalize_headers(headers: HeadersArg) -> HeaderPairs:
    """Headers as a tuple of (lowercase name, value) pairs, the form frames hold.

    A name may repeat: on the wire its values are joined by NUL into one entry, and a
    received NUL-joined value comes back as repeated pairs.
    """
    items = headers.items() if isinstance(headers, Mapping) else headers
    return tuple((str(name).lower(), str(value)) for name, value in items)


class _WithHeaders:
    __slots__ = ()
    headers: HeaderPairs  # a field of each subclass

    def __post_init__(self):
        # Frozen dataclasses need object.__setattr__; normalising here makes frames built
        # from a dict compare equal to the same frame decoded from bytes.
        object.__setattr__(self, "headers", normalize_headers(self.headers))

    def get_header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header `name` (any case), or `default`."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return default


@dataclass(frozen=True, slots=True)
class DataFrame:
    stream_id: int
    data: bytes = b""
    fin: bool = False


@dataclass(frozen=True, slots=True)
class SynStream(_WithHeaders):
    stream_id: int
    associated_id: int = 0
    priority: int = 0  # 0 is the highest of 0..7
    headers: HeaderPairs = ()
    fin: bool = False
    unidirectional: bool = False
    slot: int = 0  # credential slot; unused by Kubernetes, kept so frames round-trip


@dataclass(frozen=True, slots=True)
class SynReply(_WithHeaders):
    stream_id: int
    headers: HeaderPairs = ()
    fin: bool = False


@dataclass(frozen=True, slots=True)
class Headers(_WithHeaders):
    stream_id: int
    headers: HeaderPairs = ()
    fin: bool = False


@dataclass(frozen=True, slots=True)
class RstStream:
    stream_id: int
    status_code: int


@dataclass(frozen=True, slots=True)
class Settings:
    """SETTINGS; `entries` are (id, value, flags) triples, or a {id: value} mapping."""
    entries: _SettingsEntries = ()
    clear: bool = False

    def __post_init__(self):
        items = self.entries.items() if isinstance(self.entries, Mapping) else self.entries
        entries = tuple((int(e[0]), int(e[1]), int(e[2]) if len(e) > 2 else 0) for e in items)
        object.__setattr__(self, "entries", entries)

    def get(self, setting_id: int, default: int | None = None) -> int | None:
        """The value of one setting, or `default` if the frame does not carry it."""
        for ident, value, _flags in self.entries:
            if ident == setting_id:
                return value
        return default


@dataclass(frozen=True, slots=True)
class Ping:
    id: int


@dataclass(frozen=True, slots=True)
class GoAway:
    last_good_stream_id: int
    status_code: int = GoAwayStatus.OK


@dataclass(frozen=True, slots=True)
class WindowUpdate:
    stream_id: int  # 0 is the session window (SPDY/3.1)
    delta: int


@dataclass(frozen=True, slots=True)
class PingAcknowledged:
    """Event: the peer echoed a PING this side sent with Connection.ping()."""
    id: int


@dataclass(frozen=True, slots=True)
class StreamError:
    """Event: this side reset a stream because the peer broke the rules on it."""
    stream_id: int
    status_code: int


Frame = (DataFrame | SynStream | SynReply | Headers | RstStream | Settings | Ping | GoAway
         | WindowUpdate)
Event = Frame | PingAcknowledged | StreamError

# ------------------------------------------------------------- header blocks

_U32 = struct.Struct(">I")
_TWO_U32 = struct.Struct(">II")


def pack_header_block(headers: HeaderPairs) -> bytes:
    """The uncompressed name/value block: a count, then length-prefixed names and values.

    Repeated names are merged into one NUL-joined value, because the format (and Go's
    reader, which fails the whole connection on duplicates) allows each name once.
    """
    merged: dict[str, list[str]] = {}
    for name, value in headers:
        merged.setdefault(name.lower(), []).append(value)
    parts = [_U32.pack(len(merged))]
    for name, values in merged.items():
        raw_name = name.encode("utf-8", "surrogateescape")
        raw_value = "\0".join(values).encode("utf-8", "surrogateescape")
        parts += (_U32.pack(len(raw_name)), raw_name, _U32.pack(len(raw_value)), raw_value)
    return b"".join(parts)


def unpack_header_block(block: bytes) -> HeaderPairs:
    """Decode an uncompressed name/value block, refusing any malformed one."""
    if len(block) < 4:
        raise ProtocolError("header block is shorter than its 4-byte count")
    (count,) = _U32.unpack_from(block, 0)
    # Each entry takes at least 8 bytes, so a bigger count is a lie; checking now avoids
    # looping on a count of four billion.
    if count * 8 > len(block) - 4:
        raise ProtocolError(f"header block claims {count} entries in {len(block)} bytes")
    pairs: list[tuple[str, str]] = []
    seen: set[bytes] = set()
    pos = 4
    for _ in range(count):
        fields = []
        for _what in ("name", "value"):
            if pos + 4 > len(block):
                raise ProtocolError("header block ends inside a length field")
            (length,) = _U32.unpack_from(block, pos)
            pos += 4
            if pos + length > len(block):
                raise ProtocolError("header block ends inside a name or value")
            fields.append(block[pos:pos + length])
            pos += length
        name, value = fields
        if not name:
            raise ProtocolError("header block has an empty header name")
        if name != name.lower():
            raise ProtocolError(f"header name {name!r} is not lowercase, as SPDY requires")
        if name in seen:
            raise ProtocolError(f"header name {name!r} appears twice in one block")
        seen.add(name)
        text_name = name.decode("utf-8", "surrogateescape")
        for part in value.split(b"\0"):
            pairs.append((text_name, part.decode("utf-8", "surrogateescape")))
    if pos != len(block):
        raise ProtocolError(f"{len(block) - pos} stray bytes after the header block")
    return tuple(pairs)


class HeaderCompressor:
    """Compresses header blocks for one direction of one connection.

    The zlib stream spans the connection: every block is a sync flush of the same
    stream, so blocks must be compressed in the order their frames are sent.
    """

    def __init__(self, level: int = zlib.Z_DEFAULT_COMPRESSION):
        self._zlib = zlib.compressobj(level, zlib.DEFLATED, zlib.MAX_WBITS, 9,
                                      zlib.Z_DEFAULT_STRATEGY, HEADER_DICTIONARY)

    def compress(self, headers: HeaderPairs) -> bytes:
        """The compressed form of one header block, ready to follow a frame's fields."""
        raw = pack_header_block(headers)
        return self._zlib.compress(raw) + self._zlib.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """Decompresses the peer's header blocks, in the order its frames arrive."""

    def __init__(self, max_block: int = MAX_HEADER_BLOCK):
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS, zdict=HEADER_DICTIONARY)
        self._max_block = max_block

    def decompress(self, block: bytes) -> HeaderPairs:
        """Decode one compressed header block into (name, value) pairs."""
        try:
            raw = self._zlib.decompress(block, self._max_block + 1)
        except zlib.error as exc:
            raise ProtocolError(f"header block is not valid zlib with the SPDY dictionary: {exc}") from None
        if len(raw) > self._max_block or self._zlib.unconsumed_tail:
            raise ProtocolError(f"header block inflates beyond {self._max_block} bytes")
        if self._zlib.unused_data:
            raise ProtocolError("header block follows the end of the peer's zlib stream")
        return unpack_header_block(raw)


# ----------------------------------------------------------------- framing

def _control(frame_type: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_LENGTH:
        raise ValueError(f"control frame payload of {len(payload)} bytes exceeds 2**24-1")
    return _TWO_U32.pack(0x80000000 | VERSION << 16 | frame_type, flags << 24 | len(payload)) + payload


def data_frame_header(stream_id: int, length: int, fin: bool = False) -> bytes:
    """The 8 bytes that precede `length` bytes of DATA (lets callers avoid a copy)."""
    _check_stream_id(stream_id)
    if not 0 <= length <= MAX_FRAME_LENGTH:
        raise ValueError(f"DATA payload of {length} bytes does not fit a frame; split it")
    return _TWO_U32.pack(stream_id, (FLAG_FIN if fin else 0) << 24 | length)


def _check_stream_id(stream_id: int, allow_zero: bool = False) -> None:
    if not (0 if allow_zero else 1) <= stream_id <= MAX_STREAM_ID:
        raise ValueError(f"stream id {stream_id} is outside 1..2**31-1")


def _flags(fin: bool, unidirectional: bool = False) -> int:
    return (FLAG_FIN if fin else 0) | (FLAG_UNIDIRECTIONAL if unidirectional else 0)


def encode_frame(frame: Frame, compressor: HeaderCompressor | None = None) -> bytes:
    """The wire bytes of `frame`.

    Frames with headers need the connection's `compressor`, and must then be sent in
    the order they were encoded.
    """
    if isinstance(frame, DataFrame):
        return data_frame_header(frame.stream_id, len(frame.data), frame.fin) + bytes(frame.data)
    if isinstance(frame, (SynStream, SynReply, Headers)):
        if compressor is None:
            raise ValueError(f"{type(frame).__name__} carries headers and needs a HeaderCompressor")
        _check_stream_id(frame.stream_id)
        block = compressor.compress(frame.headers)
        if isinstance(frame, SynStream):
            _check_stream_id(frame.associated_id, allow_zero=True)
            if not 0 <= frame.priority <= 7:
                raise ValueError(f"priority {frame.priority} is outside 0..7")
            fields = _TWO_U32.pack(frame.stream_id, frame.associated_id) + bytes(
                (frame.priority << 5, frame.slot))
            return _control(TYPE_SYN_STREAM, _flags(frame.fin, frame.unidirectional), fields + block)
        frame_type = TYPE_SYN_REPLY if isinstance(frame, SynReply) else TYPE_HEADERS
        return _control(frame_type, _flags(frame.fin), _U32.pack(frame.stream_id) + block)
    if isinstance(frame, RstStream):
        _check_stream_id(frame.stream_id)
        return _control(TYPE_RST_STREAM, 0, _TWO_U32.pack(frame.stream_id, frame.status_code))
    if isinstance(frame, Settings):
        body = [_U32.pack(len(frame.entries))]
        body += [_TWO_U32.pack(flags << 24 | ident, value) for ident, value, flags in frame.entries]
        return _control(TYPE_SETTINGS, FLAG_SETTINGS_CLEAR_SETTINGS if frame.clear else 0, b"".join(body))
    if isinstance(frame, Ping):
        return _control(TYPE_PING, 0, _U32.pack(frame.id))
    if isinstance(frame, GoAway):
        _check_stream_id(frame.last_good_stream_id, allow_zero=True)
        return _control(TYPE_GOAWAY, 0, _TWO_U32.pack(frame.last_good_stream_id, frame.status_code))
    if isinstance(frame, WindowUpdate):
        _check_stream_id(frame.stream_id, allow_zero=True)
        if not 1 <= frame.delta <= MAX_WINDOW_SIZE:
            raise ValueError(f"window delta {frame.delta} is outside 1..2**31-1")
        return _control(TYPE_WINDOW_UPDATE, 0, _TWO_U32.pack(frame.stream_id, frame.delta))
    raise TypeError(f"not a SPDY frame: {frame!r}")


def _need(payload: bytes, size: int, name: str, exact: bool = True) -> None:
    if len(payload) < size or (exact and len(payload) != size):
        raise ProtocolError(f"{name} frame has {len(payload)} bytes of payload, "
                            f"{'exactly' if exact else 'at least'} {size} expected")


def _nonzero(stream_id: int, name: str) -> int:
    if stream_id == 0:
        raise ProtocolError(f"{name} frame names stream 0")
    return stream_id


class FrameParser:
    """Decodes the peer's byte stream into frames, whatever the chunking.

    Unknown control frame types (CREDENTIAL, NOOP, future ones) are skipped, as the spec
    asks; anything malformed raises ProtocolError, after which the parser is unusable.
    """

    def __init__(self, decompressor: HeaderDecompressor | None = None, *,
                 max_frame_length: int = MAX_FRAME_LENGTH):
        self._buffer = bytearray()
        self._decompressor = decompressor or HeaderDecompressor()
        self._max_frame_length = max_frame_length

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the connection."""
        self._buffer += data

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes arrive."""
        buf = self._buffer
        while len(buf) >= 8:
            first, second = _TWO_U32.unpack_from(buf, 0)
            length, flags = second & 0xFFFFFF, second >> 24
            if length > self._max_frame_length:
                raise ProtocolError(f"frame of {length} bytes exceeds the limit of "
                                    f"{self._max_frame_length}")
            if len(buf) < 8 + length:
                return None
            payload = bytes(buf[8:8 + length])
            del buf[:8 + length]  # deleting a bytearray's head is cheap in CPython
            if not first & 0x80000000:
                return DataFrame(_nonzero(first & 0x7FFFFFFF, "DATA"), payload, bool(flags & FLAG_FIN))
            version = (first >> 16) & 0x7FFF
            if version != VERSION:
                raise ProtocolError(f"control frame of SPDY version {version}; only 3 is spoken")
            decode = _DECODERS.get(first & 0xFFFF)
            if decode is not None:
                return decode(self, flags, payload)
        return None

    def feed(self, data: bytes) -> list[Frame]:
        """receive_data() and then every frame now complete."""
        self.receive_data(data)
        frames = []
        while (frame := self.next_frame()) is not None:
            frames.append(frame)
        return frames

    @property
    def pending(self) -> int:
        """Bytes held back because they do not yet make a whole frame."""
        return len(self._buffer)

    # The header block is always decompressed, even for a frame about to be refused,
    # because skipping it would desynchronise the connection-wide zlib stream.
    def _syn_stream(self, flags: int, payload: bytes) -> SynStream:
        _need(payload, 10, "SYN_STREAM", exact=False)
        stream_id, associated = _TWO_U32.unpack_from(payload, 0)
        headers = self._decompressor.decompress(payload[10:])
        return SynStream(_nonzero(stream_id & 0x7FFFFFFF, "SYN_STREAM"), associated & 0x7FFFFFFF,
                         payload[8] >> 5, headers, bool(flags & FLAG_FIN),
                         bool(flags & FLAG_UNIDIRECTIONAL), payload[9])

    def _syn_reply(self, flags: int, payload: bytes) -> SynReply:
        _need(payload, 4, "SYN_REPLY", exact=False)
        headers = self._decompressor.decompress(payload[4:])
        stream_id = _U32.unpack_from(payload, 0)[0] & 0x7FFFFFFF
        return SynReply(_nonzero(stream_id, "SYN_REPLY"), headers, bool(flags & FLAG_FIN))

    def _headers(self, flags: int, payload: bytes) -> Headers:
        _need(payload, 4, "HEADERS", exact=False)
        headers = self._decompressor.decompress(payload[4:])
        stream_id = _U32.unpack_from(payload, 0)[0] & 0x7FFFFFFF
        return Headers(_nonzero(stream_id, "HEADERS"), headers, bool(flags & FLAG_FIN))

    def _rst_stream(self, flags: int, payload: bytes) -> RstStream:
        _need(payload, 8, "RST_STREAM")
        stream_id, status = _TWO_U32.unpack(payload)
        return RstStream(_nonzero(stream_id & 0x7FFFFFFF, "RST_STREAM"), status)

    def _settings(self, flags: int, payload: bytes) -> Settings:
        _need(payload, 4, "SETTINGS", exact=False)
        (count,) = _U32.unpack_from(payload, 0)
        if len(payload) != 4 + 8 * count:
            raise ProtocolError(f"SETTINGS claims {count} entries in {len(payload)} bytes")
        entries = tuple((word & 0xFFFFFF, value, word >> 24)
                        for word, value in _TWO_U32.iter_unpack(payload[4:]))
        return Settings(entries, bool(flags & FLAG_SETTINGS_CLEAR_SETTINGS))

    def _ping(self, flags: int, payload: bytes) -> Ping:
        _need(payload, 4, "PING")
        return Ping(_U32.unpack(payload)[0])

    def _goaway(self, flags: int, payload: bytes) -> GoAway:
        _need(payload, 8, "GOAWAY")
        last_good, status = _TWO_U32.unpack(payload)
        return GoAway(last_good & 0x7FFFFFFF, status)

    def _window_update(self, flags: int, payload: bytes) -> WindowUpdate:
        _need(payload, 8, "WINDOW_UPDATE")
        stream_id, delta = _TWO_U32.unpack(payload)
        return WindowUpdate(stream_id & 0x7FFFFFFF, delta & 0x7FFFFFFF)


_DECODERS: dict[int, Callable[[FrameParser, int, bytes], Frame]] = {
    TYPE_SYN_STREAM: FrameParser._syn_stream,
    TYPE_SYN_REPLY: FrameParser._syn_reply,
    TYPE_RST_STREAM: FrameParser._rst_stream,
    TYPE_SETTINGS: FrameParser._settings,
    TYPE_PING: FrameParser._ping,
    TYPE_GOAWAY: FrameParser._goaway,
    TYPE_HEADERS: FrameParser._headers,
    TYPE_WINDOW_UPDATE: FrameParser._window_update,
}

# --------------------------------------------------------------- connection


class StreamState(enum.Enum):
    OPEN = "open"
    HALF_CLOSED_LOCAL = "half-closed (local)"  # this side sent FIN
    HALF_CLOSED_REMOTE = "half-closed (remote)"  # the peer sent FIN
    CLOSED = "closed"


class _Stream:
    __slots__ = ("id", "local_initiated", "replied", "local_closed", "remote_closed",
                 "send_window", "recv_window", "recv_unacked", "pending", "pending_fin")

    def __init__(self, stream_id: int, local_initiated: bool, send_window: int, recv_window: int):
        self.id = stream_id
        self.local_initiated = local_initiated
        self.replied = False  # SYN_REPLY seen (our stream) or sent (the peer's)
        self.local_closed = False  # no more may be queued by this side
        self.remote_closed = False
        self.send_window = send_window
        self.recv_window = recv_window
        self.recv_unacked = 0  # consumed bytes not yet credited back with WINDOW_UPDATE
        self.pending = bytearray()  # data waiting for window
        self.pending_fin = False  # FIN to send once `pending` has gone


class Connection:
    """One endpoint of a SPDY/3.1 session, driven by bytes in and method calls.

    `client` picks the stream-id and ping-id parity (client odd, server even). For
    `flow_control` see the module docstring: Kubernetes peers need False. Every method
    that produces output queues it; data_to_send() collects it.
    """

    def __init__(self, *, client: bool, flow_control: bool,
                 initial_window_size: int = DEFAULT_WINDOW_SIZE,
                 auto_window_update: bool = True,
                 max_data_frame: int = DEFAULT_MAX_DATA_FRAME):
        if not 1 <= initial_window_size <= MAX_WINDOW_SIZE:
            raise ValueError(f"initial window {initial_window_size} is outside 1..2**31-1")
        if not 1 <= max_data_frame <= MAX_FRAME_LENGTH:
            raise ValueError(f"max_data_frame {max_data_frame} is outside 1..2**24-1")
        self.client = client
        self.flow_control = flow_control
        self.auto_window_update = auto_window_update
        self._max_data_frame = max_data_frame
        self._compressor = HeaderCompressor()
        self._parser = FrameParser(HeaderDecompressor())
        self._out: list[bytes] = []
        self._streams: dict[int, _Stream] = {}
        self._blocked: dict[int, None] = {}  # streams with data waiting, in arrival order
        # Streams we reset, the latest _RESET_MEMORY of them: the peer's late frames are dropped.
        self._reset_ids: dict[int, None] = {}
        self._next_stream_id = 1 if client else 2
        self._next_ping_id = 1 if client else 2
        self._pings_out: set[int] = set()
        self._last_peer_stream_id = 0
        self._peer_initial_window = DEFAULT_WINDOW_SIZE  # sets send windows of new streams
        self._local_initial_window = initial_window_size  # sets receive windows of new streams
        self._send_session_window = DEFAULT_WINDOW_SIZE
        self._recv_session_window = DEFAULT_WINDOW_SIZE
        self._recv_session_size = DEFAULT_WINDOW_SIZE  # what the session window is topped up to
        self._recv_session_unacked = 0
        self._failed = False
        self.goaway_sent = False
        self.goaway_received = False
        if initial_window_size != DEFAULT_WINDOW_SIZE:
            # Settings.__post_init__ turns a {id: value} mapping into (id, value, flags) triples.
            self._queue(Settings(cast(_SettingsEntries, {SettingsId.INITIAL_WINDOW_SIZE: initial_window_size})))
        if initial_window_size > DEFAULT_WINDOW_SIZE:
            # A session window smaller than one stream's would make the bigger stream
            # window pointless, so the session grows with it.
            self._queue(WindowUpdate(0, initial_window_size - DEFAULT_WINDOW_SIZE))
            self._recv_session_window = self._recv_session_size = initial_window_size

    # ------------------------------------------------------------ output side

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call."""
        out = b"".join(self._out)
        self._out.clear()
        return out

    def open_stream(self, headers: HeadersArg = (), *, fin: bool = False,
                    unidirectional: bool = False, priority: int = 0,
                    associated_id: int = 0) -> int:
        """Send SYN_STREAM for a new stream of this side's parity and return its id."""
        if self.goaway_sent or self.goaway_received:
            raise LocalProtocolError("no new streams after GOAWAY")
        stream_id = self._next_stream_id
        if stream_id > MAX_STREAM_ID:
            raise LocalProtocolError("stream ids are used up; open a new connection")
        self._next_stream_id += 2
        # __post_init__ normalises the headers into HeaderPairs
        self._queue(SynStream(stream_id, associated_id, priority, cast(HeaderPairs, headers), fin, unidirectional))
        stream = _Stream(stream_id, True, self._peer_initial_window, self._local_initial_window)
        stream.local_closed = fin
        stream.remote_closed = unidirectional
        self._streams[stream_id] = stream
        self._forget_if_done(stream)
        return stream_id

    def reply(self, stream_id: int, headers: HeadersArg = (), fin: bool = False) -> None:
        """Accept a stream the peer opened by sending SYN_REPLY."""
        stream = self._stream_for_sending(stream_id)
        if stream.local_initiated:
            raise LocalProtocolError(f"stream {stream_id} was opened by this side; the peer replies")
        if stream.replied:
            raise LocalProtocolError(f"stream {stream_id} already has a SYN_REPLY")
        stream.replied = True
        self._queue(SynReply(stream_id, cast(HeaderPairs, headers), fin))  # normalised by __post_init__
        if fin:
            stream.local_closed = True
            self._forget_if_done(stream)

    def send_headers(self, stream_id: int, headers: HeadersArg, fin: bool = False) -> None:
        """Send HEADERS on a stream; it overtakes any data still waiting for window."""
        stream = self._stream_for_sending(stream_id)
        if not stream.local_initiated and not stream.replied:
            raise LocalProtocolError(f"stream {stream_id} needs reply() before HEADERS")
        if fin and stream.pending:
            raise LocalProtocolError(f"stream {stream_id} still has data waiting for window; "
                                     "end it with send_data(..., fin=True)")
        self._queue(Headers(stream_id, cast(HeaderPairs, headers), fin))  # normalised by __post_init__
        if fin:
            stream.local_closed = True
            self._forget_if_done(stream)

    def send_data(self, stream_id: int, data: bytes, fin: bool = False) -> int:
        """Queue `data` (and FIN) on a stream; return how many bytes still wait for window.

        Nothing is ever refused for lack of window: what does not fit is kept and sent as
        the peer's WINDOW_UPDATEs arrive, so a non-zero result is the caller's cue to
        slow down. Raises StreamClosedError if the stream is gone or already ended.
        """
        stream = self._stream_for_sending(stream_id)
        if not stream.local_initiated and not stream.replied:
            raise LocalProtocolError(f"stream {stream_id} needs reply() before data")
        view = memoryview(data)
        if view.nbytes and not stream.pending:
            sent = self._send_now(stream, view, fin)
            view = view[sent:]
            if not view.nbytes and fin:
                stream.local_closed = True
                self._forget_if_done(stream)
                return 0
        stream.pending += view
        if fin:
            stream.pending_fin = stream.local_closed = True
        self._flush(stream)
        return len(stream.pending)

    def end_stream(self, stream_id: int) -> None:
        """Half-close this side of a stream (a FIN after any data still waiting)."""
        self.send_data(stream_id, b"", fin=True)

    def reset(self, stream_id: int, status_code: int = CANCEL) -> None:
        """Abort a stream with RST_STREAM, dropping data still waiting for window.

        A stream that is already closed is left alone: the spec forbids answering a reset
        with a reset, and a race with the peer's own RST_STREAM is normal.
        """
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self._blocked.pop(stream_id, None)
        self._remember_reset(stream_id)
        self._queue(RstStream(stream_id, status_code))

    def goaway(self, status_code: int = GoAwayStatus.OK) -> None:
        """Tell the peer no new streams will be accepted; open streams carry on."""
        if not self.goaway_sent:
            self.goaway_sent = True
            self._queue(GoAway(self._last_peer_stream_id, status_code))

    def ping(self) -> int:
        """Send a PING and return its id; PingAcknowledged(id) reports the echo."""
        ping_id = self._next_ping_id
        self._next_ping_id = (self._next_ping_id + 2) & 0xFFFFFFFF or (1 if self.client else 2)
        self._pings_out.add(ping_id)
        self._queue(Ping(ping_id))
        return ping_id

    def window_update(self, stream_id: int, delta: int) -> None:
        """Grant the peer `delta` more bytes on a stream, or on the session if stream_id is 0."""
        self._queue(WindowUpdate(stream_id, delta))
        if stream_id == 0:
            self._recv_session_window += delta
            self._recv_session_size += delta
        elif (stream := self._streams.get(stream_id)) is not None:
            stream.recv_window += delta

    def acknowledge_received_data(self, stream_id: int, size: int) -> None:
        """Report `size` bytes of a stream's DATA as consumed (auto_window_update=False).

        Credit goes back to the peer in WINDOW_UPDATEs once half a window has built up,
        which keeps the update traffic small.
        """
        self._credit(self._streams.get(stream_id), size)

    def send_settings(self, settings: Mapping[int, int], clear: bool = False) -> None:
        """Send SETTINGS; a new INITIAL_WINDOW_SIZE also resizes open streams' windows."""
        frame = Settings(cast(_SettingsEntries, settings), clear)  # __post_init__ takes a mapping too
        new_window = frame.get(SettingsId.INITIAL_WINDOW_SIZE)
        if new_window is not None:
            if not 1 <= new_window <= MAX_WINDOW_SIZE:
                raise ValueError(f"initial window {new_window} is outside 1..2**31-1")
            for stream in self._streams.values():
                stream.recv_window += new_window - self._local_initial_window
            self._local_initial_window = new_window
        self._queue(frame)

    def stream_state(self, stream_id: int) -> StreamState:
        """Where a stream stands; streams never opened or forgotten are CLOSED."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return StreamState.CLOSED
        if stream.local_closed:
            return StreamState.CLOSED if stream.remote_closed else StreamState.HALF_CLOSED_LOCAL
        return StreamState.HALF_CLOSED_REMOTE if stream.remote_closed else StreamState.OPEN

    def buffered_amount(self, stream_id: int) -> int:
        """Bytes of a stream's data waiting for the peer's window."""
        stream = self._streams.get(stream_id)
        return len(stream.pending) if stream is not None else 0

    def send_window(self, stream_id: int = 0) -> int:
        """What the peer currently allows on a stream, or on the session (stream 0)."""
        if stream_id == 0:
            return self._send_session_window
        stream = self._streams.get(stream_id)
        return stream.send_window if stream is not None else 0

    @property
    def open_streams(self) -> list[int]:
        return list(self._streams)

    def _queue(self, frame: Frame) -> None:
        self._out.append(encode_frame(frame, self._compressor))

    def _stream_for_sending(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            raise StreamClosedError(f"stream {stream_id} is closed or reset; nothing more can be "
                                    "sent on it")
        return stream

    def _allowance(self, stream: _Stream, wanted: int) -> int:
        allowed = min(wanted, self._max_data_frame)
        if self.flow_control:
            allowed = min(allowed, stream.send_window, self._send_session_window)
        return allowed

    def _emit(self, stream: _Stream, chunk: bytes, fin: bool) -> None:
        # Header and payload go out as separate pieces so a big payload is copied only
        # once, when data_to_send() joins them.
        self._out.append(data_frame_header(stream.id, len(chunk), fin))
        if chunk:
            self._out.append(chunk)
        stream.send_window -= len(chunk)
        self._send_session_window -= len(chunk)

    def _send_now(self, stream: _Stream, view: memoryview, fin: bool) -> int:
        sent = 0
        while sent < view.nbytes:
            size = self._allowance(stream, view.nbytes - sent)
            if size <= 0:
                break
            last = sent + size == view.nbytes
            self._emit(stream, bytes(view[sent:sent + size]), fin and last)
            sent += size
        return sent

    def _flush(self, stream: _Stream) -> None:
        while stream.pending:
            size = self._allowance(stream, len(stream.pending))
            if size <= 0:
                self._blocked[stream.id] = None
                return
            chunk = bytes(stream.pending[:size])
            del stream.pending[:size]
            fin = stream.pending_fin and not stream.pending
            self._emit(stream, chunk, fin)
            if fin:
                stream.pending_fin = False
        if stream.pending_fin:  # an empty FIN costs no window
            self._emit(stream, b"", True)
            stream.pending_fin = False
        self._blocked.pop(stream.id, None)
        self._forget_if_done(stream)

    def _flush_blocked(self) -> None:
        for stream_id in list(self._blocked):
            stream = self._streams.get(stream_id)
            if stream is None:
                self._blocked.pop(stream_id, None)
            else:
                self._flush(stream)
            if self.flow_control and self._send_session_window <= 0:
                break

    def _remember_reset(self, stream_id: int) -> None:
        # Bounded: a peer opening streams only to have them refused must not grow it without
        # end. A late frame of a stream forgotten here gets an RST_STREAM, which is harmless.
        self._reset_ids[stream_id] = None
        if len(self._reset_ids) > _RESET_MEMORY:
            del self._reset_ids[next(iter(self._reset_ids))]

    def _forget_if_done(self, stream: _Stream) -> None:
        if stream.local_closed and stream.remote_closed and not stream.pending and not stream.pending_fin:
            self._streams.pop(stream.id, None)

    # ------------------------------------------------------------- input side

    def receive_data(self, data: bytes) -> list[Event]:
        """Process bytes from the peer and return what happened, in order.

        PINGs are echoed and protocol slips confined to one stream are answered with
        RST_STREAM (reported as StreamError if the application knew the stream), all
        queued for data_to_send(). A session-level violation queues GOAWAY and raises
        ProtocolError: send what data_to_send() returns, then close the connection.
        """
        if self._failed:
            raise ProtocolError("the connection already failed; close it")
        events: list[Event] = []
        self._parser.receive_data(data)
        try:
            while (frame := self._parser.next_frame()) is not None:
                self._handlers[type(frame)](self, frame, events)
        except ProtocolError as exc:
            self._failed = True
            if not self.goaway_sent:
                self.goaway_sent = True
                self._queue(GoAway(self._last_peer_stream_id, exc.goaway_status))
            exc.events = events
            raise
        return events

    def _is_local_id(self, stream_id: int) -> bool:
        return (stream_id % 2 == 1) == self.client

    def _stream_error(self, stream_id: int, status: int, events: list[Event]) -> None:
        stream = self._streams.pop(stream_id, None)
        self._blocked.pop(stream_id, None)
        self._remember_reset(stream_id)
        self._queue(RstStream(stream_id, status))
        if stream is not None:
            events.append(StreamError(stream_id, status))

    def _unknown_stream(self, stream_id: int, events: list[Event]) -> None:
        # Late frames for a stream we reset are expected; after our GOAWAY the spec says
        # to stay quiet about streams we no longer track.
        if stream_id not in self._reset_ids and not self.goaway_sent:
            self._queue(RstStream(stream_id, INVALID_STREAM))

    def _on_syn_stream(self, frame: SynStream, events: list[Event]) -> None:
        stream_id = frame.stream_id
        if self._is_local_id(stream_id):
            raise ProtocolError(f"peer opened stream {stream_id}, an id of this side's parity")
        if self.goaway_sent:
            return  # new streams after our GOAWAY are ignored, as the spec says
        if stream_id in self._streams:
            self._stream_error(stream_id, STREAM_IN_USE, events)
            return
        if stream_id <= self._last_peer_stream_id:
            raise ProtocolError(f"peer opened stream {stream_id} after stream "
                                f"{self._last_peer_stream_id}; ids must increase")
        self._last_peer_stream_id = stream_id
        stream = _Stream(stream_id, False, self._peer_initial_window, self._local_initial_window)
        stream.remote_closed = frame.fin
        stream.local_closed = frame.unidirectional
        self._streams[stream_id] = stream
        events.append(frame)
        self._forget_if_done(stream)

    def _on_syn_reply(self, frame: SynReply, events: list[Event]) -> None:
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            self._unknown_stream(frame.stream_id, events)
        elif not stream.local_initiated:
            self._stream_error(frame.stream_id, PROTOCOL_ERROR, events)
        elif stream.replied:
            self._stream_error(frame.stream_id, STREAM_IN_USE, events)
        else:
            stream.replied = True
            events.append(frame)
            if frame.fin:
                self._remote_fin(stream)

    def _on_headers(self, frame: Headers, events: list[Event]) -> None:
        stream = self._receiving_stream(frame.stream_id, events)
        if stream is not None:
            events.append(frame)
            if frame.fin:
                self._remote_fin(stream)

    def _receiving_stream(self, stream_id: int, events: list[Event]) -> _Stream | None:
        stream = self._streams.get(stream_id)
        if stream is None:
            self._unknown_stream(stream_id, events)
        elif stream.remote_closed:
            self._stream_error(stream_id, STREAM_ALREADY_CLOSED, events)
        elif stream.local_initiated and not stream.replied:
            self._stream_error(stream_id, PROTOCOL_ERROR, events)  # data before SYN_REPLY
        else:
            return stream
        return None

    def _on_data(self, frame: DataFrame, events: list[Event]) -> None:
        size = len(frame.data)
        self._recv_session_window -= size
        if self.flow_control and self._recv_session_window < 0:
            raise ProtocolError(f"peer overran the session window by {-self._recv_session_window} bytes")
        stream = self._receiving_stream(frame.stream_id, events)
        if stream is None:
            self._credit(None, size)  # nobody will consume it; the session must not shrink
            return
        stream.recv_window -= size
        if self.flow_control and stream.recv_window < 0:
            self._credit(None, size)
            self._stream_error(stream.id, FLOW_CONTROL_ERROR, events)
            return
        events.append(frame)
        if frame.fin:
            self._remote_fin(stream)
        if self.auto_window_update:
            self._credit(stream, size)

    def _credit(self, stream: _Stream | None, size: int) -> None:
        if size <= 0:
            return
        self._recv_session_unacked += size
        if self._recv_session_unacked >= self._recv_session_size // 2:
            self._queue(WindowUpdate(0, self._recv_session_unacked))
            self._recv_session_window += self._recv_session_unacked
            self._recv_session_unacked = 0
        if stream is None or stream.remote_closed or stream.id not in self._streams:
            return  # a stream the peer can no longer send on needs no credit
        stream.recv_unacked += size
        if stream.recv_unacked >= self._local_initial_window // 2:
            self._queue(WindowUpdate(stream.id, stream.recv_unacked))
            stream.recv_window += stream.recv_unacked
            stream.recv_unacked = 0

    def _remote_fin(self, stream: _Stream) -> None:
        stream.remote_closed = True
        self._forget_if_done(stream)

    def _on_rst_stream(self, frame: RstStream, events: list[Event]) -> None:
        stream = self._streams.pop(frame.stream_id, None)
        self._blocked.pop(frame.stream_id, None)
        if stream is not None:
            events.append(frame)

    def _on_settings(self, frame: Settings, events: list[Event]) -> None:
        new_window = frame.get(SettingsId.INITIAL_WINDOW_SIZE)
        if new_window is not None:
            if new_window > MAX_WINDOW_SIZE:
                raise ProtocolError(f"SETTINGS initial window {new_window} exceeds 2**31-1")
            # The change applies to open streams too, and may leave a window negative.
            for stream in self._streams.values():
                stream.send_window += new_window - self._peer_initial_window
            self._peer_initial_window = new_window
            self._flush_blocked()
        events.append(frame)

    def _on_ping(self, frame: Ping, events: list[Event]) -> None:
        if (frame.id % 2 == 1) != self.client:
            self._queue(frame)  # the peer's ping: echo it unchanged
            events.append(frame)
        elif frame.id in self._pings_out:
            self._pings_out.discard(frame.id)
            events.append(PingAcknowledged(frame.id))
        # An echo of a ping we never sent is ignored, as the spec asks.

    def _on_goaway(self, frame: GoAway, events: list[Event]) -> None:
        self.goaway_received = True
        events.append(frame)

    def _on_window_update(self, frame: WindowUpdate, events: list[Event]) -> None:
        if frame.delta == 0:
            return
        if frame.stream_id == 0:
            if self._send_session_window + frame.delta > MAX_WINDOW_SIZE:
                raise ProtocolError("peer grew the session window beyond 2**31-1")
            self._send_session_window += frame.delta
            self._flush_blocked()
            return
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            return  # updates may trail a stream's end; they are harmless
        if stream.send_window + frame.delta > MAX_WINDOW_SIZE:
            self._stream_error(stream.id, FLOW_CONTROL_ERROR, events)
            return
        stream.send_window += frame.delta
        if stream.pending or stream.pending_fin:
            self._flush(stream)

    _handlers: ClassVar[dict] = {
        SynStream: _on_syn_stream,
        SynReply: _on_syn_reply,
        Headers: _on_headers,
        DataFrame: _on_data,
        RstStream: _on_rst_stream,
        Settings: _on_settings,
        Ping: _on_ping,
        GoAway: _on_goaway,
        WindowUpdate: _on_window_update,
    }
