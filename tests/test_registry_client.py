"""The registry client against real registries on loopback.

The registries are the session fixtures from conftest: `registry` (plain HTTP),
`tls_registry` (HTTPS with a test CA and htpasswd user alice) and
`token_registry` (behind a token server). Misbehaviour (cut transfers, flipped
bytes, 429s, redirects) comes from a small recording proxy in front of them.
Manifests are checked against skopeo's copy of the same bytes where it is here.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from image.manifest import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    Index,
    Manifest,
    Platform,
    host_platform,
    parse_manifest,
    select_platform,
)
from image.reference import parse_reference
from image.registry import (
    Credentials,
    DigestMismatchError,
    HostConfig,
    RegistryClient,
    RegistryError,
    Resolved,
)
from tests.fixtures.proxy import Proxy, Reply

ALICE = Credentials("alice", "wonderland")
ALICE_PAIR = ("alice", "wonderland")


def run(hosts, fn, **kw):
    """Run `fn(client)` with a fresh client in a fresh event loop, closing the client after."""

    async def main():
        async with RegistryClient(hosts, **kw) as client:
            return await fn(client)

    return asyncio.run(main())


def plain(*hosts: str) -> dict[str, HostConfig]:
    return {h: HostConfig(insecure=True) for h in hosts}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- helpers on the fixture registries ---------------------------------------------


def ref_to(reg, name: str):
    return parse_reference(f"{reg.host}/{name}")


def resolve(reg, name: str, hosts=None, creds=None, **kw) -> Resolved:
    return run(hosts if hosts is not None else plain(reg.host), lambda c: c.resolve(ref_to(reg, name), creds), **kw)


def image_manifest(client: RegistryClient, resolved: Resolved, creds=None):
    """The image manifest for this host, going through the index if there is one."""

    async def go():
        doc = parse_manifest(resolved.data, resolved.media_type)
        if isinstance(doc, Index):
            desc = select_platform(doc, host_platform())
            doc = parse_manifest(await client.fetch_manifest(resolved, desc.digest, creds), desc.media_type)
        return doc

    return go()


def skopeo_raw(reg, name: str, tls_verify=False) -> bytes | None:
    if not shutil.which("skopeo"):
        return None
    out = subprocess.run(
        ["skopeo", "inspect", "--raw", f"--tls-verify={str(tls_verify).lower()}", f"docker://{reg.host}/{name}"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return out.stdout


def busybox_layer(reg) -> tuple[Resolved, str, int]:
    """The busybox image's resolution and its (largest) layer's digest and size."""

    async def go(c):
        r = await c.resolve(ref_to(reg, "busybox"))
        m = await image_manifest(c, r)
        layer = max(m.layers, key=lambda d: d.size)
        return r, layer.digest, layer.size

    return run(plain(reg.host), go)


def blob_bytes(reg, resolved: Resolved, digest: str, size: int, tmp_path) -> bytes:
    dest = str(tmp_path / "reference-copy")
    run(plain(reg.host), lambda c: c.fetch_blob(resolved, digest, size, dest))
    with open(dest, "rb") as f:
        data = f.read()
    os.unlink(dest)
    return data


def via(proxy: Proxy, resolved: Resolved) -> Resolved:
    """The same image as if pulled from the proxy's host, so that the proxy is its only endpoint."""
    ref = dataclasses.replace(resolved.reference, domain=proxy.host)
    return Resolved(ref, proxy.url, resolved.digest, resolved.media_type, resolved.data)


# -- resolving ----------------------------------------------------------------------

KINDS = [
    ("busybox", OCI_MANIFEST),
    ("busybox-docker", DOCKER_MANIFEST),
    ("multiarch", OCI_INDEX),
    ("multiarch-docker", DOCKER_MANIFEST_LIST),
]


