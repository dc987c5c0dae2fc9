"""StartContainer: the shim releases the held process into execve."""
from __future__ import annotations

import logging
import time

from api.runtime.v1 import api_pb2 as pb
from api.shim.v1 import shim_pb2 as shim_pb
from cri.container_lifecycle import wait_gone
from cri.errors import FailedPrecondition, RuntimeFailure, handle_errors
from cri.records import CREATED, EXITED, RUNNING
from cri.runtime import Container, Runtime, proc_start_time
from cri.tracing import tracer
from frames.shim_client import ShimError, ShimGone
from linux.crash_points import crash_point

log = logging.getLogger(__name__)


async def start_container(rt: Runtime, c: Container) -> None:
    async with c.lock:
        rec = c.rec
        if rec.state != CREATED:
            raise FailedPrecondition(f"container {rec.id} is {rec.state}: only a created container can start")
        try:
            with tracer.start_as_current_span("executor.setup", attributes={"cri.container_id": rec.id}):
                created = await c.shim.wait_created()  # set-up errors (a mount refused...) come here
            if created.status in (shim_pb.RUNNING, shim_pb.EXITED):
                _started_already(rt, c, created)
                raise FailedPrecondition(f"container {rec.id} was started already: its record was behind")
            rec.pid, rec.pid_start = created.pid, proc_start_time(created.pid) or 0
            crash_point("container_start.before_start")
            with tracer.start_as_current_span("shim.start", attributes={"cri.container_id": rec.id}):
                state = await c.shim.start()  # and execve's here
            crash_point("container_start.after_start")  # running, its record still says created
        except ShimGone:
            # Its socket refused us, but a shim killed a moment ago may not have ended yet:
            # wait for that, so the record says exited rather than created.
            if rec.shim_pid:
                await wait_gone(rec.shim_pid)
            rt.observe_exit(c)
            raise RuntimeFailure(f"container {rec.id} cannot start: {rec.message}") from None
        except ShimError as e:
            # The shim records the same, but the answer must not wait for it.
            now = time.time_ns()
            rec.state, rec.started_at, rec.finished_at = EXITED, now, now
            rec.exit_code, rec.reason, rec.message = shim_pb.START_ERROR, "StartError", str(e)
            rt.save(c)
            c.exited.set()
            rt.events.emit(pb.CONTAINER_STOPPED_EVENT, rec.sandbox_id, rec.id)
            raise RuntimeFailure(f"failed to start container {rec.id}: {e}") from None
        rec.state = RUNNING
        rec.started_at = state.started_at
        rt.save(c)
        rt.watch(c)
    rt.events.emit(pb.CONTAINER_STARTED_EVENT, rec.sandbox_id, rec.id)


def _started_already(rt: Runtime, c: Container, truth: shim_pb.State) -> None:
    """The shim started the container already (a start whose record a crash cut short, and
    recovery could not ask): the record says so now, and it is watched, rather than a start
    error being claimed for a process that runs."""
    rec = c.rec
    log.warning("container %s was started while its record says created: recording it running", rec.id)
    rec.state, rec.started_at = RUNNING, truth.started_at or rec.started_at
    rec.pid, rec.pid_start = truth.pid, proc_start_time(truth.pid) or 0
    rt.save(c)
    rt.watch(c)


class ContainerStart:
    rt: Runtime

    @handle_errors
    async def StartContainer(self, request, context):
        c = self.rt.container(request.container_id)
        await start_container(self.rt, c)
        log.info("container %s started", c.id)
        return pb.StartContainerResponse()
