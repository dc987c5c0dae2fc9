"""COPY and ADD: files from the build context (or an earlier stage) into the step's rootfs.

Both trees are hostile — the context is whatever the client sent, a stage's rootfs is what
its RUN steps made — so both are walked from descriptors. A source path is resolved inside
its tree (a symlink or ".." never leads out of it: openat2 RESOLVE_IN_ROOT); inside a copied
directory symlinks are copied as symlinks, never followed, and only directories, regular
files and symlinks are copied. The destination is resolved inside the rootfs the same way.
Docker's rules: a directory's contents are copied (not the directory itself); a file goes to
`dest/<name>` when dest ends in "/", is a directory, or there are several sources; files
from the context belong to 0:0 unless --chown says otherwise, files from a stage keep their
owner; modes and modification times are kept (--chmod sets the mode).
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
import stat
import tarfile
from dataclasses import dataclass

from linux.openat2 import fd_path, mkdirs_in_root, open_in_root, reopen_regular

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
_MAX_DEPTH = 256
# The overlay's own bookkeeping and labels that belong to the destination, not the file.
_SKIPPED_XATTRS = ("trusted.overlay.", "user.overlay.", "security.selinux")


class CopyRefused(ValueError):
    """The instruction asks for something outside its tree, or for nothing at all."""


@dataclass
class Budget:
    """What one step may copy: bytes of data and entries."""

    bytes: int
    entries: int

    def charge(self, data: int, path: str) -> None:
        self.bytes -= data
        self.entries -= 1
        if self.bytes < 0 or self.entries < 0:
            raise CopyRefused(f"copying {path!r} passes the most one layer may hold ([image] max_layer_size, "
                              "max_layer_entries)")


def clean_source(path: str) -> str:
    """A source path relative to its tree's root; one that climbs out of it is refused."""
    norm = posixpath.normpath(path.lstrip("/") or ".")
    if norm == ".." or norm.startswith("../"):
        raise CopyRefused(f"{path!r} is outside the build context")
    return norm


def expand_sources(root: str, patterns: list[str]) -> list[str]:
    """The relative paths each pattern (Go filepath.Match wildcards) names in the tree `root`,
    sorted per pattern; a pattern that names nothing is refused."""
    out: list[str] = []
    for pattern in patterns:
        clean = clean_source(pattern)
        found = sorted(_glob(root, [p for p in clean.split("/") if p not in ("", ".")]))
        if not found:
            raise CopyRefused(f"{pattern!r}: no such file or directory in the build context")
        out.extend(found)
    return out


def _glob(root: str, parts: list[str], prefix: str = "") -> list[str]:
    if not parts:
        return [prefix or "."]
    head, rest = parts[0], parts[1:]
    if not any(c in head for c in "*?["):
        path = f"{prefix}/{head}" if prefix else head
        return _glob(root, rest, path) if _exists(root, path) else []
    fd = _open(root, prefix or ".")
    if fd is None or not stat.S_ISDIR(os.fstat(fd).st_mode):
        if fd is not None:
            os.close(fd)
        return []
    try:
        names = os.listdir(fd)
    finally:
        os.close(fd)
    out = []
    for name in names:
        if fnmatch.fnmatchcase(name, head.replace("[^", "[!")):
            out.extend(_glob(root, rest, f"{prefix}/{name}" if prefix else name))
    return out


