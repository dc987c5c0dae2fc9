"""openat2(2): paths resolved inside a directory tree that they cannot lead out of.

A container's rootfs, an image's snapshot and a volume shared with other containers are
trees whose every name someone else controls. Checking a path with lstat and then handing the
same string to mount(2), mkdir or open resolves it twice, and a process that shares part of
the tree can swap a component for a symlink in between (runc's CVE-2021-30465). Here the
kernel resolves a path once, with the tree's root as "/" (RESOLVE_IN_ROOT: absolute symlinks
and ".." stay inside) and no magic links (/proc/<pid>/root, /proc/self/fd/N: they jump
anywhere), to a descriptor; what follows works from descriptors only: the *at() calls, and
/proc/self/fd/N for the calls that take nothing but a path.
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_OPENAT2 = 437  # the same on every architecture: it came after the syscall tables were unified

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
IN_ROOT = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS

# With RESOLVE_IN_ROOT the kernel answers EAGAIN when a rename or mount anywhere on the system
# raced a ".." in the lookup; a retry is right, but an endless one would let a busy host (or a
# hostile container renaming in a loop) hold us, so a few tries and then the error.
_RETRIES = 64


class _OpenHow(ctypes.Structure):  # struct open_how (linux/openat2.h)
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2); the descriptor is always close-on-exec. Raises OSError naming `path`."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    raw = os.fsencode(path)
    for _ in range(_RETRIES):
        fd = _libc.syscall(_SYS_OPENAT2, ctypes.c_int(dirfd), ctypes.c_char_p(raw), ctypes.byref(how),
                           ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.EINTR):
            break
    raise OSError(err, os.strerror(err), path)


def _relative(path: str) -> str:
    return path.lstrip("/") or "."


def fd_path(fd: int, name: str = "") -> str:
    """The path that reaches what `fd` holds (or `name` inside it) for calls that take only a
    path: the kernel follows /proc/self/fd/N to the descriptor's own file, not to its name."""
    return f"/proc/self/fd/{fd}" + (f"/{name}" if name else "")


def open_in_root(root_fd: int, path: str, flags: int = os.O_PATH, mode: int = 0) -> int:
    """Open `path` as if `root_fd` were "/": no symlink or ".." leads out, no magic link is followed."""
    return openat2(root_fd, _relative(path), flags, mode, IN_ROOT)


def mkdirs_in_root(root_fd: int, path: str, mode: int = 0o755) -> int:
    """An O_PATH descriptor of directory `path` inside the tree, making what is missing.

    What exists is resolved by the kernel inside the tree; each missing directory is made
    with mkdirat under the descriptor of its parent and opened without following symlinks,
    so a name swapped for a symlink meanwhile fails the call instead of leading elsewhere.
    """
    rel = _relative(path)
    try:
        return open_in_root(root_fd, rel, os.O_PATH | os.O_DIRECTORY)
    except FileNotFoundError:
        pass
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    # The deepest directory that exists, found by the kernel; then the rest, made one by one.
    for have in range(len(parts) - 1, -1, -1):
        try:
            fd = open_in_root(root_fd, "/".join(parts[:have]), os.O_PATH | os.O_DIRECTORY)
            break
        except FileNotFoundError:
            continue
    else:  # not even the root: it went away
        raise FileNotFoundError(errno.ENOENT, "the tree's root is gone", path)
    missing = parts[have:]
    if ".." in missing:
        # ".." after a name that does not exist yet means nothing sound: refuse, as runc does.
        os.close(fd)
        raise OSError(errno.EINVAL, "a missing directory is followed by '..'", path)
    try:
        for part in missing:
            try:
                os.mkdir(part, mode, dir_fd=fd)
            except FileExistsError:
                pass  # made meanwhile: fine if it is a directory, which the open below checks
            try:
                child = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as e:
                raise OSError(e.errno, f"{part!r} is not a directory (a symlink or file was put there)",
                              path) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


class NotRegularFile(OSError):
    """A file that had to be a regular file is something else: a FIFO, a device, a socket."""


class FileTooLarge(OSError):
    pass


def kind_of(mode: int) -> str:
    for test, kind in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return kind
    return "special file"


def reopen_regular(path_fd: int, flags: int = os.O_RDONLY) -> int:
    """Open the file an O_PATH descriptor holds for reading, if it is a regular file.

    The check is on the descriptor and the reopen goes through /proc/self/fd, so it opens that
    same inode: a FIFO (whose open waits for a writer) or a device (whose open can do anything)
    swapped in after the check is never opened. Raises NotRegularFile.
    """
    st = os.fstat(path_fd)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(errno.EINVAL, f"is a {kind_of(st.st_mode)}, not a regular file")
    return os.open(fd_path(path_fd), flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)


def read_in_root(root_fd: int, path: str, limit: int) -> bytes:
    """The content of regular file `path` inside the tree, if it has at most `limit` bytes.

    Raises FileNotFoundError (or NotADirectoryError, IsADirectoryError) when there is no
    such file, NotRegularFile for anything but a regular file, FileTooLarge past `limit`.
    """
    fd = open_in_root(root_fd, path, os.O_PATH)
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        try:
            rfd = reopen_regular(fd)
        except NotRegularFile as e:
            raise NotRegularFile(e.errno, e.strerror, path) from None
    finally:
        os.close(fd)
    try:
        chunks: list[bytes] = []
        got = 0
        while got <= limit:  # read one byte past the limit, to know it is past: st_size can lie (procfs)
            chunk = os.read(rfd, min(1 << 16, limit + 1 - got))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            got += len(chunk)
        raise FileTooLarge(errno.EFBIG, f"is larger than {limit} bytes", path)
    finally:
        os.close(rfd)
