"""The list calls kubelet makes every second, at scale: ListContainers reads each image's record
once per answer, not twice per container (with a thousand containers present those reads were
most of its time), and ListContainerStats forgets the CPU samples of removed containers (kept,
they grew by one per container ever run)."""
from __future__ import annotations

import asyncio
import types

from api.runtime.v1 import api_pb2 as pb
from cri.records import CREATED, EXITED, ContainerRecord
from cri.runtime import Container
from cri.stats import CpuRates
from cri.verbs.container_stats import ContainerStats
from cri.verbs.container_status import ContainerStatusVerbs
from frames.shim_client import ShimClient
from image.metadata import ImageRecord

IMAGES = {f"sha256:{n:064x}": ImageRecord(f"sha256:{n:064x}", "", "", {}, "", 0, 0.0,
                                          [f"example.com/app{n}:v1"], [f"example.com/app{n}@sha256:{n:064x}"])
          for n in (1, 2)}


class _Metadata:
    def __init__(self):
        self.reads: list[str] = []

    def image(self, image_id: str) -> ImageRecord | None:
        self.reads.append(image_id)
        return IMAGES.get(image_id)


def _container(i: int, image_id: str) -> Container:
    config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=f"c{i}"), labels={"n": str(i)})
    rec = ContainerRecord(id=f"{i:064x}", sandbox_id="f" * 64, name=f"c{i}", config=config.SerializeToString(),
                          image_id=image_id, image_name="app", chain_id="", log_path="", created_at=i,
                          state=EXITED)
    return Container(rec, ShimClient(f"/nonexistent/{i}.sock"))


def test_each_image_is_read_once_per_list():
    metadata = _Metadata()
    ids = [*IMAGES, "sha256:" + "9" * 64]  # the last one removed meanwhile: no record
    containers = [_container(i, ids[i % 3]) for i in range(300)]
    verbs = ContainerStatusVerbs()
    verbs.rt = types.SimpleNamespace(images=types.SimpleNamespace(metadata=metadata),  # type: ignore[assignment]
                                     containers={c.id: c for c in containers}, state_of=lambda c: c.rec.state)
    answer = asyncio.run(verbs.ListContainers.__wrapped__(verbs, pb.ListContainersRequest(), None))
    assert len(answer.containers) == 300
    assert sorted(metadata.reads) == sorted(ids)  # three reads, not six hundred
    by_id = {c.id: c for c in answer.containers}
    for i, image_id in ((0, ids[0]), (1, ids[1]), (2, ids[2])):
        got = by_id[f"{i:064x}"]
        if image_id in IMAGES:
            assert got.image.image == IMAGES[image_id].repo_tags[0]
            assert got.image_ref == IMAGES[image_id].repo_digests[0]
        else:
            assert got.image.image == "app" and got.image_ref == image_id
        assert got.labels == {"n": str(i)} and got.state == pb.CONTAINER_EXITED
    # The next answer reuses what did not change, and builds again what did.
    containers[0].rec.state = CREATED
    again = asyncio.run(verbs.ListContainers.__wrapped__(verbs, pb.ListContainersRequest(), None))
    states = {c.id: c.state for c in again.containers}
    assert states[f"{0:064x}"] == pb.CONTAINER_CREATED
    assert list(states.values()).count(pb.CONTAINER_EXITED) == 299


def test_list_container_stats_forgets_the_samples_of_removed_containers():
    kept = _container(1, next(iter(IMAGES)))
    kept.rec.state = CREATED  # no stats of its own (nothing runs), but its sample is a live cgroup's
    kept.rec.spec = {"linux": {"cgroupsPath": "/cricket/pod/kept"}}
    verbs = ContainerStats()
    verbs.rt = types.SimpleNamespace(containers={kept.id: kept},  # type: ignore[assignment]
                                     sandboxes={"p": types.SimpleNamespace(rec=types.SimpleNamespace(
                                         cgroup_parent="/cricket/pod"))})
    verbs.rates = CpuRates()
    for path in ("/cricket/pod/kept", "/cricket/pod", "/cricket/gone/removed", "/cricket/gone"):
        verbs.rates.nano_cores(path, 1, 1)
    answer = asyncio.run(verbs.ListContainerStats.__wrapped__(verbs, pb.ListContainerStatsRequest(), None))
    assert list(answer.stats) == []
    assert sorted(verbs.rates._last) == ["/cricket/pod", "/cricket/pod/kept"]
