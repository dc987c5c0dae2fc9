"""A directory written out as an OCI layer tar: the inverse of image/unpack.py.

An image builder commits what a container changed: the overlayfs upper directory above the
image's layers. write_layer turns that directory into a layer, converting overlayfs' own form
of a change into the OCI form image/unpack.py reads back: a 0:0 character device (a deleted
name) becomes an empty file ``.wh.NAME``, and a directory marked opaque (its lower contents
hidden) gains an empty ``.wh..wh..opq`` as its first child. write_tree writes a whole tree as it
is (a container's merged rootfs, for ``cricket export``).

The tree was written by a container running as root, so it is walked as hostile, as
linux/tree_copy.py walks one: from directory descriptors, never following a symlink (it is
written as a symlink), and never opening anything but a regular file, checked to be the inode
the directory listed, so a FIFO swapped in cannot hang the walk nor a device hand over the
host's disk. What is written is bounded: file data by the caller's limit, checked before a file
is written; directory depth by a fixed limit, so descriptors and recursion are too.

The output is deterministic for the same tree: entries in name order (bytes), directories before
their contents, integer mtimes, numeric owners without names, xattrs in name order.
"""
from __future__ import annotations

import errno
import os
import stat
import tarfile
from dataclasses import dataclass
from typing import BinaryIO

from linux.openat2 import fd_path, reopen_regular

__all__ = ["LayerStats", "LayerTooLarge", "write_layer", "write_tree"]

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
_MAX_DEPTH = 256  # directory levels below the root; each holds one descriptor while it is walked
_NAME_MAX = 255

_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
# overlayfs keeps its bookkeeping in trusted.overlay.*, or user.overlay.* when mounted with
# userxattr; none of it means anything in a layer.
_OVERLAY = ("trusted.overlay.", "user.overlay.")
_DROPPED = "security.selinux"  # the label of the node it is unpacked on decides it, not the image


class LayerTooLarge(Exception):
    """The files' data would pass the caller's limit; the message names the limit and the file."""


@dataclass
class LayerStats:
    size: int  # bytes of file data written
    entries: int  # tar members written


def write_layer(upper: str, out: BinaryIO, max_size: int) -> LayerStats:
    """Write the overlayfs upper directory ``upper`` to ``out`` as an uncompressed OCI layer tar.

    Whiteouts and opaque directories are converted to their OCI form. Raises LayerTooLarge
    when the files hold more than ``max_size`` bytes of data, ValueError naming the path for
    what a layer cannot hold (an overlayfs redirect or metacopy, a name that would read as a
    whiteout), a tree deeper than 256 directories, or one that changed during the walk.
    ``out`` must take whatever it is given on each write (a file, a buffered or hashing writer);
    on an error it holds a partial tar for the caller to discard.
    """
    return _write(upper, out, max_size, layer=True)


def write_tree(root: str, out: BinaryIO, max_size: int) -> LayerStats:
    """Write the tree ``root`` to ``out`` as write_layer does, but every node as itself: a 0:0
    character device stays one. overlayfs' xattrs are left out all the same."""
    return _write(root, out, max_size, layer=False)


def _write(root: str, out: BinaryIO, max_size: int, layer: bool) -> LayerStats:
    walk = _Walk(out, max_size, layer)
    fd = os.open(root, _DIR)
    try:
        walk.directory(fd, "", 0)
    except OSError as e:
        e.add_note(f"while writing {walk.at!r} of {root}")
        raise
    finally:
        os.close(fd)
    walk.tar.close()  # the end-of-archive blocks
    return LayerStats(walk.size, walk.entries)


