"""UpdatePodSandboxResources: new limits on a pod's cgroup."""
from __future__ import annotations

from api.runtime.v1 import api_pb2 as pb
from cri import security
from cri.errors import handle_errors
from cri.runtime import Runtime


class SandboxUpdate:
    rt: Runtime

    @handle_errors
    async def UpdatePodSandboxResources(self, request, context):
        s = self.rt.sandbox(request.pod_sandbox_id)
        new = security.resources(request.resources, "resources")
        security.resources(request.overhead, "overhead")
        async with s.lock:
            security.apply_resources(s.rec.cgroup_parent, new, f"pod sandbox {s.id}")
        return pb.UpdatePodSandboxResourcesResponse()
