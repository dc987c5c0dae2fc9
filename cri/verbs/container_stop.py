"""StopContainer: the image's stop signal (or SIGTERM), then SIGKILL when the timeout runs out."""
from __future__ import annotations

import logging

from api.runtime.v1 import api_pb2 as pb
from cri.container_lifecycle import stop_container
from cri.errors import NotFound, handle_errors
from cri.runtime import Runtime

log = logging.getLogger(__name__)


class ContainerStop:
    rt: Runtime

    @handle_errors
    async def StopContainer(self, request, context):
        try:
            c = self.rt.container(request.container_id)
        except NotFound:
            return pb.StopContainerResponse()  # already gone: a retried stop succeeds
        await stop_container(self.rt, c, request.timeout)
        return pb.StopContainerResponse()
