"""The fixtures are real: real registries answer, serve the digests built, and enforce their auth."""
from __future__ import annotations

import base64
import concurrent.futures
import email.message
import gzip
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.fixtures import images


def get(url, *, ca_file=None, headers=None, data=None) -> tuple[int, email.message.Message, bytes]:
    req = urllib.request.Request(url, headers=headers or {}, data=data)
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def basic(user, password) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def skopeo_raw(reg, repo, *args) -> subprocess.CompletedProcess:
    tls = ["--cert-dir", reg.cert_dir] if reg.ca_file else ["--tls-verify=false"]
    return subprocess.run(
        ["skopeo", "inspect", "--raw", "--retry-times=0", *tls, *args, f"docker://{reg.host}/{repo}:latest"],
        capture_output=True, timeout=60,
    )


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


ACCEPT = {
    "Accept": ", ".join([images.OCI_MANIFEST, images.OCI_INDEX, images.DOCKER_MANIFEST, images.DOCKER_MANIFEST_LIST])
}


def test_v2_answers(registry, tls_registry, token_registry):
    assert get(registry.url + "/v2/")[0] == 200
    status, headers, _ = get(tls_registry.url + "/v2/", ca_file=tls_registry.ca_file)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ")
    assert get(tls_registry.url + "/v2/", ca_file=tls_registry.ca_file, headers=basic(*tls_registry.creds))[0] == 200
    assert get(tls_registry.url + "/v2/", ca_file=tls_registry.ca_file, headers=basic("alice", "nope"))[0] == 401
    status, headers, _ = get(token_registry.url + "/v2/")
    assert status == 401 and headers["WWW-Authenticate"].startswith(f'Bearer realm="{token_registry.token_url}"')


