"""RuntimeConfig and UpdateRuntimeConfig: the runtime's cgroup driver, and the node's pod CIDRs
that kubelet hands down (recorded by cri/pod_cidr.py, shown by Status)."""
from __future__ import annotations

import logging

from api.runtime.v1 import api_pb2 as pb
from cri import pod_cidr
from cri.errors import handle_errors
from cri.pod_cidr import PodCidrs

log = logging.getLogger(__name__)


class RuntimeConfigVerbs:
    pod_cidrs: PodCidrs

    @handle_errors
    async def RuntimeConfig(self, request, context):
        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(cgroup_driver=pb.CGROUPFS))

    @handle_errors
    async def UpdateRuntimeConfig(self, request, context):
        text = request.runtime_config.network_config.pod_cidr
        # An empty pod_cidr changes nothing (as containerd takes it): the node has none yet.
        if text:
            cidrs = pod_cidr.parse(text)
            await self.pod_cidrs.record(cidrs)
            log.info("pod CIDRs: %s", ", ".join(cidrs))
        return pb.UpdateRuntimeConfigResponse()
