"""`cricket build` against Debian's `buildah bud`: the same Dockerfiles, the same base image from
the test registry; the images' file trees and configs must match.

Each image is saved as an OCI archive, its layers unpacked one by one and stacked as a real
overlay, and the merged tree walked: paths, kinds, modes, owners, contents, link targets.
Where the two builders differ by design, the difference is named below and left out.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import textwrap

import pytest

from image.unpack import unpack_layer
from linux import libc
from tests.conftest import require
from tests.test_build import cricket, daemon  # noqa: F401  (the module's cricketd)

# buildah leaves the mount points it made for a RUN step (an empty /etc/hosts, /etc/resolv.conf,
# /proc, /dev, /sys, /run ...) in the image when the base lacks them; Cricket leaves out those
# the step made and did not write to, as BuildKit does.
_BUILDAH_STUBS = {"etc/hosts", "etc/resolv.conf", "etc/hostname", "proc", "sys", "dev", "run", "run/.containerenv"}
# Config fields compared; others (created times, history, buildah's own labels) differ by design.
_FIELDS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Volumes", "Labels", "StopSignal")

DOCKERFILES = {
    "every-instruction": """\
        FROM {base} AS tools
        RUN mkdir -p /out/sub && echo tool > /out/sub/tool && chmod 0750 /out/sub && ln -s sub/tool /out/link

        FROM {base}
        ARG VERSION=1.0
        ARG FLAVOUR
        ENV APP_HOME=/srv/app PATH=/usr/local/bin:/usr/bin:/bin \\
            QUOTED="two words"
        LABEL org.example.version=$VERSION org.example.flavour="${{FLAVOUR:-plain}}"
        WORKDIR $APP_HOME
        COPY --chown=1000:1000 files/ ./files/
        COPY single.txt renamed.txt
        COPY *.cfg conf/
        ADD bundle.tar.gz /opt/
        COPY --from=tools /out/ /tools/
        RUN rm -f /etc/group && rm -rf /usr/share && mkdir -p /usr/share/fresh && echo $VERSION > /version \\
            && chmod 4755 /version && ln -sf /version /version-link && mkdir -p /var/empty-dir
        USER 1000:1000
        EXPOSE 80 443/tcp 53/udp
        VOLUME ["/data", "/cache"]
        STOPSIGNAL SIGTERM
        ENTRYPOINT ["/bin/sh", "-c"]
        CMD ["echo hello"]
        """,
    "scratch-and-shell": """\
        FROM {base} AS build
        SHELL ["/bin/sh", "-e", "-c"]
        RUN echo one > /one; echo two > /two
        FROM scratch
        COPY --from=build /one /two /bin/busybox /
        WORKDIR /work
        ENV A=1
        ENV B=$A-2
        CMD ["/busybox", "cat", "/one"]
        """,
}


def _context(tmp_path) -> str:
    root = tmp_path / "context"
    (root / "files" / "nested").mkdir(parents=True)
    (root / "files" / "a.txt").write_text("a\n")
    (root / "files" / "nested" / "b.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "files" / "nested" / "b.sh", 0o755)
    (root / "single.txt").write_text("single\n")
    (root / "one.cfg").write_text("1\n")
    (root / "two.cfg").write_text("2\n")
    bundle = io.BytesIO()
    with tarfile.open(fileobj=bundle, mode="w:gz") as tar:
        for name, data, mode in (("pkg/bin/tool", b"#!/bin/sh\n", 0o755), ("pkg/etc/conf", b"x=1\n", 0o640)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), mode, 5, 6
            tar.addfile(info, io.BytesIO(data))
    (root / "bundle.tar.gz").write_bytes(bundle.getvalue())
    return str(root)


@pytest.fixture(scope="module")
def buildah(tmp_path_factory):
    require("buildah")
    top = tmp_path_factory.mktemp("buildah")
    args = ["buildah", "--root", str(top / "root"), "--runroot", str(top / "run"), "--storage-driver", "vfs"]
    yield args
    subprocess.run([*args, "rm", "--all"], capture_output=True, timeout=120)
    subprocess.run([*args, "rmi", "--all", "--force"], capture_output=True, timeout=120)
    shutil.rmtree(top, ignore_errors=True)


def _layers_of(archive: str, work: str) -> tuple[dict, list[str]]:
    """An OCI archive's image config and its layers unpacked, bottom first."""
    root = os.path.join(work, "archive")
    os.makedirs(root)
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")

    def blob(digest: str) -> str:
        return os.path.join(root, "blobs", *digest.split(":"))

    with open(os.path.join(root, "index.json")) as f:
        manifest_digest = json.load(f)["manifests"][0]["digest"]
    with open(blob(manifest_digest)) as f:
        manifest = json.load(f)
    with open(blob(manifest["config"]["digest"])) as f:
        config = json.load(f)
    dirs = []
    for i, layer in enumerate(manifest["layers"]):
        d = os.path.join(work, f"layer{i}")
        os.mkdir(d)
        unpack_layer(blob(layer["digest"]), layer["mediaType"], d)
        dirs.append(d)
    return config, dirs


