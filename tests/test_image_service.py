"""The CRI ImageService end to end: a real cricketd pulling from real registries on loopback.

Unpacked images are checked by mounting their snapshots as a real overlayfs and
comparing the tree with what the test image was built from. Registry traffic is
counted (and spoiled, where a test wants it) by the recording proxy.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from tests.daemon import Cricketd, need_root, registry_config
from tests.fixtures import images
from tests.fixtures.proxy import Reply

pytestmark = pytest.mark.usefixtures("root_only")


@pytest.fixture(scope="module")
def root_only():
    need_root()


def host_image(info: images.ImageInfo) -> images.ImageInfo:
    """The image a pull of `info` lands on: for an index, this machine's entry."""
    return info.manifests["linux/amd64"] if info.is_index else info


@pytest.fixture(scope="module")
def shared_daemon(registry, tls_registry, token_registry, tmp_path_factory):
    """One daemon for the tests that only add images and look at them."""
    d = Cricketd(str(tmp_path_factory.mktemp("cricketd")), registry_config(registry, tls_registry, token_registry))
    d.start()
    yield d
    d.stop()


@pytest.fixture
def daemon(tmp_path, registry, tls_registry, token_registry):
    """A fresh daemon with an empty store, for tests that count or remove."""
    made: list[Cricketd] = []

    def make(config: str | None = None) -> Cricketd:
        text = registry_config(registry, tls_registry, token_registry) if config is None else config
        d = Cricketd(str(tmp_path / f"d{len(made)}"), text)
        made.append(d)
        return d.start()

    yield make
    for d in made:
        d.stop()


def rpc_error(fn, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        fn(*args, **kw)
    return e.value


# -- looking at what the daemon stored ---------------------------------------------


def db_rows(d: Cricketd, sql: str, *args) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(f"file:{d.root}/images.db?mode=ro", uri=True)) as db:
        return db.execute(sql, args).fetchall()


def lower_dirs(d: Cricketd, chain_id: str) -> list[str]:
    snapshots = {c: (sid, parent) for sid, c, parent in db_rows(d, "SELECT id, chain_id, parent FROM snapshots")}
    out = []
    while chain_id:
        sid, chain_id = snapshots[chain_id]
        out.append(os.path.join(d.root, "snapshots", str(sid)))
    return out


@contextlib.contextmanager
def mounted(d: Cricketd, image_ref: str):
    """The image's snapshots stacked read-only by the kernel's overlayfs, as a container will see them."""
    status = d.status(image_ref, verbose=True)
    chain_id = json.loads(status.info["info"])["chainID"]
    with tempfile.TemporaryDirectory(prefix="cricket-test-overlay-") as tmp:
        empty, target = os.path.join(tmp, "empty"), os.path.join(tmp, "rootfs")
        os.mkdir(empty)
        os.mkdir(target)
        # An overlay without an upper dir needs two lower dirs; an empty one costs nothing.
        lower = ":".join(lower_dirs(d, chain_id) + [empty])
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower}", target], check=True)
        try:
            yield target
        finally:
            subprocess.run(["umount", target], check=True)


def blobs_on_disk(d: Cricketd) -> set[str]:
    return {"sha256:" + n for n in os.listdir(os.path.join(d.root, "content", "blobs", "sha256"))}


def snapshot_dirs(d: Cricketd) -> set[str]:
    return set(os.listdir(os.path.join(d.root, "snapshots")))


# -- pulling ----------------------------------------------------------------------------

KINDS = ["busybox", "busybox-docker", "multiarch", "multiarch-docker", "zstd", "plain", "whiteouts", "special"]


@pytest.mark.parametrize("name", KINDS)
def test_pull_unpacks_what_was_built(shared_daemon, registry, test_images, name):
    info = test_images[name]
    image = host_image(info)
    ref = shared_daemon.pull(info.reference(registry))
    assert ref == image.config_digest  # the image ID is the config digest

    status = shared_daemon.status(info.reference(registry)).image
    assert status.id == image.config_digest
    assert f"{registry.host}/{name}:latest" in status.repo_tags
    assert f"{registry.host}/{name}@{info.manifest_digest}" in status.repo_digests
    assert status.size >= image.size
    with mounted(shared_daemon, ref) as rootfs:
        assert images.rootfs_differences(rootfs, image) == []


