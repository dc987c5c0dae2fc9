"""List answers joined from their elements' bytes (cri/status.list_element) parse to the answer
built message by message, whatever the elements' sizes (their lengths are varints)."""
from __future__ import annotations

import pytest

from api.runtime.v1 import api_pb2 as pb
from cri.status import list_element


@pytest.mark.parametrize("label_size", [0, 1, 100, 127, 128, 16_383, 16_384, 3_000_000])
def test_joined_elements_parse_to_the_built_answer(label_size):
    containers = [pb.Container(id=f"c{i}", pod_sandbox_id="p", state=pb.CONTAINER_RUNNING,
                               labels={"padding": "x" * label_size} if label_size else {}) for i in range(3)]
    joined = pb.ListContainersResponse.FromString(b"".join(list_element(c) for c in containers))
    assert joined == pb.ListContainersResponse(containers=containers)
    pods = [pb.PodSandbox(id="p", metadata=pb.PodSandboxMetadata(name="n", uid="u", namespace="default"))]
    assert pb.ListPodSandboxResponse.FromString(b"".join(list_element(p) for p in pods)) == \
        pb.ListPodSandboxResponse(items=pods)


def test_an_empty_list_is_an_empty_answer():
    assert pb.ListContainersResponse.FromString(b"") == pb.ListContainersResponse()
