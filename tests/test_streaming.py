"""Exec, Attach and PortForward through Cricket's streaming server.

WebSocket sessions are driven by the kubernetes Python client's stream code (a
client written elsewhere, as kubectl's WebSocket path is); SPDY sessions by a
small client over cri.streaming.spdy, whose framing tests/unit/test_spdy.py
checks against frames built by hand from the spec.
"""
from __future__ import annotations

import concurrent.futures
import json
import socket
import time
import urllib.parse

import grpc
import pytest
import yaml
from kubernetes.client import Configuration
from kubernetes.stream.ws_client import PortForward, WSClient, create_websocket

from api.runtime.v1 import api_pb2 as pb
from cri.streaming import spdy
from tests.daemon import registry_config
from tests.pods import Pods, rpc_error, serving

STDIN, STDOUT, STDERR, ERROR, RESIZE = range(5)


@pytest.fixture(scope="module")
def daemon(registry, test_images, tmp_path_factory):
    with serving(str(tmp_path_factory.mktemp("cricketd")), registry_config(registry),
                 [test_images["busybox"].reference(registry)]) as d:
        yield d


@pytest.fixture(scope="module")
def pods(daemon, tmp_path_factory):
    return Pods(daemon, str(tmp_path_factory.mktemp("logs")))


@pytest.fixture(scope="module")
def busybox(registry, test_images):
    return test_images["busybox"].reference(registry)


@pytest.fixture(scope="module")
def pod(pods):
    return pods.run_pod()


@pytest.fixture(scope="module")
def sleeper(pods, pod, busybox):
    return pods.run(pod, busybox, ["sleep", "100000"])


def exec_url(pods: Pods, cid: str, cmd, stdin=False, stdout=True, stderr=True, tty=False) -> str:
    return pods.rt.Exec(pb.ExecRequest(container_id=cid, cmd=list(cmd), stdin=stdin, stdout=stdout,
                                       stderr=stderr and not tty, tty=tty)).url


def ws(url: str, protocol: str = "") -> WSClient:
    headers = {"sec-websocket-protocol": protocol} if protocol else None
    return WSClient(Configuration(), url.replace("http://", "ws://", 1), headers, capture_all=True, binary=True)


def run_ws(client: WSClient, timeout: float = 20) -> WSClient:
    client.run_forever(timeout=timeout)
    assert not client.is_open(), "the server did not end the session"
    return client


# -- exec over WebSocket (kubernetes client) ----------------------------------------------------


@pytest.mark.parametrize("protocol", ["v4.channel.k8s.io", ""])  # "": the client offers v5 and v4
def test_ws_exec_streams_and_exit_code(pods, sleeper, protocol):
    client = run_ws(ws(exec_url(pods, sleeper, ["sh", "-c", "echo out; echo err >&2; exit 3"]), protocol))
    assert client.subprotocol == (protocol or "v5.channel.k8s.io")
    assert client.read_channel(STDOUT) == b"out\n" and client.read_channel(STDERR) == b"err\n"
    status = yaml.safe_load(client.peek_channel(ERROR))
    assert status["status"] == "Failure" and status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert client.returncode == 3
    ok = run_ws(ws(exec_url(pods, sleeper, ["true"])))
    assert yaml.safe_load(ok.peek_channel(ERROR)) == {"metadata": {}, "status": "Success"} and ok.returncode == 0


def test_ws_exec_over_the_protocol_before_v4(pods, sleeper):
    # What the API server passes through for a client offering only channel.k8s.io (Kubernetes'
    # e2e spec "should support remote command execution over websockets"): the same channels,
    # and an exit code said in words, not as a Status object.
    client = run_ws(ws(exec_url(pods, sleeper, ["sh", "-c", "echo out; echo err >&2"]), "channel.k8s.io"))
    assert client.subprotocol == "channel.k8s.io"
    assert client.read_channel(STDOUT) == b"out\n" and client.read_channel(STDERR) == b"err\n"
    assert client.peek_channel(ERROR) == b""
    failed = run_ws(ws(exec_url(pods, sleeper, ["sh", "-c", "exit 3"]), "channel.k8s.io"))
    words = failed.peek_channel(ERROR).decode()
    assert "3" in words and not words.lstrip().startswith("{"), words


