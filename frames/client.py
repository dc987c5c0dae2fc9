"""cricketd's asynchronous client of the frame protocol (api/shim/v1/shim.proto): one request
per connection, descriptors alongside. Apart from frames/channel.py, whose serving side the
zygote and the shims import: asyncio stays out of every shim.
"""
from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from typing import cast

from frames import channel
from frames.framing import FrameReader, encode


async def _read_frame(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One frame from a non-blocking socket, and any descriptors sent with it.

    asyncio's streams cannot carry descriptors, so this reads with recvmsg
    whenever the loop says the socket is readable.
    """
    loop = asyncio.get_running_loop()
    reader = FrameReader()
    fds: list[int] = []
    while True:
        try:
            data, got = channel.recv(sock)
        except BlockingIOError:
            ready = loop.create_future()
            # cast: mypy cannot infer a lambda with a default against add_reader's *args callback type
            loop.add_reader(sock.fileno(),
                            cast("Callable[[], object]", lambda ready=ready: ready.done() or ready.set_result(None)))
            try:
                await ready
            finally:
                loop.remove_reader(sock.fileno())
            continue
        fds.extend(got)
        if not data:
            for fd in fds:
                os.close(fd)
            raise channel.ChannelClosed("connection closed before a whole frame arrived")
        frames = reader.feed(data)
        if frames:
            return frames[0], fds


async def call(path: str, payload: bytes, fds=()) -> bytes:
    """Send one request to the server listening at `path` and return its answer."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    try:
        with channel.reachable(path) as name:
            await loop.sock_connect(sock, name)
        frame = encode(payload)
        if fds:
            # The descriptors ride on the first byte; a unix socket's buffer always takes one.
            socket.send_fds(sock, [frame[:1]], list(fds))
            frame = frame[1:]
        await loop.sock_sendall(sock, frame)
        answer, extra = await _read_frame(sock)
        for fd in extra:
            os.close(fd)
        return answer
    finally:
        sock.close()
