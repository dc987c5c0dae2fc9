"""Images mounted into containers (the CRI's Mount.image: Kubernetes image volumes), on the real
kernel through a real cricketd: the content, read-only, a sub path resolved inside the image,
the refusals, the clean-up, and an image kept while a container has it mounted."""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from tests.daemon import registry_config
from tests.pods import Pods, rpc_error, serving

TARGET = "/mnt/image"


@pytest.fixture(scope="module")
def daemon(registry, test_images, tmp_path_factory):
    images = [test_images[name].reference(registry) for name in ("busybox", "special")]
    with serving(str(tmp_path_factory.mktemp("cricketd")), registry_config(registry), images) as d:
        yield d


@pytest.fixture
def pods(daemon, tmp_path):
    p = Pods(daemon, str(tmp_path / "logs"))
    yield p
    p.remove_all()


@pytest.fixture
def busybox(registry, test_images):
    return test_images["busybox"].reference(registry)


@pytest.fixture
def special(registry, test_images):
    return test_images["special"].reference(registry)


def image_mount(image: str, path: str = TARGET, sub_path: str = "", **kw) -> pb.Mount:
    return pb.Mount(container_path=path, image=pb.ImageSpec(image=image), image_sub_path=sub_path,
                    readonly=kw.pop("readonly", True), **kw)


def mounts_under(path: str) -> list[str]:
    """Mount points under `path` in cricketd's (the host's) mount namespace."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(path.rstrip("/") + "/")]


def snapshot_dir(daemon, chain_id: str) -> str:
    """The directory of the snapshot with this chain ID, from the image store's table."""
    with contextlib.closing(sqlite3.connect(f"file:{daemon.root}/images.db?mode=ro", uri=True)) as db:
        row = db.execute("SELECT id FROM snapshots WHERE chain_id=?", (chain_id,)).fetchone()
    return os.path.join(daemon.root, "snapshots", str(row[0])) if row else ""


def test_the_images_files_are_there_read_only_and_executable(pods, daemon, busybox, special, test_images):
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sleep", "1000"],
                   mounts=[image_mount(special), image_mount(busybox, "/mnt/one-layer")])
    # Both layers of `special` stacked, as its rootfs would be; a one-layer image mounts too.
    assert pods.sh(cid, f"cat {TARGET}/special/hardlink-b") == "one inode, two names\n"
    assert pods.sh(cid, "ls /mnt/one-layer/etc/passwd") == "/mnt/one-layer/etc/passwd\n"
    for path in (f"{TARGET}/new", f"{TARGET}/special/hardlink-a", "/mnt/one-layer/etc/passwd"):
        out = pods.exec(cid, ["sh", "-c", f"echo x >> {path}"])
        assert out.exit_code != 0 and b"Read-only file system" in out.stderr
    assert pods.exec(cid, [f"{TARGET}/bin/busybox", "true"]).exit_code == 0  # not noexec
    # ContainerStatus names the image each mount resolved to (KEP-5365's image_ref).
    reported = {m.container_path: m for m in pods.status(cid).status.mounts}
    assert reported[TARGET].image.image == special
    assert reported[TARGET].image.image_ref == test_images["special"].config_digest
    assert reported["/mnt/one-layer"].image.image_ref == test_images["busybox"].config_digest


def test_a_sub_path_is_resolved_inside_the_image(pods, daemon, busybox, special):
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sleep", "1000"], mounts=[
        image_mount(special, "/mnt/dir", "special"),
        # an absolute symlink in the image leads to the image's /bin/busybox, never the host's
        image_mount(special, "/mnt/file", "special/abs-link"),
        # and ".." stops at the image's root
        image_mount(special, "/mnt/up", "../../../etc"),
    ])
    assert pods.sh(cid, "ls /mnt/dir/hardlink-a") == "/mnt/dir/hardlink-a\n"
    assert pods.exec(cid, ["ls", "/mnt/dir/special"]).exit_code != 0  # the sub path, not the root
    assert pods.exec(cid, ["busybox", "cmp", "/mnt/file", "/bin/busybox"]).exit_code == 0
    spec = json.loads(pods.status(cid, verbose=True).info["info"])["runtimeSpec"]
    [source] = [m["source"] for m in spec["mounts"] if m["destination"] == "/mnt/file"]
    assert source == os.path.join(daemon.state, "containers", cid, "image-mounts", "1", "bin", "busybox")
    assert "cricket:x:1000" in pods.sh(cid, "cat /mnt/up/passwd")  # the image's, not the host's


@pytest.mark.parametrize("mount, code, words", [
    (lambda s: image_mount(s, host_path="/tmp"), grpc.StatusCode.INVALID_ARGUMENT, "both set"),
    (lambda s: image_mount(s, readonly=False), grpc.StatusCode.INVALID_ARGUMENT, "read-only"),
    (lambda s: image_mount(s, sub_path="not-there"), grpc.StatusCode.INVALID_ARGUMENT, "not-there"),
    (lambda s: image_mount(s.replace("special", "never-pulled")), grpc.StatusCode.NOT_FOUND, "never-pulled"),
    (lambda s: pb.Mount(container_path=TARGET, image_sub_path="etc", readonly=True),
     grpc.StatusCode.INVALID_ARGUMENT, "image_sub_path"),
], ids=["host-path-too", "writable", "missing-sub-path", "image-not-pulled", "sub-path-without-image"])
def test_refusals_name_what_was_wrong_and_leave_nothing(pods, daemon, busybox, special, mount, code, words):
    pod = pods.run_pod()
    config = pods.container_config(busybox, ["sleep", "1000"], mounts=[image_mount(busybox, "/mnt/ok"), mount(special)])
    err = rpc_error(pods.create, pod, config)
    assert err.code() == code and words in err.details(), err.details()
    assert not pods.rt.ListContainers(pb.ListContainersRequest()).containers
    assert mounts_under(os.path.join(daemon.state, "containers")) == []


def test_the_mount_goes_with_the_container(pods, daemon, busybox, special):
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sleep", "1000"], mounts=[image_mount(special)])
    bundle = os.path.join(daemon.state, "containers", cid)
    assert [p for p in mounts_under(bundle) if not p.endswith("/rootfs")]  # the image's overlay
    pods.stop(cid)
    pods.remove(cid)
    assert mounts_under(bundle) == [] and not os.path.exists(bundle)


def test_remove_image_is_deferred_while_a_container_has_it_mounted(pods, daemon, registry, busybox, special,
                                                                   test_images):
    # As containerd: RemoveImage succeeds and the image's name goes at once; its snapshots stay
    # while a container has them mounted (also across a daemon restart), and go with it.
    top = snapshot_dir(daemon, test_images["special"].chain_ids[-1])
    pod = pods.run_pod()
    cid = pods.run(pod, busybox, ["sleep", "1000"], mounts=[image_mount(special)])
    daemon.remove(special)
    assert not daemon.status(special).HasField("image")
    assert pods.sh(cid, f"cat {TARGET}/special/old") == "from 2009\n"
    assert os.path.isdir(top)
    daemon.restart()  # the record keeps the snapshots from the collection a starting daemon runs
    assert os.path.isdir(top)
    assert pods.sh(cid, f"cat {TARGET}/special/old") == "from 2009\n"
    pods.stop(cid)
    pods.remove(cid)
    assert not os.path.exists(top)
    assert daemon.status(busybox).HasField("image")  # the base layer's other image is untouched
    daemon.pull(special)  # and the image comes back whole
