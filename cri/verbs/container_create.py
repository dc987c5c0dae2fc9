"""CreateContainer: the rootfs overlay, the OCI runtime spec, and a shim that sets the container up
and holds its process before exec."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from typing import Any

from api.runtime.v1 import api_pb2 as pb
from api.shim.v1 import shim_pb2 as shim_pb
from cri import checkpoint, image_mounts, oci_spec, security
from cri.container_lifecycle import discard_container
from cri.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    handle_errors,
)
from cri.records import SANDBOX_READY, ContainerRecord, NameInUse, SandboxRecord
from cri.runtime import Container, Runtime, Sandbox
from cri.sandbox_lifecycle import ensure_pod_init
from cri.tracing import tracer
from linux import mounts, openat2, tree_copy
from linux.cgroups import mode as cgroup_mode

log = logging.getLogger(__name__)


def container_name(meta: pb.ContainerMetadata, sandbox: pb.PodSandboxMetadata) -> str:
    return f"{meta.name}_{sandbox.name}_{sandbox.namespace}_{sandbox.uid}_{meta.attempt}"


def validate(config: pb.ContainerConfig) -> None:
    if not config.metadata.name:
        raise InvalidArgument("container metadata.name is empty")
    if not config.image.image:
        raise InvalidArgument("container image is empty")
    if config.log_path and os.path.isabs(config.log_path):
        raise InvalidArgument(f"log_path {config.log_path!r} must be relative to the pod's log_directory")
    ns = config.linux.security_context.namespace_options
    if ns.pid == pb.TARGET and not ns.target_id:
        raise InvalidArgument("namespace_options.pid is TARGET but target_id is empty")
    image_mounts.check(config.mounts)


async def create_container(rt: Runtime, sandbox_id: str, config: pb.ContainerConfig) -> Container:
    validate(config)
    sandbox = rt.sandbox(sandbox_id)
    srec = sandbox.rec
    if srec.state != SANDBOX_READY:
        raise FailedPrecondition(f"pod sandbox {srec.id} is not ready: containers can only be created in a ready pod")
    if checkpoint.is_checkpoint_archive(config.image.image):
        await _refuse_restore(config)
    image = rt.images.find(config.image.image)
    if image is None:
        raise NotFound(f"image {config.image.image!r} is not present: pull it first")
    mounted_images = image_mounts.resolve(rt.images, config.mounts)
    sconfig = pb.PodSandboxConfig.FromString(srec.config)
    checked = check_security(config, sconfig)  # before anything is made or reserved
    log_path = ""
    if config.log_path and sconfig.log_directory:
        log_path = os.path.join(sconfig.log_directory, config.log_path)
    rec = ContainerRecord(
        id=secrets.token_hex(32), sandbox_id=srec.id, name=container_name(config.metadata, sconfig.metadata),
        config=config.SerializeToString(), image_id=image.id, image_name=config.image.image,
        chain_id=image.chain_id, log_path=log_path, created_at=time.time_ns(), image_mounts=mounted_images,
    )
    try:
        rt.records.add_container(rec)  # reserves the name, and keeps the images' layers from GC
    except NameInUse as e:
        raise AlreadyExists(f"container name {e.name!r} is reserved for {e.holder}") from None
    c = rt.add_container(rec)
    try:
        async with c.lock:
            await _set_up(rt, c, sandbox, sconfig, config, image.config, checked)
            rt.save(c)
    except BaseException:
        await discard_container(rt, c)
        raise
    rt.events.emit(pb.CONTAINER_CREATED_EVENT, rec.sandbox_id, rec.id)
    return c


async def _refuse_restore(config: pb.ContainerConfig) -> None:
    """A checkpoint archive as the image asks for a restore (as CRI-O and containerd take it),
    which needs CRIU: refused, with the reason, before anything is made."""
    what = f"restoring container {config.metadata.name!r} from checkpoint archive {config.image.image}"
    problem = await checkpoint.criu_problem()
    if problem is not None:
        raise FailedPrecondition(f"{what} needs CRIU, and {problem}")
    raise FailedPrecondition(f"{what}: CRIU works on this host, but Cricket does not yet restore containers")


async def _set_up(rt: Runtime, c: Container, sandbox: Sandbox, sconfig: pb.PodSandboxConfig,
                  config: pb.ContainerConfig, image_doc: dict, checked: dict) -> None:
    rec = c.rec
    layout = rt.layout
    own = layout.container_dir(rec.id)
    for d in ("upper", "work", "volumes"):
        os.makedirs(os.path.join(own, d), mode=0o711)
    os.makedirs(layout.rootfs(rec.id), mode=0o711)
    userns = security.user_namespace(sconfig.linux.security_context.namespace_options, "namespace_options")
    userns_pin = sandbox_userns(rt, sandbox) if userns is not None else ""
    _mount_rootfs(rt, rec, userns_pin, (userns[0][1], userns[1][1]) if userns is not None else (0, 0))
    image_sources = await image_mounts.mount(layout, rt.images, rec.id, rec.image_mounts, config.mounts, userns_pin)

    image = image_doc.get("config") or {}
    ctx = config.linux.security_context
    user, group = oci_spec.user_string(ctx, image)
    # Both read what the image put in the rootfs, so both run off the event loop: a FIFO for
    # /etc/passwd or a volume to copy must not hold up every other call.
    process_user = await _in_thread(oci_spec.resolve_user, layout.rootfs(rec.id), user, group,
                                    list(ctx.supplemental_groups), ctx.supplemental_groups_policy == pb.Strict)
    volumes = await _image_volumes(rt, rec, config, image)
    spec = build_spec(rt, c, sandbox, config, image, checked, image_sources, process_user, volumes)
    with open(os.path.join(layout.bundle(rec.id), "config.json"), "w") as f:
        f.write(json.dumps(spec))  # dumps encodes in C; dump() goes chunk by chunk in Python
    rec.spec = spec
    if rec.log_path:
        os.makedirs(os.path.dirname(rec.log_path), mode=0o755, exist_ok=True)

    with tracer.start_as_current_span("shim.spawn", attributes={"cri.container_id": rec.id}):
        rec.shim_pid = await rt.zygote.spawn_shim(shim_pb.SpawnShim(
            container_id=rec.id, bundle=layout.bundle(rec.id), socket=layout.shim_socket(rec.id),
            exit_file=layout.exit_file(rec.id), log_path=rec.log_path, stdin=config.stdin,
            stdin_once=config.stdin_once, tty=config.tty,
            shim_log=layout.shim_log(rec.id), log_max_size=rt.config.container_logs.max_size,
            log_max_files=rt.config.container_logs.max_files, **_runtime_of(rt, sandbox),
        ))
    # The shim builds the container now, while the caller moves on: StartContainer waits
    # for it (as containerd runs runc create within StartContainer, not before).


def _runtime_of(rt: Runtime, sandbox: Sandbox) -> dict:
    """The OCI runtime the pod's handler names, for the shim; nothing for the built-in executor."""
    handler = rt.handlers.get(sandbox.rec.runtime_handler)
    if handler is None:
        return {}
    os.makedirs(handler.root, mode=0o700, exist_ok=True)
    return {"runtime": handler.path, "runtime_root": handler.root}


