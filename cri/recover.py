"""What a starting cricketd does to find the pods and containers it had.

Records say what existed; shims, exit files and pins say what is still so, and where
they disagree the shim's word wins: a container recorded as created whose shim says it
runs was started by a StartContainer whose record a crash cut short. A running
container whose shim still answers is watched again; one whose shim left an exit file
exited while the daemon was away; one with neither (a dead shim, or a state dir wiped
by a reboot) is exited with an unknown status. A pod whose pinned namespaces are gone
is not ready.

What a crash cut short in the middle of a create is undone, so that every pod and
container is whole or absent and a retried create succeeds: a pod still being set up
(its network, files and cgroups go), a container without its spec (its shim, if one was
spawned, is told to go), pod inits no pod records, and directories and mounts with no
record at all.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time

from api.shim.v1 import shim_pb2 as shim_pb
from cri import image_mounts
from cri.container_lifecycle import container_cgroup, kill_cgroup_tree
from cri.records import (
    CREATED,
    EXITED,
    RUNNING,
    SANDBOX_CREATING,
    SANDBOX_NOTREADY,
    SANDBOX_READY,
    ContainerRecord,
    SandboxRecord,
)
from cri.runtime import Container, Runtime, Sandbox, alive, proc_start_time, zygote_family
from cri.sandbox_lifecycle import discard_sandbox, kill_stray_pod_inits
from frames.shim_client import ShimClient, ShimError, ShimGone, ShimSilent
from linux import libc, namespaces
from linux.cgroups import Cgroup

log = logging.getLogger(__name__)

# How long a shim gets to answer at start: it may still be setting its container up.
SHIM_ANSWER_SECONDS = 5.0
# How long a shim told to shut down gets to exit.
SHIM_EXIT_SECONDS = 5.0

_undoing: set[asyncio.Task] = set()


def _sandbox_intact(rec: SandboxRecord) -> bool:
    for path in (rec.netns, rec.ipcns, rec.utsns, rec.shm):
        if path and not os.path.ismount(path):
            return False
    if rec.pod_init_pid and not alive(rec.pod_init_pid, rec.pod_init_start):
        return False
    return True


def recover(rt: Runtime) -> None:
    half_made = []
    for rec in rt.records.sandboxes():
        s = Sandbox(rec)
        rt.sandboxes[rec.id] = s
        if rec.state == SANDBOX_CREATING:
            s.abandoned = True
            half_made.append(s)
        elif rec.state == SANDBOX_READY and not _sandbox_intact(rec):
            log.warning("pod sandbox %s lost its namespaces while cricketd was away: not ready", rec.id)
            rec.state = SANDBOX_NOTREADY
            rt.save(s)
    for crec in rt.records.containers():
        if not crec.spec and _undo_create(rt, crec):
            continue
        c = rt.add_container(crec)
        if crec.state == CREATED:
            _ask_shim(rt, c)
        if crec.state in (CREATED, RUNNING) and not rt.observe_exit(c) and crec.state == RUNNING:
            rt.watch(c)
    kill_stray_pod_inits(rt)
    _stray_shims(rt)
    _sweep(rt)
    rt.trash.empty_soon()  # what removals before a crash left undeleted: while we serve
    # Undone once cricketd serves (CNI DEL needs the loop); a RunPodSandbox for one of their
    # names meanwhile undoes it first.
    loop = asyncio.get_running_loop()
    for s in half_made:
        log.info("pod sandbox %s was being set up when cricketd stopped: undoing it", s.id)
        task = loop.create_task(_discard(rt, s))
        _undoing.add(task)  # held: the loop keeps only a weak reference to a task
        task.add_done_callback(_undoing.discard)
    log.info("recovered %d pod sandboxes and %d containers", len(rt.sandboxes), len(rt.containers))


async def _discard(rt: Runtime, s: Sandbox) -> None:
    try:
        await discard_sandbox(rt, s)
    except Exception as e:
        log.warning("undoing pod sandbox %s, left half-made by a crash: %s; it stays, not ready, "
                    "for its removal to finish", s.id, e)


def _ask_shim(rt: Runtime, c: Container) -> None:
    """Make a created container's record say what its shim says: a StartContainer whose shim
    started the process may have been cut short before its record was saved."""
    rec = c.rec
    try:
        state = c.shim.state_blocking(SHIM_ANSWER_SECONDS)
    except ShimGone:
        return  # observe_exit tells how it ended
    except ShimSilent as e:
        log.warning("container %s: %s; its state is left as recorded", rec.id, e)
        return
    except ShimError as e:
        # Its creation failed; the shim says why once, and goes. What StartContainer would record.
        now = time.time_ns()
        rec.state, rec.started_at, rec.finished_at = EXITED, now, now
        rec.exit_code, rec.reason, rec.message = shim_pb.START_ERROR, "StartError", str(e)
        rt.save(c)
        c.exited.set()
        return
    if state.pid and not rec.pid:
        rec.pid, rec.pid_start = state.pid, proc_start_time(state.pid) or 0
    if state.status in (shim_pb.RUNNING, shim_pb.EXITED):
        log.warning("container %s was started while its record says created (a crash before the record "
                    "was saved): recording it running", rec.id)
        rec.state = RUNNING
        rec.started_at = state.started_at or rec.started_at
    rt.save(c)


def _undo_create(rt: Runtime, rec: ContainerRecord) -> bool:
    """Undo a create a crash cut short (its record never got its spec); True when it is gone.
    Its shim, if the zygote forked one, is told to go; its directories and mounts go with
    the sweep, as those of a container without a record."""
    shim = ShimClient(rt.layout.shim_socket(rec.id))
    if shim.listening():
        try:
            shim.shutdown_blocking(SHIM_ANSWER_SECONDS)
        except ShimError:
            pass
        deadline = time.monotonic() + SHIM_EXIT_SECONDS
        while shim.listening():
            if time.monotonic() > deadline:
                log.warning("container %s was being created when cricketd stopped, and its shim will not "
                            "go: it stays, for its removal to finish", rec.id)
                return False
            time.sleep(0.01)
    cgroup = container_cgroup(rt, rec)
    if cgroup and Cgroup(cgroup).exists():
        kill_cgroup_tree(cgroup)
        try:
            Cgroup(cgroup).remove(recursive=True)
        except OSError as e:
            log.warning("container %s was being created when cricketd stopped, and its cgroup will not "
                        "go (%s): it stays, for its removal to finish", rec.id, e)
            return False
    rt.records.remove_container(rec.id)
    log.info("container %s was being created when cricketd stopped: undone", rec.id)
    return True


def _stray_shims(rt: Runtime) -> None:
    """Report shims of this state dir's zygotes that no container records. Every path that
    spawns one records it or tells it to go, so one here is a bug; it is left alone (killing
    it would orphan a container nobody can then find) but named."""
    recorded = {c.rec.shim_pid for c in rt.containers.values()}
    for pid, comm, inner in zygote_family(rt.zygote.socket):
        if comm == "cricket-shim" and inner != 1 and pid not in recorded:
            log.warning("shim %d runs but no container records it", pid)


def _sweep(rt: Runtime) -> None:
    layout = rt.layout
    for name in os.listdir(layout.containers_state):
        if name not in rt.containers:
            rootfs = layout.rootfs(name)
            if os.path.ismount(rootfs):
                libc.umount(rootfs, libc.MNT_DETACH)
            image_mounts.release(layout, name)
            shutil.rmtree(layout.bundle(name), ignore_errors=True)
            log.info("removed leftover container state %s", name)
    for name in os.listdir(layout.containers_root):
        if name not in rt.containers:
            shutil.rmtree(layout.container_dir(name), ignore_errors=True)
            log.info("removed leftover container data %s", name)
    for name in os.listdir(layout.sandboxes):
        if name not in rt.sandboxes:
            for kind in ("net", "ipc", "uts", "user"):
                namespaces.unpin(layout.sandbox_pin(name, kind))
            shm = layout.sandbox_shm(name)
            if os.path.ismount(shm):
                libc.umount(shm, libc.MNT_DETACH)
            shutil.rmtree(layout.sandbox_dir(name), ignore_errors=True)
            log.info("removed leftover pod sandbox state %s", name)
