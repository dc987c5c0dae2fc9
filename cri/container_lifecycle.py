"""What the container verbs share: stopping (the stop signal, then SIGKILL when the timeout
runs out), letting go of a container's shim, rootfs, directories and cgroup, and removing it.
Every step is idempotent and safe on a half-made container."""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal

from api.runtime.v1 import api_pb2 as pb
from cri import image_mounts
from cri.errors import (
    RuntimeFailure,
)
from cri.records import CREATED, EXITED, RUNNING
from cri.runtime import Container, Runtime, proc_start_time
from frames.shim_client import ShimError, ShimGone
from linux import libc
from linux.cgroups import Cgroup

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
        except TimeoutError:
            log.info("container %s outlived its %ss stop timeout; killing it", c.id, timeout)
    await _signal(rt, c, signal.SIGKILL)
    try:
        await asyncio.wait_for(c.exited.wait(), KILL_WAIT_SECONDS)
    except TimeoutError:
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


SHIM_EXIT_WAIT = 5.0


async def release_container(rt: Runtime, c: Container) -> None:
    """Everything of a container's but its record: idempotent, and safe on a half-made one."""
    rec = c.rec
    if rec.state == RUNNING:
        await kill_and_wait(rt, c, 0, signal.SIGKILL)
    if rec.shim_pid and proc_start_time(rec.shim_pid) is not None:
        if rec.state != EXITED:  # an exited container's shim is leaving on its own
            try:
                await c.shim.shutdown()
            except ShimError:
                pass
        await _wait_gone(rec.shim_pid)
    if c.watcher is not None:
        c.watcher.cancel()
    cgroup_path = (rec.spec.get("linux") or {}).get("cgroupsPath")
    if cgroup_path:
        cg = Cgroup(cgroup_path)
        if cg.exists():
            cg.kill_all(signal.SIGKILL)  # what a shared-PID-namespace exec left behind
            try:
                cg.remove()
            except OSError as e:
                log.warning("removing cgroup %s of container %s: %s", cgroup_path, rec.id, e)
    rootfs = rt.layout.rootfs(rec.id)
    if os.path.ismount(rootfs):
        libc.umount(rootfs, libc.MNT_DETACH)
    image_mounts.release(rt.layout, rec.id)  # before the bundle they are mounted in goes
    shutil.rmtree(rt.layout.bundle(rec.id), ignore_errors=True)
    await asyncio.to_thread(shutil.rmtree, rt.layout.container_dir(rec.id), True)


async def _wait_gone(pid: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SHIM_EXIT_WAIT
    while proc_start_time(pid) is not None and loop.time() < deadline:
        await asyncio.sleep(0.005)


async def remove_container(rt: Runtime, c: Container) -> None:
    async with c.lock:
        if c.id not in rt.containers:
            return  # removed while we waited for the lock
        if c.rec.state == CREATED:
            log.info("removing container %s, which never started", c.id)
        await release_container(rt, c)
        rt.records.remove_container(c.id)
        del rt.containers[c.id]
    rt.events.emit(pb.CONTAINER_DELETED_EVENT, c.rec.sandbox_id, c.id)
    rt.collect_image_garbage()  # its image's layers may be unused now


async def discard_container(rt: Runtime, c: Container) -> None:
    """Undo a container entirely: its shim, rootfs, directories, cgroup and record. Idempotent."""
    await release_container(rt, c)
    rt.records.remove_container(c.id)
    rt.containers.pop(c.id, None)
