"""Tracing: the spans of CRI calls, exported over OTLP/HTTP to a receiver the test runs."""
from __future__ import annotations

import asyncio
import http.server
import threading
import time

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from api.runtime.v1 import api_pb2 as pb
from image.pull import Puller
from image.reference import parse_reference
from image.registry import HostConfig, RegistryClient
from image.store import ImageStore
from tests.daemon import registry_config
from tests.pods import Pods, serving

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Receiver:
    """An OTLP/HTTP traces endpoint on 127.0.0.1 that keeps every span it gets."""

    def __init__(self):
        self.spans = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        receiver.spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, name: str, where=lambda span: True, timeout: float = 15):
        """The spans named `name` (and matching `where`) once there is one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [s for s in self.spans if s.name == name and where(s)]
            if found:
                return found
            time.sleep(0.2)
        raise AssertionError(f"no span {name!r}; got {sorted({s.name for s in self.spans})}")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def daemon(registry, receiver, tmp_path_factory):
    with serving(str(tmp_path_factory.mktemp("cricketd")),
                 registry_config(registry) + f'\n[tracing]\nendpoint = "{receiver.url}"\n') as d:
        yield d


def attributes(span) -> dict:
    return {a.key: a.value.string_value or a.value.int_value for a in span.attributes}


def test_pull_and_pod_spans(daemon, receiver, registry, test_images, tmp_path):
    image = test_images["busybox"].reference(registry)
    daemon.pull(image)
    [pull] = receiver.wait_for("runtime.v1.ImageService/PullImage")
    assert attributes(pull)["cri.image"] == image
    for child in ("image.resolve", "image.blob", "image.unpack"):
        spans = receiver.wait_for(child)
        assert all(s.trace_id == pull.trace_id for s in spans)
    blobs = receiver.wait_for("image.blob")
    assert {s.parent_span_id for s in blobs} <= {pull.span_id} | {s.span_id for s in receiver.spans}

    pods = Pods(daemon, str(tmp_path / "logs"))
    pod = pods.run_pod()
    cid = pods.run(pod, image, ["sleep", "1000"])
    [run] = [s for s in receiver.wait_for("runtime.v1.RuntimeService/RunPodSandbox")
             if attributes(s).get("cri.pod_sandbox_id", "") in ("", pod)]
    [cni_add] = receiver.wait_for("cni.add")
    assert cni_add.trace_id == run.trace_id and cni_add.parent_span_id == run.span_id
    assert receiver.wait_for("cni.plugin loopback")[0].parent_span_id == cni_add.span_id
    [spawn] = receiver.wait_for("shim.spawn")
    [setup] = receiver.wait_for("executor.setup")
    assert attributes(spawn)["cri.container_id"] == cid == attributes(setup)["cri.container_id"]
    pods.remove_all()


def test_a_callers_trace_context_is_honoured(daemon, receiver):
    metadata = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
    daemon.runtime.Version(pb.VersionRequest(), metadata=metadata)
    with pytest.raises(grpc.RpcError):
        daemon.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id="nope"), metadata=metadata)
    [version] = receiver.wait_for("runtime.v1.RuntimeService/Version", lambda s: s.trace_id.hex() == TRACE_ID)
    assert version.parent_span_id.hex() == PARENT_ID
    [failed] = receiver.wait_for("runtime.v1.RuntimeService/ContainerStatus", lambda s: s.trace_id.hex() == TRACE_ID)
    assert failed.status.code == 2 and "NOT_FOUND" in failed.status.message  # STATUS_CODE_ERROR


def test_a_pulls_spans_in_memory(registry, test_images, tmp_path):
    """The same spans, caught in this process by the SDK's in-memory exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # the first and only provider of this test process
    info = test_images["whiteouts"]
    store = ImageStore(str(tmp_path / "root"))

    async def pull():
        async with RegistryClient({registry.host: HostConfig(insecure=True)}) as client:
            with trace.get_tracer("test").start_as_current_span("pull"):
                return await Puller(store, client).pull(parse_reference(info.reference(registry)))

    try:
        rec = asyncio.run(pull())
    finally:
        store.close()
        provider.shutdown()
    spans = exporter.get_finished_spans()
    [root] = [s for s in spans if s.name == "pull"]
    names = sorted(s.name for s in spans if s.context.trace_id == root.context.trace_id)
    assert rec.id == info.config_digest
    assert names.count("image.resolve") == 1 and names.count("image.unpack") == len(info.layers)
    assert names.count("image.blob") == len(info.layers) + 1  # the config is a blob too
    blobs = {s.attributes["image.digest"] for s in spans if s.name == "image.blob"}
    assert blobs == {*info.layers, info.config_digest}
