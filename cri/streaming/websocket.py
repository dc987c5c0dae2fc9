"""The server's end of a Kubernetes channel WebSocket on an asyncio connection (wsproto).

Kubernetes multiplexes streams over one WebSocket by prefixing each binary
message with a channel number: for remote commands 0 stdin, 1 stdout, 2 stderr,
3 error, 4 resize; for port forwarding two channels per port. Protocol
v5.channel.k8s.io adds a close signal: a message on channel 255 whose one byte
names the channel the sender is done writing to.
"""
from __future__ import annotations

import asyncio

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    TextMessage,
)

CLOSE_CHANNEL = 255
_READ = 64 * 1024
# Data from the client not yet read by whoever serves its channels: past this the socket is not
# read until it is consumed, and TCP holds the client back (as in spdy_session.py).
INBOUND_LIMIT = 4 << 20


class ChannelSocket:
    """Channels in, channels out; one inbound queue per channel, b"" when the peer closed it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: h11.Request,
                 subprotocol: str, already_read: bytes = b"", inbound_limit: int = INBOUND_LIMIT):
        self.reader = reader
        self.writer = writer
        self.subprotocol = subprotocol
        self.ws = WSConnection(ConnectionType.SERVER)
        # wsproto annotates a list of pairs, but only hands them to h11.Request, which takes its Headers.
        self.ws.initiate_upgrade_connection(request.headers, request.target)  # type: ignore[arg-type]
        self._already_read = already_read
        self._inbound: dict[int, asyncio.Queue[bytes]] = {}
        self._partial = b""
        self.closed = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.inbound_limit = inbound_limit
        self._unread = 0
        self._room = asyncio.Event()  # set while _unread is within the limit
        self._room.set()

    async def accept(self) -> None:
        self.writer.write(self.ws.send(AcceptConnection(subprotocol=self.subprotocol)))
        await self.writer.drain()
        self._task = asyncio.create_task(self._read_loop())

    def channel(self, number: int) -> asyncio.Queue[bytes]:
        if number not in self._inbound:
            self._inbound[number] = asyncio.Queue()
            if self.closed.is_set():
                self._inbound[number].put_nowait(b"")
        return self._inbound[number]

    async def read(self, number: int) -> bytes:
        data = await self.channel(number).get()
        self._unread -= len(data)
        if self._unread <= self.inbound_limit:
            self._room.set()
        return data

    def _deliver(self, number: int, data: bytes) -> None:
        self.channel(number).put_nowait(data)
        self._unread += len(data)
        if self._unread > self.inbound_limit:
            self._room.clear()

    async def write(self, number: int, data: bytes) -> None:
        if self.closed.is_set():
            raise ConnectionError("the WebSocket is closed")
        self.writer.write(self.ws.send(BytesMessage(data=bytes([number]) + data)))
        await self.writer.drain()

    async def close_channel(self, number: int) -> None:
        """v5: tell the peer nothing more comes on `number`."""
        if self.subprotocol.startswith("v5.") and not self.closed.is_set():
            await self.write(CLOSE_CHANNEL, bytes([number]))

    async def _read_loop(self) -> None:
        data = self._already_read
        try:
            while True:
                if data:
                    self.ws.receive_data(data)
                    for event in self.ws.events():
                        if not await self._on_event(event):
                            return
                await self._room.wait()
                data = await self.reader.read(_READ)
                if not data:
                    self.ws.receive_data(None)
                    return
        except (ConnectionError, OSError):
            return
        finally:
            self.closed.set()
            self._room.set()
            for queue in self._inbound.values():
                queue.put_nowait(b"")

    async def _on_event(self, event) -> bool:
        if isinstance(event, (BytesMessage, TextMessage)):
            data = event.data if isinstance(event, BytesMessage) else event.data.encode()
            self._partial += data
            if len(self._partial) > self.inbound_limit:
                # One message this big is no channel traffic a Kubernetes client sends.
                self.writer.write(self.ws.send(CloseConnection(code=1009, reason="message too big")))
                await self.writer.drain()
                return False
            if not event.message_finished:
                return True
            message, self._partial = self._partial, b""
            if not message:
                return True
            number, payload = message[0], message[1:]
            if number == CLOSE_CHANNEL and self.subprotocol.startswith("v5."):
                if payload:
                    self.channel(payload[0]).put_nowait(b"")
            elif payload:
                self._deliver(number, payload)
            return True
        if isinstance(event, Ping):
            self.writer.write(self.ws.send(event.response()))
            await self.writer.drain()
            return True
        if isinstance(event, CloseConnection):
            try:
                self.writer.write(self.ws.send(event.response()))
                await self.writer.drain()
            except Exception:
                pass
            return False
        return True

    async def close(self) -> None:
        if not self.closed.is_set():
            try:
                self.writer.write(self.ws.send(CloseConnection(code=1000)))
                await self.writer.drain()
            except Exception:
                pass
        self.writer.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 1.0)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
