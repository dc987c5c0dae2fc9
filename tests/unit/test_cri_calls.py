"""Every call of the CRI schema is served: none falls through to the UNIMPLEMENTED answer."""
import pytest

from api.runtime.v1 import api_pb2 as pb
from cri.image_service import ImageService
from cri.runtime_service import RuntimeService

SERVICERS = {"RuntimeService": RuntimeService, "ImageService": ImageService}


@pytest.mark.parametrize("service", sorted(SERVICERS))
def test_no_call_answers_unimplemented(service):
    cls = SERVICERS[service]
    unserved = [m.name for m in pb.DESCRIPTOR.services_by_name[service].methods
                if "_unimplemented" in getattr(cls, m.name).__qualname__]
    assert not unserved, f"{service} answers UNIMPLEMENTED to {', '.join(unserved)}"
