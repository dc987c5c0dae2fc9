"""RemoveContainer: kill it if it runs, then its shim, rootfs, directories, cgroup and record."""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal

from api.runtime.v1 import api_pb2 as pb
from cri.container_stop import kill_and_wait
from cri.errors import NotFound, handle_errors
from cri.records import CREATED, EXITED, RUNNING
from cri.runtime import Container, Runtime, proc_start_time
from cri.shims import ShimError
from shim import linux
from shim.cgroups import Cgroup

log = logging.getLogger(__name__)

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
        linux.umount(rootfs, linux.MNT_DETACH)
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


class ContainerRemove:
    rt: Runtime

    @handle_errors
    async def RemoveContainer(self, request, context):
        try:
            c = self.rt.container(request.container_id)
        except NotFound:
            return pb.RemoveContainerResponse()  # already gone: a retried remove succeeds
        await remove_container(self.rt, c)
        log.info("container %s removed", c.id)
        return pb.RemoveContainerResponse()
