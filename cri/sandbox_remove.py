"""RemovePodSandbox: stop it if needed, remove its containers, then its pins, files, cgroups and record."""
from __future__ import annotations

import asyncio
import logging

from api.runtime.v1 import api_pb2 as pb
from cri.container_remove import remove_container
from cri.errors import NotFound, handle_errors
from cri.runtime import Runtime, Sandbox
from cri.sandbox_run import remove_sandbox_files
from cri.sandbox_stop import stop_sandbox

log = logging.getLogger(__name__)


async def remove_sandbox(rt: Runtime, s: Sandbox) -> None:
    await stop_sandbox(rt, s)
    await asyncio.gather(*(remove_container(rt, c) for c in rt.containers_of(s.id)))
    async with s.lock:
        if s.id not in rt.sandboxes:
            return
        remove_sandbox_files(rt, s.rec)
        rt.records.remove_sandbox(s.id)
        del rt.sandboxes[s.id]
    rt.events.emit(pb.CONTAINER_DELETED_EVENT, s.id)


class SandboxRemove:
    rt: Runtime

    @handle_errors
    async def RemovePodSandbox(self, request, context):
        try:
            s = self.rt.sandbox(request.pod_sandbox_id)
        except NotFound:
            return pb.RemovePodSandboxResponse()  # already gone: a retried remove succeeds
        await remove_sandbox(self.rt, s)
        log.info("pod sandbox %s removed", s.id)
        return pb.RemovePodSandboxResponse()
