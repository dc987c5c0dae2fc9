"""The streaming list calls (KEP-5825: StreamContainers, StreamPodSandboxes, StreamImages and the
stats and metrics ones): what the List call answers in one message, answered in pages.

A unary List answer grows with the node: some 1.3 KB a container as kubelet labels them, so a
node with a few thousand containers passes the 4 MiB a gRPC client receives by default, and
some twelve thousand pass kubelet's 16 MiB. A Stream call takes the same request and filter
and answers the same items, cut into pages of at most PAGE_BYTES each. The items are picked
at once, as the List call picks them (so none is sent twice or missed by a change meanwhile),
and a page is built only when the client has taken the one before: gRPC's flow control paces
the stream. Nothing matching is no page at all: the stream just ends.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator

import grpc
from google.protobuf.message import Message

from cri.errors import status_for

log = logging.getLogger(__name__)

# Far below gRPC's 4 MiB default limit, and large enough that a page costs little per item.
PAGE_BYTES = 1 << 20


def _framed(n: int) -> int:
    """An item of n bytes in a repeated message field (numbers below 16): its tag, its length as a
    varint, itself."""
    return 1 + max(1, (n.bit_length() + 6) // 7) + n


def pages(items: Iterable[Message], limit: int = PAGE_BYTES) -> Iterator[list[Message]]:
    """The items in order, in lists of at most `limit` bytes as a repeated field holds them. An
    item larger than `limit` on its own (a pod with a great many containers' metrics) is a
    page of its own: an item is never split."""
    page: list[Message] = []
    size = 0
    for item in items:
        n = _framed(item.ByteSize())
        if page and size + n > limit:
            yield page
            page, size = [], 0
        page.append(item)
        size += n
    if page:
        yield page


def streams_pages(response: type[Message], field: str):
    """Make a servicer method that returns the items of a List answer into the server-streaming
    handler of its Stream call: each page one `response` message, the items in its `field`.
    An error before the first page becomes the call's status, as `handle_errors` does for
    unary calls."""

    def decorate(method):
        @functools.wraps(method)
        async def handler(self, request, context):
            try:
                items = await method(self, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # every error must become a status, never a dead stream
                code, message = status_for(exc), str(exc)
                if code is None:
                    log.exception("%s failed", method.__name__)
                    code, message = grpc.StatusCode.INTERNAL, f"{method.__name__}: internal error: {exc!r}"
                await context.abort(code, message)
                return
            for page in pages(items):
                yield response(**{field: page})

        return handler

    return decorate
