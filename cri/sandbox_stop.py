"""StopPodSandbox: stop every container of the pod and let go of its namespaces. Idempotent."""
from __future__ import annotations

import asyncio
import logging

from api.runtime.v1 import api_pb2 as pb
from cri.container_stop import stop_container
from cri.errors import NotFound, handle_errors
from cri.records import SANDBOX_NOTREADY
from cri.runtime import Runtime, Sandbox
from cri.sandbox_run import detach_network, release_sandbox

log = logging.getLogger(__name__)


async def stop_sandbox(rt: Runtime, s: Sandbox) -> None:
    # Containers first, all at once: a stopped pod has nothing running (timeout 0, as containerd).
    await asyncio.gather(*(stop_container(rt, c, 0) for c in rt.containers_of(s.id)))
    async with s.lock:
        await detach_network(rt, s.rec)  # before the namespace goes: a failure keeps it for a retry
        release_sandbox(rt, s.rec)
        if s.rec.state != SANDBOX_NOTREADY:
            s.rec.state = SANDBOX_NOTREADY
            rt.save(s)
            rt.events.emit(pb.CONTAINER_STOPPED_EVENT, s.id)


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
