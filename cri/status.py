"""CRI status messages built from the runtime's records: containers' and pod sandboxes', as
the status, list and event calls answer them."""
from __future__ import annotations

import json
import time
from typing import Any

from google.protobuf import json_format

from api.runtime.v1 import api_pb2 as pb
from cri import image_mounts
from cri.errors import NotFound
from cri.records import CREATED, EXITED, RUNNING, SANDBOX_READY
from cri.runtime import Container, Runtime, Sandbox
from image.metadata import ImageRecord

_STATES = {
    CREATED: pb.CONTAINER_CREATED,
    RUNNING: pb.CONTAINER_RUNNING,
    EXITED: pb.CONTAINER_EXITED,
}


def container_state(c: Container) -> pb.ContainerState:
    return _STATES.get(c.rec.state, pb.CONTAINER_UNKNOWN)


class ImageLookup:
    """Image records by ID, each read from the metadata store once: a list of a thousand
    containers made from a few images asks the store a few times, not two thousand (each a
    query and a parse of the image's config)."""

    def __init__(self, rt: Runtime):
        self._metadata = rt.images.metadata
        self._known: dict[str, ImageRecord | None] = {}

    def __call__(self, image_id: str) -> ImageRecord | None:
        if image_id not in self._known:
            self._known[image_id] = self._metadata.image(image_id)
        return self._known[image_id]


def image_ref(rt: Runtime, c: Container, images: ImageLookup | None = None) -> str:
    """What containerd reports as image_ref: the image's repo digest, or its ID when it has none."""
    image = (images or ImageLookup(rt))(c.rec.image_id)
    if image is not None and image.repo_digests:
        return image.repo_digests[0]
    return c.rec.image_id


def image_spec(rt: Runtime, c: Container, config: pb.ContainerConfig,
               images: ImageLookup | None = None) -> pb.ImageSpec:
    """The image a container runs, named as its user knows it. kubelet creates containers from
    the image's ID and shows this name in the pod's status: the name the pod spec gave
    (user_specified_image), else the image's first tag (as containerd answers), else its ID."""
    name = config.image.user_specified_image
    if not name:
        image = (images or ImageLookup(rt))(c.rec.image_id)
        name = image.repo_tags[0] if image is not None and image.repo_tags else c.rec.image_name
    return pb.ImageSpec(image=name, user_specified_image=config.image.user_specified_image,
                        runtime_handler=config.image.runtime_handler)


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def list_element(message) -> bytes:
    """`message` encoded as one element of a list answer's repeated field (field 1 in every
    List*Response): an answer parsed from its elements' joined bytes costs a third of one built
    and copied message by message."""
    body = message.SerializeToString()
    return b"\x0a" + _varint(len(body)) + body


def listed_container(rt: Runtime, c: Container, images: ImageLookup) -> tuple[pb.Container, bytes]:
    """The container as ListContainers lists it, and that as a list element; `images`: the lookup
    shared by one answer's containers. Built again only when its state or the names of its image
    it shows have changed."""
    image = images(c.rec.image_id)
    key = (c.rec.state, image.repo_tags[:1], image.repo_digests[:1]) if image is not None else (c.rec.state,)
    if c.listed is None or c.listed[0] != key:
        config = c.config
        message = pb.Container(
            id=c.id, pod_sandbox_id=c.rec.sandbox_id, metadata=config.metadata,
            image=image_spec(rt, c, config, images), image_ref=image_ref(rt, c, images), image_id=c.rec.image_id,
            state=container_state(c), created_at=c.rec.created_at, labels=config.labels,
            annotations=config.annotations,
        )
        c.listed = (key, message, list_element(message))
    return c.listed[1], c.listed[2]


def container_status(rt: Runtime, c: Container, verbose: bool) -> pb.ContainerStatusResponse:
    status = _container_status(rt, c, ImageLookup(rt))
    rec = c.rec
    info = {}
    if verbose:
        info["info"] = json.dumps({
            "sandboxID": rec.sandbox_id,
            "pid": rec.pid if rec.state == RUNNING else 0,
            "shimPid": rec.shim_pid,
            "runtimeType": "cricket",
            "snapshotKey": rec.chain_id,
            "config": json_format.MessageToDict(c.config),
            "runtimeSpec": rec.spec,
        })
    return pb.ContainerStatusResponse(status=status, info=info)


def _container_status(rt: Runtime, c: Container, images: ImageLookup,
                      into: Any = None) -> pb.ContainerStatus:
    """The container's status; made in place as a new element of `into` (a repeated field of
    ContainerStatus) if given: a pod's status holds one per container, and each copy of a
    status (its labels, annotations, mounts) was most of that answer's cost."""
    rt.state_of(c)
    rec = c.rec
    config = c.config
    image_mounts.report(rec.image_mounts, config.mounts)  # the same answer each time: the config may keep it
    fields = {
        "id": rec.id, "metadata": config.metadata, "state": container_state(c), "created_at": rec.created_at,
        "started_at": rec.started_at, "finished_at": rec.finished_at, "exit_code": rec.exit_code,
        "image": image_spec(rt, c, config, images), "image_ref": image_ref(rt, c, images),
        "image_id": rec.image_id, "reason": rec.reason, "message": rec.message, "labels": config.labels,
        "annotations": config.annotations, "mounts": config.mounts, "log_path": rec.log_path,
    }
    status = into.add(**fields) if into is not None else pb.ContainerStatus(**fields)
    _current_resources(status.resources.linux, rec.spec, config.linux.resources)
    user = (rec.spec.get("process") or {}).get("user")
    if user:
        status.user.linux.uid = user.get("uid", 0)
        status.user.linux.gid = user.get("gid", 0)
        status.user.linux.supplemental_groups.extend(user.get("additionalGids") or ())
    return status


