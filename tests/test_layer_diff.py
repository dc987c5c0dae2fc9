"""Layers written from directories (image/layer_diff.py): an overlayfs upper dir made by a real
mount becomes the exact tar expected, and image/unpack.py turns that tar back into the same upper
dir; whole trees are written without following or opening what they must not; the limits."""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import stat
import subprocess
import tarfile
import tempfile

import pytest

from image.layer_diff import LayerTooLarge, write_layer, write_tree
from image.unpack import unpack_layer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: overlayfs mounts, whiteouts, owners")

LAYER = "application/vnd.oci.image.layer.v1.tar"
PLENTY = 1 << 30


@pytest.fixture
def work():
    d = tempfile.mkdtemp(prefix="layer-diff-")
    try:
        yield d
    finally:
        shutil.rmtree(d)


@contextlib.contextmanager
def overlay(base):
    dirs = {k: os.path.join(base, k) for k in ("lower", "upper", "work", "merged")}
    for d in dirs.values():
        os.mkdir(d)
    with open(os.path.join(dirs["lower"], "keep"), "w") as f:
        f.write("kept\n")
    for name in ("modify", "delete", "mode.sh"):
        with open(os.path.join(dirs["lower"], name), "w") as f:
            f.write(f"{name} in the lower dir\n")
    os.makedirs(os.path.join(dirs["lower"], "olddir", "sub"))
    with open(os.path.join(dirs["lower"], "olddir", "inner"), "w") as f:
        f.write("hidden once the dir is made again\n")
    opts = "lowerdir={lower},upperdir={upper},workdir={work},redirect_dir=off,metacopy=off,index=off".format(**dirs)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, dirs["merged"]], check=True)
    try:
        yield dirs
    finally:
        subprocess.run(["umount", dirs["merged"]], check=True)


def change(m):
    """What a container does to its rootfs: the upper dir records it."""
    def write(rel, data, mode="w"):
        with open(os.path.join(m, rel), mode) as f:
            f.write(data)

    write("new", "added\n")
    os.chown(os.path.join(m, "new"), 1000, 2000)
    write("modify", "modified\n")
    os.unlink(os.path.join(m, "delete"))
    shutil.rmtree(os.path.join(m, "olddir"))
    os.mkdir(os.path.join(m, "olddir"))
    write("olddir/fresh", "in the new dir\n")
    os.chmod(os.path.join(m, "mode.sh"), 0o750)
    os.mkdir(os.path.join(m, "links"))
    os.symlink("/etc/passwd", os.path.join(m, "links", "abs"))
    os.symlink("../../..", os.path.join(m, "links", "up"))
    write("hard1", "twice\n")
    os.link(os.path.join(m, "hard1"), os.path.join(m, "hard2"))
    os.mkfifo(os.path.join(m, "fifo"))
    write("xattr", "with an xattr\n")
    os.setxattr(os.path.join(m, "xattr"), "user.x", b"\x00value\xff")
    write("suid", "#!/bin/sh\n")
    os.chmod(os.path.join(m, "suid"), 0o4755)


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), errors="surrogateescape") as tar:
        return {m.name: m for m in tar.getmembers()}


def layer(upper, max_size=PLENTY) -> bytes:
    out = io.BytesIO()
    write_layer(upper, out, max_size)
    return out.getvalue()


