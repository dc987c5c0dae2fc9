"""The cluster's images: built here with no network (tests/fixtures/images.py) and pushed into
the node's registry under the names the world knows them by, which the runtime then resolves
through its mirrors. Nothing is pulled from the internet."""
from __future__ import annotations

import concurrent.futures
import os
from dataclasses import dataclass

from tests.fixtures import images as fixture
from tools.cluster import settings as s

# built image -> repository:tag names it is pushed as (registry host left off: the mirror serves them)
NAMES = {
    "busybox": ["library/busybox:latest", "library/busybox:1.36.1", "e2e-test-images/busybox:1.29-2"],
    "busybox-v2": ["library/busybox:1.37.0"],
    "pause": ["pause:3.10"],
    "coredns": ["coredns/coredns:v1.14.2"],
}
BUSYBOX = "docker.io/library/busybox:1.36.1"
BUSYBOX_V2 = "docker.io/library/busybox:1.37.0"
COREDNS = "registry.k8s.io/coredns/coredns:v1.14.2"


@dataclass
class NodeRegistry:
    """The node's registry as the push helper wants a registry: plain HTTP, no credentials."""

    host: str = s.REGISTRY_HOST
    creds: tuple[str, str] | None = None
    ca_file: str | None = None
    cert_dir: str | None = None


def build_and_push(workdir: str) -> None:
    coredns = s.binary("coredns")
    built = fixture.build_cluster_images(workdir, coredns if os.path.exists(coredns) else None)
    registry = NodeRegistry()
    jobs = [(name, ref) for name in built for ref in NAMES[name]]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(fixture.push, built, name, registry, repo=ref.split(":")[0], tag=ref.split(":")[1])
                   for name, ref in jobs]
        for future in futures:
            future.result()