def test_pull_by_digest_names_the_digest_only(shared_daemon, registry, test_images):
    info = test_images["shared-a"]
    ref = shared_daemon.pull(info.by_digest(registry))
    status = shared_daemon.status(info.by_digest(registry)).image
    assert status.id == ref == info.config_digest
    assert status.repo_digests == [info.by_digest(registry)]
    assert status.repo_tags == []


def test_image_user_is_reported_as_containerd_does(shared_daemon, registry, test_images):
    shared_daemon.pull(test_images["user-uid"].reference(registry))
    shared_daemon.pull(test_images["user-name"].reference(registry))
    by_uid = shared_daemon.status(test_images["user-uid"].reference(registry)).image
    by_name = shared_daemon.status(test_images["user-name"].reference(registry)).image
    assert by_uid.uid.value == 1001 and by_uid.username == ""
    assert not by_name.HasField("uid") and by_name.username == "cricket"


def test_image_status_verbose_carries_the_config(shared_daemon, registry, test_images):
    info = test_images["busybox"]
    shared_daemon.pull(info.reference(registry))
    out = shared_daemon.status(info.reference(registry), verbose=True)
    doc = json.loads(out.info["info"])
    assert doc["imageSpec"]["config"]["Env"] == [images.PATH_ENV]
    assert doc["imageSpec"]["rootfs"]["diff_ids"] == list(info.diff_ids)
    assert doc["chainID"] == info.chain_ids[-1]
    assert shared_daemon.status(info.reference(registry)).info == {}


def test_image_status_by_short_id_and_unknown(shared_daemon, registry, test_images):
    info = test_images["busybox"]
    shared_daemon.pull(info.reference(registry))
    assert shared_daemon.status(info.config_digest[7:20]).image.id == info.config_digest
    empty = shared_daemon.status(f"{registry.host}/never-pulled:latest")
    assert not empty.HasField("image")


def test_list_images_and_filter(shared_daemon, registry, test_images):
    for name in ("busybox", "zstd"):
        shared_daemon.pull(test_images[name].reference(registry))
    ids = {i.id for i in shared_daemon.list()}
    assert {test_images["busybox"].config_digest, test_images["zstd"].config_digest} <= ids
    req = pb.ListImagesRequest(filter=pb.ImageFilter(image=pb.ImageSpec(image=test_images["zstd"].reference(registry))))
    (only,) = shared_daemon.images.ListImages(req).images
    assert only.id == test_images["zstd"].config_digest
    req.filter.image.image = f"{registry.host}/never-pulled"
    assert list(shared_daemon.images.ListImages(req).images) == []


# -- sharing and not downloading twice --------------------------------------------------


def mirrored(registry, proxy) -> str:
    """Config that sends every request for the registry's images through `proxy`."""
    return f'[registries."{registry.host}"]\nmirrors = ["{proxy.url}"]\ninsecure = true\n'


def test_shared_base_layer_is_fetched_and_stored_once(daemon, registry, proxies, test_images):
    proxy = proxies(registry.url)
    d = daemon(mirrored(registry, proxy))
    a, b = test_images["shared-a"], test_images["shared-b"]
    d.pull(a.reference(registry))
    d.pull(b.reference(registry))
    fetched = [r.path.rsplit("/", 1)[1] for r in proxy.blob_requests()]
    assert fetched.count(a.layers[0]) == 1  # the base layer both images share
    assert sorted(set(fetched)) == sorted(fetched)
    chain_ids = [row[0] for row in db_rows(d, "SELECT chain_id FROM snapshots")]
    assert sorted(chain_ids) == sorted({*a.chain_ids, *b.chain_ids})
    assert len(snapshot_dirs(d)) == 3


def test_repull_resolves_the_tag_and_downloads_nothing(daemon, registry, proxies, test_images):
    proxy = proxies(registry.url)
    d = daemon(mirrored(registry, proxy))
    info = test_images["special"]
    d.pull(info.reference(registry))
    before = len(proxy.requests)
    assert d.pull(info.reference(registry)) == info.config_digest
    again = proxy.requests[before:]
    assert [r.path for r in again] == ["/v2/special/manifests/latest"]


def test_concurrent_pulls_of_one_image_download_once(daemon, registry, proxies, test_images):
    gate = threading.Event()

    def slow_blobs(req, forward):
        if "/blobs/" in req.path:
            gate.wait(10)  # hold every blob until all pulls have asked for it
        return forward()

    proxy = proxies(registry.url, hook=slow_blobs)
    d = daemon(mirrored(registry, proxy))
    info = test_images["whiteouts"]
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(d.pull(info.reference(registry)))) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    gate.set()
    for t in threads:
        t.join(60)
    assert results == [info.config_digest] * 4
    fetched = [r.path.rsplit("/", 1)[1] for r in proxy.blob_requests()]
    assert sorted(fetched) == sorted({info.config_digest, *info.layers})