def test_ws_exec_stdin_reaches_the_command_and_its_end_is_eof(pods, sleeper):
    client = ws(exec_url(pods, sleeper, ["sh", "-c", "cat; echo done"], stdin=True))
    client.write_stdin(b"line one\nline two\n")
    client.close_channel(STDIN)  # v5: the close signal; cat sees EOF
    run_ws(client)
    assert client.read_channel(STDOUT) == b"line one\nline two\ndone\n" and client.returncode == 0


def test_ws_exec_with_a_terminal_and_resize(pods, sleeper):
    client = ws(exec_url(pods, sleeper, ["sh"], stdin=True, tty=True))
    client.write_channel(RESIZE, json.dumps({"Width": 123, "Height": 45}))
    time.sleep(0.3)
    client.write_stdin(b"tty; busybox stty size; exit 7\n")
    run_ws(client)
    out = client.read_channel(STDOUT)
    assert b"/dev/pts/" in out and b"45 123" in out
    assert client.read_channel(STDERR) == b"" and client.returncode == 7


def test_twenty_concurrent_execs(pods, sleeper):
    def one(i: int) -> tuple[bytes, int]:
        client = run_ws(ws(exec_url(pods, sleeper, ["sh", "-c", f"echo {i}; exit {i % 3}"])), timeout=60)
        return client.read_channel(STDOUT), client.returncode

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    assert results == [(f"{i}\n".encode(), i % 3) for i in range(20)]


def container_cmdlines(pods: Pods, cid: str) -> str:
    return pods.sh(cid, "cat /proc/[0-9]*/cmdline | busybox tr '\\0' ' '")


def test_a_client_that_vanishes_leaves_no_process(pods, sleeper):
    client = ws(exec_url(pods, sleeper, ["sleep", "4242"]))
    client.update(timeout=1)
    deadline = time.monotonic() + 10
    while "sleep 4242" not in container_cmdlines(pods, sleeper):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    client.sock.sock.close()  # no close frame: the client is just gone
    while "sleep 4242" in container_cmdlines(pods, sleeper):
        assert time.monotonic() < deadline, "the exec'd process outlived its client"
        time.sleep(0.1)


def test_exec_in_a_container_stopped_after_the_url(pods, pod, busybox):
    cid = pods.run(pod, busybox, ["sleep", "100000"])
    url = exec_url(pods, cid, ["true"])
    pods.rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
    client = run_ws(ws(url))
    status = yaml.safe_load(client.read_channel(ERROR))
    assert status["status"] == "Failure" and "not running" in status["message"]


# -- exec and attach over SPDY ------------------------------------------------------------------


