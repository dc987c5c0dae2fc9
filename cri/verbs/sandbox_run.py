"""RunPodSandbox: a pod's namespaces, files, /dev/shm and cgroup, without a pause process."""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time

from api.runtime.v1 import api_pb2 as pb
from cri import handler_features, security
from cri.config import BUILTIN_HANDLER
from cri.errors import AlreadyExists, InvalidArgument, RuntimeFailure, handle_errors
from cri.pod_network import attach_network
from cri.records import SANDBOX_CREATING, SANDBOX_READY, NameInUse, SandboxRecord
from cri.runtime import Runtime, Sandbox
from cri.sandbox_files import write_sandbox_files
from cri.sandbox_lifecycle import CGROUP_ROOT, discard_sandbox, ensure_pod_init
from linux import libc, namespaces
from linux.cgroups import Cgroup
from linux.crash_points import crash_point

log = logging.getLogger(__name__)

SHM_SIZE = "65536k"  # Docker's and containerd's default /dev/shm


def sandbox_name(meta: pb.PodSandboxMetadata) -> str:
    return f"{meta.name}_{meta.namespace}_{meta.uid}_{meta.attempt}"


def namespace_options(config: pb.PodSandboxConfig) -> pb.NamespaceOption:
    return config.linux.security_context.namespace_options


def validate(config: pb.PodSandboxConfig) -> None:
    meta = config.metadata
    for name in ("name", "namespace", "uid"):
        if not getattr(meta, name):
            raise InvalidArgument(f"pod sandbox metadata.{name} is empty")
    ns = namespace_options(config)
    if ns.network not in (pb.POD, pb.NODE):
        raise InvalidArgument(f"namespace_options.network must be POD or NODE, not {pb.NamespaceMode.Name(ns.network)}")
    if ns.ipc not in (pb.POD, pb.NODE):
        raise InvalidArgument(f"namespace_options.ipc must be POD or NODE, not {pb.NamespaceMode.Name(ns.ipc)}")
    if ns.pid == pb.TARGET:
        raise InvalidArgument("namespace_options.pid TARGET is for containers, not pod sandboxes")
    if config.log_directory and not os.path.isabs(config.log_directory):
        raise InvalidArgument(f"log_directory {config.log_directory!r} must be an absolute path")
    security.check_pod_user_namespace(config)
    security.pod_sysctls(config)
    security.resources(config.linux.resources, "linux.resources")
    security.resources(config.linux.overhead, "linux.overhead")


async def run_pod_sandbox(rt: Runtime, config: pb.PodSandboxConfig, handler: str) -> Sandbox:
    validate(config)
    if handler not in ("", BUILTIN_HANDLER) and handler not in rt.handlers:
        known = ", ".join(repr(h) for h in ["", BUILTIN_HANDLER, *rt.handlers])
        raise InvalidArgument(f"unknown runtime handler {handler!r}: this node has {known}")
    if security.check_pod_user_namespace(config) is not None:
        h = rt.handlers.get(handler)
        if h is None:
            features = await asyncio.to_thread(handler_features.builtin, (rt.config.root_dir, rt.config.state_dir))
        else:
            features = await asyncio.to_thread(handler_features.oci_runtime, h.path)
        if not features.user_namespaces:
            raise InvalidArgument(f"namespace_options.userns_options: runtime handler {handler!r} can not run a pod "
                                  "in a user namespace of its own on this node (its Status features say "
                                  "user_namespaces: false); use one that can, or hostUsers: true")
    rec = SandboxRecord(
        id=secrets.token_hex(32), name=sandbox_name(config.metadata), config=config.SerializeToString(),
        runtime_handler=handler, created_at=time.time_ns(), state=SANDBOX_CREATING,
    )
    rec.cgroup_parent = config.linux.cgroup_parent or f"{CGROUP_ROOT}/{rec.id}"
    await _record(rt, rec)
    log.debug("pod sandbox %s (%s) recorded", rec.id, rec.name)
    crash_point("sandbox_run.after_record")
    sandbox = Sandbox(rec)
    rt.sandboxes[rec.id] = sandbox
    try:
        async with sandbox.lock:
            await _set_up(rt, sandbox, config)
            crash_point("sandbox_run.before_ready")
            rec.state = SANDBOX_READY
            rt.save(sandbox)
    except BaseException:
        try:
            await discard_sandbox(rt, sandbox)
        except Exception as e:  # the pod stays, abandoned, for a retry: the set-up's error is the answer
            log.warning("undoing pod sandbox %s: %s", rec.id, e)
        raise
    # A pod sandbox is reported as containerd reports its sandbox container: made, then running.
    rt.events.emit(pb.CONTAINER_CREATED_EVENT, rec.id)
    rt.events.emit(pb.CONTAINER_STARTED_EVENT, rec.id)
    return sandbox


