"""The `cricket` CLI against a real cricketd: images, archives (checked with skopeo), the node."""
from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys

import pytest

from tests.daemon import registry_config
from tests.fixtures.layers import realpath_escape
from tests.pods import Pods, serving


@pytest.fixture(scope="module")
def daemon(registry, token_registry, tmp_path_factory):
    with serving(str(tmp_path_factory.mktemp("cricketd")), registry_config(registry, token_registry)) as d:
        yield d


def cricket(daemon, *args, check=True, env=None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "cli.main", "--socket", daemon.socket, *args],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})
    if check:
        assert done.returncode == 0, done.stderr
    return done


def as_json(daemon, *args, env=None):
    return json.loads(cricket(daemon, "-o", "json", *args, env=env).stdout)


def test_pull_images_tag_history_inspect_rmi(daemon, registry, test_images):
    info = test_images["shared-a"]
    ref = info.reference(registry)
    out = cricket(daemon, "pull", ref).stdout
    assert f"Pulled {registry.host}/{info.repo}@{info.manifest_digest}" in out
    assert sum("Downloaded" in line or "Already present" in line for line in out.splitlines()) == 3
    table = cricket(daemon, "images").stdout.splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "SIZE"]
    assert any(line.split()[:3] == [f"{registry.host}/{info.repo}", info.tag, info.config_digest[7:19]]
               for line in table[1:])
    cricket(daemon, "tag", ref, "localhost/renamed:v2")
    [image] = [i for i in as_json(daemon, "images") if i["id"] == info.config_digest]
    assert "localhost/renamed:v2" in image["repoTags"]
    history = as_json(daemon, "history", "localhost/renamed:v2")
    layers = [h for h in history if not h["emptyLayer"]]
    assert [h["layer"] for h in reversed(layers)] == list(info.diff_ids) and all(h["size"] > 0 for h in layers)
    [inspected] = as_json(daemon, "inspect", "localhost/renamed:v2")
    assert inspected["id"] == info.config_digest and inspected["manifestDigest"] == info.manifest_digest
    cricket(daemon, "rmi", "localhost/renamed:v2", ref)
    assert not [i for i in as_json(daemon, "images") if i["id"] == info.config_digest]


def test_pull_progress_on_a_terminal(daemon, registry, test_images):
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "--socket", daemon.socket, "pull",
                             test_images["shared-b"].reference(registry)],
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    seen = b""
    try:
        while select.select([master], [], [], 60)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the command is done and its terminal closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        assert proc.wait(30) == 0, seen
    assert b"\x1b[2K" in seen and b"\x1b[" + b"2F" in seen  # lines drawn, then redrawn in place
    assert b"Downloaded" in seen and b"Pulled " in seen


def test_save_and_load_both_formats_round_trip_and_skopeo_agrees(daemon, registry, test_images, tmp_path):
    info = test_images["zstd"]  # layers zstd-compressed: a docker-archive needs them plain
    ref = info.reference(registry)
    cricket(daemon, "pull", ref)
    docker_tar, oci_tar = str(tmp_path / "docker.tar"), str(tmp_path / "oci.tar")
    cricket(daemon, "save", "-o", docker_tar, ref)
    cricket(daemon, "save", "--format", "oci", "-o", oci_tar, ref)

    # skopeo reads what we write: the same config (image ID) and layers (diff IDs)...
    for transport, path in (("docker-archive", docker_tar), ("oci-archive", oci_tar)):
        seen = json.loads(subprocess.run(["skopeo", "inspect", "--config", f"{transport}:{path}"],
                                         capture_output=True, text=True, check=True).stdout)
        assert seen["rootfs"]["diff_ids"] == list(info.diff_ids)
    raw = json.loads(subprocess.run(["skopeo", "inspect", "--raw", f"oci-archive:{oci_tar}"],
                                    capture_output=True, text=True, check=True).stdout)
    assert raw["config"]["digest"] == info.config_digest

    # ...and what we read back is the same image: the OCI archive even with the same manifest.
    for path in (docker_tar, oci_tar):
        cricket(daemon, "rmi", ref)
        assert f"Loaded {ref} ({info.config_digest})" in cricket(daemon, "load", "-i", path).stdout
    [inspected] = as_json(daemon, "inspect", ref)
    assert inspected["id"] == info.config_digest and inspected["manifestDigest"] == info.manifest_digest

    # An archive skopeo wrote loads too (from ours: skopeo 1.9 will not put zstd into a docker-archive).
    theirs = str(tmp_path / "skopeo.tar")
    subprocess.run(["skopeo", "copy", "-q", f"docker-archive:{docker_tar}", f"docker-archive:{theirs}:localhost/sk:1"],
                   check=True)
    assert "Loaded localhost/sk:1" in cricket(daemon, "load", "-i", theirs).stdout
    assert as_json(daemon, "inspect", "localhost/sk:1")[0]["id"] == info.config_digest
    cricket(daemon, "rmi", "localhost/sk:1", ref)


