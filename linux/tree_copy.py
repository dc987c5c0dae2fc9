"""Copying a directory of an image into a volume, as containerd seeds an image's VOLUME
(continuity's fs.CopyDir): directories, regular files and symlinks are copied, device nodes and
FIFOs made anew as nodes, sockets left out (a copy would be a dead endpoint); owners, modes,
times and extended attributes are kept, but not security.selinux, which must stay the
volume's own (containerd#5090).

The source is an image's content, so it is walked as hostile: from descriptors, without ever
following a symlink (it is copied as a symlink) or opening anything but a regular file for
reading — a device's content is the host's (a disk; /dev/zero, which never ends). What is
written is bounded: data only where the source has data (holes stay holes), a hard link as a
hard link, and no more bytes, inodes or directory depth than the caller's Budget allows.
"""
from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from linux.openat2 import fd_path, reopen_regular

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
_SKIP_XATTRS = frozenset({"security.selinux"})


class CopyError(OSError):
    """The tree cannot be copied: past the budget, too deep, or changed under the walk."""


@dataclass
class Budget:
    """What one copy (or several in turn) may write: data bytes, inodes, and directory depth
    (each level holds two descriptors while it is walked)."""

    bytes: int
    inodes: int
    depth: int = 128
    stopped: bool = False  # set from another thread to end a copy early (its caller went away)

    def charge(self, what: str, *, data: int = 0, inodes: int = 0) -> None:
        if self.stopped:
            raise CopyError(errno.ECANCELED, "the copy was stopped", what)
        if data > self.bytes:
            raise CopyError(errno.EFBIG, "more data than the image holds", what)
        if inodes > self.inodes:
            raise CopyError(errno.EFBIG, "more files than the image holds", what)
        self.bytes -= data
        self.inodes -= inodes


@dataclass
class _Copy:
    budget: Budget
    dst_root: int
    skip: frozenset[str]
    links: dict[tuple[int, int], str] = field(default_factory=dict)  # (dev, ino) -> first copy's path


def copy_tree(src_fd: int, dst_fd: int, budget: Budget, skip=frozenset()) -> None:
    """Copy what directory `src_fd` holds into the empty directory `dst_fd`, and the source
    directory's owner, mode, xattrs and times onto it. Directories whose path (relative to the
    source, "a/b") is in `skip` are made empty: what is mounted over them is copied on its own."""
    copy = _Copy(budget, dst_fd, frozenset(skip))
    _copy_dir(copy, src_fd, dst_fd, "", 0)
    _finish_fd(dst_fd, os.fstat(src_fd), src_fd)


def _copy_dir(copy: _Copy, src: int, dst: int, rel: str, depth: int) -> None:
    if depth >= copy.budget.depth:
        raise CopyError(errno.ELOOP, f"directories nested deeper than {copy.budget.depth}", rel)
    for name in sorted(os.listdir(src)):
        path = rel + name
        st = os.stat(name, dir_fd=src, follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            copy.budget.charge(path, inodes=1)
            os.mkdir(name, 0o700, dir_fd=dst)  # its own mode once it is filled: it may be read-only
            s = _open_same(src, name, _DIR, st, path)
            try:
                d = os.open(name, _DIR, dir_fd=dst)
                try:
                    if path not in copy.skip:
                        _copy_dir(copy, s, d, path + "/", depth + 1)
                    _finish_fd(d, st, s)
                finally:
                    os.close(d)
            finally:
                os.close(s)
        elif stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in copy.links:
                copy.budget.charge(path)
                os.link(copy.links[key], name, src_dir_fd=copy.dst_root, dst_dir_fd=dst, follow_symlinks=False)
                continue
            copy.budget.charge(path, inodes=1)
            _copy_file(copy.budget, src, dst, name, st, path)
            if st.st_nlink > 1:
                copy.links[key] = path
        elif stat.S_ISLNK(mode):
            copy.budget.charge(path, inodes=1)
            os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
            _finish_at(src, dst, name, st)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            copy.budget.charge(path, inodes=1)
            os.mknod(name, stat.S_IFMT(mode) | 0o600, st.st_rdev, dir_fd=dst)
            _finish_at(src, dst, name, st)


def _open_same(dirfd: int, name: str, flags: int, st: os.stat_result, path: str) -> int:
    fd = os.open(name, flags, dir_fd=dirfd)
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise CopyError(errno.EAGAIN, "changed while it was copied", path)
    return fd


def _copy_file(budget: Budget, src: int, dst: int, name: str, st: os.stat_result, path: str) -> None:
    p = _open_same(src, name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, st, path)
    try:
        r = reopen_regular(p)
    finally:
        os.close(p)
    try:
        w = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dst)
        try:
            _copy_data(budget, r, w, st.st_size, path)
            _finish_fd(w, st, r)
        finally:
            os.close(w)
    finally:
        os.close(r)


def _copy_data(budget: Budget, r: int, w: int, size: int, path: str) -> None:
    """Copy the data of `r` to the same offsets of `w`, skipping holes, then set the length."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(r, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # nothing but a hole to the end
                break
            raise
        end = min(os.lseek(r, start, os.SEEK_HOLE), size)
        budget.charge(path, data=end - start)
        while start < end:
            chunk = os.pread(r, min(_CHUNK, end - start), start)
            if not chunk:
                break
            os.pwrite(w, chunk, start)
            start += len(chunk)
        offset = end
    os.ftruncate(w, size)


def _copy_xattrs(src, dst, follow: bool) -> None:
    for name in os.listxattr(src, follow_symlinks=follow):
        if name in _SKIP_XATTRS:
            continue
        try:
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=follow), follow_symlinks=follow)
        except OSError as e:
            # As containerd: what the destination cannot hold (user.* on a symlink, a filesystem
            # without xattrs) is left behind; anything else is an error.
            if e.errno not in (errno.ENOTSUP, errno.EPERM):
                raise


def _finish_fd(fd: int, st: os.stat_result, src_fd: int) -> None:
    # Owner first: chown clears setuid bits and file capabilities, which mode and xattrs restore.
    os.chown(fd, st.st_uid, st.st_gid)
    os.chmod(fd, stat.S_IMODE(st.st_mode))
    _copy_xattrs(src_fd, fd, True)
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _finish_at(src: int, dst: int, name: str, st: os.stat_result) -> None:
    """The metadata of a symlink or node, by name under its directory's descriptor, never following it."""
    os.chown(name, st.st_uid, st.st_gid, dir_fd=dst, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dst, follow_symlinks=False)
    _copy_xattrs(fd_path(src, name), fd_path(dst, name), False)
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst, follow_symlinks=False)