def _current_resources(out: pb.LinuxContainerResources, spec: dict, asked: pb.LinuxContainerResources) -> None:
    """Fill `out` with the resources in force: as created, with any update since (kept in the spec)."""
    r = (spec.get("linux") or {}).get("resources") or {}
    cpu, memory = r.get("cpu") or {}, r.get("memory") or {}
    out.cpu_period, out.cpu_quota, out.cpu_shares = cpu.get("period", 0), cpu.get("quota", 0), cpu.get("shares", 0)
    out.cpuset_cpus, out.cpuset_mems = cpu.get("cpus", ""), cpu.get("mems", "")
    out.memory_limit_in_bytes, out.memory_swap_limit_in_bytes = memory.get("limit", 0), memory.get("swap", 0)
    out.oom_score_adj = (spec.get("process") or {}).get("oomScoreAdj", asked.oom_score_adj)
    if r.get("unified"):
        out.unified.update(r["unified"])
    out.hugepage_limits.extend(pb.HugepageLimit(page_size=h["pageSize"], limit=h["limit"])
                               for h in r.get("hugepageLimits") or ())


def container_matches(c: Container, f: pb.ContainerFilter) -> bool:
    if f.id and not c.id.startswith(f.id):
        return False
    if f.HasField("state") and container_state(c) != f.state.state:
        return False
    if f.pod_sandbox_id and not c.rec.sandbox_id.startswith(f.pod_sandbox_id):
        return False
    if f.label_selector:
        labels = c.config.labels
        if any(labels.get(k) != v for k, v in f.label_selector.items()):
            return False
    return True


def sandbox_state(s: Sandbox) -> pb.PodSandboxState:
    return pb.SANDBOX_READY if s.rec.state == SANDBOX_READY else pb.SANDBOX_NOTREADY


def listed_sandbox(s: Sandbox) -> tuple[pb.PodSandbox, bytes]:
    """The pod as ListPodSandbox lists it, and that as a list element; built again only when its
    state has changed."""
    key = (s.rec.state,)
    if s.listed is None or s.listed[0] != key:
        config = s.config
        message = pb.PodSandbox(
            id=s.id, metadata=config.metadata, state=sandbox_state(s), created_at=s.rec.created_at,
            labels=config.labels, annotations=config.annotations, runtime_handler=s.rec.runtime_handler,
        )
        s.listed = (key, message, list_element(message))
    return s.listed[1], s.listed[2]


def sandbox_status(rt: Runtime, s: Sandbox, verbose: bool) -> pb.PodSandboxStatusResponse:
    rec = s.rec
    config = s.config
    ns = config.linux.security_context.namespace_options
    status = pb.PodSandboxStatus(
        id=rec.id, metadata=config.metadata, state=sandbox_state(s), created_at=rec.created_at,
        labels=config.labels, annotations=config.annotations, runtime_handler=rec.runtime_handler,
        linux=pb.LinuxPodSandboxStatus(namespaces=pb.Namespace(options=pb.NamespaceOption(
            network=ns.network, pid=ns.pid, ipc=ns.ipc))),
    )
    if rec.ips:
        status.network.ip = rec.ips[0]
        status.network.additional_ips.extend(pb.PodIP(ip=ip) for ip in rec.ips[1:])
    info = {}
    if verbose:
        info["info"] = json.dumps({
            "pid": rec.pod_init_pid,
            "netNamespace": rec.netns,
            "ipcNamespace": rec.ipcns,
            "utsNamespace": rec.utsns,
            "shm": rec.shm,
            "cgroupParent": rec.cgroup_parent,
            "hostname": rec.hostname,
            "runtimeHandler": rec.runtime_handler,
            "config": json_format.MessageToDict(config),
        })
    response = pb.PodSandboxStatusResponse(status=status, info=info, timestamp=time.time_ns())
    images = ImageLookup(rt)
    for c in rt.containers_of(rec.id):
        _container_status(rt, c, images, response.containers_statuses)
    return response


def sandbox_matches(s: Sandbox, f: pb.PodSandboxFilter) -> bool:
    if f.id and not s.id.startswith(f.id):
        return False
    if f.HasField("state") and sandbox_state(s) != f.state.state:
        return False
    if f.label_selector:
        labels = s.config.labels
        if any(labels.get(k) != v for k, v in f.label_selector.items()):
            return False
    return True


def describe_event(rt: Runtime, kind: pb.ContainerEventType, sandbox_id: str,
                   container_id: str) -> pb.ContainerEventResponse:
    """The event with the pod's status and its containers' as they are now (a deleted pod has
    neither), as kubelet's evented PLEG reads them."""
    event = pb.ContainerEventResponse(container_id=container_id or sandbox_id, container_event_type=kind,
                                      created_at=time.time_ns())
    try:
        s = rt.sandbox(sandbox_id)
    except NotFound:
        return event
    status = sandbox_status(rt, s, False)
    event.pod_sandbox_status.CopyFrom(status.status)
    event.containers_statuses.extend(status.containers_statuses)
    return event
