"""Exec and Attach: checked here, then answered with a one-time URL on the streaming server
(cri/streaming/), where the client connects to do the work."""
from __future__ import annotations

from api.runtime.v1 import api_pb2 as pb
from cri.errors import (
    FailedPrecondition,
    InvalidArgument,
    handle_errors,
)
from cri.records import RUNNING
from cri.runtime import Runtime
from cri.streaming.server import StreamingServer


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

    @handle_errors
    async def Exec(self, request, context):
        if not request.cmd:
            raise InvalidArgument("exec command is empty")
        _check_stdio(request)
        c = self._running(request.container_id)
        req = pb.ExecRequest()
        req.CopyFrom(request)
        req.container_id = c.id
        return pb.ExecResponse(url=self.streaming.url_for(req))

    @handle_errors
    async def Attach(self, request, context):
        _check_stdio(request)
        c = self._running(request.container_id)
        if request.stdin and not pb.ContainerConfig.FromString(c.rec.config).stdin:
            raise InvalidArgument(f"container {c.id} was created without stdin: there is nothing to attach it to")
        req = pb.AttachRequest()
        req.CopyFrom(request)
        req.container_id = c.id
        return pb.AttachResponse(url=self.streaming.url_for(req))