def sandbox_userns(rt: Runtime, sandbox: Sandbox) -> str:
    """The pinned user namespace of a pod of kubelet's hostUsers: false."""
    return rt.layout.sandbox_pin(sandbox.id, "user")


def _mount_rootfs(rt: Runtime, rec: ContainerRecord, userns: str = "", root_ids: tuple[int, int] = (0, 0)) -> None:
    """The container's overlay. In a user namespace of its pod's, as containerd's overlay
    snapshotter does it: each image layer is bound idmapped through the pod's user namespace
    (its files, owned by root on disk, are seen owned by the container's root, and nothing is
    chowned), and only the still empty upper dir is given to the host ids of the container's root,
    so what the container writes there is its own."""
    own = rt.layout.container_dir(rec.id)
    lower = rt.images.snapshots.lower_dirs(rec.chain_id) if rec.chain_id else []
    if not lower:
        empty = os.path.join(own, "empty")  # an image without layers still needs a lower dir
        os.makedirs(empty, exist_ok=True)
        lower = [empty]
    if userns:
        for d in ("upper", "work"):
            os.chown(os.path.join(own, d), *root_ids)
    options = f"upperdir={own}/upper,workdir={own}/work" + (",volatile" if rt.config.rootfs.volatile else "")
    mounts.mount_overlay(rt.layout.rootfs(rec.id), lower, options,
                         userns=userns, staging=os.path.join(own, "idmapped"))


