"""RemoveContainer: kill it if it runs, then its shim, rootfs, directories, cgroup and record."""
from __future__ import annotations

import logging

from api.runtime.v1 import api_pb2 as pb
from cri.container_lifecycle import remove_container
from cri.errors import NotFound, handle_errors
from cri.runtime import Runtime

log = logging.getLogger(__name__)


class ContainerRemove:
    rt: Runtime

    @handle_errors
    async def RemoveContainer(self, request, context):
        try:
            c = self.rt.container(request.container_id)
        except NotFound:
            return pb.RemoveContainerResponse()  # already gone: a retried remove succeeds
        await remove_container(self.rt, c)
        log.info("container %s removed", c.id)
        return pb.RemoveContainerResponse()