def snapshot(root):
    """What an unpacked layer must reproduce: every entry's kind, mode, owner, content and the xattrs
    that matter (overlayfs' own bookkeeping, such as trusted.overlay.origin, left out)."""
    seen: dict[int, str] = {}
    found = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(top, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            xattrs = {k: os.getxattr(path, k, follow_symlinks=False) for k in os.listxattr(path, follow_symlinks=False)
                      if not k.startswith("trusted.overlay.") or k == "trusted.overlay.opaque"}
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    what: object = (f.read(), seen.setdefault(st.st_ino, rel))
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            else:
                what = st.st_rdev
            mtime = None if stat.S_ISCHR(st.st_mode) else int(st.st_mtime)  # whiteouts are made anew
            found[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, mtime, what, xattrs)
    return found


def test_upper_dir_becomes_the_layer_and_unpacks_to_the_same_dir(work):
    with overlay(work) as dirs:
        change(dirs["merged"])
    upper = dirs["upper"]
    assert os.getxattr(os.path.join(upper, "olddir"), "trusted.overlay.opaque") == b"y"
    assert os.lstat(os.path.join(upper, "delete")).st_rdev == 0

    data = layer(upper)
    assert data == layer(upper)
    got = members(data)
    assert list(got) == [".wh.delete", "fifo", "hard1", "hard2", "links", "links/abs", "links/up", "mode.sh",
                         "modify", "new", "olddir", "olddir/.wh..wh..opq", "olddir/fresh", "suid", "xattr"]
    kinds = {name: m.type for name, m in got.items()}
    assert kinds == {
        ".wh.delete": tarfile.REGTYPE, "fifo": tarfile.FIFOTYPE, "hard1": tarfile.REGTYPE, "hard2": tarfile.LNKTYPE,
        "links": tarfile.DIRTYPE, "links/abs": tarfile.SYMTYPE, "links/up": tarfile.SYMTYPE,
        "mode.sh": tarfile.REGTYPE, "modify": tarfile.REGTYPE, "new": tarfile.REGTYPE, "olddir": tarfile.DIRTYPE,
        "olddir/.wh..wh..opq": tarfile.REGTYPE, "olddir/fresh": tarfile.REGTYPE, "suid": tarfile.REGTYPE,
        "xattr": tarfile.REGTYPE,
    }
    assert got[".wh.delete"].size == got["olddir/.wh..wh..opq"].size == 0
    assert (got["links/abs"].linkname, got["links/up"].linkname, got["hard2"].linkname) == \
        ("/etc/passwd", "../../..", "hard1")
    assert (got["mode.sh"].mode, got["suid"].mode, got["new"].uid, got["new"].gid) == (0o750, 0o4755, 1000, 2000)
    assert all(m.uname == m.gname == "" for m in got.values())
    assert got["modify"].size == len("modified\n")
    assert got["xattr"].pax_headers["SCHILY.xattr.user.x"].encode("utf-8", "surrogateescape") == b"\x00value\xff"
    overlay_keys = [k for m in got.values() for k in m.pax_headers if ".overlay." in k]
    assert overlay_keys == []

    blob, dest = os.path.join(work, "layer.tar"), os.path.join(work, "dest")
    with open(blob, "wb") as f:
        f.write(data)
    os.mkdir(dest)
    unpack_layer(blob, LAYER, dest)
    assert snapshot(dest) == snapshot(upper)


def test_what_a_layer_can_not_hold_is_refused(work):
    upper = os.path.join(work, "upper")
    os.makedirs(os.path.join(upper, "moved"))
    with open(os.path.join(upper, "meta"), "w"):
        pass
    os.setxattr(os.path.join(upper, "moved"), "trusted.overlay.redirect", b"/old")
    with pytest.raises(ValueError, match="'moved'.*redirect"):
        layer(upper)
    os.rmdir(os.path.join(upper, "moved"))
    os.setxattr(os.path.join(upper, "meta"), "trusted.overlay.metacopy", b"")
    with pytest.raises(ValueError, match="'meta'.*metacopy"):
        layer(upper)
    os.unlink(os.path.join(upper, "meta"))
    with open(os.path.join(upper, ".wh.name"), "w"):  # a file's own name, not a whiteout
        pass
    with pytest.raises(ValueError, match="'.wh.name'.*whiteout"):
        layer(upper)


@pytest.mark.timeout(20)  # opening the FIFO would wait for a writer
def test_tree_is_written_without_following_or_opening(work):
    root = os.path.join(work, "rootfs")
    os.makedirs(os.path.join(root, "dir"))
    os.symlink("/", os.path.join(root, "dir", "to-root"))
    os.mkfifo(os.path.join(root, "fifo"))
    os.mknod(os.path.join(root, "whiteout-like"), stat.S_IFCHR | 0o600, 0)
    os.mknod(os.path.join(root, "null"), stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(os.path.join(root, "null"), 0o666)  # never opened: chmod(2) works on the name
    with open(os.fsencode(os.path.join(root, "caf\udce9")), "w") as f:
        f.write("not UTF-8\n")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(os.path.join(root, "sock"))
        out = io.BytesIO()
        stats = write_tree(root, out, PLENTY)
    got = members(out.getvalue())
    assert list(got) == ["caf\udce9", "dir", "dir/to-root", "fifo", "null", "whiteout-like"]
    assert (stats.entries, stats.size) == (6, len("not UTF-8\n"))
    assert (got["dir/to-root"].type, got["dir/to-root"].linkname) == (tarfile.SYMTYPE, "/")
    assert got["fifo"].type == tarfile.FIFOTYPE
    assert (got["whiteout-like"].type, got["whiteout-like"].devmajor, got["whiteout-like"].devminor) == \
        (tarfile.CHRTYPE, 0, 0)
    assert (got["null"].type, got["null"].devmajor, got["null"].devminor, got["null"].mode) == \
        (tarfile.CHRTYPE, 1, 3, 0o666)


def test_data_past_the_limit_is_refused_before_it_is_written(work):
    for name in ("a", "b"):
        with open(os.path.join(work, name), "wb") as f:
            f.write(b"x" * 600)
    assert write_tree(work, io.BytesIO(), 1200).size == 1200
    out = io.BytesIO()
    with pytest.raises(LayerTooLarge, match="1199 bytes at 'b'"):
        write_tree(work, out, 1199)
    assert out.getvalue().count(b"x" * 600) == 1


def test_depth_is_bounded(work):
    os.makedirs(os.path.join(work, *["d"] * 256))
    assert write_tree(work, io.BytesIO(), PLENTY).entries == 256
    os.mkdir(os.path.join(work, *["d"] * 257))
    with pytest.raises(ValueError, match="deeper than 256"):
        write_tree(work, io.BytesIO(), PLENTY)


def test_output_is_the_same_for_the_same_tree(work):
    for rel in ("b/z", "a", "b/a", "B", "c/d/e"):
        path = os.path.join(work, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(rel)
    os.setxattr(os.path.join(work, "a"), "user.two", b"2")
    os.setxattr(os.path.join(work, "a"), "user.one", b"1")
    runs = []
    for _ in range(2):
        out = io.BytesIO()
        write_tree(work, out, PLENTY)
        runs.append(out.getvalue())
        os.utime(os.path.join(work, "a"), ns=(0, os.lstat(os.path.join(work, "a")).st_mtime_ns))  # atime only
    assert runs[0] == runs[1]
    assert list(members(runs[0])) == ["B", "a", "b", "b/a", "b/z", "c", "c/d", "c/d/e"]
