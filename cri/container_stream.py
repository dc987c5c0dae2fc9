"""Exec, Attach and PortForward: checked here, then answered with a one-time URL on the
streaming server (cri/streaming/), where the client connects to do the work."""
from __future__ import annotations

from api.runtime.v1 import api_pb2 as pb
from cri.errors import FailedPrecondition, InvalidArgument, RuntimeFailure, handle_errors
from cri.records import RUNNING, SANDBOX_READY
from cri.runtime import Runtime
from cri.streaming.server import StreamingServer
from cri.streaming.tokens import TokenError


def _check_stdio(req) -> None:
    if req.tty and req.stderr:
        raise InvalidArgument("tty and stderr cannot both be set: a terminal has one output")
    if not (req.stdin or req.stdout or req.stderr):
        raise InvalidArgument("one of stdin, stdout or stderr must be set")


class ContainerStream:
    rt: Runtime
    streaming: StreamingServer

    def _running(self, container_id: str):
        c = self.rt.container(container_id)
        if c.rec.state != RUNNING or self.rt.observe_exit(c):
            raise FailedPrecondition(f"container {c.id} is {c.rec.state}, not running")
        return c

    def _url(self, request) -> str:
        try:
            return self.streaming.url_for(request)
        except TokenError as e:
            raise RuntimeFailure(str(e)) from None

    @handle_errors
    async def Exec(self, request, context):
        if not request.cmd:
            raise InvalidArgument("exec command is empty")
        _check_stdio(request)
        c = self._running(request.container_id)
        req = pb.ExecRequest()
        req.CopyFrom(request)
        req.container_id = c.id
        return pb.ExecResponse(url=self._url(req))

    @handle_errors
    async def Attach(self, request, context):
        _check_stdio(request)
        c = self._running(request.container_id)
        if request.stdin and not pb.ContainerConfig.FromString(c.rec.config).stdin:
            raise InvalidArgument(f"container {c.id} was created without stdin: there is nothing to attach it to")
        req = pb.AttachRequest()
        req.CopyFrom(request)
        req.container_id = c.id
        return pb.AttachResponse(url=self._url(req))

    @handle_errors
    async def PortForward(self, request, context):
        sandbox = self.rt.sandbox(request.pod_sandbox_id)
        if sandbox.rec.state != SANDBOX_READY:
            raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready")
        for port in request.port:
            if not 0 < port < 65536:
                raise InvalidArgument(f"port {port} is not a port number")
        req = pb.PortForwardRequest()
        req.CopyFrom(request)
        req.pod_sandbox_id = sandbox.id
        return pb.PortForwardResponse(url=self._url(req))
