"""One request per connection over a unix socket: a frame each way, file descriptors alongside.

The zygote and the shims serve; cricketd's asynchronous client is in frames/client.py.
Nothing here imports asyncio: every module the zygote loads is in every shim.
"""
from __future__ import annotations

import array
import contextlib
import os
import socket

from frames.framing import FrameReader, encode

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


def recv(sock: socket.socket) -> tuple[bytes, list[int]]:
    data, ancdata, _flags, _addr = sock.recvmsg(_CHUNK, socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize))
    fds = _take_fds(ancdata)
    for fd in fds:
        os.set_inheritable(fd, False)
    return data, fds


def read_frame_blocking(sock: socket.socket) -> bytes:
    reader = FrameReader()
    while True:
        data, fds = recv(sock)
        for fd in fds:
            os.close(fd)
        if not data:
            raise ChannelClosed("connection closed before a whole frame arrived")
        frames = reader.feed(data)
        if frames:
            return frames[0]


def write_frame_blocking(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(encode(payload))
