"""What a streaming client can make cricketd hold: connections per client address, streams per
SPDY session, unread data per session (SPDY and WebSocket), and the leftovers of a command's
input and terminal sizes. Real sockets on loopback; no daemon, no containers."""
from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request

from cri.streaming import spdy
from cri.streaming.channels import spdy_channels
from cri.streaming.portforward import _relay
from cri.streaming.remotecommand import Channels, Options, _pump_in, _pump_resize
from cri.streaming.server import MAX_CONNECTIONS_PER_CLIENT, StreamingServer
from cri.streaming.spdy_session import INBOUND_LIMIT, MAX_STREAMS, SpdySession
from cri.streaming.websocket import ChannelSocket


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


# -- connections per client ------------------------------------------------------------


async def http_answer(host: str, port: int, source: str = "127.0.0.1") -> bytes:
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    writer.write(b"GET /exec/unknown HTTP/1.1\r\nHost: cricket\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


def test_a_client_holds_at_most_its_share_of_connections():
    async def main():
        server = StreamingServer(None, "127.0.0.1", 0, max_connections_per_client=3)  # type: ignore[arg-type]
        await server.start()
        try:
            idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
            await asyncio.sleep(0.1)
            refused = await http_answer("127.0.0.1", server.port)
            assert refused.startswith(b"HTTP/1.1 429 ")
            assert b"too many streaming connections from 127.0.0.1: 3 at once is the limit" in refused
            # Another client address is not held back by this one...
            assert (await http_answer("127.0.0.1", server.port, source="127.0.0.2")).startswith(b"HTTP/1.1 404 ")
            # ...and a connection that ends gives its place back.
            idle[0][1].close()
            await asyncio.sleep(0.1)
            assert (await http_answer("127.0.0.1", server.port)).startswith(b"HTTP/1.1 404 ")
            for _, writer in idle[1:]:
                writer.close()
            await asyncio.sleep(0.1)
            assert server._per_client == {}
        finally:
            await server.stop()

    run(main())


def test_the_default_share_is_a_bound():
    async def main():
        server = StreamingServer(None, "127.0.0.1", 0)  # type: ignore[arg-type]
        await server.start()
        try:
            idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(MAX_CONNECTIONS_PER_CLIENT)]
            await asyncio.sleep(0.2)
            assert (await http_answer("127.0.0.1", server.port)).startswith(b"HTTP/1.1 429 ")
            for _, writer in idle:
                writer.close()
        finally:
            await server.stop()

    assert 16 <= MAX_CONNECTIONS_PER_CLIENT <= 1024
    run(main())


# -- SPDY sessions ---------------------------------------------------------------------