def _tree(layers: list[str], work: str) -> dict[str, tuple]:
    """The merged file tree of the layers, as a real overlay shows it."""
    empty = os.path.join(work, "empty")
    merged = os.path.join(work, "merged")
    os.makedirs(empty)
    os.makedirs(merged)
    libc.mount("overlay", merged, "overlay", libc.MS_RDONLY, "lowerdir=" + ":".join([*reversed(layers), empty]))
    try:
        out = {}
        for top, dirs, files in os.walk(merged):
            for name in dirs + files:
                path = os.path.join(top, name)
                st = os.lstat(path)
                rel = os.path.relpath(path, merged)
                what: tuple = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
                if stat.S_ISLNK(st.st_mode):
                    what += (os.readlink(path),)
                elif stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as f:
                        what += (hashlib.sha256(f.read()).hexdigest(),)
                out[rel] = what
        return out
    finally:
        libc.umount(merged, libc.MNT_DETACH)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_cricket_build_matches_buildah(name, daemon, buildah, registry, test_images, tmp_path):  # noqa: F811
    base = test_images["busybox"].reference(registry)
    ctx = _context(tmp_path)
    dockerfile = os.path.join(ctx, "Dockerfile")
    with open(dockerfile, "w") as f:
        f.write(textwrap.dedent(DOCKERFILES[name]).format(base=base))
    tag = f"localhost/differential-{name}:1"
    cricket(daemon, "build", "--no-cache", "-t", tag, "--build-arg", "FLAVOUR=spicy", ctx)
    ours = str(tmp_path / "cricket.tar")
    cricket(daemon, "save", "--format", "oci", "-o", ours, tag)

    theirs = str(tmp_path / "buildah.tar")
    done = subprocess.run([*buildah, "bud", "--isolation", "chroot", "--network", "host", "--tls-verify=false",
                           "--layers=false", "--build-arg", "FLAVOUR=spicy", "-t", tag, "-f", dockerfile, ctx],
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    pushed = subprocess.run([*buildah, "push", tag, f"oci-archive:{theirs}"], capture_output=True, text=True,
                            timeout=300)
    assert pushed.returncode == 0, pushed.stderr

    our_config, our_layers = _layers_of(ours, str(tmp_path / "ours"))
    their_config, their_layers = _layers_of(theirs, str(tmp_path / "theirs"))
    for field in _FIELDS:
        ours_value = our_config["config"].get(field) or None
        theirs_value = their_config["config"].get(field) or None
        if field == "Labels" and theirs_value:
            theirs_value = {k: v for k, v in theirs_value.items() if not k.startswith("io.buildah.")} or None
        assert ours_value == theirs_value, f"{field}: cricket {ours_value!r}, buildah {theirs_value!r}"

    our_tree = _tree(our_layers, str(tmp_path / "ours"))
    their_tree = _tree(their_layers, str(tmp_path / "theirs"))
    base_tree = set(our_tree) & set(their_tree)
    stubs = {p for p in set(their_tree) - set(our_tree) if p in _BUILDAH_STUBS}
    assert set(our_tree) == set(their_tree) - stubs, (sorted(set(our_tree) - set(their_tree)),
                                                       sorted(set(their_tree) - set(our_tree) - stubs))
    differ = {p: (our_tree[p], their_tree[p]) for p in base_tree if our_tree[p] != their_tree[p]
              and not stat.S_ISDIR(our_tree[p][0])}
    assert differ == {}
    # Directories: kind, mode and owner, except where buildah made a RUN's mount point inside one.
    dir_differ = {p: (our_tree[p], their_tree[p]) for p in base_tree if our_tree[p] != their_tree[p]
                  and stat.S_ISDIR(our_tree[p][0])}
    assert dir_differ == {}