def _held(root: str, rel: str) -> int | None:
    """An O_PATH descriptor of `rel`, resolved inside the tree; None when there is no such entry."""
    root_fd = os.open(root, _DIR)
    try:
        return open_in_root(root_fd, rel, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise CopyRefused(f"{rel!r}: {e.strerror}") from None
    finally:
        os.close(root_fd)


def _open(root: str, rel: str) -> int | None:
    """A file or directory of the tree, resolved inside it, opened for reading — never anything
    else: the path is held with O_PATH and checked before it is opened (a FIFO's open waits, a
    device's open acts). None when there is no such entry or it is of another kind."""
    held = _held(root, rel)
    if held is None:
        return None
    try:
        return _reopen(held)
    finally:
        os.close(held)


def _reopen(held: int) -> int | None:
    mode = os.fstat(held).st_mode
    if stat.S_ISDIR(mode):
        return os.open(fd_path(held), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    if stat.S_ISREG(mode):
        return reopen_regular(held)
    return None


def _open_at(dirfd: int, name: str) -> int | None:
    """An entry of a directory (never followed if a symlink), opened as _open() opens."""
    held = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
    try:
        return _reopen(held)
    finally:
        os.close(held)


def _exists(root: str, rel: str) -> bool:
    held = _held(root, rel)
    if held is not None:
        os.close(held)
    return held is not None


def digest(root: str, sources: list[str]) -> str:
    """A hash of what the sources hold — names, kinds, modes, owners, link targets, data; not
    times — for the build cache's key. Every field is framed by its length, so no two trees
    hash alike by moving bytes from one field into the next."""
    h = hashlib.sha256()
    for rel in sources:
        fd = _open(root, rel)
        if fd is None:
            raise CopyRefused(f"{rel!r}: not a file or directory")
        try:
            _field(h, rel.encode())
            _hash_entry(h, fd, 0)
        finally:
            os.close(fd)
    return h.hexdigest()


def _field(h, data: bytes) -> None:
    h.update(len(data).to_bytes(8, "big") + data)


def _hash_entry(h, fd: int, depth: int) -> None:
    st = os.fstat(fd)
    _field(h, f"{stat.S_IFMT(st.st_mode)} {stat.S_IMODE(st.st_mode)} {st.st_uid} {st.st_gid} {st.st_size}".encode())
    if stat.S_ISREG(st.st_mode):
        while chunk := os.read(fd, _CHUNK):
            h.update(chunk)
        return
    if depth >= _MAX_DEPTH:
        raise CopyRefused(f"directories nested deeper than {_MAX_DEPTH}")
    for name in sorted(os.listdir(fd)):
        _field(h, name.encode())
        sub = os.lstat(name, dir_fd=fd)
        if stat.S_ISLNK(sub.st_mode):
            _field(h, b"link:" + os.readlink(name, dir_fd=fd).encode())
            continue
        child = _open_at(fd, name) if stat.S_ISDIR(sub.st_mode) or stat.S_ISREG(sub.st_mode) else None
        if child is None:
            _field(h, b"skipped")  # not copied either
            continue
        try:
            _hash_entry(h, child, depth + 1)
        finally:
            os.close(child)


@dataclass
class Ownership:
    owner: tuple[int, int] | None   # None: keep the source's
    mode: int | None                # --chmod; None: keep the source's


def copy(src_root: str, sources: list[str], rootfs: str, dest: str, own: Ownership, budget: Budget) -> None:
    """Copy `sources` (relative to `src_root`) to `dest` (absolute, in `rootfs`). Blocking."""
    to_dir = dest.endswith(("/", "/.")) or dest == "."
    if len(sources) > 1 and not to_dir:
        raise CopyRefused(f"several sources go to {dest!r}: a destination of several must end with /")
    root_fd = os.open(rootfs, _DIR)
    try:
        if not to_dir:
            existing = _opened(root_fd, dest)
            if existing is not None:
                to_dir = stat.S_ISDIR(os.fstat(existing).st_mode)
                os.close(existing)
        for rel in sources:
            src = _open(src_root, rel)
            if src is None:
                raise CopyRefused(f"{rel!r}: no file or directory of that name to copy")
            try:
                st = os.fstat(src)
                if stat.S_ISDIR(st.st_mode):
                    _into_dir(root_fd, dest, src, own, budget, rel)
                elif stat.S_ISREG(st.st_mode):
                    target = posixpath.join(dest, posixpath.basename(rel)) if to_dir else dest
                    parent, name = posixpath.split(target.rstrip("/"))
                    pfd = _dest_dir(root_fd, parent or "/")
                    try:
                        _file(src, st, pfd, name, own, budget, rel)
                    finally:
                        os.close(pfd)
                else:
                    raise CopyRefused(f"{rel!r} is not a file or directory")
            finally:
                os.close(src)
    finally:
        os.close(root_fd)


def _opened(root_fd: int, path: str) -> int | None:
    try:
        return open_in_root(root_fd, path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _dest_dir(root_fd: int, path: str) -> int:
    """A directory of the rootfs to write into, made if missing: an O_RDONLY descriptor."""
    try:
        path_fd = mkdirs_in_root(root_fd, path)
    except OSError as e:
        raise CopyRefused(f"destination {path!r}: {e.strerror}") from None
    try:
        # The magic link leads to the descriptor's own directory; O_NOFOLLOW would refuse it.
        return os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    finally:
        os.close(path_fd)


def _into_dir(root_fd: int, dest: str, src: int, own: Ownership, budget: Budget, rel: str) -> None:
    existing = _opened(root_fd, dest)
    created = existing is None
    if existing is not None:
        os.close(existing)
    d = _dest_dir(root_fd, dest)
    try:
        if created:
            _finish(d, os.fstat(src), own, src)
        _tree(src, d, own, budget, rel, 0)
    finally:
        os.close(d)


def _tree(src: int, dst: int, own: Ownership, budget: Budget, rel: str, depth: int) -> None:
    if depth >= _MAX_DEPTH:
        raise CopyRefused(f"{rel!r}: directories nested deeper than {_MAX_DEPTH}")
    for name in sorted(os.listdir(src)):
        path = f"{rel}/{name}"
        st = os.lstat(name, dir_fd=src)
        if stat.S_ISDIR(st.st_mode):
            budget.charge(0, path)
            existing = _lstat(dst, name)
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                os.unlink(name, dir_fd=dst)
                existing = None
            if existing is None:
                os.mkdir(name, 0o700, dir_fd=dst)
            s = os.open(name, _DIR, dir_fd=src)  # O_NOFOLLOW|O_DIRECTORY: a swapped-in link or file fails
            try:
                d = os.open(name, _DIR, dir_fd=dst)
                try:
                    _tree(s, d, own, budget, path, depth + 1)
                    _finish(d, st, own, s)
                finally:
                    os.close(d)
            finally:
                os.close(s)
        elif stat.S_ISREG(st.st_mode):
            f = _open_at(src, name)
            if f is None:
                raise CopyRefused(f"{path!r} changed while it was copied")
            try:
                _file(f, os.fstat(f), dst, name, own, budget, path)
            finally:
                os.close(f)
        elif stat.S_ISLNK(st.st_mode):
            budget.charge(0, path)
            _clear(dst, name, path)
            os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
            uid, gid = own.owner or (st.st_uid, st.st_gid)
            os.chown(name, uid, gid, dir_fd=dst, follow_symlinks=False)
            os.utime(name, ns=(st.st_mtime_ns, st.st_mtime_ns), dir_fd=dst, follow_symlinks=False)
        # FIFOs, devices and sockets are not copied: a build context holds files.


def _lstat(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.lstat(name, dir_fd=dirfd)
    except FileNotFoundError:
        return None


def _clear(dirfd: int, name: str, path: str) -> None:
    existing = _lstat(dirfd, name)
    if existing is None:
        return
    if stat.S_ISDIR(existing.st_mode):
        raise CopyRefused(f"cannot copy {path!r} over the directory {name!r} of the destination")
    os.unlink(name, dir_fd=dirfd)


def _file(src: int, st: os.stat_result, dst_dir: int, name: str, own: Ownership, budget: Budget, path: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise CopyRefused(f"{path!r} is not a regular file")
    budget.charge(st.st_size, path)
    _clear(dst_dir, name, path)
    w = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dst_dir)
    try:
        offset = 0
        while offset < st.st_size:
            sent = os.sendfile(w, src, offset, min(_CHUNK * 8, st.st_size - offset))
            if sent == 0:
                break  # shrank while copied: what is there is what it holds
            offset += sent
        _finish(w, st, own, src)
    finally:
        os.close(w)


def _finish(fd: int, st: os.stat_result, own: Ownership, src: int | None = None) -> None:
    # Owner first: chown clears the setuid bits and file capabilities that mode and xattrs set again.
    os.chown(fd, *(own.owner or (st.st_uid, st.st_gid)))
    mode = own.mode if own.mode is not None else stat.S_IMODE(st.st_mode)
    os.chmod(fd, mode)
    if src is not None:
        for name in os.listxattr(src):
            if not name.startswith(_SKIPPED_XATTRS):
                os.setxattr(fd, name, os.getxattr(src, name))
    os.utime(fd, ns=(st.st_mtime_ns, st.st_mtime_ns))


def open_file(root: str, rel: str) -> int | None:
    """A regular file of the tree, opened for reading inside it; None for anything else."""
    fd = _open(root, rel)
    if fd is not None and not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def is_archive(path: str) -> bool:
    """Whether ADD unpacks a local file: a tar, plain or compressed (gzip, bzip2, xz)."""
    try:
        with tarfile.open(path, "r:*") as t:
            return t.next() is not None
    except (tarfile.TarError, OSError, EOFError):
        return False


def make_dir(rootfs: str, path: str) -> None:
    """Directory `path` of the rootfs, made (0755, root's) with its parents if missing (WORKDIR)."""
    root_fd = os.open(rootfs, _DIR)
    try:
        os.close(_dest_dir(root_fd, path))
    finally:
        os.close(root_fd)