def test_the_registries_serve_the_digests_built(registry, tls_registry, test_images):
    def check(reg, name):
        out = skopeo_raw(reg, name, *(["--creds", ":".join(reg.creds)] if reg.creds else []))
        assert out.returncode == 0, out.stderr.decode()
        return sha256(out.stdout)

    jobs = [(reg, name) for name in test_images for reg in (registry, tls_registry)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        served = list(pool.map(lambda job: check(*job), jobs))
    assert served == [test_images[name].manifest_digest for _, name in jobs]


def test_blobs_are_served_as_built(registry, test_images):
    for name in ("zstd", "plain", "busybox-docker"):
        info = test_images[name]
        for digest, media_type in zip(info.layers, info.layer_media_types):
            status, _, body = get(f"{registry.url}/v2/{name}/blobs/{digest}")
            assert status == 200 and sha256(body) == digest
            assert media_type.endswith({"zstd": "+zstd", "plain": ".tar", "busybox-docker": ".tar.gzip"}[name])


def test_multiarch_has_three_platforms(registry, test_images):
    for name, media_type in (("multiarch", images.OCI_INDEX), ("multiarch-docker", images.DOCKER_MANIFEST_LIST)):
        status, headers, body = get(f"{registry.url}/v2/{name}/manifests/latest", headers=ACCEPT)
        assert status == 200 and headers["Content-Type"] == media_type
        index = json.loads(body)
        platforms = [
            "/".join(filter(None, (p["os"], p["architecture"], p.get("variant"))))
            for p in (m["platform"] for m in index["manifests"])
        ]
        assert platforms == ["linux/amd64", "linux/arm64/v8", "linux/arm/v7"]
        info = test_images[name]
        assert sorted(info.manifests) == sorted(platforms)
        arm64 = info.manifests["linux/arm64/v8"]
        status, _, body = get(f"{registry.url}/v2/{name}/blobs/{arm64.config_digest}")
        assert json.loads(body)["architecture"] == "arm64" and json.loads(body)["variant"] == "v8"
        assert arm64.files["platform"].sha256 == hashlib.sha256(b"linux/arm64/v8\n").hexdigest()


def token(reg, scope, headers=None, **params) -> tuple[int, dict]:
    query = urllib.parse.urlencode({"service": reg.token_server.service, "scope": scope, **params})
    status, _, body = get(f"{reg.token_url}?{query}", headers=headers)
    return status, json.loads(body)


def manifest_with(reg, repo, access_token) -> tuple[int, bytes]:
    headers = {**ACCEPT, "Authorization": f"Bearer {access_token}"}
    status, _, body = get(f"{reg.url}/v2/{repo}/manifests/latest", headers=headers)
    return status, body


def test_token_flow(token_registry, test_images):
    reg, want = token_registry, test_images["busybox"].manifest_digest
    status, headers, _ = get(f"{reg.url}/v2/private/busybox/manifests/latest", headers=ACCEPT)
    assert status == 401
    assert headers["WWW-Authenticate"] == (
        f'Bearer realm="{reg.token_url}",service="{reg.token_server.service}",scope="repository:private/busybox:pull"'
    )

    private = "repository:private/busybox:pull"
    assert token(reg, private)[0] == 401
    assert token(reg, private, basic("alice", "looking-glass"))[0] == 401
    status, body = token(reg, private, basic(*reg.creds), offline_token="true")
    assert status == 200 and body["refresh_token"]
    status, manifest = manifest_with(reg, "private/busybox", body["token"])
    assert status == 200 and sha256(manifest) == want
    # A token for one repository opens no other.
    assert manifest_with(reg, "public/busybox", body["token"])[0] == 401

    status, body = token(reg, "repository:public/busybox:pull")
    assert status == 200 and manifest_with(reg, "public/busybox", body["token"])[0] == 200

    def post(**form):
        form = {"service": reg.token_server.service, "scope": private, "client_id": "cricket-tests", **form}
        status, _, body = get(reg.token_url, data=urllib.parse.urlencode(form).encode())
        return status, json.loads(body)

    for form in ({"grant_type": "refresh_token", "refresh_token": reg.refresh_token},
                 {"grant_type": "password", "username": "alice", "password": "wonderland"}):
        status, body = post(**form)
        assert status == 200 and manifest_with(reg, "private/busybox", body["access_token"])[0] == 200
    assert post(grant_type="refresh_token", refresh_token="forged")[0] == 401
    assert post(grant_type="password", username="alice", password="looking-glass")[0] == 401

    pushes = [r for r in reg.token_server.requests if "push" in ",".join(r.scopes)]
    assert pushes and all(r.grant == "basic" and r.user == "alice" for r in pushes if r.status == 200)


def test_skopeo_pulls_private_only_with_credentials(token_registry):
    denied = skopeo_raw(token_registry, "private/busybox", "--no-creds")
    assert denied.returncode != 0 and b"unauthorized" in denied.stderr.lower()
    assert skopeo_raw(token_registry, "private/busybox", "--creds", "alice:wonderland").returncode == 0
    assert skopeo_raw(token_registry, "public/busybox", "--no-creds").returncode == 0


def test_images_are_deterministic(test_images, tmp_path):
    again = images.build_images(str(tmp_path))
    assert {n: i.manifest_digest for n, i in again.items()} == {n: i.manifest_digest for n, i in test_images.items()}


@pytest.mark.skipif(os.geteuid() != 0, reason="extracting device nodes and owners needs root")
@pytest.mark.skipif(not shutil.which("tar"), reason="needs GNU tar as the independent unpacker")
def test_special_files_are_described_as_gnu_tar_unpacks_them(test_images, tmp_path):
    # `special` has no whiteouts, so GNU tar extracting its layers in order is a correct unpack.
    info, rootfs = test_images["special"], tmp_path / "rootfs"
    rootfs.mkdir()
    for digest in info.layers:
        with open(os.path.join(test_images.layout, "blobs", "sha256", digest[7:]), "rb") as f:
            tar = gzip.decompress(f.read())
        subprocess.run(["tar", "-x", "-p", "--same-owner", "--numeric-owner", "--xattrs", "--xattrs-include=user.*",
                        "-C", str(rootfs)], input=tar, check=True)
    assert images.rootfs_differences(str(rootfs), info) == []
    info_files = set(info.files)
    assert {"special/hardlink-b", "special/abs-link", "dev/null-copy", "special/fifo", "special/xattr"} <= info_files
