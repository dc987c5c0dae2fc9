"""StopPodSandbox: stop every container of the pod and let go of its namespaces. Idempotent."""
from __future__ import annotations

import logging

from api.runtime.v1 import api_pb2 as pb
from cri.errors import NotFound, handle_errors
from cri.runtime import Runtime
from cri.sandbox_lifecycle import stop_sandbox

log = logging.getLogger(__name__)


class SandboxStop:
    rt: Runtime

    @handle_errors
    async def StopPodSandbox(self, request, context):
        try:
            s = self.rt.sandbox(request.pod_sandbox_id)
        except NotFound:
            return pb.StopPodSandboxResponse()  # already gone: a retried stop succeeds
        await stop_sandbox(self.rt, s)
        log.info("pod sandbox %s stopped", s.id)
        return pb.StopPodSandboxResponse()
