"""PodSandboxStats, ListPodSandboxStats and StreamPodSandboxStats (the same list, in pages): a pod's
cgroup, network and containers."""
from __future__ import annotations

from api.runtime.v1 import api_pb2 as pb
from cri.errors import handle_errors
from cri.paging import streams_pages
from cri.runtime import Runtime
from cri.stats import CpuRates, labels_match, live_cgroups, sandbox_stats


class SandboxStats:
    rt: Runtime
    rates: CpuRates

    @handle_errors
    async def PodSandboxStats(self, request, context):
        s = self.rt.sandbox(request.pod_sandbox_id)
        return pb.PodSandboxStatsResponse(stats=await sandbox_stats(self.rt, self.rates, s))

    @handle_errors
    async def ListPodSandboxStats(self, request, context):
        return pb.ListPodSandboxStatsResponse(stats=await self._list_sandbox_stats(request.filter))

    @streams_pages(pb.StreamPodSandboxStatsResponse, "pod_sandbox_stats")
    async def StreamPodSandboxStats(self, request, context):
        return await self._list_sandbox_stats(request.filter)

    async def _list_sandbox_stats(self, f: pb.PodSandboxStatsFilter) -> list[pb.PodSandboxStats]:
        out = []
        for s in list(self.rt.sandboxes.values()):
            if f.id and not s.id.startswith(f.id):
                continue
            if f.label_selector and not labels_match(pb.PodSandboxConfig.FromString(s.rec.config).labels,
                                                      f.label_selector):
                continue
            out.append(await sandbox_stats(self.rt, self.rates, s))
        self.rates.forget(live_cgroups(self.rt))
        return out
