"""What the pod verbs share: the pod init, letting go of a pod's namespaces and files, and
stopping and removing a pod with its containers. Every step is idempotent and safe on a
half-made pod."""
from __future__ import annotations

import asyncio
import logging
import os
import shutil

from api.runtime.v1 import api_pb2 as pb
from cri.container_lifecycle import remove_container, stop_container
from cri.pod_network import detach_network
from cri.records import SANDBOX_NOTREADY, SandboxRecord
from cri.runtime import Runtime, Sandbox, proc_start_time
from linux import libc, namespaces
from linux.cgroups import Cgroup

log = logging.getLogger(__name__)

# A pod that names no cgroup parent gets its own under this one.
CGROUP_ROOT = "/cricket"


def pod_cgroup(rec: SandboxRecord) -> str:
    """The cgroup of the pod's own processes (the pod init), beside its containers'."""
    return f"{rec.cgroup_parent.rstrip('/')}/{rec.id}"


async def ensure_pod_init(rt: Runtime, sandbox: Sandbox) -> int:
    """The pod's shared PID namespace holder, started on first need; its pid."""
    rec = sandbox.rec
    if rec.pod_init_pid and proc_start_time(rec.pod_init_pid) == rec.pod_init_start:
        return rec.pod_init_pid
    pid = await rt.zygote.spawn_pod_init(rec.id)
    rec.pod_init_pid, rec.pod_init_start = pid, proc_start_time(pid) or 0
    cg = Cgroup(pod_cgroup(rec))
    cg.create()
    cg.add(pid)
    rt.save(sandbox)
    return pid


def release_sandbox(rt: Runtime, rec: SandboxRecord) -> None:
    """Let go of a pod's namespaces, /dev/shm and init; idempotent, and safe on a half-made pod."""
    if rec.pod_init_pid and proc_start_time(rec.pod_init_pid) == rec.pod_init_start:
        try:
            os.kill(rec.pod_init_pid, 9)
        except ProcessLookupError:
            pass
    for kind in ("net", "ipc", "uts"):
        namespaces.unpin(rt.layout.sandbox_pin(rec.id, kind))
    shm = rt.layout.sandbox_shm(rec.id)
    if os.path.isdir(shm):
        try:
            libc.umount(shm, libc.MNT_DETACH)
        except OSError:
            pass
        os.rmdir(shm)


def remove_sandbox_files(rt: Runtime, rec: SandboxRecord) -> None:
    """Everything of a pod's but its record and its containers: idempotent."""
    release_sandbox(rt, rec)
    shutil.rmtree(rt.layout.sandbox_dir(rec.id), ignore_errors=True)
    paths = [pod_cgroup(rec)] + ([rec.cgroup_parent] if rec.own_cgroup_parent else [])
    for path in paths:
        try:
            Cgroup(path).remove()
        except OSError as e:
            log.warning("removing cgroup %s of pod %s: %s", path, rec.id, e)
    if rec.cgroup_parent.startswith(CGROUP_ROOT + "/"):
        try:
            Cgroup(CGROUP_ROOT).remove(wait=False)  # the last pod out takes Cricket's own parent
        except OSError:
            pass  # other pods still in it


async def stop_sandbox(rt: Runtime, s: Sandbox) -> None:
    # Containers first, all at once: a stopped pod has nothing running (timeout 0, as containerd).
    await asyncio.gather(*(stop_container(rt, c, 0) for c in rt.containers_of(s.id)))
    async with s.lock:
        await detach_network(rt, s.rec)  # before the namespace goes: a failure keeps it for a retry
        release_sandbox(rt, s.rec)
        if s.rec.state != SANDBOX_NOTREADY:
            s.rec.state = SANDBOX_NOTREADY
            rt.save(s)
            rt.events.emit(pb.CONTAINER_STOPPED_EVENT, s.id)


async def remove_sandbox(rt: Runtime, s: Sandbox) -> None:
    await stop_sandbox(rt, s)
    await asyncio.gather(*(remove_container(rt, c) for c in rt.containers_of(s.id)))
    async with s.lock:
        if s.id not in rt.sandboxes:
            return
        remove_sandbox_files(rt, s.rec)
        rt.records.remove_sandbox(s.id)
        del rt.sandboxes[s.id]
    rt.events.emit(pb.CONTAINER_DELETED_EVENT, s.id)
