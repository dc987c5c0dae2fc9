"""CRI RuntimeService: the servicer, made of one class per verb family (as containerd keeps one
file per verb), over the shared Runtime. Every call of the schema is served (a call added to it
before it is built would answer UNIMPLEMENTED by name: tests/unit/test_cri_calls.py says which)."""
from __future__ import annotations

import asyncio
import json

from api.runtime.v1 import api_pb2 as pb
from api.runtime.v1 import api_pb2_grpc as pb_grpc
from cri import handler_features
from cri.config import BUILTIN_HANDLER
from cri.errors import handle_errors
from cri.handler_features import HandlerFeatures
from cri.pod_cidr import PodCidrs
from cri.runtime import Runtime
from cri.stats import CpuRates
from cri.streaming.server import StreamingServer
from cri.unimplemented import answer_unimplemented
from cri.verbs.container_checkpoint import ContainerCheckpoint
from cri.verbs.container_create import ContainerCreate
from cri.verbs.container_events import ContainerEvents
from cri.verbs.container_exec import ContainerExec
from cri.verbs.container_log import ContainerLog
from cri.verbs.container_remove import ContainerRemove
from cri.verbs.container_start import ContainerStart
from cri.verbs.container_stats import ContainerStats
from cri.verbs.container_status import ContainerStatusVerbs
from cri.verbs.container_stop import ContainerStop
from cri.verbs.container_stream import ContainerStream
from cri.verbs.container_update import ContainerUpdate
from cri.verbs.runtime_config import RuntimeConfigVerbs
from cri.verbs.sandbox_checkpoint import SandboxCheckpoint
from cri.verbs.sandbox_metrics import SandboxMetrics
from cri.verbs.sandbox_port_forward import SandboxPortForward
from cri.verbs.sandbox_remove import SandboxRemove
from cri.verbs.sandbox_run import SandboxRun
from cri.verbs.sandbox_stats import SandboxStats
from cri.verbs.sandbox_status import SandboxStatusVerbs
from cri.verbs.sandbox_stop import SandboxStop
from cri.verbs.sandbox_update import SandboxUpdate

RUNTIME_NAME = "cricket"
RUNTIME_VERSION = "0.1.0"
# The kubelet-facing API version string that CRI runtimes report in `version`.
KUBE_API_VERSION = "0.1.0"


@answer_unimplemented
class RuntimeService(
    SandboxRun, SandboxStop, SandboxRemove, SandboxStatusVerbs, SandboxStats, SandboxMetrics,
    SandboxUpdate, SandboxPortForward, SandboxCheckpoint,
    ContainerCreate, ContainerStart, ContainerStop, ContainerRemove, ContainerStatusVerbs,
    ContainerExec, ContainerStream, ContainerEvents, ContainerLog, ContainerStats, ContainerUpdate,
    ContainerCheckpoint, RuntimeConfigVerbs,
    pb_grpc.RuntimeServiceServicer,
):
    def __init__(self, rt: Runtime, streaming: StreamingServer):
        self.rt = rt
        self.streaming = streaming
        self.rates = CpuRates()  # the last CPU sample of each cgroup, for the stats calls' rates
        self.pod_cidrs = PodCidrs(rt.config.root_dir)  # as kubelet last gave them (UpdateRuntimeConfig)
        self._features: asyncio.Future[dict[str, HandlerFeatures]] | None = None

    async def runtime_handler_features(self) -> dict[str, HandlerFeatures]:
        """Each handler's features by name, worked out once (asking a runtime runs it: in a
        thread, which concurrent callers share and none of them can cancel for the others)."""
        if self._features is None:
            self._features = asyncio.ensure_future(asyncio.to_thread(self._work_out_features))
        return await asyncio.shield(self._features)

    def _work_out_features(self) -> dict[str, HandlerFeatures]:
        builtin = handler_features.builtin((self.rt.config.root_dir, self.rt.config.state_dir))
        out = {"": builtin, BUILTIN_HANDLER: builtin}
        for name, h in self.rt.handlers.items():
            out[name] = handler_features.oci_runtime(h.path)
        return out

    @handle_errors
    async def Version(self, request, context):
        return pb.VersionResponse(
            version=KUBE_API_VERSION,
            runtime_name=RUNTIME_NAME,
            runtime_version=RUNTIME_VERSION,
            runtime_api_version="v1",
        )

    @handle_errors
    async def Status(self, request, context):
        problem = self.rt.network.problem()
        network = pb.RuntimeCondition(type="NetworkReady", status=not problem)
        if problem:
            network.reason, network.message = "NetworkPluginNotReady", f"cni: {problem}"
        conditions = [pb.RuntimeCondition(type="RuntimeReady", status=True), network]
        info = {}
        if request.verbose:
            info["config"] = json.dumps(self.rt.config.as_dict())
            info["runtimeHandlers"] = json.dumps({name: h.path for name, h in self.rt.handlers.items()})
            info["podCIDRs"] = json.dumps(self.pod_cidrs.cidrs)
        features = await self.runtime_handler_features()
        return pb.StatusResponse(
            status=pb.RuntimeStatus(conditions=conditions),
            info=info,
            runtime_handlers=[
                pb.RuntimeHandler(name=name, features=pb.RuntimeHandlerFeatures(
                    recursive_read_only_mounts=f.recursive_read_only_mounts, user_namespaces=f.user_namespaces))
                for name, f in features.items()
            ],
            # Strict and Merge are both honoured (cri/oci_spec.py resolve_user); kubelet refuses
            # a pod that asks for Strict from a runtime that does not say so.
            features=pb.RuntimeFeatures(supplemental_groups_policy=True),
        )