def test_tag_that_moved_is_pulled_anew(daemon, registry, test_images):
    d = daemon()
    images.push(test_images, "shared-a", registry, repo="moving")
    first = d.pull(f"{registry.host}/moving:latest")
    images.push(test_images, "shared-b", registry, repo="moving")
    second = d.pull(f"{registry.host}/moving:latest")
    assert (first, second) == (test_images["shared-a"].config_digest, test_images["shared-b"].config_digest)
    assert d.status(f"{registry.host}/moving:latest").image.id == second


def test_mirror_serves_docker_hub_names(daemon, registry, test_images):
    images.push(test_images, "busybox", registry, repo="library/busybox")
    # docker.io itself is never reached: the mirror has the image.
    d = daemon(f'[registries."docker.io"]\nmirrors = ["http://{registry.host}"]\n')
    assert d.pull("busybox") == test_images["busybox"].config_digest
    status = d.status("docker.io/library/busybox:latest").image
    assert "docker.io/library/busybox:latest" in status.repo_tags


# -- authentication from the request -----------------------------------------------------


def test_basic_auth_from_username_and_password(shared_daemon, tls_registry, test_images):
    ref = test_images["busybox"].reference(tls_registry)
    err = rpc_error(shared_daemon.pull, ref)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ref in err.details()
    auth = pb.AuthConfig(username="alice", password="wonderland")
    assert shared_daemon.pull(ref, auth=auth) == test_images["busybox"].config_digest


def test_basic_auth_from_the_auth_field(daemon, tls_registry, test_images):
    d = daemon()
    auth = pb.AuthConfig(auth=base64.b64encode(b"alice:wonderland").decode())
    assert d.pull(test_images["zstd"].reference(tls_registry), auth=auth) == test_images["zstd"].config_digest


def test_token_flow_anonymous_and_with_identity_token(daemon, token_registry, test_images):
    d = daemon()
    busybox = test_images["busybox"].config_digest
    assert d.pull(f"{token_registry.host}/public/busybox") == busybox
    private = f"{token_registry.host}/private/busybox"
    err = rpc_error(d.pull, private)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authentication required" in err.details()
    assert d.pull(private, auth=pb.AuthConfig(identity_token=token_registry.refresh_token)) == busybox


def test_registry_token_from_the_request(daemon, token_registry, test_images):
    server = token_registry.token_server
    status, body = server.answer(
        "GET", {"service": [server.service], "scope": ["repository:private/busybox:pull"]}, ("alice", "wonderland")
    )
    assert status == 200
    d = daemon()
    auth = pb.AuthConfig(registry_token=body["token"])
    assert d.pull(f"{token_registry.host}/private/busybox", auth=auth) == test_images["busybox"].config_digest


# -- removing and collecting ----------------------------------------------------------


def test_remove_by_one_of_two_tags_only_untags(daemon, registry, test_images):
    d = daemon()
    images.push(test_images, "busybox", registry, repo="alias")
    info = test_images["busybox"]
    d.pull(info.reference(registry))
    d.pull(f"{registry.host}/alias:latest")
    d.remove(f"{registry.host}/alias:latest")
    status = d.status(info.reference(registry)).image
    assert status.id == info.config_digest
    assert status.repo_tags == [info.reference(registry)]
    assert not d.status(f"{registry.host}/alias:latest").HasField("image")
    assert info.layers[0] in blobs_on_disk(d)


@pytest.mark.parametrize("how", ["id", "short-id", "digest-reference", "last-tag"])
def test_remove_image_collects_its_blobs_and_snapshots(daemon, registry, test_images, how):
    d = daemon()
    keep, gone = test_images["shared-a"], test_images["shared-b"]
    d.pull(keep.reference(registry))
    d.pull(gone.reference(registry))
    spec = {
        "id": gone.config_digest,
        "short-id": gone.config_digest[7:19],
        "digest-reference": gone.by_digest(registry),
        "last-tag": gone.reference(registry),
    }[how]
    d.remove(spec)
    assert [i.id for i in d.list()] == [keep.config_digest]
    assert gone.layers[1] not in blobs_on_disk(d) and gone.config_digest not in blobs_on_disk(d)
    assert keep.layers[0] in blobs_on_disk(d)  # the shared base stays with the image still using it
    assert len(snapshot_dirs(d)) == 2
    with mounted(d, keep.config_digest) as rootfs:
        assert images.rootfs_differences(rootfs, keep) == []

    d.remove(keep.reference(registry))
    assert d.list() == [] and blobs_on_disk(d) == set() and snapshot_dirs(d) == set()


