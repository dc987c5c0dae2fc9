"""The server's end of a SPDY/3.1 session on an asyncio connection.

spdy.Connection does the protocol on bytes; this module does the I/O: a reader
task feeds it what arrives, each stream the peer opens is handed out with its
headers, and what the application writes goes straight to the socket. All
Kubernetes streams are opened by the client; the server only replies.
"""
from __future__ import annotations

import asyncio
import logging

from cri.streaming import spdy

log = logging.getLogger(__name__)
_READ = 64 * 1024
# Streams a client may hold open in one session: an exec needs five, a port-forward two per
# connection it forwards. More are refused (RST_STREAM REFUSED_STREAM), as the spec has it.
MAX_STREAMS = 256
# Data from the client not yet read by whoever serves its streams. Kubernetes' SPDY has no flow
# control, so this is the session's: past it the session stops reading from its socket until
# the data is consumed, and TCP holds the client back.
INBOUND_LIMIT = 4 << 20


class SpdyStream:
    """One stream the client opened: its headers, its data as it comes, and a way back."""

    def __init__(self, session: SpdySession, stream_id: int, headers: dict[str, str]):
        self.session = session
        self.id = stream_id
        self.headers = headers
        self._inbound: asyncio.Queue[bytes] = asyncio.Queue()
        self._ended = False  # the client half-closed or reset it: no more data comes

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    async def read(self) -> bytes:
        """The next data from the client; b"" once it has closed its side."""
        data = await self._inbound.get()
        self.session._consumed(len(data))
        return data

    async def write(self, data: bytes) -> None:
        await self.session.send(self.id, data)

    async def close(self) -> None:
        """Half-close our side (FIN); the client may go on sending."""
        await self.session.end(self.id)

    def _deliver(self, data: bytes) -> None:
        if not self._ended:
            self._inbound.put_nowait(data)
            self.session._buffered(len(data))

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._inbound.put_nowait(b"")


class SpdySession:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, already_read: bytes = b"",
                 max_streams: int = MAX_STREAMS, inbound_limit: int = INBOUND_LIMIT):
        self.reader = reader
        self.writer = writer
        self.conn = spdy.Connection(client=False, flow_control=False)
        self.streams: dict[int, SpdyStream] = {}  # the open ones
        self.opened: asyncio.Queue[SpdyStream | None] = asyncio.Queue()  # None: the session ended
        self.closed = asyncio.Event()
        self.max_streams = max_streams
        self.accepting = True  # False once the application wants no more streams
        self.inbound_limit = inbound_limit
        self._unread = 0
        self._room = asyncio.Event()  # set while _unread is within the limit
        self._room.set()
        self._already_read = already_read
        self._task: asyncio.Task | None = None

    def stop_accepting(self) -> None:
        """Refuse the streams the client opens from now on (an exec has all it needs)."""
        self.accepting = False

    def _buffered(self, size: int) -> None:
        self._unread += size
        if self._unread > self.inbound_limit:
            self._room.clear()

    def _consumed(self, size: int) -> None:
        self._unread -= size
        if self._unread <= self.inbound_limit:
            self._room.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._read_loop())

    async def _read_loop(self) -> None:
        data = self._already_read
        try:
            while True:
                if data:
                    try:
                        events = self.conn.receive_data(data)
                    except spdy.ProtocolError as e:
                        log.info("streaming: SPDY protocol error from the client: %s", e)
                        for event in getattr(e, "events", ()):
                            self._on_event(event)
                        await self._flush()
                        return
                    for event in events:
                        self._on_event(event)
                    await self._flush()
                await self._room.wait()
                data = await self.reader.read(_READ)
                if not data:
                    return
        except (ConnectionError, OSError):
            return
        finally:
            self._ended()

    def _on_event(self, event) -> None:
        stream: SpdyStream | None
        if isinstance(event, spdy.SynStream):
            # Streams closed both ways are forgotten here, so the count is of open ones.
            for sid in [sid for sid in self.streams if self.conn.stream_state(sid) is spdy.StreamState.CLOSED]:
                del self.streams[sid]
            if not self.accepting or len(self.streams) >= self.max_streams:
                self.conn.reset(event.stream_id, spdy.REFUSED_STREAM)
                log.info("streaming: refused stream %d of a client: %s", event.stream_id,
                         f"{self.max_streams} open streams is the limit of a session" if self.accepting
                         else "the session has all the streams it needs")
                return
            stream = SpdyStream(self, event.stream_id, {k.lower(): v for k, v in event.headers})
            self.streams[event.stream_id] = stream
            self.conn.reply(event.stream_id)  # Kubernetes clients wait for the reply, which carries nothing
            if event.fin:
                stream._end()
            self.opened.put_nowait(stream)
        elif isinstance(event, spdy.DataFrame):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                if event.data:
                    stream._deliver(event.data)
                if event.fin:
                    stream._end()
        elif isinstance(event, (spdy.Headers,)):
            if event.fin and event.stream_id in self.streams:
                self.streams[event.stream_id]._end()
        elif isinstance(event, (spdy.RstStream, spdy.StreamError)):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                stream._end()
        elif isinstance(event, spdy.GoAway):
            self.opened.put_nowait(None)

    def _ended(self) -> None:
        for stream in self.streams.values():
            stream._end()
        self.opened.put_nowait(None)
        self.closed.set()
        self._room.set()

    async def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out and not self.writer.is_closing():
            self.writer.write(out)
            await self.writer.drain()

    async def send(self, stream_id: int, data: bytes) -> None:
        if self.closed.is_set() or self.conn.stream_state(stream_id) in (spdy.StreamState.CLOSED,
                                                                        spdy.StreamState.HALF_CLOSED_LOCAL):
            raise ConnectionError(f"stream {stream_id} is closed")
        self.conn.send_data(stream_id, data)
        await self._flush()

    async def end(self, stream_id: int) -> None:
        if self.closed.is_set():
            return
        if self.conn.stream_state(stream_id) not in (spdy.StreamState.CLOSED, spdy.StreamState.HALF_CLOSED_LOCAL):
            self.conn.end_stream(stream_id)
            try:
                await self._flush()
            except (ConnectionError, OSError):
                pass

    async def next_stream(self, timeout: float | None) -> SpdyStream | None:
        """The next stream the client opens; None if the session ends or none comes in time."""
        try:
            return await asyncio.wait_for(self.opened.get(), timeout)
        except TimeoutError:
            return None

    async def close(self) -> None:
        """End the session: GOAWAY, then the connection."""
        if not self.closed.is_set():
            try:
                self.conn.goaway()
                await self._flush()
            except (ConnectionError, OSError, spdy.LocalProtocolError):
                pass
        self.writer.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 1.0)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
