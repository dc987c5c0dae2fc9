"""RemovePodSandbox: stop it if needed, remove its containers, then its pins, files, cgroups and record."""
from __future__ import annotations

import logging

from api.runtime.v1 import api_pb2 as pb
from cri.errors import NotFound, handle_errors
from cri.runtime import Runtime
from cri.sandbox_lifecycle import remove_sandbox

log = logging.getLogger(__name__)


class SandboxRemove:
    rt: Runtime

    @handle_errors
    async def RemovePodSandbox(self, request, context):
        try:
            s = self.rt.sandbox(request.pod_sandbox_id)
        except NotFound:
            return pb.RemovePodSandboxResponse()  # already gone: a retried remove succeeds
        await remove_sandbox(self.rt, s)
        log.info("pod sandbox %s removed", s.id)
        return pb.RemovePodSandboxResponse()