def check_security(config: pb.ContainerConfig, sconfig: pb.PodSandboxConfig) -> dict:
    """Everything of the security context and resources that can be refused, worked out and
    refused now: capability sets, seccomp, resources, oom_score_adj."""
    ctx = config.linux.security_context
    security.check_privileged(ctx, sconfig)
    security.check_container_user_namespace(ctx, sconfig)
    if security.user_namespace(ctx.namespace_options, "security_context.namespace_options") is not None:
        for m in config.mounts:
            if m.propagation == pb.PROPAGATION_BIDIRECTIONAL:
                raise InvalidArgument(f"mount {m.container_path}: bidirectional propagation would carry the mounts "
                                      "of a container in a user namespace of its pod's to the host; it can not "
                                      "have it")
    security.check_lsm(ctx)
    capabilities = security.capability_sets(ctx, oci_spec.capabilities(ctx))
    res = security.resources(config.linux.resources, "linux.resources")
    return {
        "capabilities": capabilities,
        "seccomp": security.seccomp(ctx, capabilities["bounding"]),
        "resources": res,
        "oom_score_adj": security.clamp_oom_score_adj(config.linux.resources.oom_score_adj),
    }


def build_spec(rt: Runtime, c: Container, sandbox: Sandbox, config: pb.ContainerConfig, image: dict,
               checked: dict, image_sources: dict[str, str], process_user: dict,
               volumes: list[tuple[str, str]]) -> dict:
    rec, srec = c.rec, sandbox.rec
    ctx = config.linux.security_context
    process = {
        "terminal": config.tty,
        "user": process_user,
        "args": oci_spec.process_args(config, image),
        "env": oci_spec.environment(config, image, srec.hostname),
        "cwd": config.working_dir or image.get("WorkingDir") or "/",
        "capabilities": checked["capabilities"],
        "noNewPrivileges": ctx.no_new_privs,
        "oomScoreAdj": checked["oom_score_adj"],
    }
    # What other containers can write (their writable mounts, their upper dirs): symlinks there
    # may be theirs, and are not followed out of it (oci_spec.resolve_source).
    writable = _writable_dirs(rt, c)
    all_mounts = oci_spec.mounts(config, _sandbox_mounts(rt, srec, ctx), volumes, image_sources, writable)
    if ctx.privileged:
        # Writable /sys and cgroups, the host's devices, no masked or read-only /proc paths.
        for m in all_mounts:
            if m["type"] in ("sysfs", "cgroup"):
                m["options"] = [o for o in m["options"] if o != "ro"] + ["rw"]
    userns = security.user_namespace(ctx.namespace_options, "security_context.namespace_options")
    if userns is not None:
        uids, gids = oci_spec.id_mappings(userns[0]), oci_spec.id_mappings(userns[1])
        # An image mount's overlay already shows its files through the pod's user namespace.
        oci_spec.idmap_binds(all_mounts, uids, gids, skip=image_sources.values())
    masked, readonly = security.proc_paths(ctx)  # kubelet's procMount, as the two lists it sends
    spec: dict[str, Any] = {
        "ociVersion": oci_spec.OCI_VERSION,
        "process": process,
        "root": {"path": "rootfs", "readonly": ctx.readonly_rootfs},
        "mounts": all_mounts,
        "annotations": {
            **dict(config.annotations),
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": config.metadata.name,
            "io.kubernetes.cri.sandbox-id": srec.id,
            "io.kubernetes.cri.image-name": rec.image_name,
        },
        "linux": {
            "namespaces": _namespaces(rt, sandbox, ctx),
            "cgroupsPath": f"{srec.cgroup_parent.rstrip('/')}/{rec.id}",
            "resources": {**checked["resources"], "devices": oci_spec.device_rules(ctx.privileged)},
            "maskedPaths": masked,
            "readonlyPaths": readonly,
        },
    }
    if userns is not None:
        spec["linux"]["uidMappings"], spec["linux"]["gidMappings"] = uids, gids
    if ctx.privileged:
        spec["linux"]["devices"] = security.host_devices()
    if checked["seccomp"] is not None:
        spec["linux"]["seccomp"] = checked["seccomp"]
    propagation = oci_spec.root_propagation(all_mounts)
    if propagation:
        spec["linux"]["rootfsPropagation"] = propagation
    return spec


