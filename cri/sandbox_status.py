"""PodSandboxStatus and ListPodSandbox."""
from __future__ import annotations

import json
import time

from google.protobuf import json_format

from api.runtime.v1 import api_pb2 as pb
from cri.container_status import container_status
from cri.errors import handle_errors
from cri.records import SANDBOX_READY
from cri.runtime import Runtime, Sandbox


def cri_state(s: Sandbox) -> int:
    return pb.SANDBOX_READY if s.rec.state == SANDBOX_READY else pb.SANDBOX_NOTREADY


def to_cri_sandbox(s: Sandbox) -> pb.PodSandbox:
    config = pb.PodSandboxConfig.FromString(s.rec.config)
    return pb.PodSandbox(
        id=s.id, metadata=config.metadata, state=cri_state(s), created_at=s.rec.created_at,
        labels=config.labels, annotations=config.annotations, runtime_handler=s.rec.runtime_handler,
    )


def sandbox_status(rt: Runtime, s: Sandbox, verbose: bool) -> pb.PodSandboxStatusResponse:
    rec = s.rec
    config = pb.PodSandboxConfig.FromString(rec.config)
    ns = config.linux.security_context.namespace_options
    status = pb.PodSandboxStatus(
        id=rec.id, metadata=config.metadata, state=cri_state(s), created_at=rec.created_at,
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
    containers = [container_status(rt, c, False).status for c in rt.containers_of(rec.id)]
    return pb.PodSandboxStatusResponse(status=status, info=info, containers_statuses=containers,
                                       timestamp=time.time_ns())


def matches(s: Sandbox, f: pb.PodSandboxFilter) -> bool:
    if f.id and not s.id.startswith(f.id):
        return False
    if f.HasField("state") and cri_state(s) != f.state.state:
        return False
    if f.label_selector:
        labels = pb.PodSandboxConfig.FromString(s.rec.config).labels
        if any(labels.get(k) != v for k, v in f.label_selector.items()):
            return False
    return True


class SandboxStatusVerbs:
    rt: Runtime

    @handle_errors
    async def PodSandboxStatus(self, request, context):
        return sandbox_status(self.rt, self.rt.sandbox(request.pod_sandbox_id), request.verbose)

    @handle_errors
    async def ListPodSandbox(self, request, context):
        items = [to_cri_sandbox(s) for s in list(self.rt.sandboxes.values()) if matches(s, request.filter)]
        return pb.ListPodSandboxResponse(items=items)
