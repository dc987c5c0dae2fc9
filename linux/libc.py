"""The Linux system calls the shim and the executor need, that Python 3.11's os module lacks.

Thin ctypes wrappers: each raises OSError with the errno and names what it was
doing, so an executor error says which mount or namespace failed.
"""
from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Set

_libc = ctypes.CDLL(None, use_errno=True)

# Namespace flags (linux/sched.h).
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# The OCI runtime spec's namespace types, and the /proc/<pid>/ns file of each.
NAMESPACES = {
    "mount": (CLONE_NEWNS, "mnt"),
    "cgroup": (CLONE_NEWCGROUP, "cgroup"),
    "uts": (CLONE_NEWUTS, "uts"),
    "ipc": (CLONE_NEWIPC, "ipc"),
    "user": (CLONE_NEWUSER, "user"),
    "pid": (CLONE_NEWPID, "pid"),
    "network": (CLONE_NEWNET, "net"),
}

# mount(2) flags (linux/mount.h).
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

# mount_setattr(2) (linux/mount.h, linux/fcntl.h): attributes of a mount, and with AT_RECURSIVE of
# every mount beneath it too, which mount(2)'s remount can only change one mount at a time.
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR__ATIME = 0x70  # the access-time field: cleared whenever one of its values is set
MOUNT_ATTR_RELATIME = 0x0
MOUNT_ATTR_NOATIME = 0x10
MOUNT_ATTR_STRICTATIME = 0x20
MOUNT_ATTR_NODIRATIME = 0x80
MOUNT_ATTR_NOSYMFOLLOW = 0x200000
MOUNT_ATTR_IDMAP = 0x100000  # with userns_fd: the mount shows its files' owners through that namespace
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
AT_FDCWD = -100

# open_tree(2) and move_mount(2): a detached copy of a mount tree, idmapped before it is attached.
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40

# prctl(2) options.
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

_SYS_PIVOT_ROOT = 155  # x86_64
_SYS_CAPGET = 125
_SYS_CAPSET = 126
_SYS_SECCOMP = 317
_SYS_MOUNT_SETATTR = 442  # the same number on every architecture (added after the tables merged)
_SYS_OPEN_TREE = 428  # likewise
_SYS_MOVE_MOUNT = 429
_SECCOMP_SET_MODE_FILTER = 1
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _check(result: int, what: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    what = f"mount {source or fstype or 'none'} on {target}"
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), what)


class _MountAttr(ctypes.Structure):  # struct mount_attr, its first version (MOUNT_ATTR_SIZE_VER0)
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def mount_setattr(dirfd: int, path: str, flags: int, attr_set: int, attr_clr: int = 0, what: str = "",
                  userns_fd: int = 0) -> None:
    """Change the attributes (MOUNT_ATTR_*) of the mount at `path` relative to `dirfd` (with
    AT_EMPTY_PATH and "", of the mount `dirfd` holds); with AT_RECURSIVE, of its submounts too.
    MOUNT_ATTR_IDMAP takes the user namespace whose mappings the mount shows (`userns_fd`); only
    a detached mount (open_tree's OPEN_TREE_CLONE) can be idmapped."""
    attr = _MountAttr(attr_set, attr_clr, 0, userns_fd)
    _check(_libc.syscall(_SYS_MOUNT_SETATTR, ctypes.c_int(dirfd), _b(path), ctypes.c_uint(flags),
                         ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))),
           f"mount_setattr {what or path}")


def open_tree(dirfd: int, path: str, flags: int, what: str = "") -> int:
    """A descriptor of the mount at `path` (relative to `dirfd`; "" with AT_EMPTY_PATH: `dirfd`
    itself); with OPEN_TREE_CLONE a detached copy of it (with AT_RECURSIVE, of its submounts too)."""
    return _check(_libc.syscall(_SYS_OPEN_TREE, ctypes.c_int(dirfd), _b(path), ctypes.c_uint(flags)),
                  f"open_tree {what or path}")


def move_mount(from_fd: int, to_path: str, to_dirfd: int = AT_FDCWD, flags: int = MOVE_MOUNT_F_EMPTY_PATH,
               what: str = "") -> None:
    """Attach the (detached) mount `from_fd` holds at `to_path` (relative to `to_dirfd`)."""
    _check(_libc.syscall(_SYS_MOVE_MOUNT, ctypes.c_int(from_fd), b"", ctypes.c_int(to_dirfd), _b(to_path),
                         ctypes.c_uint(flags)),
           f"move_mount onto {what or to_path}")


_has_mount_setattr: bool | None = None


def has_mount_setattr() -> bool:
    """Whether this kernel (5.12 or later), and any seccomp filter this process is under, let
    mount_setattr(2) through. It is asked to change nothing, which a kernel that has it answers
    with success before it looks at the path; ENOSYS (or EPERM from a filter) means it has not."""
    global _has_mount_setattr
    if _has_mount_setattr is None:
        attr = _MountAttr(0, 0, 0, 0)
        result = _libc.syscall(_SYS_MOUNT_SETATTR, ctypes.c_int(-1), b"", ctypes.c_uint(AT_EMPTY_PATH),
                               ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
        _has_mount_setattr = result == 0 or ctypes.get_errno() not in (errno.ENOSYS, errno.EPERM)
    return _has_mount_setattr


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def syncfs(path: str) -> None:
    """Flush everything written to the filesystem holding `path`: one call for a whole tree,
    cheaper than an fsync per file."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _check(_libc.syncfs(fd), f"syncfs {path}")
    finally:
        os.close(fd)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_libc.syscall(_SYS_PIVOT_ROOT, _b(new_root), _b(put_old)), f"pivot_root into {new_root}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def setns(path: str, nstype: int = 0) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, nstype), f"setns {path}")
    finally:
        os.close(fd)


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), f"sethostname {name!r}")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


def set_name(name: str) -> None:
    """Name the calling thread (what ps and top show as its command)."""
    raw = ctypes.create_string_buffer(name.encode()[:15])
    _libc.prctl(PR_SET_NAME, ctypes.cast(raw, ctypes.c_void_p).value or 0, 0, 0, 0)


def name() -> str:
    """The calling process's name, as set_name left it."""
    with open("/proc/self/comm") as f:
        return f.read().strip()


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set the calling thread's capability sets (bit masks of capability numbers)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.syscall(_SYS_CAPSET, ctypes.byref(header), data), "capset")


class _SockFprog(ctypes.Structure):  # struct sock_fprog: a BPF program of `len` 8-byte instructions
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def seccomp_set_filter(program: bytes, flags: int = 0) -> None:
    """Load a seccomp BPF program into the calling process (seccomp(2), SECCOMP_SET_MODE_FILTER)."""
    prog = _SockFprog(len(program) // 8, program)
    _check(_libc.syscall(_SYS_SECCOMP, _SECCOMP_SET_MODE_FILTER, flags, ctypes.byref(prog)),
           f"seccomp(SET_MODE_FILTER) of {len(program) // 8} instructions")


def last_cap() -> int:
    """The highest capability number this kernel knows."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def close_range(first: int, keep: Set[int] = frozenset()) -> None:
    """Close every descriptor from `first` up, except those in `keep`."""
    top = os.sysconf("SC_OPEN_MAX")
    start = first
    for fd in sorted(f for f in keep if f >= first):
        os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, top)
