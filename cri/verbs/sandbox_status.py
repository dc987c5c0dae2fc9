"""PodSandboxStatus and ListPodSandbox."""
from __future__ import annotations

from api.runtime.v1 import api_pb2 as pb
from cri.errors import handle_errors
from cri.runtime import Runtime
from cri.status import sandbox_matches, sandbox_status, to_cri_sandbox


class SandboxStatusVerbs:
    rt: Runtime

    @handle_errors
    async def PodSandboxStatus(self, request, context):
        return sandbox_status(self.rt, self.rt.sandbox(request.pod_sandbox_id), request.verbose)

    @handle_errors
    async def ListPodSandbox(self, request, context):
        items = [to_cri_sandbox(s) for s in list(self.rt.sandboxes.values()) if sandbox_matches(s, request.filter)]
        return pb.ListPodSandboxResponse(items=items)
