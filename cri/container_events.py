"""GetContainerEvents, and how an event describes the pod it happened in."""
from __future__ import annotations

import time

from api.runtime.v1 import api_pb2 as pb
from cri.container_status import container_status
from cri.errors import NotFound
from cri.runtime import Runtime
from cri.sandbox_status import sandbox_status


def describe(rt: Runtime, kind: int, sandbox_id: str, container_id: str) -> pb.ContainerEventResponse:
    """The event with the pod's status and its containers' as they are now (a deleted pod has
    neither), as kubelet's evented PLEG reads them."""
    event = pb.ContainerEventResponse(container_id=container_id or sandbox_id, container_event_type=kind,
                                      created_at=time.time_ns())
    try:
        s = rt.sandbox(sandbox_id)
    except NotFound:
        return event
    event.pod_sandbox_status.CopyFrom(sandbox_status(rt, s, False).status)
    event.containers_statuses.extend(container_status(rt, c, False).status for c in rt.containers_of(s.id))
    return event


class ContainerEvents:
    rt: Runtime

    async def GetContainerEvents(self, request, context):
        with self.rt.events.subscribe() as queue:
            while True:
                yield await queue.get()
