"""CheckpointPod and RestorePod: pod-level checkpoint and restore (KEP-5823).

The schema has the calls and their fields, but not their meaning: KEP-5823 is a proposal still
being written, whose drafts disagree on what `output_path` holds (an archive, or a directory of
runtime-defined files), what a restore is given and what it makes (a new pod with new IDs, its
network, its volumes). Until the CRI settles them, both calls check what they can and answer
FailedPrecondition saying so; a pod's containers can be checkpointed one by one with
CheckpointContainer.
"""
from __future__ import annotations

from cri import checkpoint
from cri.errors import FailedPrecondition, NotFound, handle_errors
from cri.runtime import Runtime

UNSETTLED = ("pod-level checkpoint and restore (KEP-5823) have no settled meaning in the CRI yet: the "
             "format of a pod checkpoint and what a restore makes of it are still being proposed, so "
             "Cricket serves neither; checkpoint the pod's containers one by one with CheckpointContainer")


class SandboxCheckpoint:
    rt: Runtime

    @handle_errors
    async def CheckpointPod(self, request, context):
        s = self.rt.sandbox(request.pod_sandbox_id)
        for cid in request.container_ids:
            if self.rt.container(cid).rec.sandbox_id != s.id:
                raise NotFound(f"container {cid} is not in pod sandbox {s.id}")
        checkpoint.check_location(request.output_path, "output_path")
        raise FailedPrecondition(f"CheckpointPod of pod sandbox {s.id}: {UNSETTLED}")

    @handle_errors
    async def RestorePod(self, request, context):
        checkpoint.check_location(request.checkpoint_path, "checkpoint_path")
        raise FailedPrecondition(f"RestorePod of {request.checkpoint_path}: {UNSETTLED}")
