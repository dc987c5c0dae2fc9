"""GetContainerEvents: what kubelet's evented PLEG subscribes to."""
from __future__ import annotations

import asyncio
import queue
import threading
import time

import pytest

from api.runtime.v1 import api_pb2 as pb
from cri.events import EventBus
from tests.pods import Pods


@pytest.fixture
def pods(daemon, tmp_path):
    p = Pods(daemon, str(tmp_path / "logs"))
    yield p
    p.remove_all()


class Subscriber:
    """A GetContainerEvents stream read by a thread into a queue."""

    def __init__(self, pods: Pods):
        self.call = pods.rt.GetContainerEvents(pb.GetEventsRequest())
        self.events: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        time.sleep(0.3)  # subscribed before anything happens

    def _read(self) -> None:
        try:
            for event in self.call:
                self.events.put(event)
        except Exception:
            pass

    def until(self, container_id: str, kind: int, timeout: float = 20) -> list[pb.ContainerEventResponse]:
        """Every event up to the first of `kind` for `container_id`."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            seen.append(self.events.get(timeout=max(0.1, deadline - time.monotonic())))
            if seen[-1].container_id == container_id and seen[-1].container_event_type == kind:
                return seen

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(5)


def test_a_container_lifecycle_in_order_to_every_subscriber(pods, registry, test_images):
    first, second = Subscriber(pods), Subscriber(pods)
    try:
        pod = pods.run_pod()
        cid = pods.run(pod, test_images["busybox"].reference(registry), ["sleep", "1000"])
        pods.rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0))
        pods.rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid))
        pods.remove_pod(pod)
        for sub in (first, second):
            seen = sub.until(pod, pb.CONTAINER_DELETED_EVENT)
            about_pod = [e.container_event_type for e in seen if e.container_id == pod]
            about_container = [e for e in seen if e.container_id == cid]
            assert about_pod == [pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT,
                                 pb.CONTAINER_STOPPED_EVENT, pb.CONTAINER_DELETED_EVENT]
            assert [e.container_event_type for e in about_container] == [
                pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT,
                pb.CONTAINER_STOPPED_EVENT, pb.CONTAINER_DELETED_EVENT]
            created, started = about_container[:2]
            assert created.pod_sandbox_status.id == pod and created.created_at > 0
            states = [{s.id: s.state for s in e.containers_statuses}.get(cid) for e in about_container]
            assert states == [pb.CONTAINER_CREATED, pb.CONTAINER_RUNNING, pb.CONTAINER_EXITED, None]
            assert started.pod_sandbox_status.state == pb.SANDBOX_READY
    finally:
        first.close()
        second.close()


def test_a_container_that_exits_by_itself_is_reported_stopped(pods, registry, test_images):
    sub = Subscriber(pods)
    try:
        pod = pods.run_pod()
        cid = pods.run(pod, test_images["busybox"].reference(registry), ["sh", "-c", "exit 3"])
        stopped = sub.until(cid, pb.CONTAINER_STOPPED_EVENT)[-1]
        status = {s.id: s for s in stopped.containers_statuses}[cid]
        assert status.state == pb.CONTAINER_EXITED and status.exit_code == 3
    finally:
        sub.close()


def test_a_slow_subscriber_loses_events_not_the_runtime_its_pace():
    asyncio.run(_slow_subscriber())


async def _slow_subscriber():
    bus = EventBus(limit=2)
    bus.describe = lambda kind, sandbox_id, container_id: pb.ContainerEventResponse(
        container_id=container_id, container_event_type=kind)
    with bus.subscribe() as slow, bus.subscribe() as fast:
        for i in range(3):
            bus.emit(pb.CONTAINER_CREATED_EVENT, "pod", f"c{i}")
            if i < 2:
                assert (await fast.get()).container_id == f"c{i}"
        assert bus.dropped == 1 and slow.qsize() == 2 and fast.qsize() == 1
    bus.emit(pb.CONTAINER_CREATED_EVENT, "pod", "after")  # nobody listens: nothing is described
    assert bus.dropped == 1
