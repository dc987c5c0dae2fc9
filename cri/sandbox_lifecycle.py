"""What the pod verbs share: the pod init, letting go of a pod's namespaces and files, and
stopping and removing a pod with its containers. Every step is idempotent and safe on a
half-made pod.

Records can be behind the truth (a crash between making a thing and recording it), so what
runs is found where it runs: every process in the pod's cgroups is killed at stop and at
removal, whatever the records say, and a pod init the records never heard of is found among
the zygote's forks (zygote_family)."""
from __future__ import annotations

import asyncio
import logging
import os
import signal

from api.runtime.v1 import api_pb2 as pb
from cri.container_lifecycle import (
    cgroup_tree,
    container_cgroup,
    discard_container,
    remove_container,
    stop_container,
)
from cri.errors import RuntimeFailure
from cri.pod_network import detach_network
from cri.records import CREATED, SANDBOX_NOTREADY, SandboxRecord
from cri.runtime import Runtime, Sandbox, alive, proc_start_time, zygote_family
from linux import libc, namespaces
from linux.cgroups import Cgroup
from linux.crash_points import crash_point

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
    cg = Cgroup(pod_cgroup(rec))
    cg.create()  # before the init exists: it goes in the moment it is heard of
    rt.pod_inits_spawning += 1
    heard = False
    try:
        pid = await rt.zygote.spawn_pod_init(rec.id, pod_userns(rt, rec))
        heard = True
        try:
            crash_point("sandbox_run.pod_init_spawned")  # running, outside the pod's cgroup, unrecorded
            cg.add(pid)
            crash_point("sandbox_run.pod_init_placed")  # in the pod's cgroup, unrecorded
            rec.pod_init_pid, rec.pod_init_start = pid, proc_start_time(pid) or 0
            rt.save(sandbox)
        except BaseException:
            _kill(pid)
            raise
    finally:
        rt.pod_inits_spawning -= 1
        if not heard:
            # The zygote may have died (or we stopped listening) with the init forked and
            # unheard of: nobody else would ever end it.
            kill_stray_pod_inits(rt)
    return pid


def kill_stray_pod_inits(rt: Runtime) -> None:
    """Kill the pod inits of this state dir's zygotes that no pod records: a crash or a dead
    zygote between an init's fork and its record. Not while another is being spawned: that
    one would look the same."""
    if rt.pod_inits_spawning:
        return
    recorded = {(s.rec.pod_init_pid, s.rec.pod_init_start) for s in rt.sandboxes.values() if s.rec.pod_init_pid}
    for pid, comm, inner in zygote_family(rt.zygote.socket):
        # PID 1 of a namespace of its own, named as the pod init names itself, or not yet renamed
        # from the zygote it was forked from (a container held before exec has its shim's name).
        if inner == 1 and comm in ("cricket-podinit", "cricket-zygote") \
                and (pid, proc_start_time(pid)) not in recorded:
            log.warning("killing pod init %d, which no pod sandbox records", pid)
            _kill(pid)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _pod_cgroups(rt: Runtime, rec: SandboxRecord) -> list[str]:
    """The tops of the pod's cgroups: its own and its containers' (the records' and any the
    records lost, under a parent that is the pod's alone)."""
    if rec.own_cgroup_parent:
        return [rec.cgroup_parent]  # all of it is this pod's
    # A parent kubelet made holds every attempt of the pod: only this sandbox's own go.
    return [pod_cgroup(rec)] + [path for path in (container_cgroup(rt, c.rec) for c in rt.containers_of(rec.id))
                                if path]


def kill_pod_processes(rt: Runtime, rec: SandboxRecord, spare_created: bool = False) -> None:
    """SIGKILL every process in the pod's cgroups: the pod init, and whatever of its containers'
    the records lost (a pid never saved, a shim killed with its container running). With
    `spare_created` (a stop), containers created and not started keep their held process, as
    a stop leaves them in containerd: only their removal ends them."""
    if not rec.cgroup_parent:
        return
    spared = {container_cgroup(rt, c.rec) for c in rt.containers_of(rec.id) if c.rec.state == CREATED} \
        if spare_created else set()
    for top in _pod_cgroups(rt, rec):
        for path in cgroup_tree(top):
            if any(path == p or path.startswith(p + "/") for p in spared):
                continue
            try:
                Cgroup(path).kill_all(signal.SIGKILL)
            except OSError as e:
                log.warning("killing the processes of cgroup %s of pod %s: %s", path, rec.id, e)


