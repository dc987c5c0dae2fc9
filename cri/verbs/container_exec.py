"""ExecSync: a command in a running container's namespaces, cgroup, user, env and cwd."""
from __future__ import annotations

import asyncio
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

# Output kept per stream; more is read and dropped, so the command never blocks on a full pipe.
OUTPUT_LIMIT = 16 << 20
# Output still arriving after the command exited (a child it left holding the pipe) gets this long.
DRAIN_SECONDS = 2.0


class _Collector:
    """Reads a pipe to its end in the event loop, keeping up to `limit` bytes."""

    def __init__(self, fd: int, limit: int = OUTPUT_LIMIT):
        self.fd = fd
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.done = asyncio.get_running_loop().create_future()
        os.set_blocking(fd, False)
        asyncio.get_running_loop().add_reader(fd, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        if data:
            keep = data[: max(0, self.limit - self.size)]
            self.chunks.append(keep)
            self.size += len(keep)
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
    stdout, stderr = _Collector(out_r), _Collector(err_r)
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
    return pb.ExecSyncResponse(stdout=stdout.done.result(), stderr=stderr.done.result(), exit_code=code)


class ContainerExec:
    rt: Runtime

    @handle_errors
    async def ExecSync(self, request, context):
        c = self.rt.container(request.container_id)
        return await exec_sync(self.rt, c, list(request.cmd), request.timeout)