# Each container's read-write bind sources, worked out once its spec is made (its mounts never
# change after): else every create would walk every mount of every container on the node.
_writable_of: dict[str, frozenset[str]] = {}


def _writable_dirs(rt: Runtime, c: Container) -> set[str]:
    """What containers can write: the other containers' read-write bind sources, and every
    container's upper dir (this one's too)."""
    for gone in _writable_of.keys() - rt.containers.keys():
        del _writable_of[gone]
    out = {os.path.join(rt.layout.container_dir(c.id), "upper")}
    for other in list(rt.containers.values()):
        if other.id == c.id:
            continue
        dirs = _writable_of.get(other.id)
        if dirs is None:
            dirs = frozenset(oci_spec.writable_dirs([other.rec.spec]))
            dirs |= {os.path.join(rt.layout.container_dir(other.id), "upper")}
            if other.rec.spec:  # made whole at once; one still being created has none yet
                _writable_of[other.id] = dirs
        out |= dirs
    return out


def _namespaces(rt: Runtime, sandbox: Sandbox, ctx: pb.LinuxContainerSecurityContext) -> list[dict]:
    srec = sandbox.rec
    ns = ctx.namespace_options
    out = [{"type": "mount"}]
    if security.user_namespace(ns, "security_context.namespace_options") is not None:
        out.insert(0, {"type": "user", "path": sandbox_userns(rt, sandbox)})  # the others are its
    for kind, path in (("network", srec.netns), ("uts", srec.utsns)):
        if path:
            out.append({"type": kind, "path": path})
    if ns.ipc == pb.POD and srec.ipcns:
        out.append({"type": "ipc", "path": srec.ipcns})
    elif ns.ipc != pb.NODE:
        out.append({"type": "ipc"})
    if ns.pid == pb.CONTAINER:
        out.append({"type": "pid"})
    elif ns.pid == pb.POD:
        if not srec.pod_init_pid:
            raise FailedPrecondition("internal: pod init missing")  # ensured by the caller
        out.append({"type": "pid", "path": f"/proc/{srec.pod_init_pid}/ns/pid"})
    elif ns.pid == pb.TARGET:
        target = rt.container(ns.target_id)
        if target.rec.sandbox_id != srec.id:
            raise InvalidArgument(f"target container {ns.target_id} is in another pod")
        if not target.rec.pid:
            raise FailedPrecondition(f"target container {ns.target_id} has no process")
        out.append({"type": "pid", "path": f"/proc/{target.rec.pid}/ns/pid"})
    if cgroup_mode() == "v2" and not ctx.privileged:
        out.append({"type": "cgroup"})
    return out


def _sandbox_mounts(rt: Runtime, srec: SandboxRecord, ctx: pb.LinuxContainerSecurityContext) -> list[pb.Mount]:
    """The pod's hostname, hosts and resolv.conf, and its /dev/shm (the host's with host IPC)."""
    out = [
        pb.Mount(container_path=f"/etc/{name}", host_path=rt.layout.sandbox_file(srec.id, name),
                 readonly=ctx.readonly_rootfs)
        for name in ("hostname", "hosts", "resolv.conf")
    ]
    shm = srec.shm if ctx.namespace_options.ipc == pb.POD and srec.shm else "/dev/shm"
    out.append(pb.Mount(container_path="/dev/shm", host_path=shm))
    return out


async def _in_thread(fn, *args, stop=None):
    """fn(*args) in a worker thread. Should the call be cancelled meanwhile (its client gone), the
    thread is stopped (`stop`) and waited for before the cancellation goes on: discarding the
    half-made container must not race a thread still writing into its directories."""
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        if stop is not None:
            stop()
        await asyncio.wait([work])
        if not work.cancelled():
            work.exception()  # retrieved: it is the cancellation that is reported
        raise


