"""PortForward: checked here, then answered with a one-time URL on the streaming server
(cri/streaming/), where the client connects and the ports are dialled in the pod's network."""
from __future__ import annotations

from api.runtime.v1 import api_pb2 as pb
from cri.errors import FailedPrecondition, InvalidArgument, handle_errors
from cri.records import SANDBOX_READY
from cri.runtime import Runtime
from cri.streaming.server import StreamingServer


class SandboxPortForward:
    rt: Runtime
    streaming: StreamingServer

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
        return pb.PortForwardResponse(url=self.streaming.url_for(req))
