"""UpdateContainerResources: new limits on a container's cgroup, and in its spec."""
from __future__ import annotations

import json
import logging
import os

from api.runtime.v1 import api_pb2 as pb
from cri import security
from cri.errors import FailedPrecondition, handle_errors
from cri.records import CREATED, RUNNING
from cri.runtime import Runtime

log = logging.getLogger(__name__)


class ContainerUpdate:
    rt: Runtime

    @handle_errors
    async def UpdateContainerResources(self, request, context):
        c = self.rt.container(request.container_id)
        new = security.resources(request.linux, "linux")
        async with c.lock:
            rec = c.rec
            if rec.state not in (CREATED, RUNNING) or self.rt.observe_exit(c):
                raise FailedPrecondition(f"container {rec.id} is {rec.state}: only a created or running "
                                         "container's resources can change")
            lin = rec.spec.setdefault("linux", {})
            devices = (lin.get("resources") or {}).get("devices")
            lin["resources"] = {**new, **({"devices": devices} if devices else {})}
            if request.linux.oom_score_adj:
                rec.spec["process"]["oomScoreAdj"] = security.clamp_oom_score_adj(request.linux.oom_score_adj)
            # The spec on disk too: a container still being set up reads it.
            bundle_spec = os.path.join(self.rt.layout.bundle(rec.id), "config.json")
            if os.path.exists(bundle_spec):
                with open(bundle_spec + ".tmp", "w") as f:
                    f.write(json.dumps(rec.spec))
                os.replace(bundle_spec + ".tmp", bundle_spec)
            security.apply_resources(lin.get("cgroupsPath", ""), new, f"container {rec.id}")
            self.rt.save(c)
        log.info("container %s resources updated", c.id)
        return pb.UpdateContainerResourcesResponse()
