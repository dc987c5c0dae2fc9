"""The streaming list calls (KEP-5825): the List calls' answers in pages, with their filters.

A List answer is one gRPC message, and a node with enough containers passes what a client
accepts: 4 MiB by default in gRPC, 16 MiB in kubelet. The Stream calls answer the same in pages
of at most 1 MiB (cri/paging.py), so any client takes them.
"""
from __future__ import annotations

import concurrent.futures
import os
import re
import secrets
import time

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from api.runtime.v1 import api_pb2_grpc as pb_grpc
from tests.pods import Pods, rpc_error

GRPC_DEFAULT_RECEIVE = 4 * 2**20  # what a gRPC client accepts unless told otherwise
# A node's worth of containers: 5,000 (CRICKET_TEST_MANY=5000) take some minutes to create here,
# so by default fewer, each made heavier by an annotation, fill the same 6 MiB.
MANY = int(os.environ.get("CRICKET_TEST_MANY", "400"))
LISTED_BYTES = 6 * 2**20


@pytest.fixture
def pods(daemon, tmp_path):
    p = Pods(daemon, str(tmp_path / "logs"))
    yield p
    p.remove_all()


@pytest.fixture
def busybox(registry, test_images):
    return test_images["busybox"].reference(registry)


def kubelet_labels(pod: pb.PodSandboxConfig, name: str) -> tuple[dict, dict]:
    """The labels and annotations kubelet gives a container (pkg/kubelet/kuberuntime/labels.go),
    with a port and a preStop hook: what makes a listed container weigh what it does on a node."""
    meta = pod.metadata
    labels = {"io.kubernetes.container.name": name, "io.kubernetes.pod.name": meta.name,
              "io.kubernetes.pod.namespace": meta.namespace, "io.kubernetes.pod.uid": meta.uid}
    annotations = {
        "io.kubernetes.container.hash": secrets.token_hex(4),
        "io.kubernetes.container.restartCount": "0",
        "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
        "io.kubernetes.container.terminationMessagePolicy": "File",
        "io.kubernetes.pod.terminationGracePeriod": "30",
        "io.kubernetes.container.ports": '[{"name":"http","containerPort":8080,"protocol":"TCP"}]',
        "io.kubernetes.container.preStopHandler": '{"exec":{"command":["/bin/sh","-c","sleep 5"]}}',
    }
    # What kubelet's own labels and annotations leave of LISTED_BYTES / MANY a container.
    annotations["padding"] = "x" * max(0, LISTED_BYTES // MANY - 1400)
    return labels, annotations


def stream(call, request) -> list:
    """Each page of a Stream call, as the client received it."""
    return list(call(request, timeout=300))


def test_thousands_of_containers_pass_the_list_limit_and_stream_whole(daemon, pods, busybox):
    config = pods.pod_config(name="many")
    pod = pods.run_pod(config)
    sandbox = pb.PodSandboxConfig(metadata=config.metadata)

    def create(i: int) -> str:
        name = f"c{i:05d}"
        labels, annotations = kubelet_labels(config, name)
        labels["half"] = str(i % 2)
        c = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=busybox),
                               command=["sleep", "1000"], labels=labels, annotations=annotations)
        return daemon.runtime.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod, config=c, sandbox_config=sandbox), timeout=120).container_id

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        made = list(pool.map(create, range(MANY)))
    created = time.monotonic() - started
    print(f"\ncreated {MANY} in {created:.1f}s", flush=True)

    # A client with gRPC's default receive limit can not take the List answer.
    channel = grpc.insecure_channel("unix://" + daemon.socket)
    try:
        client = pb_grpc.RuntimeServiceStub(channel)
        e = rpc_error(client.ListContainers, pb.ListContainersRequest(), timeout=300)
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
        m = re.search(r"larger than max \((\d+) vs\. (\d+)\)", e.details())
        assert m and int(m.group(2)) == GRPC_DEFAULT_RECEIVE, e.details()
        listed_bytes = int(m.group(1))
        # It takes them all, in pages.
        started = time.monotonic()
        pages = stream(client.StreamContainers, pb.StreamContainersRequest())
        streamed = time.monotonic() - started
        ids = [c.id for page in pages for c in page.containers]
        assert len(ids) == len(set(ids)) == MANY and set(ids) == set(made)
        assert len(pages) >= listed_bytes // 2**20
        assert all(page.ByteSize() <= 2**20 for page in pages)
        # The filters are the List call's.
        half = stream(client.StreamContainers, pb.StreamContainersRequest(
            filter=pb.ContainerFilter(label_selector={"half": "1"})))
        assert sorted(c.metadata.name for p in half for c in p.containers) == \
            [f"c{i:05d}" for i in range(1, MANY, 2)]
    finally:
        channel.close()
    started = time.monotonic()
    pods.remove_pod(pod)
    removed = time.monotonic() - started
    print(f"\n{MANY} containers: created in {created:.1f}s; List answer {listed_bytes} bytes "
          f"(over gRPC's default {GRPC_DEFAULT_RECEIVE}); streamed in {len(pages)} pages in {streamed:.2f}s; "
          f"pod removed in {removed:.1f}s")


