"""One request per connection over a unix socket: a frame each way, file descriptors alongside.

asyncio's streams cannot carry descriptors, so the asynchronous side reads with
recvmsg when the loop says the socket is readable. The zygote, which serves
one request at a time, uses the blocking forms.
"""
from __future__ import annotations

import array
import asyncio
import contextlib
import os
import socket

from shim.framing import FrameReader, encode

_CHUNK = 64 * 1024
MAX_FDS = 4


_SUN_PATH_MAX = 107  # sockaddr_un's sun_path, less its terminating NUL


@contextlib.contextmanager
def reachable(path: str):
    """A name for the socket `path` that fits sockaddr_un: the path itself when short enough,
    else the same file through a descriptor of its directory (/proc/self/fd/N/name)."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield path
        return
    fd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{os.path.basename(path)}"
    finally:
        os.close(fd)


class ChannelClosed(ConnectionError):
    """The peer closed the connection before a whole frame arrived."""


def _take_fds(ancdata) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
            fds.extend(arr)
    return fds


def _recv(sock: socket.socket) -> tuple[bytes, list[int]]:
    data, ancdata, _flags, _addr = sock.recvmsg(_CHUNK, socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize))
    fds = _take_fds(ancdata)
    for fd in fds:
        os.set_inheritable(fd, False)
    return data, fds


async def read_frame(sock: socket.socket) -> tuple[bytes, list[int]]:
    """Read one frame from a non-blocking socket; returns the payload and any descriptors sent with it."""
    loop = asyncio.get_running_loop()
    reader = FrameReader()
    fds: list[int] = []
    while True:
        try:
            data, got = _recv(sock)
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_reader(sock.fileno(), lambda: ready.done() or ready.set_result(None))
            try:
                await ready
            finally:
                loop.remove_reader(sock.fileno())
            continue
        fds.extend(got)
        if not data:
            for fd in fds:
                os.close(fd)
            raise ChannelClosed("connection closed before a whole frame arrived")
        frames = reader.feed(data)
        if frames:
            return frames[0], fds


async def write_frame(sock: socket.socket, payload: bytes, fds=()) -> None:
    loop = asyncio.get_running_loop()
    frame = encode(payload)
    if fds:
        # The descriptors ride on the first byte; a unix socket's buffer always takes one.
        socket.send_fds(sock, [frame[:1]], list(fds))
        frame = frame[1:]
    await loop.sock_sendall(sock, frame)


async def call(path: str, payload: bytes, fds=()) -> bytes:
    """Send one request to the server at `path` and return its answer."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    try:
        with reachable(path) as name:
            await loop.sock_connect(sock, name)
        await write_frame(sock, payload, fds)
        answer, extra = await read_frame(sock)
        for fd in extra:
            os.close(fd)
        return answer
    finally:
        sock.close()


def read_frame_blocking(sock: socket.socket) -> bytes:
    reader = FrameReader()
    while True:
        data, fds = _recv(sock)
        for fd in fds:
            os.close(fd)
        if not data:
            raise ChannelClosed("connection closed before a whole frame arrived")
        frames = reader.feed(data)
        if frames:
            return frames[0]


def write_frame_blocking(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(encode(payload))
