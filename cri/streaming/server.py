"""The streaming server: the URLs Exec, Attach and PortForward answer with.

An HTTP/1.1 server (h11) on its own address. A client brings the one-time token
of its URL and asks to upgrade the connection: to SPDY/3.1 (crictl, kubelet's
proxy, kubectl through the API server) or to a WebSocket (newer clients). The
protocol version is the first one the client offers that the server speaks.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter

import h11

from api.runtime.v1 import api_pb2 as pb
from cri.errors import NotFound, RuntimeFailure
from cri.runtime import Runtime
from cri.streaming import portforward, remotecommand
from cri.streaming.channels import spdy_channels, websocket_channels
from cri.streaming.remotecommand import Options
from cri.streaming.spdy_session import SpdySession
from cri.streaming.tokens import RequestCache, TokenError
from cri.streaming.websocket import ChannelSocket

log = logging.getLogger(__name__)

SPDY_REMOTECOMMAND = ("v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io")
SPDY_PORTFORWARD = ("portforward.k8s.io",)
# channel.k8s.io: binary frames as in v4, errors as plain text; the API server still passes it
# through to kubelet for clients that offer nothing newer (Kubernetes' own e2e specs do).
WS_REMOTECOMMAND = ("v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io")
WS_PORTFORWARD = ("v4.channel.k8s.io", "portforward.k8s.io")
KINDS = {"exec": pb.ExecRequest, "attach": pb.AttachRequest, "portforward": pb.PortForwardRequest}

REQUEST_SECONDS = 30.0  # for the request line and headers to arrive
# Connections one client address may hold at once, from the first byte to the session's end.
# Behind kubelet every session comes from kubelet's address, so this is also about the most
# exec, attach and port-forward sessions a node runs at once; beyond it a client is refused
# with 429 rather than let it take every descriptor the daemon has.
MAX_CONNECTIONS_PER_CLIENT = 128
_MAX_HEADERS = 64 * 1024
_READ = 64 * 1024


class HttpRefusal(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class StreamingServer:
    def __init__(self, rt: Runtime, address: str, port: int,
                 max_connections_per_client: int = MAX_CONNECTIONS_PER_CLIENT):
        self.rt = rt
        self.address = address
        self.port = port
        self.cache = RequestCache()
        self.max_connections_per_client = max_connections_per_client
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self._per_client: Counter[str] = Counter()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.address, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("streaming server on %s", self.base_url)

    @property
    def base_url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"

    def url_for(self, request) -> str:
        """A one-time URL for an Exec, Attach or PortForward request."""
        kind = next(k for k, cls in KINDS.items() if isinstance(request, cls))
        try:
            token = self.cache.insert(request)
        except TokenError as e:
            raise RuntimeFailure(str(e)) from None  # too many wait: the caller may try again
        return f"{self.base_url}/{kind}/{token}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    # -- one connection --------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # asyncio.start_server runs each connection as a task
        self._connections.add(task)  # so that stop() ends it
        task.add_done_callback(self._connections.discard)
        peer = writer.get_extra_info("peername")
        client = str(peer[0] if isinstance(peer, tuple) else peer)
        if self._per_client[client] >= self.max_connections_per_client:
            log.warning("streaming: refused a connection from %s, which holds %d already (the limit)",
                        client, self._per_client[client])
            await _too_many(reader, writer, client, self.max_connections_per_client)
            return
        self._per_client[client] += 1
        http = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEADERS)
        try:
            request = await asyncio.wait_for(_read_request(http, reader), REQUEST_SECONDS)
            await self._dispatch(http, request, reader, writer)
        except HttpRefusal as e:
            await _refuse(http, writer, e.status, e.message)
        except (TimeoutError, h11.RemoteProtocolError) as e:
            await _refuse(http, writer, 400, f"bad request: {e or 'too slow'}")
        except (ConnectionError, OSError):
            pass
        except Exception:
            log.exception("streaming: a connection failed")
        finally:
            writer.close()
            self._per_client[client] -= 1
            if not self._per_client[client]:
                del self._per_client[client]

    async def _dispatch(self, http: h11.Connection, request: h11.Request, reader, writer) -> None:
        parts = request.target.decode("latin-1").split("?")[0].strip("/").split("/")
        if len(parts) != 2 or parts[0] not in KINDS:
            raise HttpRefusal(404, f"no such streaming endpoint {request.target.decode('latin-1')!r}; "
                                   "want /exec/<token>, /attach/<token> or /portforward/<token>")
        kind, token = parts
        cached = self.cache.consume(token)
        if not isinstance(cached, KINDS[kind]):
            raise HttpRefusal(404, f"{kind} token {token!r} is unknown, used already or expired "
                                   "(a token is good for one connection within a minute)")
        headers: dict[str, list[str]] = {}
        for name, value in request.headers:
            headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
        upgrade = ",".join(headers.get("upgrade", [])).lower()
        trailing = b""
        if "websocket" in upgrade:
            offered = _listed(headers.get("sec-websocket-protocol", []))
            protocol = _negotiate(offered, WS_PORTFORWARD if kind == "portforward" else WS_REMOTECOMMAND)
            sock = ChannelSocket(reader, writer, request, protocol, http.trailing_data[0])
            await self._serve_websocket(kind, cached, sock)
        elif "spdy/3.1" in upgrade:
            offered = _listed(headers.get("x-stream-protocol-version", []))
            protocol = _negotiate(offered, SPDY_PORTFORWARD if kind == "portforward" else SPDY_REMOTECOMMAND,
                                  optional=True)
            response = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
            if protocol:
                response.append(("X-Stream-Protocol-Version", protocol))
            writer.write(http.send(h11.InformationalResponse(status_code=101, headers=response)))
            await writer.drain()
            trailing = http.trailing_data[0]
            session = SpdySession(reader, writer, trailing)
            session.start()
            await self._serve_spdy(kind, cached, session, protocol)
        else:
            raise HttpRefusal(400, "the request must ask to upgrade the connection (Upgrade: SPDY/3.1 or websocket)")

    async def _serve_spdy(self, kind: str, req, session: SpdySession, protocol: str) -> None:
        if kind == "portforward":
            netns = self._netns(req.pod_sandbox_id)
            await portforward.serve_spdy(session, netns, req.pod_sandbox_id)
            return
        ch = await spdy_channels(session, _options(req), protocol)
        if ch is None:
            log.info("streaming: the client did not open its streams in time")
            await session.close()
            return
        await (remotecommand.serve_exec if kind == "exec" else remotecommand.serve_attach)(self.rt, req, ch)

    async def _serve_websocket(self, kind: str, req, sock: ChannelSocket) -> None:
        if kind == "portforward":
            netns = self._netns(req.pod_sandbox_id)
            await portforward.serve_websocket(sock, netns, req.pod_sandbox_id, list(req.port))
            return
        ch = await websocket_channels(sock, _options(req))
        await (remotecommand.serve_exec if kind == "exec" else remotecommand.serve_attach)(self.rt, req, ch)

    def _netns(self, sandbox_id: str) -> str:
        try:
            return self.rt.sandbox(sandbox_id).rec.netns
        except NotFound as e:
            raise HttpRefusal(404, str(e)) from None


def _options(req) -> Options:
    return Options(req.stdin, req.stdout, req.stderr, req.tty)


def _listed(values: list[str]) -> list[str]:
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def _negotiate(offered: list[str], supported: tuple[str, ...], optional: bool = False) -> str:
    """The first protocol the client offers that the server speaks. A SPDY client that offers
    none gets the oldest protocol (as kubelet does); a WebSocket client must offer one."""
    if not offered and optional:
        return ""
    for protocol in offered:
        if protocol in supported:
            return protocol
    raise HttpRefusal(403, f"unable to negotiate a protocol: the client offers [{', '.join(offered)}], "
                           f"the server supports [{', '.join(supported)}]")


async def _read_request(http: h11.Connection, reader: asyncio.StreamReader) -> h11.Request:
    while True:
        event = http.next_event()
        if isinstance(event, h11.Request):
            return event
        if event is h11.NEED_DATA:
            data = await reader.read(_READ)
            http.receive_data(data)
            if not data:
                raise ConnectionError("the client left before its request was whole")
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionError("the client left")


async def _too_many(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str, limit: int) -> None:
    """Answer 429 before the request is read (h11 will not answer what it has not read), then
    read what the client sent for a moment: closing on unread data would reset the connection
    and lose the answer."""
    body = (f"too many streaming connections from {client}: {limit} at once is the limit\n").encode()
    head = (f"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    try:
        writer.write(head + body)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        await asyncio.wait_for(reader.read(_MAX_HEADERS), 1.0)
    except (TimeoutError, ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _refuse(http: h11.Connection, writer: asyncio.StreamWriter, status: int, message: str) -> None:
    body = (message + "\n").encode()
    try:
        writer.write(http.send(h11.Response(status_code=status, headers=[
            ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
            ("Connection", "close")])))
        writer.write(http.send(h11.Data(data=body)))
        writer.write(http.send(h11.EndOfMessage()))
        await writer.drain()
    except (h11.LocalProtocolError, ConnectionError, OSError):
        pass
