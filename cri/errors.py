"""Turning the managers' exceptions into gRPC statuses with messages that say what was wrong.

Handlers are wrapped by `handle_errors`: an expected error becomes its status code;
anything else is logged with its traceback and answered INTERNAL, and the daemon
keeps serving.
"""
from __future__ import annotations

import functools
import logging
import sqlite3

import grpc

from frames.shim_client import ShimError
from image.content import ContentError
from image.limits import LimitExceeded
from image.manifest import ManifestError
from image.reference import ReferenceError
from image.registry import DigestMismatchError, RegistryError
from image.space import OutOfSpace, is_out_of_space
from image.store import ImageNotFound
from image.unpack import LayerError

log = logging.getLogger(__name__)


class InvalidArgument(ValueError):
    """A request field holds a value Cricket cannot act on; the message names the field."""


class NotFound(LookupError):
    """The sandbox, container or image a request names does not exist."""


class AlreadyExists(Exception):
    """A name or ID a request would take is already held; the message names the holder."""


class FailedPrecondition(Exception):
    """The object exists but is in the wrong state for the request (e.g. start of a running container)."""


class DeadlineExceeded(Exception):
    """A command ran past the timeout the request gave it."""


class RuntimeFailure(Exception):
    """Running the container failed for a reason outside the request (an exec error, a mount refused)."""


_REGISTRY_CODES = {
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.UNAVAILABLE,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    # A registry's server errors, after the retries: it is failing now, and a later pull may work.
    500: grpc.StatusCode.UNAVAILABLE,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.UNAVAILABLE,
}


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC code for an expected error, or None for a bug."""
    if isinstance(exc, (InvalidArgument, ReferenceError)):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, (ImageNotFound, NotFound)):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, AlreadyExists):
        return grpc.StatusCode.ALREADY_EXISTS
    if isinstance(exc, FailedPrecondition):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, DeadlineExceeded):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(exc, (RuntimeFailure, ShimError)):
        return grpc.StatusCode.UNKNOWN
    if isinstance(exc, LimitExceeded):  # before RegistryError: a manifest over its bound is both
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, OutOfSpace) or (isinstance(exc, (OSError, sqlite3.OperationalError))
                                       and is_out_of_space(exc)):
        # A full disk is the node's state, not a bug: the caller may free space and retry.
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, DigestMismatchError):
        return grpc.StatusCode.DATA_LOSS
    if isinstance(exc, RegistryError):
        if exc.status is None:
            return grpc.StatusCode.UNAVAILABLE
        return _REGISTRY_CODES.get(exc.status, grpc.StatusCode.UNKNOWN)
    if isinstance(exc, (LayerError, ContentError)):
        return grpc.StatusCode.DATA_LOSS
    if isinstance(exc, ManifestError):
        return grpc.StatusCode.FAILED_PRECONDITION
    return None


def message_for(exc: BaseException, verb: str) -> str:
    """The words of an expected error, for its status. A bare full-disk error from below (which
    has no words of its own beyond errno's) gets the verb and, where it has one, the path."""
    if isinstance(exc, (OSError, sqlite3.OperationalError)) and not isinstance(exc, OutOfSpace) \
            and is_out_of_space(exc):
        where = f" at {exc.filename}" if isinstance(exc, OSError) and exc.filename else ""
        what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return f"{verb}: {what}{where}; free space on that filesystem (the root or state directory's) and try again"
    return str(exc)


def handle_errors(method):
    """Wrap a unary servicer method so that errors become clear gRPC statuses."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # every error must become a status, never a dead handler
            code = status_for(exc)
            if code is None:
                log.exception("%s failed", method.__name__)
                code = grpc.StatusCode.INTERNAL
                message = f"{method.__name__}: internal error: {exc!r}"
            else:
                message = message_for(exc, method.__name__)
            await context.abort(code, message)

    return wrapper
