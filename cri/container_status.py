"""ContainerStatus and ListContainers."""
from __future__ import annotations

import json

from google.protobuf import json_format

from api.runtime.v1 import api_pb2 as pb
from cri.errors import handle_errors
from cri.records import CREATED, EXITED, RUNNING
from cri.runtime import Container, Runtime

_STATES = {
    CREATED: pb.CONTAINER_CREATED,
    RUNNING: pb.CONTAINER_RUNNING,
    EXITED: pb.CONTAINER_EXITED,
}


def cri_state(c: Container) -> int:
    return _STATES.get(c.rec.state, pb.CONTAINER_UNKNOWN)


def image_ref(rt: Runtime, c: Container) -> str:
    """What containerd reports as image_ref: the image's repo digest, or its ID when it has none."""
    image = rt.images.metadata.image(c.rec.image_id)
    if image is not None and image.repo_digests:
        return image.repo_digests[0]
    return c.rec.image_id


def to_cri_container(rt: Runtime, c: Container) -> pb.Container:
    config = pb.ContainerConfig.FromString(c.rec.config)
    return pb.Container(
        id=c.id, pod_sandbox_id=c.rec.sandbox_id, metadata=config.metadata,
        image=pb.ImageSpec(image=c.rec.image_name), image_ref=image_ref(rt, c), image_id=c.rec.image_id,
        state=cri_state(c), created_at=c.rec.created_at, labels=config.labels, annotations=config.annotations,
    )


def container_status(rt: Runtime, c: Container, verbose: bool) -> pb.ContainerStatusResponse:
    if c.rec.state == RUNNING:
        rt.observe_exit(c)
    rec = c.rec
    config = pb.ContainerConfig.FromString(rec.config)
    status = pb.ContainerStatus(
        id=rec.id, metadata=config.metadata, state=cri_state(c), created_at=rec.created_at,
        started_at=rec.started_at, finished_at=rec.finished_at, exit_code=rec.exit_code,
        image=pb.ImageSpec(image=rec.image_name), image_ref=image_ref(rt, c), image_id=rec.image_id,
        reason=rec.reason, message=rec.message, labels=config.labels, annotations=config.annotations,
        mounts=config.mounts, log_path=rec.log_path,
    )
    status.resources.linux.CopyFrom(_current_resources(rec.spec, config.linux.resources))
    user = (rec.spec.get("process") or {}).get("user")
    if user:
        status.user.linux.uid = user.get("uid", 0)
        status.user.linux.gid = user.get("gid", 0)
        status.user.linux.supplemental_groups.extend(user.get("additionalGids") or ())
    info = {}
    if verbose:
        info["info"] = json.dumps({
            "sandboxID": rec.sandbox_id,
            "pid": rec.pid if rec.state == RUNNING else 0,
            "shimPid": rec.shim_pid,
            "runtimeType": "cricket",
            "snapshotKey": rec.chain_id,
            "config": json_format.MessageToDict(config),
            "runtimeSpec": rec.spec,
        })
    return pb.ContainerStatusResponse(status=status, info=info)


def _current_resources(spec: dict, asked: pb.LinuxContainerResources) -> pb.LinuxContainerResources:
    """The resources in force: as created, with any update since (kept in the spec)."""
    r = (spec.get("linux") or {}).get("resources") or {}
    cpu, memory = r.get("cpu") or {}, r.get("memory") or {}
    out = pb.LinuxContainerResources(
        cpu_period=cpu.get("period", 0), cpu_quota=cpu.get("quota", 0), cpu_shares=cpu.get("shares", 0),
        cpuset_cpus=cpu.get("cpus", ""), cpuset_mems=cpu.get("mems", ""),
        memory_limit_in_bytes=memory.get("limit", 0), memory_swap_limit_in_bytes=memory.get("swap", 0),
        oom_score_adj=(spec.get("process") or {}).get("oomScoreAdj", asked.oom_score_adj),
        unified=r.get("unified") or {},
    )
    out.hugepage_limits.extend(pb.HugepageLimit(page_size=h["pageSize"], limit=h["limit"])
                               for h in r.get("hugepageLimits") or ())
    return out


def matches(c: Container, f: pb.ContainerFilter) -> bool:
    if f.id and not c.id.startswith(f.id):
        return False
    if f.HasField("state") and cri_state(c) != f.state.state:
        return False
    if f.pod_sandbox_id and not c.rec.sandbox_id.startswith(f.pod_sandbox_id):
        return False
    if f.label_selector:
        labels = pb.ContainerConfig.FromString(c.rec.config).labels
        if any(labels.get(k) != v for k, v in f.label_selector.items()):
            return False
    return True


class ContainerStatusVerbs:
    rt: Runtime

    @handle_errors
    async def ContainerStatus(self, request, context):
        return container_status(self.rt, self.rt.container(request.container_id), request.verbose)

    @handle_errors
    async def ListContainers(self, request, context):
        out = []
        for c in list(self.rt.containers.values()):
            if c.rec.state == RUNNING:
                self.rt.observe_exit(c)
            if matches(c, request.filter):
                out.append(to_cri_container(self.rt, c))
        return pb.ListContainersResponse(containers=out)