@pytest.mark.parametrize("name,media_type", KINDS)
def test_resolve_by_tag_then_by_digest(registry, test_images, name, media_type):
    by_tag = resolve(registry, name)
    assert by_tag.media_type == media_type == test_images[name].media_type
    assert by_tag.digest == sha256(by_tag.data) == test_images[name].manifest_digest
    assert by_tag.endpoint == registry.url
    assert by_tag.reference == ref_to(registry, name)
    raw = skopeo_raw(registry, name)
    if raw is not None:
        assert by_tag.data == raw  # the same bytes an independent client gets

    by_digest = resolve(registry, f"{name}@{by_tag.digest}")
    assert (by_digest.digest, by_digest.data, by_digest.media_type) == (by_tag.digest, by_tag.data, media_type)
    assert by_digest.reference.tag is None


@pytest.mark.parametrize("name", ["multiarch", "multiarch-docker"])
def test_index_to_each_platform(registry, name, tmp_path):
    async def go(c):
        r = await c.resolve(ref_to(registry, name))
        idx = parse_manifest(r.data, r.media_type)
        assert isinstance(idx, Index)
        seen = {}
        for want in (Platform("linux", "amd64"), Platform("linux", "arm64", "v8"), Platform("linux", "arm", "v7")):
            desc = select_platform(idx, want)
            data = await c.fetch_manifest(r, desc.digest)
            assert sha256(data) == desc.digest
            m = parse_manifest(data, desc.media_type)
            assert isinstance(m, Manifest)
            dest = str(tmp_path / desc.digest[7:])
            await c.fetch_blob(r, m.config.digest, m.config.size, dest)
            with open(dest, "rb") as f:
                config = json.load(f)
            seen[str(want)] = (config["os"], config["architecture"], config.get("variant", ""))
        return seen

    seen = run(plain(registry.host), go)
    assert seen == {
        "linux/amd64": ("linux", "amd64", ""),
        "linux/arm64/v8": ("linux", "arm64", "v8"),
        "linux/arm/v7": ("linux", "arm", "v7"),
    }


def test_index_to_host_platform(registry):
    here = host_platform()
    if here.architecture not in ("amd64", "arm64", "arm"):
        pytest.skip(f"the test images have no {here}")

    async def go(c):
        return await image_manifest(c, await c.resolve(ref_to(registry, "multiarch")))

    assert isinstance(run(plain(registry.host), go), Manifest)


def test_unknown_tag_carries_the_registry_words(registry):
    with pytest.raises(RegistryError) as e:
        resolve(registry, "nope")
    assert e.value.status == 404
    assert e.value.reference == f"{registry.host}/nope:latest"
    assert str(e.value).startswith(
        f"pull {registry.host}/nope:latest: 404 Not Found: MANIFEST_UNKNOWN manifest unknown")


def test_unknown_digest(registry):
    with pytest.raises(RegistryError) as e:
        resolve(registry, "busybox@sha256:" + "0" * 64)
    assert e.value.status == 404 and "MANIFEST_UNKNOWN" in str(e.value)


def test_unreachable_registry_is_a_clear_error():
    port = closed_port()
    t0 = time.monotonic()
    with pytest.raises(RegistryError) as e:
        run(plain(f"127.0.0.1:{port}"), lambda c: c.resolve(parse_reference(f"127.0.0.1:{port}/x")), max_retries=1)
    assert e.value.status is None
    msg = str(e.value)
    assert msg.startswith(f"pull 127.0.0.1:{port}/x:latest: cannot reach http://127.0.0.1:{port}: ")
    assert "refused" in msg.lower() or "connect call failed" in msg.lower()
    assert time.monotonic() - t0 < 10


def test_https_to_a_plain_http_registry_says_so(registry):
    # A table for the host that does not say insecure: HTTPS, even to a loopback host.
    with pytest.raises(RegistryError) as e:
        resolve(registry, "busybox", hosts={registry.host: HostConfig()}, max_retries=0)
    assert f"cannot reach https://{registry.host}" in str(e.value)
    assert "insecure" in str(e.value)


def test_a_loopback_registry_no_table_names_is_plain_http(registry):
    """As containerd reaches it: Kubernetes' private-registry e2e specs pull from localhost:5000."""
    resolved = resolve(registry, "busybox", hosts={}, max_retries=0)
    assert resolved.data
    port = registry.host.split(":")[1]
    resolved = run({}, lambda c: c.resolve(parse_reference(f"localhost:{port}/busybox:latest"), None))
    assert resolved.data


