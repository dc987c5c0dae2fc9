"""The pages of the streaming list calls (cri/paging.py)."""
import itertools

from api.runtime.v1 import api_pb2 as pb
from cri.paging import PAGE_BYTES, pages


def _container(i: int, size: int = 100) -> pb.Container:
    return pb.Container(id=f"{i:064x}", labels={"pad": "x" * size})


def test_every_item_once_in_order_and_each_page_within_the_bound():
    items = [_container(i, size=i % 700) for i in range(5000)]
    got = list(pages(items, limit=64 * 1024))
    assert [c.id for page in got for c in page] == [c.id for c in items]
    assert len(got) > 1
    for page in got:
        assert len(pb.StreamContainersResponse(containers=page).SerializeToString()) <= 64 * 1024
    # Pages are full: each but the last would have passed the bound with the next item.
    for page, following in itertools.pairwise(got):
        assert len(pb.StreamContainersResponse(containers=page + following[:1]).SerializeToString()) > 64 * 1024


def test_the_default_bound_is_far_below_grpcs_default_receive_limit():
    assert PAGE_BYTES <= 4 * 2**20 // 2


def test_an_item_larger_than_a_page_is_a_page_of_its_own_and_nothing_is_no_page():
    big, small = _container(1, size=5000), _container(2)
    assert [[c.id for c in p] for p in pages([small, big, small], limit=1000)] == [[small.id], [big.id], [small.id]]
    assert list(pages([], limit=1000)) == []