async def _image_volumes(rt: Runtime, rec: ContainerRecord, config: pb.ContainerConfig,
                         image: dict) -> list[tuple[str, str]]:
    """The image's VOLUMEs as directories of this container's, seeded with what the image has
    there, so writes to them do not land in the writable layer (as containerd does)."""
    taken = {os.path.normpath(m.container_path) for m in config.mounts}
    wanted = [(i, dest) for i, dest in enumerate(sorted(image.get("Volumes") or {}))
              if os.path.normpath(dest) not in taken]
    if not wanted:
        return []
    budget = _seed_budget(rt, rec)  # here, on the loop: the image store is not shared with threads
    return await _in_thread(_seed_volumes, rt.layout.rootfs(rec.id),
                            os.path.join(rt.layout.container_dir(rec.id), "volumes"), wanted, budget,
                            stop=lambda: setattr(budget, "stopped", True))


def _seed_budget(rt: Runtime, rec: ContainerRecord) -> tree_copy.Budget:
    """All the volumes of a container together may copy no more than the image holds: its
    layers' data and inodes as unpacking counted them (and a block a file, as a hole's edges
    fall on blocks). Whatever an image's VOLUMEs name (one directory many times, nested ones,
    sparse or hard-linked files), seeding can not fill the disk beyond the image's own size."""
    size = inodes = 0
    chain = rec.chain_id
    while chain:
        snap = rt.images.snapshots.get(chain)
        if snap is None:
            break
        size, inodes, chain = size + snap.size, inodes + snap.inodes, snap.parent
    return tree_copy.Budget(bytes=size + inodes * 4096, inodes=inodes)


def _seed_volumes(rootfs: str, volumes_dir: str, wanted: list[tuple[int, str]],
                  budget: tree_copy.Budget) -> list[tuple[str, str]]:
    root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # Where each volume's content is in the image: where the shim will mount it.
        seeds = {}
        for _, dest in wanted:
            try:
                seeds[dest] = os.path.relpath(mounts.secure_join(rootfs, dest), rootfs)
            except OSError as e:  # a symlink loop
                raise InvalidArgument(f"the image's VOLUME {dest} can not be resolved: {e.strerror}") from None
        made: dict[str, str] = {}
        out = []
        for i, dest in wanted:
            seed = seeds[dest]
            if seed in made:  # one directory named twice: the same volume, as the container sees it anyway
                out.append((dest, made[seed]))
                continue
            source = os.path.join(volumes_dir, str(i))
            os.mkdir(source, 0o755)
            # A volume inside this one is mounted over its part of the copy: that part is its own.
            nested = {os.path.relpath(other, seed) for other in seeds.values()
                      if other != seed and (seed == "." or other.startswith(seed + "/"))}
            _seed(root, seed, source, budget, nested, dest)
            made[seed] = source
            out.append((dest, source))
        return out
    finally:
        os.close(root)


def _seed(root: int, seed: str, source: str, budget: tree_copy.Budget, nested: set[str], dest: str) -> None:
    try:
        src = openat2.open_in_root(root, seed, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing of the image's there: the volume starts empty
    try:
        dst = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            tree_copy.copy_tree(src, dst, budget, nested)
        finally:
            os.close(dst)
    except tree_copy.CopyError as e:
        where = f"{dest.rstrip('/')}/{e.filename}" if e.filename else dest
        raise InvalidArgument(f"the image's VOLUME {dest} can not be seeded: {where}: {e.strerror}") from None
    finally:
        os.close(src)


class ContainerCreate:
    rt: Runtime

    @handle_errors
    async def CreateContainer(self, request, context):
        sandbox = self.rt.sandbox(request.pod_sandbox_id)
        ns = request.config.linux.security_context.namespace_options
        if ns.pid == pb.POD and sandbox.rec.state == SANDBOX_READY:
            async with sandbox.lock:
                await ensure_pod_init(self.rt, sandbox)
        c = await create_container(self.rt, request.pod_sandbox_id, request.config)
        log.info("container %s (%s) created", c.id, c.rec.name)
        return pb.CreateContainerResponse(container_id=c.id)