class Peer:
    """The client's end of a SPDY session over a real socket."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.conn = spdy.Connection(client=True, flow_control=False)
        self.events: list = []

    async def open(self, stream_type: str = "data", fin: bool = False) -> int:
        sid = self.conn.open_stream([("streamtype", stream_type)], fin=fin)
        await self.flush()
        return sid

    async def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()

    async def receive(self, until, timeout: float = 10) -> None:
        async def loop():
            while not until():
                data = await self.reader.read(65536)
                assert data, "the session ended"
                self.events += self.conn.receive_data(data)
        await asyncio.wait_for(loop(), timeout)

    def refused(self) -> set[int]:
        return {e.stream_id for e in self.events
                if isinstance(e, (spdy.RstStream, spdy.StreamError)) and e.status_code == spdy.REFUSED_STREAM}

    def replied(self) -> set[int]:
        return {e.stream_id for e in self.events if isinstance(e, spdy.SynReply)}


@contextlib.asynccontextmanager
async def spdy_pair(**session_args):
    sessions: asyncio.Queue[SpdySession] = asyncio.Queue()
    done = asyncio.Event()

    async def serve(reader, writer):
        session = SpdySession(reader, writer, **session_args)
        session.start()
        await sessions.put(session)
        await done.wait()
        await session.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        yield Peer(reader, writer), await sessions.get()
    finally:
        done.set()
        writer.close()
        server.close()


def test_a_session_holds_at_most_max_streams_open():
    async def main():
        async with spdy_pair(max_streams=4) as (peer, session):
            ids = [await peer.open() for _ in range(5)]
            await peer.receive(lambda: ids[4] in peer.refused() and len(peer.replied()) == 4)
            assert peer.replied() == set(ids[:4])
            # A stream closed both ways no longer counts.
            first = await session.next_stream(1)
            assert first is not None and first.id == ids[0]
            await first.close()
            peer.conn.end_stream(ids[0])
            await peer.flush()
            await peer.receive(lambda: peer.conn.stream_state(ids[0]) is spdy.StreamState.CLOSED)
            sixth = await peer.open()
            await peer.receive(lambda: sixth in peer.replied())
            assert sixth not in peer.refused()

    assert 16 <= MAX_STREAMS <= 4096
    run(main())


def test_an_exec_session_takes_no_streams_beyond_its_own():
    async def main():
        async with spdy_pair() as (peer, session):
            for kind in ("error", "stdout"):
                await peer.open(kind)
            channels = await spdy_channels(session, Options(False, True, False, False), "v4.channel.k8s.io")
            assert channels is not None and set(channels.streams) == {"error", "stdout"}
            extra = await peer.open("stdin")
            await peer.receive(lambda: extra in peer.refused())

    run(main())


def test_refused_streams_are_remembered_within_a_bound():
    conn = spdy.Connection(client=False, flow_control=False)
    for _ in range(10_000):
        conn.reset(conn.open_stream(), spdy.CANCEL)
    assert len(conn._reset_ids) <= 1024


def test_unread_data_holds_the_client_back_not_the_daemons_memory():
    async def main():
        async with spdy_pair(inbound_limit=256 << 10) as (peer, session):
            sid = await peer.open()
            stream = await session.next_stream(5)
            assert stream is not None
            chunk = os.urandom(64 << 10)

            async def flood():
                for _ in range(256):  # 16 MiB that nobody reads yet
                    peer.conn.send_data(sid, chunk)
                    await peer.flush()
                peer.conn.end_stream(sid)
                await peer.flush()

            sending = asyncio.create_task(flood())
            await asyncio.sleep(1.0)
            held = sum(len(d) for d in stream._inbound._queue)  # type: ignore[attr-defined]
            assert held <= (256 << 10) + (64 << 10) + (64 << 10), f"{held} bytes held for the client"
            assert not sending.done()  # TCP holds the client back
            got = 0
            while data := await stream.read():
                got += len(data)
            await sending
            assert got == 256 * len(chunk)

    assert INBOUND_LIMIT <= 16 << 20
    run(main())


# -- WebSocket sessions ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def ws_pair(**socket_args):
    sockets: asyncio.Queue[ChannelSocket] = asyncio.Queue()
    done = asyncio.Event()

    async def serve(reader, writer):
        http = h11.Connection(h11.SERVER)
        while not isinstance(event := http.next_event(), h11.Request):
            http.receive_data(await reader.read(65536))
        sock = ChannelSocket(reader, writer, event, "v5.channel.k8s.io", http.trailing_data[0], **socket_args)
        await sock.accept()
        await sockets.put(sock)
        await done.wait()
        await sock.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    ws = WSConnection(ConnectionType.CLIENT)
    writer.write(ws.send(Request(host="cricket", target="/exec/x", subprotocols=["v5.channel.k8s.io"])))
    await writer.drain()
    while not any(isinstance(e, AcceptConnection) for e in ws.events()):
        ws.receive_data(await reader.read(65536))
    try:
        yield ws, reader, writer, await sockets.get()
    finally:
        done.set()
        writer.close()
        server.close()


def test_websocket_unread_data_holds_the_client_back():
    async def main():
        async with ws_pair(inbound_limit=256 << 10) as (ws, _, writer, sock):
            message = b"\x00" + os.urandom(64 << 10)  # stdin

            async def flood():
                for _ in range(256):
                    writer.write(ws.send(BytesMessage(data=message)))
                    await writer.drain()

            sending = asyncio.create_task(flood())
            await asyncio.sleep(1.0)
            held = sum(len(d) for d in sock.channel(0)._queue)  # type: ignore[attr-defined]
            assert held <= (256 << 10) + (128 << 10), f"{held} bytes held for the client"
            assert not sending.done()
            got = 0
            while got < 256 * (len(message) - 1):
                got += len(await sock.read(0))
            await sending

    run(main())


def test_websocket_message_bigger_than_the_limit_closes_the_connection():
    async def main():
        async with ws_pair(inbound_limit=64 << 10) as (ws, reader, writer, sock):
            writer.write(ws.send(BytesMessage(data=b"\x00" + bytes(100 << 10), message_finished=False)))
            await writer.drain()
            closed = None
            while closed is None:
                data = await reader.read(65536)
                assert data
                ws.receive_data(data)
                closed = next((e for e in ws.events() if isinstance(e, CloseConnection)), None)
            assert closed.code == 1009
            await asyncio.wait_for(sock.closed.wait(), 5)

    run(main())


# -- what a command's channels leave ---------------------------------------------------


class FakeChannels(Channels):
    def __init__(self, stdin=(), resize=()):
        self.stdin, self.resize = list(stdin), list(resize)

    async def read_stdin(self) -> bytes:
        return self.stdin.pop(0) if self.stdin else b""

    async def read_resize(self) -> bytes:
        return self.resize.pop(0) if self.resize else b""


def test_input_after_the_process_closed_its_stdin_is_read_and_dropped():
    # Left unread, it would hold up the whole connection (see the inbound limits above).
    async def main():
        r, w = os.pipe()
        os.close(r)
        os.set_blocking(w, False)
        ch = FakeChannels(stdin=[b"a" * 10, b"b" * 10, b"c" * 10])
        await _pump_in(ch, w, close_at_end=True)
        assert ch.stdin == []

    run(main())


def test_resize_data_that_holds_no_size_is_not_kept_without_end():
    sizes = []

    async def resize(width, height):
        sizes.append((width, height))

    garbage = [b'{"Width": ' + b"9" * 4096 for _ in range(64)]  # an object that never ends
    ch = FakeChannels(resize=[b'{"Width": 80, "Height": 24}', *garbage, b'{"Width": 100, "Height": 30}'])
    run(_pump_resize(ch, resize))
    assert sizes == [(80, 24), (100, 30)]


def test_a_forwarded_connection_whose_pod_side_broke_still_reads_the_client():
    # Left unread, the client's data would hold up every other connection of its session.
    async def main():
        async def reset(reader, writer):
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()  # RST: the pod's side is gone

        server = await asyncio.start_server(reset, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        with contextlib.suppress(ConnectionError):
            await reader.read()
        client = [b"a" * 70000, b"b" * 70000, b"c" * 70000, b""]

        async def recv():
            await asyncio.sleep(0)
            return client.pop(0)

        async def send(data):
            pass

        async def end():
            pass

        await _relay(reader, writer, recv, send, end)
        assert client == []
        server.close()

    run(main())
