"""Fuzz target: Kubernetes channel WebSockets (cri/streaming/websocket.py): wsproto's parsing of the
client's frames, and the channel messages Cricket makes of them, as the streaming server reads them
after the upgrade.

The input is what the client sends after its upgrade request (v4 or v5, by the first byte),
arriving in pieces of a size the second byte picks. The read loop must end — at the end of the
bytes, or on a close — without any exception, every channel read then ends, and nothing waits
forever. wsproto answers a malformed frame with a close: no exception is documented, none may
escape."""
from __future__ import annotations

import asyncio

import h11

from fuzz.harness import instrumented, run

with instrumented(__name__ == "__main__"):
    from cri.streaming.websocket import ChannelSocket

EXPECTED: tuple[type[BaseException], ...] = ()
_PROTOCOLS = ("v4.channel.k8s.io", "v5.channel.k8s.io")
_HEADERS = [("Host", "127.0.0.1"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]


class _Writer:
    """An asyncio.StreamWriter's surface, keeping what the server writes."""

    def __init__(self):
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


async def _session(protocol: str, body: bytes, piece: int) -> None:
    reader = asyncio.StreamReader()
    writer = _Writer()
    request = h11.Request(method="GET", target="/exec/token", headers=[*_HEADERS, ("Sec-WebSocket-Protocol", protocol)])
    sock = ChannelSocket(reader, writer, request, protocol, inbound_limit=64 << 10)  # type: ignore[arg-type]
    await sock.accept()
    ended: set[int] = set()  # channels whose end (b"") was read
    for at in range(0, len(body), piece):
        reader.feed_data(body[at:at + piece])
        await asyncio.sleep(0)
        for number in list(sock._inbound):  # a consumer that keeps up, so the limit does not stall the loop
            while number not in ended and not sock._inbound[number].empty():
                if not await sock.read(number):
                    ended.add(number)
    reader.feed_eof()
    task = sock._task
    assert task is not None
    await asyncio.wait_for(asyncio.shield(task), 5)
    if task.exception() is not None:
        raise task.exception()  # type: ignore[misc]
    # Every channel ends once the connection has: a reader waits for nothing.
    for number in {0, 4, 7, *sock._inbound} - ended:
        while await asyncio.wait_for(sock.read(number), 5):
            pass
    await sock.close()


_loop = asyncio.new_event_loop()


def check(data: bytes) -> None:
    if len(data) < 2:
        return
    body = data[2:]
    # At most some 256 pieces: each costs a turn of the loop, and a long input cut into single
    # bytes would measure the harness, not the parser (a 13 KB one took 3 s so).
    protocol, piece = _PROTOCOLS[data[0] % 2], max(data[1] * 64 + 1, len(body) // 256)
    _loop.run_until_complete(_session(protocol, body, piece))


if __name__ == "__main__":
    run(check, EXPECTED)