def test_each_stream_call_answers_what_its_list_call_does(daemon, pods, busybox):
    """Every Stream call beside its List call, unfiltered and with a filter, on two running pods."""
    rt, images = daemon.runtime, daemon.images
    made = []
    for name in ("stream-a", "stream-b"):
        config = pods.pod_config(name=name)
        config.labels["which"] = name
        pod = pods.run_pod(config)
        made.append((pod, pods.run(pod, busybox, ["sleep", "1000"])))
    (pod_a, cid_a), _ = made

    def items(pages, field) -> list:
        return [item for page in pages for item in getattr(page, field)]

    by_id = lambda xs: sorted(xs, key=lambda x: x.id)  # noqa: E731
    assert by_id(items(stream(rt.StreamPodSandboxes, pb.StreamPodSandboxesRequest()), "pod_sandboxes")) == \
        by_id(rt.ListPodSandbox(pb.ListPodSandboxRequest()).items)
    selected = items(stream(rt.StreamPodSandboxes, pb.StreamPodSandboxesRequest(
        filter=pb.PodSandboxFilter(label_selector={"which": "stream-a"}))), "pod_sandboxes")
    assert [p.id for p in selected] == [pod_a]

    assert by_id(items(stream(rt.StreamContainers, pb.StreamContainersRequest()), "containers")) == \
        by_id(rt.ListContainers(pb.ListContainersRequest()).containers)

    assert sorted(i.id for i in items(stream(images.StreamImages, pb.StreamImagesRequest()), "images")) == \
        sorted(i.id for i in images.ListImages(pb.ListImagesRequest()).images)
    one = items(stream(images.StreamImages, pb.StreamImagesRequest(filter=pb.ImageFilter(
        image=pb.ImageSpec(image=busybox)))), "images")
    assert [i.id for i in one] == [daemon.status(busybox).image.id]

    # Stats differ from call to call (CPU, time): compare whose they are.
    stats = items(stream(rt.StreamContainerStats, pb.StreamContainerStatsRequest()), "container_stats")
    assert sorted(s.attributes.id for s in stats) == \
        sorted(s.attributes.id for s in rt.ListContainerStats(pb.ListContainerStatsRequest()).stats)
    stats = items(stream(rt.StreamContainerStats, pb.StreamContainerStatsRequest(
        filter=pb.ContainerStatsFilter(pod_sandbox_id=pod_a))), "container_stats")
    assert [s.attributes.id for s in stats] == [cid_a] and stats[0].cpu.timestamp
    stats = items(stream(rt.StreamPodSandboxStats, pb.StreamPodSandboxStatsRequest()), "pod_sandbox_stats")
    assert sorted(s.attributes.id for s in stats) == sorted(p for p, _ in made)
    stats = items(stream(rt.StreamPodSandboxStats, pb.StreamPodSandboxStatsRequest(
        filter=pb.PodSandboxStatsFilter(id=pod_a))), "pod_sandbox_stats")
    assert [s.attributes.id for s in stats] == [pod_a]
    metrics = items(stream(rt.StreamPodSandboxMetrics, pb.StreamPodSandboxMetricsRequest()), "pod_sandbox_metrics")
    assert sorted(m.pod_sandbox_id for m in metrics) == \
        sorted(m.pod_sandbox_id for m in rt.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest()).pod_metrics)
    assert {p for p, _ in made} <= {m.pod_sandbox_id for m in metrics}
