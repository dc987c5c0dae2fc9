"""ContainerStatus, ListContainers and StreamContainers (the same list, in pages)."""
from __future__ import annotations

from api.runtime.v1 import api_pb2 as pb
from cri.errors import handle_errors
from cri.paging import streams_pages
from cri.runtime import Runtime
from cri.status import ImageLookup, container_matches, container_status, listed_container


class ContainerStatusVerbs:
    rt: Runtime

    @handle_errors
    async def ContainerStatus(self, request, context):
        return container_status(self.rt, self.rt.container(request.container_id), request.verbose)

    @handle_errors
    async def ListContainers(self, request, context):
        return pb.ListContainersResponse.FromString(b"".join(e for _, e in self._list_containers(request.filter)))

    @streams_pages(pb.StreamContainersResponse, "containers")
    async def StreamContainers(self, request, context):
        return [m for m, _ in self._list_containers(request.filter)]

    def _list_containers(self, f: pb.ContainerFilter) -> list[tuple[pb.Container, bytes]]:
        out = []
        images = ImageLookup(self.rt)  # kubelet lists every second: each image is read once per answer
        for c in list(self.rt.containers.values()):
            self.rt.state_of(c)
            if container_matches(c, f):
                out.append(listed_container(self.rt, c, images))
        return out
