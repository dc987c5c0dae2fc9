"""ReopenContainerLog: the shim reopens the log file (kubelet has rotated it away)."""
from __future__ import annotations

from api.runtime.v1 import api_pb2 as pb
from cri.errors import FailedPrecondition, handle_errors
from cri.records import RUNNING
from cri.runtime import Runtime


class ContainerLog:
    rt: Runtime

    @handle_errors
    async def ReopenContainerLog(self, request, context):
        c = self.rt.container(request.container_id)
        if c.rec.state != RUNNING or self.rt.observe_exit(c):
            raise FailedPrecondition(f"container {c.id} is {c.rec.state}: only a running container's log is reopened")
        await c.shim.reopen_log()
        return pb.ReopenContainerLogResponse()
