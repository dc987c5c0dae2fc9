"""Answer UNIMPLEMENTED, naming the method, for every CRI call Cricket does not serve yet."""
from __future__ import annotations

import grpc

from api.runtime.v1 import api_pb2 as pb


def answer_unimplemented(cls):
    """Class decorator for a servicer: each method of its service that the class does not
    define answers UNIMPLEMENTED with a message naming it (the generated base class
    only says "Method not implemented!")."""
    base = next(b for b in cls.__mro__ if b.__name__.endswith("Servicer"))
    service = base.__name__.removesuffix("Servicer")
    for method in pb.DESCRIPTOR.services_by_name[service].methods:
        # Implemented anywhere above the generated base (the class or a mixin of it) counts.
        if getattr(cls, method.name, None) is getattr(base, method.name, None):
            setattr(cls, method.name, _unimplemented(service, method.name))
    return cls


def _unimplemented(service: str, name: str):
    async def handler(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"cricket does not implement {service}.{name} yet")

    handler.__name__ = name
    return handler
