"""Port forwarding into a pod: SPDY (portforward.k8s.io) and WebSocket, as kubelet serves them.

Each forwarded connection is a TCP connection to localhost:<port> made inside the
pod's network namespace (the socket is made by a thread that joined it, and keeps
it), its bytes relayed both ways. Over SPDY the client opens a data and an error
stream per connection, paired by their requestID header; over WebSocket each
port of the request has a data and an error channel for the socket's lifetime.
A failure to connect is reported on the error stream, as kubelet words it.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Any

from cri.streaming.spdy_session import SpdySession, SpdyStream
from cri.streaming.websocket import ChannelSocket
from linux.namespaces import run_in

log = logging.getLogger(__name__)
CONNECT_SECONDS = 10.0
_READ = 64 * 1024


async def dial(netns: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to localhost:port in the network namespace `netns` ("" for the host's)."""
    def connect() -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=CONNECT_SECONDS)

    sock = await asyncio.to_thread(run_in, netns, connect) if netns else await asyncio.to_thread(connect)
    sock.setblocking(False)
    return await asyncio.open_connection(sock=sock)


def _failure(port: int, sandbox_id: str, error: BaseException) -> bytes:
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return f"error forwarding port {port} to pod {sandbox_id}: {reason}".encode()


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, recv, send, end,
                 half_close: bool = True) -> None:
    """Bytes both ways between a socket and a stream-like pair (recv() -> bytes, b"" at its end;
    send(data); end() once the socket has no more). With `half_close`, until both directions
    are done; without (a client that cannot half-close), until the socket's side is."""
    async def to_socket():
        try:
            while data := await recv():
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            # The pod's side is gone, but the client may still send: its data is read and
            # dropped, since data left unread holds up the client's whole session.
            while await recv():
                pass

    async def from_socket():
        try:
            while data := await reader.read(_READ):
                await send(data)
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                await end()
            except (ConnectionError, OSError):
                pass

    inbound, outbound = asyncio.create_task(to_socket()), asyncio.create_task(from_socket())
    try:
        if half_close:
            await asyncio.gather(inbound, outbound)
        else:
            await outbound
    finally:
        inbound.cancel()
        outbound.cancel()
        writer.close()


# -- SPDY --------------------------------------------------------------------------------


async def serve_spdy(session: SpdySession, netns: str, sandbox_id: str) -> None:
    """Forward every data/error stream pair the client opens, until it hangs up."""
    pending: dict[str, dict[str, SpdyStream]] = {}
    tasks: set[asyncio.Task] = set()
    try:
        while (stream := await session.next_stream(timeout=None)) is not None:
            # Halves of pairs whose streams have closed are dropped: a client that opens only
            # data streams would otherwise pile them up here for the session's life.
            for rid in [rid for rid, p in pending.items() if all(s.id not in session.streams for s in p.values())]:
                del pending[rid]
            request_id = stream.header("requestID") or str(stream.id)
            pair = pending.setdefault(request_id, {})
            pair[stream.header("streamType")] = stream
            if "data" in pair and "error" in pair:
                del pending[request_id]
                task = asyncio.create_task(_forward_spdy(pair["data"], pair["error"], netns, sandbox_id))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()


async def _forward_spdy(data: SpdyStream, error: SpdyStream, netns: str, sandbox_id: str) -> None:
    try:
        port = int(data.header("port"))
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is out of range")
    except ValueError as e:
        await error.write(f"invalid port header {data.header('port')!r}: {e}".encode())
        await error.close()
        await data.close()
        return
    try:
        reader, writer = await dial(netns, port)
    except OSError as e:
        await error.write(_failure(port, sandbox_id, e))
        await error.close()
        await data.close()
        return
    await _relay(reader, writer, data.read, data.write, data.close)
    await error.close()


# -- WebSocket ---------------------------------------------------------------------------


async def serve_websocket(sock: ChannelSocket, netns: str, sandbox_id: str, ports: list[int]) -> None:
    await sock.accept()
    for i, port in enumerate(ports):
        # Each channel opens with its port, two bytes little-endian, as kubelet writes it.
        await sock.write(2 * i, struct.pack("<H", port))
        await sock.write(2 * i + 1, struct.pack("<H", port))
    tasks = [asyncio.create_task(_forward_ws(sock, i, port, netns, sandbox_id)) for i, port in enumerate(ports)]
    try:
        waited: list[asyncio.Future[Any]] = [asyncio.create_task(sock.closed.wait()), asyncio.gather(*tasks)]
        await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sock.close()


async def _forward_ws(sock: ChannelSocket, i: int, port: int, netns: str, sandbox_id: str) -> None:
    try:
        reader, writer = await dial(netns, port)
    except OSError as e:
        await sock.write(2 * i + 1, _failure(port, sandbox_id, e))
        return

    async def end():
        await sock.close_channel(2 * i)

    # A WebSocket client cannot half-close a port's channel: the pod's side ending ends it, as in
    # kubelet, and once every port's has, the WebSocket.
    await _relay(reader, writer, lambda: sock.read(2 * i), lambda data: sock.write(2 * i, data), end,
                 half_close=False)
