"""CheckpointContainer on a host where CRIU can not work: the request is checked first, then the
answer is FailedPrecondition in CRIU's own words, and nothing is written.

`make test` installs Debian's criu (3.17.1), whose `criu check` fails on this project's 6.x
kernel; where it passes, the last test says so instead of asserting a refusal it would not see.
"""
from __future__ import annotations

import os
import subprocess

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from cri import checkpoint
from tests.pods import Pods, rpc_error


@pytest.fixture
def running(daemon, registry, test_images, tmp_path):
    pods = Pods(daemon, str(tmp_path / "logs"))
    pod = pods.run_pod()
    return pods, pods.run(pod, test_images["busybox"].reference(registry), ["sleep", "1000"])


def test_a_bad_request_is_refused_before_criu_is_asked(running, tmp_path):
    pods, cid = running
    e = rpc_error(pods.rt.CheckpointContainer, pb.CheckpointContainerRequest(container_id=cid, location="x.tar"))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "x.tar" in e.details()
    e = rpc_error(pods.rt.CheckpointContainer,
                  pb.CheckpointContainerRequest(container_id="f" * 64, location=str(tmp_path / "c.tar")))
    assert e.code() == grpc.StatusCode.NOT_FOUND


def test_without_a_working_criu_the_answer_quotes_criu_and_writes_nothing(running, tmp_path):
    if checkpoint.find_criu() is None:
        pytest.fail("criu is not installed: make test installs Debian's criu package")
    check = subprocess.run([checkpoint.find_criu() or "criu", "check"], capture_output=True, text=True)
    if check.returncode == 0:
        pytest.skip("criu check passes on this host: checkpointing would be attempted, not refused")
    pods, cid = running
    archive = str(tmp_path / "checkpoint.tar")
    e = rpc_error(pods.rt.CheckpointContainer, pb.CheckpointContainerRequest(container_id=cid, location=archive))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "`criu check` fails" in e.details() and cid in e.details(), e.details()
    # CRIU's own last words are quoted, so an operator sees what the kernel lacks.
    last = (check.stderr or check.stdout).strip().splitlines()[-1]
    assert last.split(": ", 1)[-1][:40] in e.details(), (last, e.details())
    assert not os.path.exists(archive)
    assert pods.status(cid).status.state == pb.CONTAINER_RUNNING  # the container runs on


def test_pod_checkpoint_and_restore_check_their_request_then_say_the_cri_has_not_settled_them(running, tmp_path):
    pods, cid = running
    pod = next(c.pod_sandbox_id for c in pods.rt.ListContainers(pb.ListContainersRequest()).containers if c.id == cid)
    archive = str(tmp_path / "pod.tar")
    e = rpc_error(pods.rt.CheckpointPod, pb.CheckpointPodRequest(pod_sandbox_id="f" * 64, output_path=archive))
    assert e.code() == grpc.StatusCode.NOT_FOUND
    e = rpc_error(pods.rt.CheckpointPod, pb.CheckpointPodRequest(pod_sandbox_id=pod, output_path="pod.tar"))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "output_path 'pod.tar'" in e.details()
    other = pods.run_pod()
    e = rpc_error(pods.rt.CheckpointPod, pb.CheckpointPodRequest(pod_sandbox_id=other, container_ids=[cid],
                                                                 output_path=archive))
    assert e.code() == grpc.StatusCode.NOT_FOUND and f"container {cid} is not in pod sandbox {other}" in e.details()
    e = rpc_error(pods.rt.CheckpointPod, pb.CheckpointPodRequest(pod_sandbox_id=pod, output_path=archive))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "KEP-5823" in e.details()
    e = rpc_error(pods.rt.RestorePod, pb.RestorePodRequest(checkpoint_path=""))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "checkpoint_path is empty" in e.details()
    e = rpc_error(pods.rt.RestorePod, pb.RestorePodRequest(checkpoint_path=archive))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "KEP-5823" in e.details()
    assert not os.path.exists(archive)
    assert pods.status(cid).status.state == pb.CONTAINER_RUNNING


def test_a_restore_through_create_container_is_refused_before_anything_is_made(running, tmp_path):
    """CreateContainer whose image is a checkpoint archive on the host (how CRI-O and containerd
    are asked to restore) needs CRIU: FailedPrecondition with the reason, no container made."""
    pods, cid = running
    archive = tmp_path / "checkpoint.tar"
    archive.write_bytes(b"not looked at: CRIU is asked first")
    pod = next(c.pod_sandbox_id for c in pods.rt.ListContainers(pb.ListContainersRequest()).containers if c.id == cid)
    before = {c.id for c in pods.rt.ListContainers(pb.ListContainersRequest()).containers}
    config = pods.container_config(str(archive), name="restored")
    e = rpc_error(pods.rt.CreateContainer, pb.CreateContainerRequest(
        pod_sandbox_id=pod, config=config, sandbox_config=pb.PodSandboxConfig()))
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e.details()
    assert f"restoring container 'restored' from checkpoint archive {archive}" in e.details()
    assert {c.id for c in pods.rt.ListContainers(pb.ListContainersRequest()).containers} == before