def test_remove_of_an_unknown_image_succeeds(daemon):
    d = daemon()
    d.remove("127.0.0.1:1/never-pulled:latest")
    d.remove("sha256:" + "0" * 64)
    d.remove("0" * 64)  # a bare ID, as kubelet and critest name images
    assert not d.status("0" * 64).HasField("image")


def test_image_fs_info_follows_the_store(daemon, registry, test_images):
    d = daemon()

    def usage():
        (fs,) = d.images.ImageFsInfo(pb.ImageFsInfoRequest()).image_filesystems
        assert fs.fs_id.mountpoint == os.path.join(d.root, "snapshots")
        return fs.used_bytes.value, fs.inodes_used.value

    empty = usage()
    info = test_images["busybox"]
    d.pull(info.reference(registry))
    used, inodes = usage()
    busybox_bytes = info.files["bin/busybox"].size
    assert used - empty[0] >= busybox_bytes + info.size  # unpacked files plus the stored blobs
    assert inodes - empty[1] >= len([f for f in info.files.values() if not f.same_as])  # hard links share one
    d.remove(info.reference(registry))
    assert usage() == empty


# -- bad input and failing registries -----------------------------------------------------


@pytest.mark.parametrize("bad", ["Busy Box", "busybox:", "library/UPPER", "busybox@sha256:abc", "a" * 300])
def test_malformed_reference_is_invalid_argument(shared_daemon, bad):
    err = rpc_error(shared_daemon.pull, bad)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid image reference" in err.details() or "reference" in err.details()


def test_unknown_tag_is_not_found_with_the_registry_words(shared_daemon, registry):
    ref = f"{registry.host}/busybox:no-such-tag"
    err = rpc_error(shared_daemon.pull, ref)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert ref in err.details() and "MANIFEST_UNKNOWN" in err.details()


def test_unreachable_registry_is_unavailable(daemon):
    with socket_closed() as port:
        d = daemon(f'[registries."127.0.0.1:{port}"]\ninsecure = true\n[image]\npull_retries = 1\n')
        err = rpc_error(d.pull, f"127.0.0.1:{port}/busybox")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert f"cannot reach http://127.0.0.1:{port}" in err.details()


@contextlib.contextmanager
def socket_closed():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]  # bound, not listening: connections are refused


