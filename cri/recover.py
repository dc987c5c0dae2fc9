"""What a starting cricketd does to find the pods and containers it had.

Records say what existed; shims, exit files and pins say what is still so.
A running container whose shim still answers is watched again; one whose shim
left an exit file exited while the daemon was away; one with neither (a dead
shim, or a state dir wiped by a reboot) is exited with an unknown status. A pod
whose pinned namespaces are gone is not ready. Directories and mounts with no
record (a crash in the middle of a create or a remove) are removed.
"""
from __future__ import annotations

import logging
import os
import shutil

from cri import image_mounts
from cri.records import CREATED, RUNNING, SANDBOX_NOTREADY, SANDBOX_READY, SandboxRecord
from cri.runtime import Runtime, Sandbox, alive
from linux import libc, namespaces

log = logging.getLogger(__name__)


def _sandbox_intact(rec: SandboxRecord) -> bool:
    for path in (rec.netns, rec.ipcns, rec.utsns, rec.shm):
        if path and not os.path.ismount(path):
            return False
    if rec.pod_init_pid and not alive(rec.pod_init_pid, rec.pod_init_start):
        return False
    return True


def recover(rt: Runtime) -> None:
    for rec in rt.records.sandboxes():
        s = Sandbox(rec)
        rt.sandboxes[rec.id] = s
        if rec.state == SANDBOX_READY and not _sandbox_intact(rec):
            log.warning("pod sandbox %s lost its namespaces while cricketd was away: not ready", rec.id)
            rec.state = SANDBOX_NOTREADY
            rt.save(s)
    for crec in rt.records.containers():
        c = rt.add_container(crec)
        if crec.state in (CREATED, RUNNING) and not rt.observe_exit(c) and crec.state == RUNNING:
            rt.watch(c)
    _sweep(rt)
    log.info("recovered %d pod sandboxes and %d containers", len(rt.sandboxes), len(rt.containers))


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
            for kind in ("net", "ipc", "uts"):
                namespaces.unpin(layout.sandbox_pin(name, kind))
            shm = layout.sandbox_shm(name)
            if os.path.ismount(shm):
                libc.umount(shm, libc.MNT_DETACH)
            shutil.rmtree(layout.sandbox_dir(name), ignore_errors=True)
            log.info("removed leftover pod sandbox state %s", name)
