"""The opt-in Prometheus endpoint ([metrics] address): CRI calls, pulls, what is running.

Imported only when an address is configured: the client library costs cricketd
some 5 MB it has no use for otherwise. CRI calls are counted (by method and
status code) and timed by a gRPC server interceptor; the rest is read from the
runtime when Prometheus scrapes.
"""
from __future__ import annotations

import time
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from cri.records import RUNNING, SANDBOX_READY
from cri.runtime import Runtime
from image.pull import Puller

# Buckets for calls from a fraction of a millisecond (status) to minutes (pulls).
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class _RuntimeCollector:
    """Gauges and counters read from the runtime at scrape time."""

    def __init__(self, rt: Runtime, puller: Puller):
        self.rt = rt
        self.puller = puller

    def collect(self):
        running = GaugeMetricFamily("cricket_containers_running", "Containers running now.")
        running.add_metric([], sum(1 for c in list(self.rt.containers.values()) if c.rec.state == RUNNING))
        yield running
        ready = GaugeMetricFamily("cricket_pod_sandboxes_ready", "Pod sandboxes ready now.")
        ready.add_metric([], sum(1 for s in list(self.rt.sandboxes.values()) if s.rec.state == SANDBOX_READY))
        yield ready
        pulled = CounterMetricFamily("cricket_image_pull_bytes", "Bytes of image blobs downloaded.")
        pulled.add_metric([], self.puller.blob_bytes)
        yield pulled


class Metrics(grpc.aio.ServerInterceptor):
    def __init__(self, rt: Runtime, puller: Puller):
        self.registry = CollectorRegistry()
        self.calls = Counter("cricket_cri_requests", "CRI calls answered, by method and status code.",
                             ["method", "code"], registry=self.registry)
        self.latency = Histogram("cricket_cri_request_duration_seconds", "Time to answer a CRI call, by method.",
                                 ["method"], buckets=_BUCKETS, registry=self.registry)
        self.pulls = Counter("cricket_image_pulls", "PullImage calls, by result.", ["result"], registry=self.registry)
        self.registry.register(_RuntimeCollector(rt, puller))
        self._server: WSGIServer | None = None

    def serve(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._server, _ = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=self.registry)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler  # the streaming calls (events) last as long as their client: not timed
        method = details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary

        async def timed(request, context):
            start = time.perf_counter()
            code = "OK"
            try:
                return await inner(request, context)
            except BaseException:
                code = getattr(context.code(), "name", None) or "UNKNOWN"
                raise
            finally:
                self.calls.labels(method, code).inc()
                self.latency.labels(method).observe(time.perf_counter() - start)
                if method == "PullImage":
                    self.pulls.labels("ok" if code == "OK" else "failed").inc()

        return grpc.unary_unary_rpc_method_handler(timed, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)
