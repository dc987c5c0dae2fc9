"""ContainerStats, ListContainerStats and StreamContainerStats (the same list, in pages): a running
container's CPU, memory and writable layer."""
from __future__ import annotations

from api.runtime.v1 import api_pb2 as pb
from cri.errors import FailedPrecondition, handle_errors
from cri.paging import streams_pages
from cri.records import RUNNING
from cri.runtime import Runtime
from cri.stats import CpuRates, container_stats, labels_match, live_cgroups
from linux.cgroups import CgroupNotFound


class ContainerStats:
    rt: Runtime
    rates: CpuRates

    @handle_errors
    async def ContainerStats(self, request, context):
        c = self.rt.container(request.container_id)
        if c.rec.state != RUNNING or self.rt.observe_exit(c):
            raise FailedPrecondition(f"container {c.id} is {c.rec.state}: stats come from running containers")
        return pb.ContainerStatsResponse(stats=await container_stats(self.rt, self.rates, c))

    @handle_errors
    async def ListContainerStats(self, request, context):
        return pb.ListContainerStatsResponse(stats=await self._list_container_stats(request.filter))

    @streams_pages(pb.StreamContainerStatsResponse, "container_stats")
    async def StreamContainerStats(self, request, context):
        return await self._list_container_stats(request.filter)

    async def _list_container_stats(self, f: pb.ContainerStatsFilter) -> list[pb.ContainerStats]:
        out = []
        for c in list(self.rt.containers.values()):
            if c.rec.state != RUNNING or (f.id and not c.id.startswith(f.id)):
                continue
            if f.pod_sandbox_id and not c.rec.sandbox_id.startswith(f.pod_sandbox_id):
                continue
            if f.label_selector and not labels_match(pb.ContainerConfig.FromString(c.rec.config).labels,
                                                      f.label_selector):
                continue
            try:
                out.append(await container_stats(self.rt, self.rates, c))
            except CgroupNotFound:
                continue
        self.rates.forget(live_cgroups(self.rt))  # the samples of removed containers
        return out