def test_resolve_by_digest_verifies_the_body(registry, proxies):
    good = resolve(registry, "busybox")

    def corrupt(req, forward):
        reply = forward()
        if "/manifests/" in req.path and reply.status == 200:
            reply.body += b" "  # still the same JSON, but not the same bytes
        return reply

    proxy = proxies(registry.url, hook=corrupt)
    with pytest.raises(DigestMismatchError) as e:
        resolve(proxy, f"busybox@{good.digest}", hosts=plain(proxy.host))
    assert f"want {good.digest}" in str(e.value)
    # By tag there is nothing to check against: the body's hash is the digest, whatever the header said.
    by_tag = resolve(proxy, "busybox", hosts=plain(proxy.host))
    assert by_tag.digest == sha256(by_tag.data) != good.digest


def test_fetch_manifest_verifies(registry, proxies):
    good = resolve(registry, "multiarch")
    child = parse_manifest(good.data, good.media_type).manifests[0]

    def corrupt(req, forward):
        reply = forward()
        if req.path.endswith(child.digest):
            reply.body += b"\n"
        return reply

    proxy = proxies(registry.url, hook=corrupt)
    with pytest.raises(DigestMismatchError, match=f"manifest {child.digest}"):
        run(plain(proxy.host), lambda c: c.fetch_manifest(via(proxy, good), child.digest))


# -- blobs --------------------------------------------------------------------------


def test_fetch_blob_writes_verified_bytes_and_reports_progress(registry, tmp_path):
    resolved, digest, size = busybox_layer(registry)
    dest = str(tmp_path / "blob")
    seen = []
    run(plain(registry.host), lambda c: c.fetch_blob(resolved, digest, size, dest, progress=seen.append))
    with open(dest, "rb") as f:
        assert sha256(f.read()) == digest
    assert os.path.getsize(dest) == size
    assert seen and seen[-1] == size and seen == sorted(seen)


def test_complete_file_is_checked_not_fetched(registry, proxies, tmp_path):
    resolved, digest, size = busybox_layer(registry)
    data = blob_bytes(registry, resolved, digest, size, tmp_path)
    dest = tmp_path / "blob"
    dest.write_bytes(data)
    proxy = proxies(registry.url)
    run(plain(proxy.host), lambda c: c.fetch_blob(via(proxy, resolved), digest, size, str(dest)))
    assert proxy.blob_requests() == []


def test_partial_file_is_resumed_with_a_range_request(registry, proxies, tmp_path):
    resolved, digest, size = busybox_layer(registry)
    data = blob_bytes(registry, resolved, digest, size, tmp_path)
    half = size // 2
    dest = tmp_path / "blob"
    dest.write_bytes(data[:half])
    proxy = proxies(registry.url)
    seen = []
    run(plain(proxy.host), lambda c: c.fetch_blob(via(proxy, resolved), digest, size, str(dest), progress=seen.append))
    assert dest.read_bytes() == data
    (req,) = proxy.blob_requests()
    assert req.header("Range") == f"bytes={half}-"
    assert seen[0] > half and seen[-1] == size


