"""Session fixtures: the test images, and real registries on loopback with them pushed.

Each fixture stops what it started (by pid) and removes its directory, also
when tests fail. A fixture whose tools are missing skips with their names.
"""
from __future__ import annotations

import contextlib
import os
import shutil

import pytest

from cri.sandbox_lifecycle import CGROUP_ROOT
from linux.cgroups import Cgroup
from tests.daemon import need_root, registry_config
from tests.fixtures import images
from tests.fixtures.proxy import Proxy
from tests.fixtures.registry import REGISTRY_BINARY, start_registry
from tests.fixtures.tokenserver import TokenServer
from tests.pods import serving

USER = ("alice", "wonderland")

# binary → the Debian package that has it (`make deps-test` installs them all)
_PACKAGES = {
    images.BUSYBOX: "busybox-static", REGISTRY_BINARY: "docker-registry",
    "skopeo": "skopeo", "htpasswd": "apache2-utils",
}


def require(*binaries: str) -> None:
    missing = [b for b in binaries if not (os.access(b, os.X_OK) if os.path.isabs(b) else shutil.which(b))]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: apt-get install {' '.join(_PACKAGES.get(b, b) for b in missing)}")


@contextlib.contextmanager
def _workdir(tmp_path_factory, name):
    workdir = tmp_path_factory.mktemp(name)
    try:
        yield str(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def cricket_cgroup_parent():
    """Pods without a cgroup parent go under /cricket, which daemons share and so leave in
    place: it goes at the end of the session if the session made it (and it is empty)."""
    existed = any(os.path.isdir(d) for d in Cgroup(CGROUP_ROOT).dirs())
    yield
    if not existed:
        with contextlib.suppress(OSError):
            Cgroup(CGROUP_ROOT).remove(wait=False)


@pytest.fixture(scope="session")
def test_images(tmp_path_factory) -> images.ImageSet:
    """Every test image, built once (ImageSet: name → ImageInfo)."""
    require(images.BUSYBOX)
    with _workdir(tmp_path_factory, "images") as workdir:
        yield images.build_images(workdir)


@contextlib.contextmanager
def _registry(tmp_path_factory, name, **kw):
    with _workdir(tmp_path_factory, name) as workdir, start_registry(workdir, **kw) as reg:
        yield reg


@pytest.fixture(scope="session")
def registry(test_images, tmp_path_factory):
    """Plain-HTTP registry, no auth, every test image pushed under its own name."""
    require(REGISTRY_BINARY, "skopeo")
    with _registry(tmp_path_factory, "registry") as reg:
        images.push_all(test_images, reg)
        yield reg


@pytest.fixture(scope="session")
def tls_registry(test_images, tmp_path_factory):
    """HTTPS registry (test CA in .ca_file) with htpasswd user alice/wonderland, every test image pushed."""
    require(REGISTRY_BINARY, "skopeo", "htpasswd")
    with _registry(tmp_path_factory, "tls-registry", tls=True, htpasswd=USER) as reg:
        images.push_all(test_images, reg)
        yield reg


@pytest.fixture(scope="session")
def token_registry(test_images, tmp_path_factory):
    """Plain-HTTP registry behind a token server (.token_server, .token_url, .refresh_token).

    busybox is pushed as public/busybox (anonymous pulls) and private/busybox
    (alice/wonderland only); the pushes themselves go through the token flow.
    """
    require(REGISTRY_BINARY, "skopeo")
    with _workdir(tmp_path_factory, "token-server") as workdir, TokenServer(workdir, *USER) as tokens, \
            _registry(tmp_path_factory, "token-registry", token=tokens) as reg:
        for repo in ("public/busybox", "private/busybox"):
            images.push(test_images, "busybox", reg, repo=repo)
        yield reg


@pytest.fixture
def proxies():
    """Proxies made by a test, closed after it whatever happens."""
    made: list[Proxy] = []

    def make(*args, **kw) -> Proxy:
        p = Proxy(*args, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture(scope="module")
def ip_forward_kept():
    """The bridge plugin turns on forwarding, as it must for a gateway: put it back after the
    module's tests."""
    need_root()
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        before = f.read()
    yield
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write(before)


@pytest.fixture
def network(ip_forward_kept, tmp_path):
    """A CNI bridge network of the test's own (tests/test_network.py's OwnNetwork), removed after."""
    from tests.test_network import OwnNetwork  # here: a test module, imported only when wanted

    net = OwnNetwork(str(tmp_path / "cni"))
    net.write()
    yield net
    net.remove()


@pytest.fixture(scope="module")
def daemon(registry, test_images, tmp_path_factory):
    """A cricketd of the test module's own, with busybox pulled. Modules that need another
    daemon (other config, other images) define their own `daemon`."""
    with serving(str(tmp_path_factory.mktemp("cricketd")), registry_config(registry),
                 [test_images["busybox"].reference(registry)]) as d:
        yield d