@pytest.mark.parametrize("status,code", [
    (403, grpc.StatusCode.PERMISSION_DENIED),
    (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
])
def test_registry_refusals_carry_their_words(daemon, registry, proxies, status, code):
    words = {"errors": [{"code": "DENIED", "message": f"cricket test says no ({status})"}]}
    refusal = json.dumps(words).encode()
    proxy = proxies(registry.url, hook=lambda req, fwd: Reply(status, [("Retry-After", "3600")], refusal))
    d = daemon(f'[registries."{proxy.host}"]\ninsecure = true\n')
    err = rpc_error(d.pull, f"{proxy.host}/busybox")
    assert err.code() == code
    assert f"cricket test says no ({status})" in err.details() and f"{proxy.host}/busybox:latest" in err.details()


@pytest.mark.parametrize("name", sorted(images.HOSTILE))
def test_hostile_layer_fails_the_pull_and_leaves_nothing(daemon, registry, test_images, name):
    d = daemon()
    info = test_images[name]
    err = rpc_error(d.pull, info.reference(registry))
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert info.layers[1] in err.details() or any(e in err.details() for e in info.bad_entries)
    assert d.list() == []
    assert blobs_on_disk(d) == set() and snapshot_dirs(d) == set()
    assert not any(os.path.exists(os.path.join(p, "escape")) for p in (d.root, d.workdir, os.path.dirname(d.workdir)))
    assert not os.path.exists("/etc/escape-abs")


def test_corrupt_blob_fails_then_a_retry_works(daemon, registry, proxies, test_images):
    info = test_images["special"]
    spoiled = {"on": True}

    def flip(req, forward):
        reply = forward()
        if spoiled["on"] and req.path.endswith(info.layers[1]) and reply.status == 200:
            reply.body = reply.body[:100] + bytes([reply.body[100] ^ 0xFF]) + reply.body[101:]
        return reply

    proxy = proxies(registry.url, hook=flip)
    d = daemon(f'[registries."{proxy.host}"]\ninsecure = true\n[image]\npull_retries = 1\n')
    ref = f"{proxy.host}/special:latest"
    err = rpc_error(d.pull, ref)
    assert err.code() == grpc.StatusCode.DATA_LOSS
    assert info.layers[1] in err.details() and ref in err.details()
    assert d.list() == [] and snapshot_dirs(d) == set()
    spoiled["on"] = False
    assert d.pull(ref) == info.config_digest
    with mounted(d, ref) as rootfs:
        assert images.rootfs_differences(rootfs, info) == []


def test_truncated_blob_is_retried_and_resumed(daemon, registry, proxies, test_images):
    info = test_images["busybox"]
    cuts = []

    def cut_once(req, forward):
        reply = forward()
        if req.path.endswith(info.layers[0]) and not cuts:
            cuts.append(req)
            reply.cut_at = len(reply.body) // 2
        return reply

    proxy = proxies(registry.url, hook=cut_once)
    d = daemon(f'[registries."{proxy.host}"]\ninsecure = true\n')
    assert d.pull(f"{proxy.host}/busybox") == info.config_digest
    layer_requests = [r for r in proxy.blob_requests() if r.path.endswith(info.layers[0])]
    assert (
        len(layer_requests) == 2
        and layer_requests[1].header(
            "Range",
        )
        is not None
    )


# -- crash safety ---------------------------------------------------------------------------


def _unpacking(d: Cricketd) -> bool:
    return any(n.startswith("new-") for n in snapshot_dirs(d))


def _downloading(d: Cricketd) -> bool:
    return bool(os.listdir(os.path.join(d.root, "content", "ingest")))


@pytest.mark.parametrize("moment", ["downloading", "unpacking", "random"])
def test_sigkill_during_pulls_leaves_old_or_new_state(daemon, registry, proxies, test_images, moment):
    """Kill the daemon in the middle of pulls; every restart must find a consistent store
    and a new pull must finish the job."""

    def slow_layers(req, forward):
        if "/blobs/" in req.path and moment == "downloading":
            time.sleep(0.3)  # long enough to be caught with a partial download on disk
        return forward()

    proxy = proxies(registry.url, hook=slow_layers)
    d = daemon(mirrored(registry, proxy))
    names = ["whiteouts", "special", "zstd"]
    rng = random.Random(1)
    for round_ in range(4):
        ref = test_images[names[round_ % len(names)]].reference(registry)
        puller = threading.Thread(target=_ignore_rpc_errors, args=(d.pull, ref))
        puller.start()
        if moment == "random":
            time.sleep(rng.uniform(0.0, 0.3))
        else:
            busy = _unpacking if moment == "unpacking" else _downloading
            assert _wait_for(lambda busy=busy: busy(d)), f"never saw the daemon {moment}"
        d.restart(signal.SIGKILL)
        puller.join(30)
        check_store_is_consistent(d)
        assert not _unpacking(d)
    for name in names:
        info = test_images[name]
        assert d.pull(info.reference(registry)) == info.config_digest
        with mounted(d, info.config_digest) as rootfs:
            assert images.rootfs_differences(rootfs, info) == []
    check_store_is_consistent(d)


def _wait_for(condition, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.0005)
    return False


def _ignore_rpc_errors(fn, *args):
    try:
        fn(*args)
    except grpc.RpcError:
        pass


def check_store_is_consistent(d: Cricketd) -> None:
    rows = db_rows(d, "SELECT id, chain_id, parent FROM snapshots")
    assert snapshot_dirs(d) == {str(r[0]) for r in rows}, "snapshot directories and rows disagree"
    chains = {r[1] for r in rows}
    assert all(parent in chains for _, _, parent in rows if parent), "a snapshot's parent is missing"
    on_disk = blobs_on_disk(d)
    for image_id, chain_id in db_rows(d, "SELECT id, chain_id FROM images"):
        assert chain_id in chains, f"image {image_id} lost its snapshot"
    for (digest,) in db_rows(d, "SELECT digest FROM image_blobs"):
        assert digest in on_disk, f"blob {digest} of a recorded image is missing"
    for image in d.list():
        assert image.repo_tags or image.repo_digests
