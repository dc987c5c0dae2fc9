"""CRI RuntimeService: what the runtime is and whether it is ready.

Pods and containers arrive with the next pieces of work; until then their calls
answer UNIMPLEMENTED with the method's name.
"""
from __future__ import annotations

import json

from api.runtime.v1 import api_pb2 as pb
from api.runtime.v1 import api_pb2_grpc as pb_grpc
from cri.config import Config
from cri.errors import handle_errors
from cri.unimplemented import answer_unimplemented

RUNTIME_NAME = "cricket"
RUNTIME_VERSION = "0.1.0"
# The kubelet-facing API version string that CRI runtimes report in `version`.
KUBE_API_VERSION = "0.1.0"


@answer_unimplemented
class RuntimeService(pb_grpc.RuntimeServiceServicer):
    def __init__(self, config: Config):
        self._config = config

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
        conditions = [
            pb.RuntimeCondition(type="RuntimeReady", status=True),
            pb.RuntimeCondition(
                type="NetworkReady",
                status=False,
                reason="NetworkPluginNotReady",
                message="cricket has no pod network yet: CNI support is not built",
            ),
        ]
        info = {"config": json.dumps(self._config.as_dict())} if request.verbose else {}
        return pb.StatusResponse(
            status=pb.RuntimeStatus(conditions=conditions),
            info=info,
            runtime_handlers=[pb.RuntimeHandler(name="")],
        )

    @handle_errors
    async def RuntimeConfig(self, request, context):
        return pb.RuntimeConfigResponse(linux=pb.LinuxRuntimeConfiguration(cgroup_driver=pb.CGROUPFS))
