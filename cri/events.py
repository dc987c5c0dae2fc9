"""Container events for GetContainerEvents: what kubelet's evented PLEG listens to.

The runtime emits an event at each change of a container's or a pod sandbox's
life (created, started, stopped, deleted); every subscriber gets it in a queue
of its own. Emitting never waits: a subscriber that does not keep up loses
events once its queue is full (and the loss is logged), the runtime does not
slow down. With nobody subscribed an event costs nothing, not even its
description.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator

from api.runtime.v1 import api_pb2 as pb

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1000  # events a subscriber may fall behind by

# (event type, pod sandbox ID, container ID or "" for the sandbox itself) -> the event
Describe = Callable[[pb.ContainerEventType, str, str], pb.ContainerEventResponse]


class EventBus:
    def __init__(self, limit: int = QUEUE_LIMIT):
        self.limit = limit
        self.describe: Describe | None = None  # set by the daemon's wiring
        self.dropped = 0
        self._queues: set[asyncio.Queue] = set()

    def emit(self, kind: pb.ContainerEventType, sandbox_id: str, container_id: str = "") -> None:
        if not self._queues or self.describe is None:
            return
        try:
            event = self.describe(kind, sandbox_id, container_id)
        except Exception:
            log.exception("describing a %s event of %s", pb.ContainerEventType.Name(kind),
                          container_id or sandbox_id)
            return
        for queue in self._queues:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self.dropped += 1
                log.warning("a container event subscriber is %d events behind: dropped %s of %s",
                            self.limit, pb.ContainerEventType.Name(kind), event.container_id)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue]:
        queue: asyncio.Queue = asyncio.Queue(self.limit)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)