class SpdyClient:
    """A blocking SPDY/3.1 client of the streaming server: what crictl and kubectl do."""

    def __init__(self, url: str, protocols=("v4.channel.k8s.io",)):
        parts = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=20)
        offered = "".join(f"X-Stream-Protocol-Version: {p}\r\n" for p in protocols)
        self.sock.sendall(f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: Upgrade\r\n"
                          f"Upgrade: SPDY/3.1\r\n{offered}Content-Length: 0\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, f"connection closed during the handshake: {head!r}"
            head += chunk
        head, self.pending = head.split(b"\r\n\r\n", 1)
        self.status_line, *lines = head.decode().split("\r\n")
        self.headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        self.conn = spdy.Connection(client=True, flow_control=False)
        self.streams: dict[str, int] = {}
        self.data: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.closed = False

    def open(self, stream_type: str, **headers) -> int:
        sid = self.conn.open_stream([("streamtype", stream_type), *headers.items()])
        self.streams[stream_type] = sid
        self.data[sid] = b""
        self._flush()
        return sid

    def send(self, stream_type: str, data: bytes, fin: bool = False) -> None:
        self.conn.send_data(self.streams[stream_type], data, fin=fin)
        self._flush()

    def _flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def pump(self, until, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not until() and not self.closed:
            assert time.monotonic() < deadline, "timed out waiting on the server"
            data, self.pending = self.pending or self.sock.recv(65536), b""
            if not data:
                self.closed = True
                break
            for event in self.conn.receive_data(data):
                if isinstance(event, spdy.DataFrame):
                    self.data[event.stream_id] += event.data
                    if event.fin:
                        self.ended.add(event.stream_id)
                elif isinstance(event, (spdy.RstStream, spdy.GoAway)):
                    self.closed = True
            self._flush()

    def read(self, stream_type: str) -> bytes:
        return self.data[self.streams[stream_type]]

    def close(self) -> None:
        self.sock.close()


def test_spdy_exec_with_stdin(pods, sleeper):
    client = SpdyClient(exec_url(pods, sleeper, ["sh", "-c", "cat; echo bye >&2; exit 4"], stdin=True))
    assert client.status_line.startswith("HTTP/1.1 101") and client.headers["x-stream-protocol-version"] == \
        "v4.channel.k8s.io"
    for stream_type in ("error", "stdin", "stdout", "stderr"):
        client.open(stream_type)
    client.send("stdin", b"to cat\n", fin=True)
    client.pump(lambda: client.streams["error"] in client.ended)
    assert client.read("stdout") == b"to cat\n" and client.read("stderr") == b"bye\n"
    status = json.loads(client.read("error"))
    assert status["reason"] == "NonZeroExitCode" and status["details"]["causes"][0]["message"] == "4"
    client.close()


def test_spdy_exec_v2_reports_errors_as_text(pods, sleeper):
    client = SpdyClient(exec_url(pods, sleeper, ["sh", "-c", "exit 2"]), protocols=("v2.channel.k8s.io",))
    assert client.headers["x-stream-protocol-version"] == "v2.channel.k8s.io"
    for stream_type in ("error", "stdout", "stderr"):
        client.open(stream_type)
    client.pump(lambda: client.streams["error"] in client.ended)
    assert client.read("error").startswith(b"command terminated with non-zero exit code")
    client.close()


def test_attach_sees_output_and_sends_input_and_two_attachments_see_the_same(pods, pod, busybox):
    cid = pods.run(pod, busybox, ["sh", "-c", "while read line; do echo got:$line; done"], stdin=True)
    url = lambda: pods.rt.Attach(pb.AttachRequest(container_id=cid, stdin=True, stdout=True, stderr=True)).url  # noqa: E731
    writer = SpdyClient(url())
    for stream_type in ("error", "stdin", "stdout", "stderr"):
        writer.open(stream_type)
    watcher = ws(pods.rt.Attach(pb.AttachRequest(container_id=cid, stdout=True, stderr=True)).url)
    time.sleep(0.5)  # both attached before the container says anything
    writer.send("stdin", b"hello\n")
    writer.pump(lambda: b"got:hello\n" in writer.read("stdout"))
    deadline = time.monotonic() + 10
    while b"got:hello\n" not in (watcher.peek_channel(STDOUT) or b""):
        assert time.monotonic() < deadline, "the second attachment did not see the output"
        watcher.update(timeout=0.5)
    # Ending the container ends both attachments with success.
    pods.rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
    writer.pump(lambda: writer.streams["error"] in writer.ended)
    assert json.loads(writer.read("error"))["status"] == "Success"
    run_ws(watcher)
    writer.close()


def test_attach_with_stdin_needs_a_container_made_with_stdin(pods, sleeper):
    err = rpc_error(pods.rt.Attach, pb.AttachRequest(container_id=sleeper, stdin=True, stdout=True))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "without stdin" in err.details()


# -- port forwarding ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web(pods, pod, busybox):
    """An HTTP server in the pod (on its loopback only), serving the pod's /etc."""
    cid = pods.run(pod, busybox, ["busybox", "httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/etc"])
    time.sleep(0.3)
    return cid


def http_get(sock, path: str) -> bytes:
    sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    reply = b""
    while chunk := sock.recv(65536):
        reply += chunk
    return reply


def test_ws_port_forward_to_an_http_server_in_the_pod(pods, pod, web):
    url = pods.rt.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod, port=[8080])).url
    forward = PortForward(create_websocket(Configuration(), url.replace("http://", "ws://", 1)), [8080])
    try:
        reply = http_get(forward.socket(8080), "/hostname")
    finally:
        forward.close()
    assert reply.startswith(b"HTTP/1.1 200 OK") and pods.pod_status(pod).status.metadata.name.encode() in reply


