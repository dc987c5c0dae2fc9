"""PodSandboxStatus, ListPodSandbox and StreamPodSandboxes (the same list, in pages)."""
from __future__ import annotations

from api.runtime.v1 import api_pb2 as pb
from cri.errors import handle_errors
from cri.paging import streams_pages
from cri.runtime import Runtime
from cri.status import listed_sandbox, sandbox_matches, sandbox_status


class SandboxStatusVerbs:
    rt: Runtime

    @handle_errors
    async def PodSandboxStatus(self, request, context):
        return sandbox_status(self.rt, self.rt.sandbox(request.pod_sandbox_id), request.verbose)

    @handle_errors
    async def ListPodSandbox(self, request, context):
        return pb.ListPodSandboxResponse.FromString(b"".join(e for _, e in self._list_sandboxes(request.filter)))

    @streams_pages(pb.StreamPodSandboxesResponse, "pod_sandboxes")
    async def StreamPodSandboxes(self, request, context):
        return [m for m, _ in self._list_sandboxes(request.filter)]

    def _list_sandboxes(self, f: pb.PodSandboxFilter) -> list[tuple[pb.PodSandbox, bytes]]:
        return [listed_sandbox(s) for s in list(self.rt.sandboxes.values()) if sandbox_matches(s, f)]
