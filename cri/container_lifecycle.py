"""What the container verbs share: stopping (the stop signal, then SIGKILL when the timeout
runs out), letting go of a container's shim, rootfs, directories and cgroup, and removing it.
Every step is idempotent and safe on a half-made container."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time

from api.runtime.v1 import api_pb2 as pb
from cri import image_mounts
from cri.errors import (
    RuntimeFailure,
)
from cri.layout import Layout
from cri.records import CREATED, EXITED, RUNNING, ContainerRecord
from cri.runtime import UNKNOWN_EXIT_CODE, Container, Runtime, proc_start_time
from cri.trash import Trash
from frames.shim_client import ShimError, ShimGone
from linux import libc, mounts
from linux.cgroups import Cgroup
from linux.crash_points import crash_point

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
        crash_point("container_stop.after_signal")  # signalled, its exit not yet recorded
        try:
            await asyncio.wait_for(c.exited.wait(), timeout)
            return
        except TimeoutError:
            log.info("container %s outlived its %ss stop timeout; killing it", c.id, timeout)
    await _signal(rt, c, signal.SIGKILL)
    crash_point("container_stop.after_signal")
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


def cgroup_tree(path: str) -> list[str]:
    """The cgroup `path` and every cgroup under it, in any hierarchy, deepest first."""
    found = set()
    for top in Cgroup(path).dirs():
        for d, _, _ in os.walk(top):
            found.add(path.rstrip("/") + d[len(top):])
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def kill_cgroup_tree(path: str) -> None:
    """SIGKILL every process in the cgroup `path` and in the cgroups under it."""
    for sub in cgroup_tree(path):
        try:
            Cgroup(sub).kill_all(signal.SIGKILL)
        except OSError as e:
            log.warning("killing the processes of cgroup %s: %s", sub, e)


def container_cgroup(rt: Runtime, rec: ContainerRecord) -> str:
    """The container's cgroup: from its spec, or, for a create a crash cut short before the
    record had it, from the config.json the shim was given; "" when neither was made."""
    spec = rec.spec
    if not spec:
        try:
            with open(os.path.join(rt.layout.bundle(rec.id), "config.json")) as f:
                spec = json.load(f)
        except (OSError, ValueError):
            return ""
    return (spec.get("linux") or {}).get("cgroupsPath") or ""


async def release_container(rt: Runtime, c: Container) -> None:
    """Everything of a container's but its record: idempotent, and safe on a half-made one.
    RuntimeFailure if its cgroup will not go: the record stays for a retry, nothing leaks."""
    rec = c.rec
    if rec.state == RUNNING:
        await kill_and_wait(rt, c, 0, signal.SIGKILL)
    if rec.shim_pid and rt.shim_alive(c):
        if rec.state != EXITED:  # an exited container's shim is leaving on its own
            try:
                await c.shim.shutdown()
            except ShimError:
                pass
        await wait_gone(rec.shim_pid)
    elif not rec.shim_pid and rt.shim_alive(c):
        # A shim whose spawn was never answered (cricketd or the zygote died in between):
        # only its socket knows it. Told to shut down, it lets its held process go and exits.
        try:
            await c.shim.shutdown()
        except ShimError:
            pass
        await _wait_silent(c)
    crash_point("container_remove.after_shim")
    if c.watcher is not None:
        c.watcher.cancel()
    cgroup_path = container_cgroup(rt, rec)
    if cgroup_path:
        _remove_cgroup(cgroup_path, rec.id)
    await asyncio.to_thread(_release_files, rt.layout, rt.trash, rec.id)
    rt.trash.empty_soon()


def _remove_cgroup(path: str, container_id: str) -> None:
    cgroup = Cgroup(path)
    try:
        # Empty, as after every exit its shim saw: rmdir alone ends it, in every hierarchy.
        cgroup.remove(wait=False, recursive=True)
        return
    except OSError:
        pass  # processes left in it: what a shared-PID-namespace exec, or a lost pid, left behind
    kill_cgroup_tree(path)
    try:
        cgroup.remove(recursive=True)
    except OSError as e:
        raise RuntimeFailure(f"removing cgroup {path} of container {container_id}: {e}") from None


def _release_files(layout: Layout, trash: Trash, container_id: str) -> None:
    """The container's mounts, and its directories put in the trash; in a thread, since an
    unmount can wait on the kernel: the last unmount of an overlay that is not volatile syncs
    the filesystem under it."""
    rootfs = layout.rootfs(container_id)
    if os.path.ismount(rootfs):
        libc.umount(rootfs, libc.MNT_DETACH)
    image_mounts.release(layout, container_id)  # before the bundle they are mounted in goes
    dirs = (layout.bundle(container_id), layout.container_dir(container_id))
    mounts.unmount_beneath(*dirs)  # what a create cut short by cricketd's death left mounted
    for path in dirs:
        trash.put(path)


async def wait_gone(pid: int) -> None:
    """Until process `pid` has ended (or SHIM_EXIT_WAIT has passed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SHIM_EXIT_WAIT
    while proc_start_time(pid) is not None and loop.time() < deadline:
        await asyncio.sleep(0.005)


async def _wait_silent(c: Container) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SHIM_EXIT_WAIT
    while c.shim.listening():
        if loop.time() > deadline:
            raise RuntimeFailure(f"the shim of container {c.id} did not exit {SHIM_EXIT_WAIT:.0f}s "
                                 "after it was told to shut down")
        await asyncio.sleep(0.01)


async def remove_container(rt: Runtime, c: Container) -> None:
    async with c.lock:
        if c.id not in rt.containers:
            return  # removed while we waited for the lock
        if c.rec.state == CREATED:
            log.info("removing container %s, which never started", c.id)
        await release_container(rt, c)
        crash_point("container_remove.before_forget")
        rt.records.remove_container(c.id)
        del rt.containers[c.id]
    rt.events.emit(pb.CONTAINER_DELETED_EVENT, c.rec.sandbox_id, c.id)
    if _held_images_gone(rt, c.rec):
        rt.collect_image_garbage()  # its image's layers may be unused now


def _held_images_gone(rt: Runtime, rec: ContainerRecord) -> bool:
    """Whether an image the container stacked on or mounted was removed while it held it: only
    then can its removal leave layers that nothing references. While the images are there, their
    records hold the layers, and a collection (a walk of the content store and every snapshot)
    would find nothing; kubelet removes containers far more often than images."""
    held = [(rec.image_id, rec.chain_id), *((m["image_id"], m["chain_id"]) for m in rec.image_mounts)]
    for image_id, chain_id in held:
        image = rt.images.metadata.image(image_id)
        if image is None or image.chain_id != chain_id:
            return True
    return False


async def discard_container(rt: Runtime, c: Container) -> None:
    """Undo a container entirely: its shim, rootfs, directories, cgroup and record. Idempotent.

    If that fails, the container stays, exited, with the reason in its message, so that its
    removal (kubelet's garbage collection, or a person's) finishes the job: a record lost here
    would leave what it owns to nobody."""
    try:
        await release_container(rt, c)
    except (RuntimeFailure, OSError, ShimError) as e:
        rec = c.rec
        log.warning("undoing container %s: %s; it stays, exited, for its removal to finish", c.id, e)
        if rec.state != EXITED:
            rec.state, rec.exit_code, rec.reason = EXITED, UNKNOWN_EXIT_CODE, "CreateError"
            rec.finished_at = time.time_ns()
        rec.message = f"its creation failed and could not be undone: {e}"
        rt.save(c)
        c.exited.set()
        return
    rt.records.remove_container(c.id)
    rt.containers.pop(c.id, None)