def test_prune_keeps_what_containers_use(daemon, registry, test_images, tmp_path):
    used, unused = test_images["user-uid"], test_images["user-name"]
    for info in (used, unused):
        cricket(daemon, "pull", info.reference(registry))
    pods = Pods(daemon, str(tmp_path / "logs"))
    pod = pods.run_pod()
    cid = pods.run(pod, used.reference(registry), ["sleep", "1000"])
    answer = as_json(daemon, "prune")
    assert unused.config_digest in answer["removed"] and used.config_digest not in answer["removed"]
    assert answer["reclaimed"] > 0
    ids = {i["id"] for i in as_json(daemon, "images")}
    assert used.config_digest in ids and unused.config_digest not in ids
    [container] = as_json(daemon, "ps")
    assert container["id"] == cid and container["state"] == "CONTAINER_RUNNING"
    assert [p["id"] for p in as_json(daemon, "pods")] == [pod]
    pods.remove_all()


def test_info_and_errors(daemon, tmp_path):
    doc = as_json(daemon, "info")
    assert doc["runtime"]["name"] == "cricket" and doc["conditions"]["RuntimeReady"]["status"] is True
    assert doc["storage"]["root"] == daemon.root and doc["socket"] == daemon.socket
    missing = cricket(daemon, "rmi", "no-such-image", check=False)
    assert missing.returncode == 1 and missing.stderr.strip() == "cricket: error: no image 'no-such-image'"
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not an archive\n")
    bad = cricket(daemon, "load", "-i", str(junk), check=False)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "not a readable tar" in bad.stderr
    gone = subprocess.run([sys.executable, "-m", "cli.main", "--socket", str(tmp_path / "none.sock"), "images"],
                          capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1 and gone.stderr.startswith("cricket: error:")


def test_push_then_pull_by_digest(daemon, registry, test_images):
    info = test_images["busybox"]
    cricket(daemon, "pull", info.reference(registry))
    target = f"{registry.host}/pushed/busybox:v1"
    cricket(daemon, "tag", info.reference(registry), target)
    out = cricket(daemon, "push", target).stdout
    # The manifest goes up as stored, so it keeps its digest.
    assert f"Pushed {registry.host}/pushed/busybox@{info.manifest_digest}" in out
    seen = json.loads(subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{target}"],
                                     capture_output=True, text=True, check=True).stdout)
    assert seen["Digest"] == info.manifest_digest
    cricket(daemon, "rmi", target, info.reference(registry))
    pulled = as_json(daemon, "pull", f"{registry.host}/pushed/busybox@{info.manifest_digest}")
    assert pulled["id"] == info.config_digest
    # A name by digest pushes too (every blob is there already: nothing is sent but the manifest).
    again = cricket(daemon, "push", f"{registry.host}/pushed/busybox@{info.manifest_digest}").stdout
    assert "Already present" in again
    cricket(daemon, "rmi", f"{registry.host}/pushed/busybox@{info.manifest_digest}")


def test_login_then_push_with_the_token_flow(daemon, registry, token_registry, test_images, tmp_path):
    env = {"CRICKET_AUTH_FILE": str(tmp_path / "auth" / "auth.json")}
    info = test_images["busybox"]
    cricket(daemon, "pull", info.reference(registry))
    target = f"{token_registry.host}/private/pushed:v1"
    cricket(daemon, "tag", info.reference(registry), target)
    refused = cricket(daemon, "push", target, check=False, env=env)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    cricket(daemon, "login", token_registry.host, "-u", "alice", "-p", "wonderland", env=env)
    assert os.stat(env["CRICKET_AUTH_FILE"]).st_mode & 0o777 == 0o600
    assert f"Pushed {token_registry.host}/private/pushed@{info.manifest_digest}" in \
        cricket(daemon, "push", target, env=env).stdout
    cricket(daemon, "rmi", target)
    assert as_json(daemon, "pull", target, env=env)["id"] == info.config_digest
    cricket(daemon, "logout", token_registry.host, env=env)
    cricket(daemon, "rmi", target, info.reference(registry))