def test_server_ignoring_range_restarts_from_zero(registry, proxies, tmp_path):
    resolved, digest, size = busybox_layer(registry)
    data = blob_bytes(registry, resolved, digest, size, tmp_path)
    dest = tmp_path / "blob"
    dest.write_bytes(data[: size // 3])

    def no_ranges(req, forward):
        req.headers = {k: v for k, v in req.headers.items() if k.lower() != "range"}
        return forward()

    proxy = proxies(registry.url, hook=no_ranges)
    run(plain(proxy.host), lambda c: c.fetch_blob(via(proxy, resolved), digest, size, str(dest)))
    assert dest.read_bytes() == data
    assert len(proxy.blob_requests()) == 1


def test_wrong_partial_file_is_downloaded_again_whole(registry, proxies, tmp_path):
    resolved, digest, size = busybox_layer(registry)
    data = blob_bytes(registry, resolved, digest, size, tmp_path)
    dest = tmp_path / "blob"
    dest.write_bytes(b"\0" * (size // 2))
    proxy = proxies(registry.url)
    run(plain(proxy.host), lambda c: c.fetch_blob(via(proxy, resolved), digest, size, str(dest)))
    assert dest.read_bytes() == data
    assert [r.header("Range") for r in proxy.blob_requests()] == [f"bytes={size // 2}-", None]


def test_broken_transfer_is_retried_and_resumed(registry, proxies, tmp_path):
    resolved, digest, size = busybox_layer(registry)
    cut = size // 2
    cuts = []

    def flaky(req, forward):
        reply = forward()
        if "/blobs/" in req.path and not cuts:
            cuts.append(req.path)
            reply.cut_at = cut
        return reply

    proxy = proxies(registry.url, hook=flaky)
    dest = tmp_path / "blob"
    run(plain(proxy.host), lambda c: c.fetch_blob(via(proxy, resolved), digest, size, str(dest)))
    assert sha256(dest.read_bytes()) == digest
    first, second = proxy.blob_requests()
    assert first.header("Range") is None
    # Whatever part of the cut response reached the file is kept; the retry asks for the rest.
    assert second.header("Range") is not None and second.header("Range").startswith("bytes=")
    assert 0 < int(second.header("Range")[6:-1]) <= cut


def test_retries_give_up_and_keep_the_partial_file(registry, proxies, tmp_path):
    resolved, digest, size = busybox_layer(registry)

    def always_cut(req, forward):
        reply = forward()
        if "/blobs/" in req.path:
            reply.cut_at = min(len(reply.body) // 2, 1000)
        return reply

    proxy = proxies(registry.url, hook=always_cut)
    dest = tmp_path / "blob"
    with pytest.raises(RegistryError) as e:
        run(plain(proxy.host), lambda c: c.fetch_blob(via(proxy, resolved), digest, size, str(dest)), max_retries=2)
    assert not isinstance(e.value, DigestMismatchError)
    assert "broke off" in str(e.value) or "ended at byte" in str(e.value)
    assert len(proxy.blob_requests()) == 3
    assert 0 < dest.stat().st_size < size  # kept for the next attempt to resume


def test_5xx_and_429_are_retried_honouring_retry_after(registry, proxies, tmp_path):
    _, digest, size = busybox_layer(registry)
    failed = []

    def busy(req, forward):
        if "/manifests/" in req.path and "503" not in failed:
            failed.append("503")
            return Reply(503, [("Content-Type", "text/plain")], b"try later")
        if "/blobs/" in req.path and "429" not in failed:
            failed.append("429")
            body = json.dumps({"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]}).encode()
            return Reply(429, [("Retry-After", "1")], body)
        return forward()

    proxy = proxies(registry.url, hook=busy)
    dest = str(tmp_path / "blob")

    async def go(c):
        r = await c.resolve(ref_to(proxy, "busybox"))
        t0 = time.monotonic()
        await c.fetch_blob(r, digest, size, dest)
        return time.monotonic() - t0

    waited = run(plain(proxy.host), go)
    assert failed == ["503", "429"]
    assert waited >= 0.9


def test_retry_after_beyond_reason_fails_at_once(registry, proxies):
    proxy = proxies(registry.url, hook=lambda req, fwd: Reply(429, [("Retry-After", "3600")], b""))
    t0 = time.monotonic()
    with pytest.raises(RegistryError) as e:
        resolve(proxy, "busybox", hosts=plain(proxy.host))
    assert e.value.status == 429 and "429 Too Many Requests" in str(e.value)
    assert time.monotonic() - t0 < 5 and len(proxy.requests) == 1


def test_missing_blob_is_not_retried(registry, proxies, tmp_path):
    resolved, _, _ = busybox_layer(registry)
    proxy = proxies(registry.url)
    missing = "sha256:" + "0" * 64
    with pytest.raises(RegistryError) as e:
        run(plain(proxy.host), lambda c: c.fetch_blob(via(proxy, resolved), missing, 10, str(tmp_path / "b")))
    assert e.value.status == 404
    assert f"blob {missing}: 404 Not Found: BLOB_UNKNOWN" in str(e.value)
    assert len(proxy.blob_requests()) == 1


def test_corrupted_blob_is_a_digest_mismatch_and_removed(registry, proxies, tmp_path):
    resolved, digest, size = busybox_layer(registry)

    def flip(req, forward):
        reply = forward()
        if "/blobs/" in req.path and reply.body:
            body = bytearray(reply.body)
            body[len(body) // 2] ^= 0xFF
            reply.body = bytes(body)
        return reply

    proxy = proxies(registry.url, hook=flip)
    proxied = via(proxy, resolved)
    dest = tmp_path / "blob"
    with pytest.raises(DigestMismatchError) as e:
        run(plain(proxy.host), lambda c: c.fetch_blob(proxied, digest, size, str(dest)))
    assert not dest.exists()
    msg = str(e.value)
    assert f"blob {digest} of {proxied.reference}: got sha256:" in msg
    assert f"({size} bytes), want {digest}" in msg
    assert isinstance(e.value, RegistryError)


def test_wrong_size_is_a_digest_mismatch(registry, tmp_path):
    resolved, digest, size = busybox_layer(registry)
    dest = tmp_path / "blob"
    with pytest.raises(DigestMismatchError):
        run(plain(registry.host), lambda c: c.fetch_blob(resolved, digest, size - 10, str(dest)))
    assert not dest.exists()


def test_redirects_are_followed_without_the_credentials(tls_registry, proxies, tmp_path):
    hosts = {tls_registry.host: HostConfig(ca_file=tls_registry.ca_file)}

    async def first(c):
        r = await c.resolve(ref_to(tls_registry, "busybox"), ALICE)
        m = await image_manifest(c, r, ALICE)
        return r, m.layers[0]

    resolved, layer = run(hosts, first)
    dest = str(tmp_path / "reference")
    run(hosts, lambda c: c.fetch_blob(resolved, layer.digest, layer.size, dest, ALICE))
    with open(dest, "rb") as f:
        data = f.read()

    storage = proxies(None, hook=lambda req, fwd: Reply(200, [("Content-Type", "application/octet-stream")], data))

    def redirect_blobs(req, forward):
        if "/blobs/" in req.path and req.header("Authorization"):
            return Reply(307, [("Location", f"{storage.url}/store/{layer.digest}?sig=x")])
        return forward()

    front = proxies(tls_registry.url, ca_file=tls_registry.ca_file, hook=redirect_blobs)
    out = tmp_path / "blob"
    run(plain(front.host), lambda c: c.fetch_blob(via(front, resolved), layer.digest, layer.size, str(out), ALICE))
    assert out.read_bytes() == data
    assert any(r.header("Authorization") for r in front.blob_requests())
    (got,) = storage.requests
    assert got.path == f"/store/{layer.digest}?sig=x"
    assert got.header("Authorization") is None


# -- TLS and Basic auth -------------------------------------------------------------


def test_tls_with_the_ca_file(tls_registry):
    r = resolve(tls_registry, "busybox", {tls_registry.host: HostConfig(ca_file=tls_registry.ca_file)}, ALICE)
    assert r.endpoint == tls_registry.url and r.digest == sha256(r.data)


def test_tls_without_the_ca_fails_verification(tls_registry):
    with pytest.raises(RegistryError) as e:
        resolve(tls_registry, "busybox", {tls_registry.host: HostConfig()}, ALICE, max_retries=0)
    msg = str(e.value)
    assert "CERTIFICATE_VERIFY_FAILED" in msg and "ca_file" in msg
    assert e.value.status is None


def test_tls_skip_verify(tls_registry):
    r = resolve(tls_registry, "busybox", {tls_registry.host: HostConfig(skip_verify=True)}, ALICE)
    assert r.digest == sha256(r.data)


def test_missing_ca_file_is_named(tls_registry, tmp_path):
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(RegistryError, match="nope.pem"):
        resolve(tls_registry, "busybox", {tls_registry.host: HostConfig(ca_file=missing)}, ALICE)


def test_basic_auth(tls_registry, tmp_path):
    hosts = {tls_registry.host: HostConfig(ca_file=tls_registry.ca_file)}
    with pytest.raises(RegistryError) as e:
        resolve(tls_registry, "busybox", hosts)
    assert e.value.status == 401
    assert "401 Unauthorized: UNAUTHORIZED authentication required" in str(e.value)
    assert "none were given" in str(e.value)

    with pytest.raises(RegistryError) as e:
        resolve(tls_registry, "busybox", hosts, Credentials("alice", "looking-glass"))
    assert e.value.status == 401 and "refused" in str(e.value)

    auth = base64.b64encode(b"alice:wonderland").decode()
    for creds in (ALICE, Credentials(auth=auth)):

        async def go(c, creds=creds):
            r = await c.resolve(ref_to(tls_registry, "busybox"), creds)
            m = await image_manifest(c, r, creds)
            dest = str(tmp_path / f"config-{id(creds)}")
            await c.fetch_blob(r, m.config.digest, m.config.size, dest, creds)
            return os.path.getsize(dest) == m.config.size

        assert run(hosts, go)


# -- token auth --------------------------------------------------------------------


def pull_config(reg, name, creds, tmp_path) -> int:
    """Resolve, pick the manifest, and fetch the config blob: the token dance for each kind of request."""

    async def go(c):
        r = await c.resolve(ref_to(reg, name), creds)
        m = await image_manifest(c, r, creds)
        dest = str(tmp_path / "config")
        await c.fetch_blob(r, m.config.digest, m.config.size, dest, creds)
        return os.path.getsize(dest)

    return run(plain(reg.host), go)


def token_requests(reg, since: int = 0):
    return reg.token_server.requests[since:]


def test_token_anonymous_public(token_registry, tmp_path):
    before = len(token_requests(token_registry))
    assert pull_config(token_registry, "public/busybox", None, tmp_path) > 0
    (req,) = token_requests(token_registry, before)
    assert (req.grant, req.user, req.status) == ("anonymous", None, 200)
    assert req.scopes == ["repository:public/busybox:pull"]


def test_token_private_needs_credentials(token_registry, tmp_path):
    with pytest.raises(RegistryError) as e:
        pull_config(token_registry, "private/busybox", None, tmp_path)
    assert e.value.status == 401
    assert f"token server {token_registry.token_server.url} answered 401" in str(e.value)
    assert "authentication required for repository private/busybox" in str(e.value)

    before = len(token_requests(token_registry))
    assert pull_config(token_registry, "private/busybox", ALICE, tmp_path) > 0
    (req,) = token_requests(token_registry, before)
    assert (req.method, req.grant, req.user) == ("GET", "basic", "alice")


def test_token_wrong_password_carries_the_token_servers_words(token_registry, tmp_path):
    with pytest.raises(RegistryError) as e:
        pull_config(token_registry, "private/busybox", Credentials("alice", "looking-glass"), tmp_path)
    assert e.value.status == 401
    assert "wrong user name or password" in str(e.value)


def test_token_identity_token(token_registry, tmp_path):
    before = len(token_requests(token_registry))
    creds = Credentials(identity_token=token_registry.refresh_token)
    assert pull_config(token_registry, "private/busybox", creds, tmp_path) > 0
    (req,) = token_requests(token_registry, before)
    assert (req.method, req.grant, req.user) == ("POST", "refresh_token", "alice")

    with pytest.raises(RegistryError, match="refused the refresh token"):
        pull_config(token_registry, "private/busybox", Credentials(identity_token="forged"), tmp_path)


def test_registry_token_is_used_as_it_is(token_registry, tmp_path):
    status, body = token_registry.token_server.answer(
        "GET",
        {"service": [token_registry.token_server.service], "scope": ["repository:private/busybox:pull"]},
        ALICE_PAIR,
    )
    assert status == 200
    before = len(token_requests(token_registry))
    creds = Credentials(registry_token=body["token"])
    assert pull_config(token_registry, "private/busybox", creds, tmp_path) > 0
    assert token_requests(token_registry, before) == []


def test_concurrent_requests_share_one_token_fetch(token_registry, tmp_path):
    before = len(token_requests(token_registry))

    async def go(c):
        ref = ref_to(token_registry, "private/busybox")
        # All four meet the 401 together, before any token is cached.
        results = await asyncio.gather(*(c.resolve(ref, ALICE) for _ in range(4)))
        m = await image_manifest(c, results[0], ALICE)
        blobs = [m.config, *m.layers]
        await asyncio.gather(
            *(c.fetch_blob(results[0], d.digest, d.size, str(tmp_path / f"b{i}"), ALICE) for i, d in enumerate(blobs))
        )
        return results

    results = run(plain(token_registry.host), go)
    assert len({r.digest for r in results}) == 1
    assert len(token_requests(token_registry, before)) == 1


# -- mirrors ----------------------------------------------------------------------


def test_dead_mirror_then_a_working_one(registry, proxies):
    dead = f"http://127.0.0.1:{closed_port()}"
    upstream = f"127.0.0.1:{closed_port()}"
    hosts = {upstream: HostConfig(mirrors=[dead, registry.url], insecure=True)}
    r = run(hosts, lambda c: c.resolve(parse_reference(f"{upstream}/busybox")))
    assert r.endpoint == registry.url
    assert r.digest == resolve(registry, "busybox").digest


def test_blobs_come_from_the_endpoint_that_resolved(registry, proxies, tmp_path):
    mirror = proxies(registry.url)
    hosts = {registry.host: HostConfig(mirrors=[mirror.url], insecure=True)}
    dest = str(tmp_path / "blob")

    async def go(c):
        r = await c.resolve(ref_to(registry, "busybox"))
        m = await image_manifest(c, r)
        await c.fetch_blob(r, m.layers[0].digest, m.layers[0].size, dest)
        return r

    r = run(hosts, go)
    assert r.endpoint == mirror.url
    assert len(mirror.blob_requests()) == 1


def test_mirror_without_the_image_falls_through_to_upstream(registry, proxies):
    empty = proxies(
        registry.url,
        hook=lambda req, fwd: Reply(
            404, [], b'{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}'
        ),
    )
    hosts = {registry.host: HostConfig(mirrors=[empty.url], insecure=True)}
    r = run(hosts, lambda c: c.resolve(ref_to(registry, "busybox")))
    assert r.endpoint == registry.url
    assert len(empty.requests) == 1  # a mirror gets one try


def test_every_endpoint_failing_names_them_all(registry, proxies):
    dead = f"http://127.0.0.1:{closed_port()}"
    hosts = {registry.host: HostConfig(mirrors=[dead], insecure=True)}
    with pytest.raises(RegistryError) as e:
        run(hosts, lambda c: c.resolve(ref_to(registry, "nope")))
    msg = str(e.value)
    assert e.value.status == 404
    assert msg.startswith(f"pull {registry.host}/nope:latest: 404 Not Found: MANIFEST_UNKNOWN")
    assert f"also tried {dead} said: cannot reach {dead}" in msg


def test_mirror_tls_settings_come_from_its_own_host_entry(registry, tls_registry):
    hosts = {
        "mirrored.example": HostConfig(mirrors=[tls_registry.url]),
        tls_registry.host: HostConfig(ca_file=tls_registry.ca_file),
    }
    r = run(hosts, lambda c: c.resolve(parse_reference("mirrored.example/busybox"), ALICE), max_retries=0)
    assert r.endpoint == tls_registry.url


def test_bad_digest_is_refused_before_any_request(registry, tmp_path):
    resolved = Resolved(ref_to(registry, "busybox"), f"http://127.0.0.1:{closed_port()}", "", "", b"")
    for bad in ("sha256:abc", "sha512:" + "a" * 128, "sha256:" + "A" * 64, "sha256:../../etc/passwd"):
        with pytest.raises(RegistryError, match="want a sha256 digest"):
            run({}, lambda c, bad=bad: c.fetch_blob(resolved, bad, 1, str(tmp_path / "b")))
        with pytest.raises(RegistryError, match="want a sha256 digest"):
            run({}, lambda c, bad=bad: c.fetch_manifest(resolved, bad))
    assert not (tmp_path / "b").exists()
