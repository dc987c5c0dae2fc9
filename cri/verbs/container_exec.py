"""ExecSync: a command in a running container's namespaces, cgroup, user, env and cwd."""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal

from api.runtime.v1 import api_pb2 as pb
from cri.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    handle_errors,
)
from cri.records import RUNNING
from cri.runtime import Container, Runtime

log = logging.getLogger(__name__)

# Output kept of stdout and stderr together; more is read and dropped, so the command never
# blocks on a full pipe. The answer must reach kubelet, whose CRI client takes messages of up
# to 16 MiB (k8s.io/cri-client's maxMsgSize): the two streams and the message's own few bytes
# have to fit in that, or kubelet gets no answer at all (not even the exit code).
OUTPUT_LIMIT = (16 << 20) - (4 << 10)
# Output still arriving after the command exited (a child it left holding the pipe) gets this long.
DRAIN_SECONDS = 2.0


class _Budget:
    """The bytes of output still to keep, shared by a command's stdout and stderr."""

    def __init__(self, limit: int):
        self.limit = limit
        self.left = limit
        self.dropped = 0


class _Collector:
    """Reads a pipe to its end in the event loop, keeping what its budget allows."""

    def __init__(self, fd: int, budget: _Budget):
        self.fd = fd
        self.budget = budget
        self.chunks: list[bytes] = []
        self.done = asyncio.get_running_loop().create_future()
        os.set_blocking(fd, False)
        asyncio.get_running_loop().add_reader(fd, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        if data:
            keep = data[: self.budget.left]
            self.chunks.append(keep)
            self.budget.left -= len(keep)
            self.budget.dropped += len(data) - len(keep)
            return
        self.close()

    def close(self) -> None:
        if not self.done.done():
            asyncio.get_running_loop().remove_reader(self.fd)
            os.close(self.fd)
            self.done.set_result(b"".join(self.chunks))


async def exec_sync(rt: Runtime, c: Container, cmd: list[str], timeout: float) -> pb.ExecSyncResponse:
    if not cmd:
        raise InvalidArgument("exec command is empty")
    if c.rec.state != RUNNING or rt.observe_exit(c):
        raise FailedPrecondition(f"container {c.id} is {c.rec.state}: exec needs a running container")
    process = dict(c.rec.spec.get("process") or {})
    process["args"] = list(cmd)
    process["terminal"] = False
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    budget = _Budget(OUTPUT_LIMIT)
    stdout, stderr = _Collector(out_r, budget), _Collector(err_r, budget)
    exec_id = secrets.token_hex(8)
    try:
        try:
            await c.shim.exec(exec_id, process, None, out_w, err_w)
        finally:
            os.close(out_w)
            os.close(err_w)
        try:
            code = await asyncio.wait_for(c.shim.wait_exec(exec_id), timeout if timeout > 0 else None)
        except TimeoutError:
            await c.shim.kill(signal.SIGKILL, exec_id=exec_id)
            raise DeadlineExceeded(f"command {cmd!r} in container {c.id} timed out after {timeout}s") from None
        # wait, not wait_for: a timeout must leave the collectors to be closed, not cancel them.
        await asyncio.wait([stdout.done, stderr.done], timeout=DRAIN_SECONDS)
    finally:
        stdout.close()
        stderr.close()
    if budget.dropped:
        # Cut, not failed: the exit code is what probes and scripts act on, and it would be lost.
        log.warning("exec %r in container %s: kept the first %d bytes of its output, the ExecSync limit; "
                    "dropped %d more", cmd, c.id, budget.limit, budget.dropped)
    return pb.ExecSyncResponse(stdout=stdout.done.result(), stderr=stderr.done.result(), exit_code=code)


class ContainerExec:
    rt: Runtime

    @handle_errors
    async def ExecSync(self, request, context):
        c = self.rt.container(request.container_id)
        return await exec_sync(self.rt, c, list(request.cmd), request.timeout)
