"""cricketd's asynchronous client of the frame protocol (api/shim/v1/shim.proto): one request
per connection, descriptors alongside. Apart from frames/channel.py, whose serving side the
zygote and the shims import: asyncio stays out of every shim.
"""
from __future__ import annotations

import asyncio
import errno
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


# How long a server whose backlog stays full is waited for before the call fails.
CONNECT_WAIT_SECONDS = 30.0


async def _connect(sock: socket.socket, name: str, path: str) -> None:
    """Connect the non-blocking unix socket `sock` to `name`, waiting out a full backlog.

    A unix socket never connects in the background: connect(2) succeeds, fails, or answers
    EAGAIN when the listener's backlog is full. asyncio's sock_connect() takes that EAGAIN
    for a connect in progress and returns an unconnected socket once it is writable (the
    first send then fails with ENOTCONN), so a burst of calls — a hundred pods at once —
    would fail some of them. Here EAGAIN means: try again shortly."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_WAIT_SECONDS
    delay = 0.001
    while True:
        try:
            sock.connect(name)
            return
        except BlockingIOError:
            if loop.time() >= deadline:
                raise OSError(errno.EAGAIN, f"the server at {path} took no connection for "
                                            f"{CONNECT_WAIT_SECONDS:.0f}s: its backlog stayed full") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)


async def call(path: str, payload: bytes, fds=()) -> bytes:
    """Send one request to the server listening at `path` and return its answer."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    try:
        with channel.reachable(path) as name:
            await _connect(sock, name, path)
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