def pod_userns(rt: Runtime, rec: SandboxRecord) -> str:
    """The pinned user namespace of a pod of kubelet's hostUsers: false; "" for the host's."""
    ns = pb.PodSandboxConfig.FromString(rec.config).linux.security_context.namespace_options
    if not ns.HasField("userns_options") or ns.userns_options.mode != pb.POD:
        return ""
    return rt.layout.sandbox_pin(rec.id, "user")


def release_sandbox(rt: Runtime, rec: SandboxRecord, spare_created: bool = False) -> None:
    """Let go of a pod's namespaces, /dev/shm and init, and end what runs in its cgroups;
    idempotent, and safe on a half-made pod."""
    if alive(rec.pod_init_pid, rec.pod_init_start):
        _kill(rec.pod_init_pid)
    kill_pod_processes(rt, rec, spare_created)
    for kind in ("net", "ipc", "uts", "user"):
        namespaces.unpin(rt.layout.sandbox_pin(rec.id, kind))
    shm = rt.layout.sandbox_shm(rec.id)
    if os.path.isdir(shm):
        try:
            libc.umount(shm, libc.MNT_DETACH)
        except OSError:
            pass
        os.rmdir(shm)


def remove_sandbox_files(rt: Runtime, rec: SandboxRecord) -> None:
    """Everything of a pod's but its record and its containers: idempotent. RuntimeFailure if a
    cgroup will not go, so that the record stays for a retry rather than the cgroup leaking."""
    release_sandbox(rt, rec)
    # Renamed away in one syscall and deleted after the call has answered, as a container's are.
    rt.trash.put(rt.layout.sandbox_dir(rec.id))
    rt.trash.empty_soon()
    if not rec.cgroup_parent:
        return
    failures = []
    for path in _pod_cgroups(rt, rec):
        try:
            Cgroup(path).remove(recursive=True)
        except OSError as e:
            failures.append(str(e))
    if failures:
        raise RuntimeFailure(f"removing the cgroups of pod sandbox {rec.id}: {'; '.join(failures)}")
    if rec.cgroup_parent.startswith(CGROUP_ROOT + "/"):
        try:
            Cgroup(CGROUP_ROOT).remove(wait=False)  # the last pod out takes Cricket's own parent
        except OSError:
            pass  # other pods still in it


async def stop_sandbox(rt: Runtime, s: Sandbox) -> None:
    # Containers first, all at once: a stopped pod has nothing running (timeout 0, as containerd).
    await asyncio.gather(*(stop_container(rt, c, 0) for c in rt.containers_of(s.id)))
    crash_point("sandbox_stop.after_containers")
    async with s.lock:
        await detach_network(rt, s.rec)  # before the namespace goes: a failure keeps it for a retry
        crash_point("sandbox_stop.after_cni_del")
        release_sandbox(rt, s.rec, spare_created=True)
        if s.rec.state != SANDBOX_NOTREADY:
            s.rec.state = SANDBOX_NOTREADY
            rt.save(s)
            rt.events.emit(pb.CONTAINER_STOPPED_EVENT, s.id)


async def remove_sandbox(rt: Runtime, s: Sandbox) -> None:
    await stop_sandbox(rt, s)
    await asyncio.gather(*(remove_container(rt, c) for c in rt.containers_of(s.id)))
    crash_point("sandbox_remove.after_containers")
    async with s.lock:
        if s.id not in rt.sandboxes:
            return
        remove_sandbox_files(rt, s.rec)
        crash_point("sandbox_remove.before_forget")
        rt.records.remove_sandbox(s.id)
        del rt.sandboxes[s.id]
    rt.events.emit(pb.CONTAINER_DELETED_EVENT, s.id)


async def discard_sandbox(rt: Runtime, s: Sandbox) -> None:
    """Undo a pod whose set-up did not finish: its network, files, cgroups and record, silently
    (it was never reported made). Idempotent. If a step fails, the pod stays, abandoned and not
    ready, for a retry: by a RunPodSandbox of its name, or by its removal."""
    async with s.lock:
        if s.id not in rt.sandboxes:
            return  # undone meanwhile
        for c in rt.containers_of(s.id):
            await discard_container(rt, c)
        try:
            await detach_network(rt, s.rec)
            remove_sandbox_files(rt, s.rec)
        except RuntimeFailure:
            s.abandoned = True
            raise
        rt.records.remove_sandbox(s.id)
        del rt.sandboxes[s.id]