async def _record(rt: Runtime, rec: SandboxRecord) -> None:
    """Record the sandbox, reserving its name before anything is made. A name held by a pod
    whose set-up a crash cut short is freed first: a retried RunPodSandbox succeeds."""
    try:
        rt.records.add_sandbox(rec)
        return
    except NameInUse as e:
        holder = rt.sandboxes.get(e.holder)
        if holder is None or not holder.abandoned:
            raise AlreadyExists(f"pod sandbox name {e.name!r} is reserved for {e.holder}") from None
    log.info("pod sandbox %s holds the name %r but was never set up wholly: undoing it", holder.id, rec.name)
    try:
        await discard_sandbox(rt, holder)
    except RuntimeFailure as e:
        raise AlreadyExists(f"pod sandbox name {rec.name!r} is held by {holder.id}, left half-made by a crash, "
                            f"and undoing it failed: {e}; remove that pod sandbox") from None
    try:
        rt.records.add_sandbox(rec)
    except NameInUse as e:
        raise AlreadyExists(f"pod sandbox name {e.name!r} is reserved for {e.holder}") from None


async def _set_up(rt: Runtime, sandbox: Sandbox, config: pb.PodSandboxConfig) -> None:
    rec = sandbox.rec
    layout = rt.layout
    ns = namespace_options(config)
    host_network = ns.network == pb.NODE
    os.makedirs(os.path.join(layout.sandbox_dir(rec.id), "ns"), mode=0o711)
    rec.hostname = write_sandbox_files(layout.sandbox_dir(rec.id), config)
    if config.log_directory:
        os.makedirs(config.log_directory, mode=0o755, exist_ok=True)

    # The pod's network, IPC and UTS namespaces (UTS follows the network: a pod on
    # the host's network has the host's name).
    # With a user namespace of the pod's own (hostUsers: false), it is made first and owns them.
    userns = security.check_pod_user_namespace(config)
    wanted = {"net": not host_network, "ipc": ns.ipc == pb.POD, "uts": not host_network, "user": userns is not None}
    paths = {kind: layout.sandbox_pin(rec.id, kind) if want else "" for kind, want in wanted.items()}
    for path in paths.values():
        if path:
            open(path, "w").close()
    if any(paths.values()):
        maps = [namespaces.id_map([m]) for m in userns] if userns is not None else ["", ""]
        await rt.zygote.pin_namespaces(paths["net"], paths["ipc"], paths["uts"], rec.hostname,
                                       security.pod_sysctls(config), paths["user"], maps[0], maps[1])
    rec.netns, rec.ipcns, rec.utsns = paths["net"], paths["ipc"], paths["uts"]
    crash_point("sandbox_run.after_pin")

    if not host_network:
        rec.ips = await attach_network(rt, rec, config)
        crash_point("sandbox_run.after_cni_add")

    if ns.ipc == pb.POD:
        shm = layout.sandbox_shm(rec.id)
        os.mkdir(shm, 0o755)
        libc.mount("shm", shm, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC,
                    f"mode=1777,size={SHM_SIZE}")
        rec.shm = shm

    parent = Cgroup(rec.cgroup_parent)
    rec.own_cgroup_parent = not parent.exists()  # kubelet makes its pods' parents; others are ours to remove
    rt.save(sandbox)  # recorded before it is made: undoing a set-up a crash cut short removes it
    parent.create()
    if rec.own_cgroup_parent and config.linux.resources.ByteSize():
        parent.apply(security.resources(config.linux.resources))  # a parent kubelet made, kubelet limits
    if ns.pid == pb.POD:
        await ensure_pod_init(rt, sandbox)


class SandboxRun:
    rt: Runtime

    @handle_errors
    async def RunPodSandbox(self, request, context):
        sandbox = await run_pod_sandbox(self.rt, request.config, request.runtime_handler)
        log.info("pod sandbox %s (%s) is ready", sandbox.id, sandbox.rec.name)
        return pb.RunPodSandboxResponse(pod_sandbox_id=sandbox.id)
