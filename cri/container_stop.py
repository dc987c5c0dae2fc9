"""StopContainer: the image's stop signal (or SIGTERM), then SIGKILL when the timeout runs out."""
from __future__ import annotations

import asyncio
import logging
import signal

from api.runtime.v1 import api_pb2 as pb
from cri.errors import NotFound, RuntimeFailure, handle_errors
from cri.records import RUNNING
from cri.runtime import Container, Runtime
from cri.shims import ShimError, ShimGone

log = logging.getLogger(__name__)

# After SIGKILL a container is gone within moments; past this something is wrong.
KILL_WAIT_SECONDS = 10.0


def stop_signal(image_config: dict) -> int:
    """The image's STOPSIGNAL ("SIGQUIT", "QUIT", "3", "SIGRTMIN+3"), or SIGTERM."""
    name = (image_config.get("StopSignal") or "").strip().upper()
    if not name:
        return signal.SIGTERM
    if name.isdigit():
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    if name.startswith("SIGRTMIN+") and name[9:].isdigit():
        return signal.SIGRTMIN + int(name[9:])
    try:
        return signal.Signals[name]
    except KeyError:
        log.warning("image stop signal %r is unknown; using SIGTERM", name)
        return signal.SIGTERM


def _shares_pid_namespace(c: Container) -> bool:
    """Whether killing the first process leaves others of the container alive (no PID namespace of its own)."""
    namespaces = (c.rec.spec.get("linux") or {}).get("namespaces") or ()
    return not any(ns["type"] == "pid" and not ns.get("path") for ns in namespaces)


async def _signal(rt: Runtime, c: Container, sig: int) -> None:
    try:
        await c.shim.kill(sig, all=sig == signal.SIGKILL and _shares_pid_namespace(c))
    except ShimGone:
        rt.observe_exit(c)


async def kill_and_wait(rt: Runtime, c: Container, timeout: float, sig: int) -> None:
    """Signal `sig`, wait up to `timeout`, then SIGKILL and wait for the exit. The caller holds the lock."""
    if rt.observe_exit(c):
        return
    if timeout > 0 and sig != signal.SIGKILL:
        await _signal(rt, c, sig)
        try:
            await asyncio.wait_for(c.exited.wait(), timeout)
            return
        except asyncio.TimeoutError:
            log.info("container %s outlived its %ss stop timeout; killing it", c.id, timeout)
    await _signal(rt, c, signal.SIGKILL)
    try:
        await asyncio.wait_for(c.exited.wait(), KILL_WAIT_SECONDS)
    except asyncio.TimeoutError:
        if not rt.observe_exit(c):
            raise RuntimeFailure(f"container {c.id} did not exit {KILL_WAIT_SECONDS:.0f}s after SIGKILL") from None


async def stop_container(rt: Runtime, c: Container, timeout: float) -> None:
    async with c.lock:
        if c.rec.state != RUNNING:
            return  # created or exited: nothing runs
        image = rt.images.metadata.image(c.rec.image_id)
        sig = stop_signal(((image.config if image else {}) or {}).get("config") or {})
        try:
            await kill_and_wait(rt, c, timeout, sig)
        except ShimError as e:
            raise RuntimeFailure(f"stopping container {c.id}: {e}") from None


class ContainerStop:
    rt: Runtime

    @handle_errors
    async def StopContainer(self, request, context):
        try:
            c = self.rt.container(request.container_id)
        except NotFound:
            return pb.StopContainerResponse()  # already gone: a retried stop succeeds
        await stop_container(self.rt, c, request.timeout)
        return pb.StopContainerResponse()
