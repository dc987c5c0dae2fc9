"""RunPodSandbox: a pod's namespaces, files, /dev/shm and cgroup, without a pause process."""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import time

from api.runtime.v1 import api_pb2 as pb
from cri import security
from cri.config import BUILTIN_HANDLER
from cni.spec import CniError, result_ips
from cri.errors import AlreadyExists, InvalidArgument, RuntimeFailure, handle_errors
from cri.records import SANDBOX_NOTREADY, SANDBOX_READY, NameInUse, SandboxRecord
from cri.runtime import Runtime, Sandbox, proc_start_time
from cri.sandbox_files import write_sandbox_files
from shim import linux, pins
from shim.cgroups import Cgroup

log = logging.getLogger(__name__)

SHM_SIZE = "65536k"  # Docker's and containerd's default /dev/shm
# A pod that names no cgroup parent gets its own under this one.
CGROUP_ROOT = "/cricket"


def sandbox_name(meta: pb.PodSandboxMetadata) -> str:
    return f"{meta.name}_{meta.namespace}_{meta.uid}_{meta.attempt}"


def namespace_options(config: pb.PodSandboxConfig) -> pb.NamespaceOption:
    return config.linux.security_context.namespace_options


def pod_cgroup(rec: SandboxRecord) -> str:
    """The cgroup of the pod's own processes (the pod init), beside its containers'."""
    return f"{rec.cgroup_parent.rstrip('/')}/{rec.id}"


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
    security.pod_sysctls(config)
    security.resources(config.linux.resources, "linux.resources")
    security.resources(config.linux.overhead, "linux.overhead")


async def run_pod_sandbox(rt: Runtime, config: pb.PodSandboxConfig, handler: str) -> Sandbox:
    validate(config)
    if handler not in ("", BUILTIN_HANDLER) and handler not in rt.handlers:
        known = ", ".join(repr(h) for h in ["", BUILTIN_HANDLER, *rt.handlers])
        raise InvalidArgument(f"unknown runtime handler {handler!r}: this node has {known}")
    rec = SandboxRecord(
        id=secrets.token_hex(32), name=sandbox_name(config.metadata), config=config.SerializeToString(),
        runtime_handler=handler, created_at=time.time_ns(), state=SANDBOX_NOTREADY,
    )
    rec.cgroup_parent = config.linux.cgroup_parent or f"{CGROUP_ROOT}/{rec.id}"
    try:
        rt.records.add_sandbox(rec)  # reserves the name before anything is made
    except NameInUse as e:
        raise AlreadyExists(f"pod sandbox name {e.name!r} is reserved for {e.holder}") from None
    sandbox = Sandbox(rec)
    rt.sandboxes[rec.id] = sandbox
    try:
        async with sandbox.lock:
            await _set_up(rt, sandbox, config)
            rec.state = SANDBOX_READY
            rt.save(sandbox)
    except BaseException:
        try:
            await detach_network(rt, rec)
        except RuntimeFailure as e:
            log.warning("%s", e)
        remove_sandbox_files(rt, rec)
        rt.records.remove_sandbox(rec.id)
        del rt.sandboxes[rec.id]
        raise
    # A pod sandbox is reported as containerd reports its sandbox container: made, then running.
    rt.events.emit(pb.CONTAINER_CREATED_EVENT, rec.id)
    rt.events.emit(pb.CONTAINER_STARTED_EVENT, rec.id)
    return sandbox


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
    wanted = {"net": not host_network, "ipc": ns.ipc == pb.POD, "uts": not host_network}
    paths = {kind: layout.sandbox_pin(rec.id, kind) if want else "" for kind, want in wanted.items()}
    for path in paths.values():
        if path:
            open(path, "w").close()
    if any(paths.values()):
        await rt.zygote.pin_namespaces(paths["net"], paths["ipc"], paths["uts"], rec.hostname,
                                       security.pod_sysctls(config))
    rec.netns, rec.ipcns, rec.utsns = paths["net"], paths["ipc"], paths["uts"]

    if not host_network:
        rec.ips = await _attach_network(rt, rec, config)

    if ns.ipc == pb.POD:
        shm = layout.sandbox_shm(rec.id)
        os.mkdir(shm, 0o755)
        linux.mount("shm", shm, "tmpfs", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC,
                    f"mode=1777,size={SHM_SIZE}")
        rec.shm = shm

    parent = Cgroup(rec.cgroup_parent)
    rec.own_cgroup_parent = not parent.exists()  # kubelet makes its pods' parents; others are ours to remove
    parent.create()
    if rec.own_cgroup_parent and config.linux.resources.ByteSize():
        parent.apply(security.resources(config.linux.resources))  # a parent kubelet made, kubelet limits
    if ns.pid == pb.POD:
        await ensure_pod_init(rt, sandbox)


POD_INTERFACE = "eth0"


def _runtime_config(config: pb.PodSandboxConfig) -> dict:
    """The CNI capability arguments: the pod's host ports and DNS."""
    out: dict = {}
    ports = [{"hostPort": m.host_port, "containerPort": m.container_port,
              "protocol": pb.Protocol.Name(m.protocol).lower(), "hostIP": m.host_ip}
             for m in config.port_mappings if m.host_port > 0]
    if ports:
        out["portMappings"] = ports
    dns = config.dns_config
    if dns.servers or dns.searches or dns.options:
        out["dns"] = {"servers": list(dns.servers), "searches": list(dns.searches), "options": list(dns.options)}
    return out


def _cni_args(rec: SandboxRecord, config: pb.PodSandboxConfig) -> dict[str, str]:
    # What kubelet's runtimes pass, for plugins that tell pods apart by name.
    meta = config.metadata
    return {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": meta.namespace, "K8S_POD_NAME": meta.name,
            "K8S_POD_INFRA_CONTAINER_ID": rec.id, "K8S_POD_UID": meta.uid}


async def _attach_network(rt: Runtime, rec: SandboxRecord, config: pb.PodSandboxConfig) -> list[str]:
    try:
        result = await rt.network.add(rec.id, rec.netns, POD_INTERFACE, _runtime_config(config),
                                      _cni_args(rec, config))
    except CniError as e:
        raise RuntimeFailure(f"setting up the network of pod sandbox {rec.id}: {e}") from None
    return result_ips(result, POD_INTERFACE)


async def detach_network(rt: Runtime, rec: SandboxRecord) -> None:
    """CNI DEL for the pod; a no-op when it has no network set up (or had it torn down)."""
    try:
        await rt.network.delete(rec.id, rec.netns, POD_INTERFACE)
    except CniError as e:
        raise RuntimeFailure(f"tearing down the network of pod sandbox {rec.id}: {e}") from None


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
        pins.unpin(rt.layout.sandbox_pin(rec.id, kind))
    shm = rt.layout.sandbox_shm(rec.id)
    if os.path.isdir(shm):
        try:
            linux.umount(shm, linux.MNT_DETACH)
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


class SandboxRun:
    rt: Runtime

    @handle_errors
    async def RunPodSandbox(self, request, context):
        sandbox = await run_pod_sandbox(self.rt, request.config, request.runtime_handler)
        log.info("pod sandbox %s (%s) is ready", sandbox.id, sandbox.rec.name)
        return pb.RunPodSandboxResponse(pod_sandbox_id=sandbox.id)
