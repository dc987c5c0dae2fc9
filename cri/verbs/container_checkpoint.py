"""CheckpointContainer: kubelet's forensic container checkpointing (KEP-2008), which names the
archive to write in `location`.

A checkpoint is CRIU's dump of the container's processes, kept with the container's config and
spec and its writable layer's changes in one tar (as containerd and CRI-O write it), restored
by CreateContainer with the archive as its image. Every handler needs a CRIU that works on this
host (runc checkpoint drives CRIU too); where it does not, the call answers FailedPrecondition
with CRIU's own reason, after the request itself has been checked. Nothing is written then.
"""
from __future__ import annotations

from cri import checkpoint
from cri.errors import FailedPrecondition, InvalidArgument, handle_errors
from cri.records import RUNNING
from cri.runtime import Runtime


class ContainerCheckpoint:
    rt: Runtime

    @handle_errors
    async def CheckpointContainer(self, request, context):
        c = self.rt.container(request.container_id)
        checkpoint.check_location(request.location, "location")
        if request.timeout < 0:
            raise InvalidArgument(f"timeout {request.timeout} is negative: give seconds, or 0 for the default")
        if c.rec.state != RUNNING or self.rt.observe_exit(c):
            raise FailedPrecondition(f"container {c.id} is {c.rec.state}: only a running container can be "
                                     "checkpointed")
        handler = self.rt.sandbox(c.rec.sandbox_id).rec.runtime_handler or "the built-in executor"
        problem = await checkpoint.criu_problem()
        if problem is not None:
            raise FailedPrecondition(f"checkpointing container {c.id} ({handler}) needs CRIU, and {problem}")
        # Not reached on this project's machines (see cri/checkpoint.py): what a dump through the
        # shim and its restore need is described in the README's checkpoint section.
        raise FailedPrecondition(f"checkpointing container {c.id} ({handler}): CRIU works on this host, but "
                                 "Cricket does not yet dump containers through their shims")