def test_spdy_port_forward_and_a_port_nobody_listens_on(pods, pod, web):
    url = pods.rt.PortForward(pb.PortForwardRequest(pod_sandbox_id=pod)).url
    client = SpdyClient(url, protocols=("portforward.k8s.io",))
    assert client.headers["x-stream-protocol-version"] == "portforward.k8s.io"
    client.open("error", port="8080", requestid="1")
    client.open("data", port="8080", requestid="1")
    client.send("data", b"GET /hostname HTTP/1.0\r\n\r\n")
    client.pump(lambda: client.streams["data"] in client.ended)
    assert client.read("data").startswith(b"HTTP/1.1 200 OK")
    client.streams.pop("error"), client.streams.pop("data")
    client.open("error", port="9", requestid="2")
    client.open("data", port="9", requestid="2")
    client.pump(lambda: client.streams["error"] in client.ended)
    assert b"error forwarding port 9 to pod" in client.read("error")
    client.close()


# -- bad input ----------------------------------------------------------------------------------


def http_status(url: str, headers: dict[str, str]) -> tuple[int, str]:
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        s.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{extra}\r\n".encode())
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


WS_HEADERS = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def test_a_token_works_once(pods, sleeper):
    url = exec_url(pods, sleeper, ["true"])
    assert run_ws(ws(url)).returncode == 0
    code, body = http_status(url, {**WS_HEADERS, "Sec-WebSocket-Protocol": "v4.channel.k8s.io"})
    assert code == 404 and "used already or expired" in body
    code, body = http_status(url.rsplit("/", 1)[0] + "/not-a-token", WS_HEADERS)
    assert code == 404


def test_an_unsupported_subprotocol_is_refused_naming_the_supported(pods, sleeper):
    code, body = http_status(exec_url(pods, sleeper, ["true"]), {**WS_HEADERS, "Sec-WebSocket-Protocol": "v9.x"})
    assert code == 403 and "v5.channel.k8s.io" in body and "v4.channel.k8s.io" in body
    code, body = http_status(exec_url(pods, sleeper, ["true"]), {})
    assert code == 400 and "upgrade" in body


@pytest.mark.parametrize("request_, code", [
    (pb.ExecRequest(cmd=[], stdout=True), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.ExecRequest(cmd=["sh"], tty=True, stderr=True, stdout=True), grpc.StatusCode.INVALID_ARGUMENT),
    (pb.ExecRequest(cmd=["sh"]), grpc.StatusCode.INVALID_ARGUMENT),
])
def test_bad_exec_requests(pods, sleeper, request_, code):
    request_.container_id = sleeper
    assert rpc_error(pods.rt.Exec, request_).code() == code


def test_streaming_calls_for_what_is_missing_or_stopped(pods, pod, busybox):
    err = rpc_error(pods.rt.Exec, pb.ExecRequest(container_id="nope", cmd=["true"], stdout=True))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    cid = pods.run(pod, busybox, ["true"])
    deadline = time.monotonic() + 10
    while pods.rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid)).status.state != pb.CONTAINER_EXITED:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    err = rpc_error(pods.rt.Exec, pb.ExecRequest(container_id=cid, cmd=["true"], stdout=True))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "not running" in err.details()
    err = rpc_error(pods.rt.PortForward, pb.PortForwardRequest(pod_sandbox_id="nope", port=[80]))
    assert err.code() == grpc.StatusCode.NOT_FOUND
