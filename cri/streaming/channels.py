"""Remote-command Channels over SPDY streams or WebSocket channels."""
from __future__ import annotations

from cri.streaming.remotecommand import Channels, Options
from cri.streaming.spdy_session import SpdySession, SpdyStream
from cri.streaming.websocket import ChannelSocket

# A client has this long after the upgrade to open all the streams it means to (kubelet's default).
STREAM_CREATION_SECONDS = 30.0

# WebSocket channel numbers of remote commands.
STDIN, STDOUT, STDERR, ERROR, RESIZE = range(5)
_OUT = {"stdout": STDOUT, "stderr": STDERR}


class SpdyChannels(Channels):
    def __init__(self, session: SpdySession, streams: dict[str, SpdyStream], protocol: str):
        self.session = session
        self.streams = streams
        self.status_objects = protocol == "v4.channel.k8s.io"

    async def _read(self, name: str) -> bytes:
        stream = self.streams.get(name)
        return await stream.read() if stream is not None else b""

    async def read_stdin(self) -> bytes:
        return await self._read("stdin")

    async def read_resize(self) -> bytes:
        return await self._read("resize")

    async def write(self, stream: str, data: bytes) -> None:
        await self.streams[stream].write(data)

    async def end_output(self, stream: str) -> None:
        await self.streams[stream].close()

    async def write_error(self, data: bytes) -> None:
        await self.streams["error"].write(data)

    async def gone(self) -> None:
        await self.session.closed.wait()

    async def close(self) -> None:
        for stream in self.streams.values():
            await stream.close()
        await self.session.close()


async def spdy_channels(session: SpdySession, opts: Options, protocol: str) -> SpdyChannels | None:
    """Wait for the streams the client must open for these options (by their streamType
    header); None if they do not all come in time."""
    wanted = {"error"}
    if opts.stdin:
        wanted.add("stdin")
    if opts.stdout:
        wanted.add("stdout")
    if opts.stderr and not opts.tty:
        wanted.add("stderr")
    if opts.tty and protocol in ("v3.channel.k8s.io", "v4.channel.k8s.io"):
        wanted.add("resize")
    streams: dict[str, SpdyStream] = {}
    while not wanted <= streams.keys():
        stream = await session.next_stream(STREAM_CREATION_SECONDS)
        if stream is None:
            return None
        streams[stream.header("streamType")] = stream
    session.stop_accepting()  # nothing would read more streams' data
    return SpdyChannels(session, streams, protocol)


class WebSocketChannels(Channels):
    def __init__(self, sock: ChannelSocket):
        self.sock = sock
        self.status_objects = sock.subprotocol in ("v4.channel.k8s.io", "v5.channel.k8s.io")

    async def read_stdin(self) -> bytes:
        return await self.sock.read(STDIN)

    async def read_resize(self) -> bytes:
        return await self.sock.read(RESIZE)

    async def write(self, stream: str, data: bytes) -> None:
        await self.sock.write(_OUT[stream], data)

    async def end_output(self, stream: str) -> None:
        await self.sock.close_channel(_OUT[stream])

    async def write_error(self, data: bytes) -> None:
        await self.sock.write(ERROR, data)

    async def gone(self) -> None:
        await self.sock.closed.wait()

    async def close(self) -> None:
        await self.sock.close()


async def websocket_channels(sock: ChannelSocket, opts: Options) -> WebSocketChannels:
    await sock.accept()
    # Kubelet's first message: an empty one on the lowest channel the server writes, so the
    # client knows the connection is up.
    await sock.write(STDOUT if opts.stdout else STDERR if opts.stderr else ERROR, b"")
    return WebSocketChannels(sock)