class _Sink:
    """What tarfile writes to: ``out``, counting. tarfile asks the position once, when it starts;
    the count lets ``out`` be a pipe and pads the archive from its own start."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.pos = 0

    def write(self, data: bytes) -> int:
        self.out.write(data)
        self.pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self.pos


class _Data:
    """A regular file's data for tarfile.addfile, which reads exactly the size in the header:
    a file that ends sooner changed under the walk."""

    def __init__(self, fd: int, path: str):
        self.fd = fd
        self.path = path

    def read(self, n: int = _CHUNK, /) -> bytes:
        parts = []
        while n:
            chunk = os.read(self.fd, n)
            if not chunk:
                raise ValueError(f"{self.path!r} changed during the walk: it is shorter than it was")
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)


class _Walk:
    def __init__(self, out: BinaryIO, max_size: int, layer: bool):
        # typeshed's _Fileobj wants read, seek and close too, which writing never calls.
        self.tar = tarfile.TarFile(fileobj=_Sink(out), mode="w", format=tarfile.PAX_FORMAT,  # type: ignore[arg-type]
                                   copybufsize=_CHUNK)
        self.max_size = max_size
        self.layer = layer
        self.size = 0
        self.entries = 0
        self.links: dict[tuple[int, int], str] = {}  # (dev, ino) of a file with more links -> its first name
        self.at = ""  # the entry being written, for errors

    def add(self, info: tarfile.TarInfo, data: _Data | None = None) -> None:
        self.tar.addfile(info, data)
        # tarfile keeps every member it wrote otherwise (a list typeshed leaves out).
        self.tar.members.clear()  # type: ignore[attr-defined]
        self.entries += 1

    def directory(self, fd: int, prefix: str, depth: int) -> None:
        """Write what directory ``fd`` holds, each name under ``prefix`` ("" or "a/b/")."""
        for name in sorted(os.listdir(fd), key=os.fsencode):
            self.at = path = prefix + name
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            mode = st.st_mode
            if self.layer and name.startswith(_WHITEOUT):
                raise ValueError(f"{path!r} can not be written to a layer: its name would read as a whiteout")
            if stat.S_ISDIR(mode):
                self._directory(fd, name, path, st, depth + 1)
            elif stat.S_ISREG(mode):
                self._file(fd, name, path, st)
            elif self.layer and stat.S_ISCHR(mode) and st.st_rdev == 0:
                if len(os.fsencode(name)) > _NAME_MAX - len(_WHITEOUT):
                    raise ValueError(f"{path!r} is deleted, but its name is too long for a whiteout")
                self.add(_marker(prefix + _WHITEOUT + name, st))
            elif stat.S_ISLNK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                # Never opened: a symlink by its target, a node by its numbers, each header-only.
                info = _info(path, st, _kept(_xattrs(fd_path(fd, name), False)))
                if stat.S_ISLNK(mode):
                    info.linkname = os.readlink(name, dir_fd=fd)
                self.add(info)
            # A socket is left out: what it connected to is not in the tree.

    def _directory(self, parent: int, name: str, path: str, st: os.stat_result, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise ValueError(f"{path!r} is nested deeper than {_MAX_DEPTH} directories")
        fd = _open_same(parent, name, _DIR, st, path)
        try:
            xattrs = _xattrs(fd, True)
            if self.layer and _overlay(xattrs, "redirect"):
                raise ValueError(f"{path!r} is an overlayfs redirect (a renamed directory), which a layer "
                                 "can not hold: mount with redirect_dir=off")
            self.add(_info(path, st, _kept(xattrs)))
            if self.layer and b"y" in _overlay(xattrs, "opaque"):
                self.add(_marker(f"{path}/{_OPAQUE}", st))
            self.directory(fd, path + "/", depth)
        finally:
            os.close(fd)

    def _file(self, parent: int, name: str, path: str, st: os.stat_result) -> None:
        first = self.links.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
        if first is not None:
            info = _info(path, st)
            info.type, info.linkname, info.size = tarfile.LNKTYPE, first, 0
            self.add(info)
            return
        # O_PATH opens nothing; the reopen reads the checked inode and nothing else.
        pfd = _open_same(parent, name, _PATH, st, path)
        try:
            fd = reopen_regular(pfd)
        finally:
            os.close(pfd)
        try:
            xattrs = _xattrs(fd, True)
            if self.layer and _overlay(xattrs, "metacopy"):
                raise ValueError(f"{path!r} is an overlayfs metacopy (its data is in a lower layer), which a "
                                 "layer can not hold: mount with metacopy=off")
            info = _info(path, os.fstat(fd), _kept(xattrs))
            if self.size + info.size > self.max_size:
                raise LayerTooLarge(f"the layer's files pass the limit of {self.max_size} bytes at {path!r} "
                                    f"({self.size} bytes before it, {info.size} in it)")
            self.add(info, _Data(fd, path))
            self.size += info.size
        finally:
            os.close(fd)
        if st.st_nlink > 1:
            self.links[(st.st_dev, st.st_ino)] = path


def _open_same(parent: int, name: str, flags: int, st: os.stat_result, path: str) -> int:
    """Open ``name`` under ``parent``, if it is still the inode lstat saw, of the same kind."""
    fd = os.open(name, flags, dir_fd=parent)
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino, stat.S_IFMT(now.st_mode)) != (st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode)):
        os.close(fd)
        raise ValueError(f"{path!r} changed during the walk")
    return fd


def _xattrs(target: int | str, follow: bool) -> dict[str, bytes]:
    """Every xattr of a descriptor, or of a path not followed when it is a symlink."""
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as e:
        if e.errno == errno.ENOTSUP:  # a filesystem without xattrs
            return {}
        raise
    return {n: os.getxattr(target, n, follow_symlinks=follow) for n in sorted(names)}


def _kept(xattrs: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in xattrs.items() if not k.startswith(_OVERLAY) and k != _DROPPED}


def _overlay(xattrs: dict[str, bytes], key: str) -> set[bytes]:
    """The values of overlayfs' xattr ``key`` under either of its prefixes."""
    return {xattrs[p + key] for p in _OVERLAY if p + key in xattrs}


def _info(path: str, st: os.stat_result, xattrs: dict[str, bytes] | None = None) -> tarfile.TarInfo:
    """The header of ``path`` with the kind, owner, mode and mtime of ``st``."""
    info = tarfile.TarInfo(path)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        info.type, info.size = tarfile.REGTYPE, st.st_size
    elif stat.S_ISDIR(mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(mode):
        info.type = tarfile.SYMTYPE
    elif stat.S_ISFIFO(mode):
        info.type = tarfile.FIFOTYPE
    else:
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    info.mode = stat.S_IMODE(mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = st.st_mtime_ns // 1_000_000_000
    # As image/unpack.py reads them back: the raw bytes, through tarfile's surrogateescape.
    info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in (xattrs or {}).items()}
    return info


def _marker(path: str, st: os.stat_result) -> tarfile.TarInfo:
    """An empty file for a whiteout or opaque marker, with the owner and mtime of what it marks."""
    info = tarfile.TarInfo(path)
    info.mode = 0o644
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = st.st_mtime_ns // 1_000_000_000
    return info
