"""GetContainerEvents: each subscriber gets the events of every pod and container as they happen."""
from __future__ import annotations

from cri.runtime import Runtime


class ContainerEvents:
    rt: Runtime

    async def GetContainerEvents(self, request, context):
        with self.rt.events.subscribe() as queue:
            while True:
                yield await queue.get()
