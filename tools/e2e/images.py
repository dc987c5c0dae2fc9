"""The images the e2e specs run, made here with no network and pushed into the cluster node's
registry under registry.k8s.io's names, which the runtime (Cricket or containerd) resolves
through its mirrors.

agnhost is the real one: its binary is built from `k8s.io/kubernetes/test/images/agnhost` at the
pinned Kubernetes version (tools/build-go-tools.sh), laid on the busybox stand-in with what its
Dockerfile adds that specs rely on (`/agnhost` and the `agnhost-2` link, `/uploads`, the
image-defined user and group, entrypoint `/agnhost`, command `pause`, and the tools its base
installs that specs run inside it: curl, netcat-openbsd's nc, iproute2's ip and ss, and bash,
taken from this host's Debian packages with their shared libraries). busybox and pause are the
stand-ins the cluster already uses; nginx is busybox's httpd serving nginx's document root on 80;
nonroot is busybox with image user 1234;
nonewprivs is busybox with its real program, `nnp` (built from the module), setuid and setgid root
(tests/fixtures/images.py builds them). The versions are those of `test/utils/image/manifest.go` in Kubernetes 1.36.
"""
from __future__ import annotations

import concurrent.futures

from tests.fixtures import images as fixture
from tools.cluster import images as cluster_images
from tools.cluster import settings as s

AGNHOST_VERSIONS = ("2.63.0", "2.55")
BUSYBOX_VERSION = "1.37.0-1"
PAUSE_VERSION = "3.10.2"
NGINX_VERSIONS = ("1.15-4", "1.27-0")
NONROOT_VERSION = "1.5"
NONEWPRIVS_VERSION = "1.4"


def names() -> dict[str, list[str]]:
    """Built image -> the repository:tag names it is pushed as (registry host left off)."""
    return {
        "agnhost": [f"e2e-test-images/agnhost:{v}" for v in AGNHOST_VERSIONS],
        "busybox": [f"e2e-test-images/busybox:{BUSYBOX_VERSION}"],
        "pause": [f"pause:{PAUSE_VERSION}"],
        "nginx": [f"e2e-test-images/nginx:{v}" for v in NGINX_VERSIONS],
        "nonroot": [f"e2e-test-images/nonroot:{NONROOT_VERSION}"],
        "nonewprivs": [f"e2e-test-images/nonewprivs:{NONEWPRIVS_VERSION}"],
    }


def build_and_push(workdir: str) -> None:
    tls = []
    for part in ("crt", "key"):
        with open(s.binary(f"agnhost-localhost.{part}"), "rb") as f:
            tls.append(f.read())
    built = fixture.build_e2e_images(workdir, s.binary("agnhost"), (tls[0], tls[1]), s.binary("nnp"))
    registry = cluster_images.NodeRegistry()
    jobs = [(name, ref) for name, refs in names().items() for ref in refs]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(fixture.push, built, name, registry, repo=ref.split(":")[0], tag=ref.split(":")[1])
                   for name, ref in jobs]
        for future in futures:
            future.result()
