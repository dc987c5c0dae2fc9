"""The pod CIDRs of UpdateRuntimeConfig (cri/pod_cidr.py): parsed, refused, kept on disk."""
import asyncio
import json
import os

import pytest

from cri import pod_cidr
from cri.errors import InvalidArgument
from cri.pod_cidr import PodCidrs


def test_one_range_or_one_per_family_as_kubelet_joins_them():
    assert pod_cidr.parse("10.244.1.0/24") == ["10.244.1.0/24"]
    assert pod_cidr.parse("10.244.1.0/24, fd00:10:244:1::/64") == ["10.244.1.0/24", "fd00:10:244:1::/64"]
    assert pod_cidr.parse("10.244.1.7/24") == ["10.244.1.0/24"]  # host bits dropped, as Go's ParseCIDR


@pytest.mark.parametrize("text, words", [
    ("10.244.1.0", "is not a CIDR"),
    ("10.244.1.0/33", "is not a CIDR"),
    ("banana/8", "is not a CIDR"),
    ("10.244.1.0/24,", "'' is not a CIDR"),
    ("10.0.0.0/8,10.1.0.0/16", "more than one IPv4 range"),
])
def test_refused_naming_the_field_and_the_fault(text, words):
    with pytest.raises(InvalidArgument) as e:
        pod_cidr.parse(text)
    assert "pod_cidr" in str(e.value) and words in str(e.value)


def test_recorded_whole_and_read_again(tmp_path):
    cidrs = PodCidrs(str(tmp_path))
    assert cidrs.cidrs == []
    asyncio.run(cidrs.record(["10.244.1.0/24"]))
    assert json.loads((tmp_path / pod_cidr.FILE_NAME).read_text()) == {"podCIDRs": ["10.244.1.0/24"]}
    assert PodCidrs(str(tmp_path)).cidrs == ["10.244.1.0/24"]
    assert os.listdir(tmp_path) == [pod_cidr.FILE_NAME]  # no temporary file left beside it


def test_a_damaged_file_is_no_cidrs_not_a_failed_start(tmp_path):
    (tmp_path / pod_cidr.FILE_NAME).write_text('{"podCIDRs": [1')
    assert PodCidrs(str(tmp_path)).cidrs == []
    (tmp_path / pod_cidr.FILE_NAME).write_text('{"podCIDRs": "10.0.0.0/8"}')
    assert PodCidrs(str(tmp_path)).cidrs == []
