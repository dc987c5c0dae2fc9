"""OpenTelemetry tracing: a span per CRI call, child spans for the work inside it.

Code everywhere makes its spans through `tracer`, which does nothing until
set_up() installs the SDK: that happens only when [tracing] endpoint is set
(the SDK and the OTLP exporter cost cricketd some 4 MB it has no use for
otherwise). Spans go to the endpoint over OTLP/HTTP in batches. A CRI call
carrying W3C trace context (the `traceparent` gRPC metadata a traced kubelet
sends) gets its span in the caller's trace.
"""
from __future__ import annotations

from typing import cast

import grpc
from opentelemetry import context, propagate, trace

tracer = trace.get_tracer("cricket")

# Request fields that name what a call is about, as span attributes.
_ATTRIBUTES = (("pod_sandbox_id", "cri.pod_sandbox_id"), ("container_id", "cri.container_id"))
EXPORT_DELAY_MS = 1000


def set_up(endpoint: str, sampling_ratio: float, version: str):
    """Install the SDK exporting to `endpoint`; the provider (shut it down at exit)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(resource=Resource.create({"service.name": "cricket", "service.version": version}),
                              sampler=ParentBased(TraceIdRatioBased(sampling_ratio)))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint),
                                                   schedule_delay_millis=EXPORT_DELAY_MS))
    trace.set_tracer_provider(provider)
    return provider


def _attributes(request) -> dict:
    out = {}
    for field, name in _ATTRIBUTES:
        value = getattr(request, field, "")
        if value:
            out[name] = value
    image = getattr(request, "image", None)
    # cast: as the right of `and`, getattr gets a bool context and mypy picks its bool-default overload
    if image is not None and cast(str, getattr(image, "image", "")):
        out["cri.image"] = image.image
    config = getattr(request, "config", None)
    metadata = getattr(config, "metadata", None)
    if metadata is not None and cast(str, getattr(metadata, "name", "")):
        out["cri.name"] = metadata.name
    return out


class CallSpans(grpc.aio.ServerInterceptor):
    """A span per unary CRI call, named by its method, in the caller's trace when it sends one."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        carrier = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
        name = details.method.lstrip("/")
        inner = handler.unary_unary

        async def traced(request, ctx):
            token = context.attach(propagate.extract(carrier))
            try:
                # The status is the call's gRPC code, not the exception that carries it out.
                with tracer.start_as_current_span(name, kind=trace.SpanKind.SERVER, attributes=_attributes(request),
                                                  record_exception=False, set_status_on_exception=False) as span:
                    try:
                        return await inner(request, ctx)
                    except BaseException:
                        code = ctx.code()
                        span.set_status(trace.StatusCode.ERROR, getattr(code, "name", "UNKNOWN"))
                        raise
            finally:
                context.detach(token)

        return grpc.unary_unary_rpc_method_handler(traced, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)
