"""PodSandboxStats and ListPodSandboxStats: a pod's cgroup, network and containers."""
from __future__ import annotations

from api.runtime.v1 import api_pb2 as pb
from cri.errors import handle_errors
from cri.runtime import Runtime
from cri.stats import CpuRates, labels_match, sandbox_stats


class SandboxStats:
    rt: Runtime
    rates: CpuRates

    @handle_errors
    async def PodSandboxStats(self, request, context):
        s = self.rt.sandbox(request.pod_sandbox_id)
        return pb.PodSandboxStatsResponse(stats=sandbox_stats(self.rt, self.rates, s))

    @handle_errors
    async def ListPodSandboxStats(self, request, context):
        f = request.filter
        out = []
        for s in list(self.rt.sandboxes.values()):
            if f.id and not s.id.startswith(f.id):
                continue
            if f.label_selector and not labels_match(pb.PodSandboxConfig.FromString(s.rec.config).labels,
                                                      f.label_selector):
                continue
            out.append(sandbox_stats(self.rt, self.rates, s))
        self.rates.forget({(c.rec.spec.get("linux") or {}).get("cgroupsPath", "") for c in self.rt.containers.values()}
                          | {s.rec.cgroup_parent for s in self.rt.sandboxes.values()})
        return pb.ListPodSandboxStatsResponse(stats=out)