# -- files the CLI writes: nothing planted beside them can redirect or widen them -------------


def offline(*args, env) -> subprocess.CompletedProcess:
    """The CLI for a command that needs no daemon (login, logout)."""
    return subprocess.run([sys.executable, "-m", "cli.main", "--socket", "/nonexistent/cricket.sock", *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={**os.environ, **env})


def mode(path) -> int:
    return os.lstat(path).st_mode & 0o7777


def test_login_ignores_a_tmp_file_planted_with_wide_mode(tmp_path):
    auth = tmp_path / "auth.json"
    planted = tmp_path / "auth.json.tmp"  # where the old code wrote, keeping the file's mode
    planted.write_text("planted\n")
    planted.chmod(0o644)
    done = offline("login", "registry.example", "-u", "alice", "-p", "wonderland", env={"CRICKET_AUTH_FILE": str(auth)})
    assert done.returncode == 0, done.stderr
    assert mode(auth) == 0o600 and not os.path.islink(auth)
    assert json.loads(auth.read_text())["auths"]["registry.example"]["auth"]
    assert planted.read_text() == "planted\n" and mode(planted) == 0o644  # not ours: left alone
    assert sorted(os.listdir(tmp_path)) == ["auth.json", "auth.json.tmp"]  # no temporary file left


def test_login_does_not_write_through_a_planted_symlink(tmp_path):
    auth = tmp_path / "auth.json"
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    victim.chmod(0o644)
    (tmp_path / "auth.json.tmp").symlink_to(victim)
    env = {"CRICKET_AUTH_FILE": str(auth)}
    assert offline("login", "registry.example", "-u", "alice", "-p", "wonderland", env=env).returncode == 0
    assert victim.read_text() == "keep me\n" and mode(victim) == 0o644
    assert mode(auth) == 0o600 and not os.path.islink(auth)
    # A symlink at the file itself is replaced, not written through: the credentials would
    # land in whatever file it names, with that file's mode.
    auth.unlink()
    victim.write_text('{"auths": {}}')
    auth.symlink_to(victim)
    assert offline("login", "registry.example", "-u", "bob", "-p", "builder", env=env).returncode == 0
    assert victim.read_text() == '{"auths": {}}' and not os.path.islink(auth) and mode(auth) == 0o600
    assert offline("logout", "registry.example", env=env).returncode == 0
    assert json.loads(auth.read_text()) == {"auths": {}} and mode(auth) == 0o600


def test_save_does_not_write_through_a_planted_symlink(daemon, registry, test_images, tmp_path):
    ref = test_images["busybox"].reference(registry)
    cricket(daemon, "pull", ref)
    out = tmp_path / "busybox.tar"
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    (tmp_path / "busybox.tar.part").symlink_to(victim)  # where the old code wrote
    cricket(daemon, "save", "-o", str(out), ref)
    assert victim.read_text() == "keep me\n"
    assert not os.path.islink(out) and mode(out) == 0o666 & ~current_umask()
    assert "manifest.json" in subprocess.run(["tar", "tf", str(out)], capture_output=True, text=True).stdout
    assert sorted(os.listdir(tmp_path)) == ["busybox.tar", "busybox.tar.part", "victim"]


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_load_of_an_archive_that_escapes_by_realpath_is_refused(daemon, tmp_path):
    # CVE-2025-4517 against tarfile's "data" filter on this Python: the archive's last file
    # would land three levels above the extraction directory, in the daemon's state dir.
    archive = tmp_path / "escape.tar"
    archive.write_bytes(realpath_escape("../../.."))
    bad = cricket(daemon, "load", "-i", str(archive), check=False)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert "archive member 'a' is a symlink" in bad.stderr and "needs no links" in bad.stderr
    assert not os.path.exists(os.path.join(daemon.state, "pwned"))
    assert os.listdir(os.path.join(daemon.state, "admin")) == []  # the extraction is gone
