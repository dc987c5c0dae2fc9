"""A fault-injecting HTTP proxy in front of a test registry: a registry that fails on cue.

It listens on 127.0.0.1 and runs an asyncio loop in a thread of its own, so synchronous tests
(a cricketd driven over gRPC) can use it. Requests are parsed with h11 and, unless a fault the
test armed matches, forwarded to the upstream registry and relayed byte for byte as they come.
The faults, each armed for the requests whose path contains `path`, `times` times (None: every
time):

- reset: the upstream's headers and `after` bytes of its body, then a TCP reset (RST), once the
  client has acknowledged those bytes, so it holds them when it sees the reset;
- stall: the same bytes, then nothing, the connection held open until the proxy closes
  (`after=None`: not even the headers);
- status: an error answer (`status`, 503 by default) in the registry's JSON error form;
- corrupt: the upstream's answer with one byte flipped (byte `after`, or the middle one);
- endless: a 200 whose body never ends, declared as `declare` bytes long (None: chunked), to
  see that a client refuses it before reading it whole; `sent` says how far it got.

Every request is recorded as an Exchange (method, path, headers, the status answered, the body
bytes sent, the fault that spoiled it).
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import http
import json
import socket
import struct
import termios
import threading
import time
from dataclasses import dataclass

import h11
import httpx

_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"}
_READ = 64 << 10
_ENDLESS_CAP = 256 << 20  # an "endless" body ends here: a client that read this far failed the test anyway
_ACK_WAIT = 5.0  # seconds a reset waits for the client to acknowledge what it was sent
KINDS = ("reset", "stall", "status", "corrupt", "endless")


@dataclass
class Fault:
    kind: str
    path: str = "/blobs/"
    times: int | None = 1
    after: int | None = 0
    status: int = 503
    declare: int | None = None
    content_type: str = "application/vnd.oci.image.manifest.v1+json"
    spoiled: int = 0  # requests it has spoiled so far

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault {self.kind!r}: one of {', '.join(KINDS)}")


@dataclass
class Exchange:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    status: int | None = None
    sent: int = 0  # body bytes written to the client
    fault: str | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class _Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes = b""


class FaultProxy:
    """Start with `with FaultProxy(upstream) as proxy:` (or start() and close())."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.exchanges: list[Exchange] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.host = ""
        self.url = ""

    # -- the test's side -------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None or not self.host:
            raise RuntimeError(f"the fault proxy did not start: {self._error!r}")
        return self

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def arm(self, kind: str, path: str = "/blobs/", **kw) -> Fault:
        """Spoil the next requests whose path contains `path` (see the module's docstring)."""
        fault = Fault(kind, path, **kw)
        with self._lock:
            self._faults.append(fault)
        return fault

    def disarm(self) -> None:
        with self._lock:
            self._faults.clear()

    def to(self, path: str) -> list[Exchange]:
        """The requests so far whose path contains `path`."""
        with self._lock:
            return [e for e in self.exchanges if path in e.path]

    def _fault_for(self, path: str) -> Fault | None:
        with self._lock:
            for f in self._faults:
                if f.path in path and (f.times is None or f.spoiled < f.times):
                    f.spoiled += 1
                    return f
        return None

    # -- the loop's side -------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # reported by start(), or lost with the thread
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        tasks: set[asyncio.Task] = set()

        async def serve(reader, writer):
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                await self._connection(client, reader, writer)
            except asyncio.CancelledError:
                pass  # closing; and 3.11's start_server prints a handler task that ends cancelled
            finally:
                tasks.discard(task)

        # Redirects and content decoding are the client's to see: the proxy passes both on as they are.
        async with httpx.AsyncClient(base_url=self.upstream, timeout=30, follow_redirects=False) as client:
            server = await asyncio.start_server(serve, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            self.host, self.url = f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                server.close()
                for t in list(tasks):
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await server.wait_closed()

    async def _connection(self, client: httpx.AsyncClient, reader, writer) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                req = await _read_request(conn, reader)
                if req is None:
                    return
                exchange = Exchange(req.method, req.target, {k.lower(): v for k, v in req.headers})
                with self._lock:
                    self.exchanges.append(exchange)
                keep = await self._answer(client, conn, writer, req, exchange)
                if not keep or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, httpx.HTTPError):
            return
        finally:
            writer.transport.abort()

    async def _answer(self, client, conn, writer, req: _Request, ex: Exchange) -> bool:
        """Answer one request; False when the connection must end (a fault did, or will)."""
        fault = self._fault_for(req.target)
        ex.fault = fault.kind if fault else None
        if fault is not None and fault.kind == "status":
            body = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": f"fault proxy answers {fault.status}",
                                           "detail": req.target}]}).encode()
            await _send(conn, writer, h11.Response(status_code=fault.status, reason=_phrase(fault.status), headers=[
                ("Content-Type", "application/json"), ("Content-Length", str(len(body)))]))
            ex.status = fault.status
            await self._body(conn, writer, ex, body)
            await _send(conn, writer, h11.EndOfMessage())
            return True
        if fault is not None and fault.kind == "stall" and fault.after is None:
            await self._held()
            return False
        if fault is not None and fault.kind == "endless":
            await self._endless(conn, writer, ex, fault)
            return False

        headers = [(k, v) for k, v in req.headers if k.lower() not in _HOP]
        upstream = client.build_request(req.method, req.target, headers=headers, content=req.body or None)
        resp = await client.send(upstream, stream=True)
        try:
            out = [(k, v) for k, v in resp.headers.multi_items() if k.lower() not in _HOP]
            length = resp.headers.get("content-length")
            if length is None and req.method != "HEAD" and resp.status_code not in (204, 304):
                out.append(("Transfer-Encoding", "chunked"))
            await _send(conn, writer, h11.Response(status_code=resp.status_code, reason=resp.reason_phrase.encode(),
                                                   headers=out))
            ex.status = resp.status_code
            flip = None
            if fault is not None and fault.kind == "corrupt":
                flip = fault.after if fault.after else (int(length) // 2 if length and length.isdigit() else 0)
            cut = fault.after if fault is not None and fault.kind in ("reset", "stall") else None
            async for chunk in resp.aiter_raw():
                if flip is not None and ex.sent <= flip < ex.sent + len(chunk):
                    at = flip - ex.sent
                    chunk = chunk[:at] + bytes([chunk[at] ^ 0xFF]) + chunk[at + 1:]
                if cut is not None and ex.sent + len(chunk) >= cut:
                    await self._body(conn, writer, ex, chunk[:cut - ex.sent])
                    break
                await self._body(conn, writer, ex, chunk)
            else:
                await _send(conn, writer, h11.EndOfMessage())
                return True
        finally:
            await resp.aclose()
        assert fault is not None
        if fault.kind == "reset":
            await _reset(writer)
        else:
            await self._held()
        return False

    async def _body(self, conn, writer, ex: Exchange, data: bytes) -> None:
        if data:
            await _send(conn, writer, h11.Data(data=data))
            ex.sent += len(data)

    async def _held(self) -> None:
        assert self._stop is not None
        await self._stop.wait()

    async def _endless(self, conn, writer, ex: Exchange, fault: Fault) -> None:
        headers = [("Content-Type", fault.content_type)]
        headers.append(("Content-Length", str(fault.declare)) if fault.declare is not None
                       else ("Transfer-Encoding", "chunked"))
        await _send(conn, writer, h11.Response(status_code=200, reason=b"OK", headers=headers))
        ex.status = 200
        limit = min(fault.declare if fault.declare is not None else _ENDLESS_CAP, _ENDLESS_CAP)
        filler = b" " * _READ  # JSON whitespace: a document that never gets to its first brace
        while ex.sent < limit:
            await self._body(conn, writer, ex, filler[:limit - ex.sent])


def _phrase(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


async def _read_request(conn: h11.Connection, reader) -> _Request | None:
    req: _Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(_READ))
            continue
        if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None
        if isinstance(event, h11.Request):
            req = _Request(event.method.decode(), event.target.decode(),
                           [(k.decode(), v.decode()) for k, v in event.headers])
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert req is not None  # h11 sends a Request first
            req.body = bytes(body)
            return req


async def _send(conn: h11.Connection, writer, event) -> None:
    data = conn.send(event)
    if data:
        writer.write(data)
        await writer.drain()


async def _reset(writer) -> None:
    """Reset the connection once the peer has acknowledged everything sent (its kernel then
    holds those bytes for it and hands them over before the reset)."""
    sock = writer.get_extra_info("socket")
    deadline = time.monotonic() + _ACK_WAIT
    while time.monotonic() < deadline:
        unacked = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        if unacked == 0:
            break
        await asyncio.sleep(0.005)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
