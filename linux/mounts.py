"""Building a container's filesystem view from an OCI runtime spec, inside its new mount namespace.

Everything here runs in the container's first process before pivot_root (or, for
masked and read-only paths, just after it). Destinations are resolved inside
the rootfs without following symlinks out of it, since the image controls
every path in there.
"""
from __future__ import annotations

import errno
import os
import stat

from linux import libc

# OCI mount options that are mount(2) flags: name -> (flags to set, flags to clear).
_FLAGS = {
    "ro": (libc.MS_RDONLY, 0), "rw": (0, libc.MS_RDONLY),
    "nosuid": (libc.MS_NOSUID, 0), "suid": (0, libc.MS_NOSUID),
    "nodev": (libc.MS_NODEV, 0), "dev": (0, libc.MS_NODEV),
    "noexec": (libc.MS_NOEXEC, 0), "exec": (0, libc.MS_NOEXEC),
    "sync": (libc.MS_SYNCHRONOUS, 0), "async": (0, libc.MS_SYNCHRONOUS),
    "dirsync": (libc.MS_DIRSYNC, 0), "mand": (libc.MS_MANDLOCK, 0), "nomand": (0, libc.MS_MANDLOCK),
    "noatime": (libc.MS_NOATIME, 0), "atime": (0, libc.MS_NOATIME),
    "nodiratime": (libc.MS_NODIRATIME, 0), "diratime": (0, libc.MS_NODIRATIME),
    "relatime": (libc.MS_RELATIME, 0), "norelatime": (0, libc.MS_RELATIME),
    "strictatime": (libc.MS_STRICTATIME, 0), "nostrictatime": (0, libc.MS_STRICTATIME),
    "nosymfollow": (libc.MS_NOSYMFOLLOW, 0), "symfollow": (0, libc.MS_NOSYMFOLLOW),
    "remount": (libc.MS_REMOUNT, 0), "bind": (libc.MS_BIND, 0), "rbind": (libc.MS_BIND | libc.MS_REC, 0),
}
_PROPAGATION = {
    "private": libc.MS_PRIVATE, "rprivate": libc.MS_PRIVATE | libc.MS_REC,
    "slave": libc.MS_SLAVE, "rslave": libc.MS_SLAVE | libc.MS_REC,
    "shared": libc.MS_SHARED, "rshared": libc.MS_SHARED | libc.MS_REC,
    "unbindable": libc.MS_UNBINDABLE, "runbindable": libc.MS_UNBINDABLE | libc.MS_REC,
}
# Flags a read-only or nosuid... bind mount needs a second, remounting call for.
_REMOUNT_FLAGS = (libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
                  | libc.MS_NOATIME | libc.MS_NODIRATIME | libc.MS_RELATIME | libc.MS_STRICTATIME)

_MAX_SYMLINKS = 255

# Devices every container gets, as runc creates them: (path, major, minor).
DEFAULT_DEVICES = (
    ("/dev/null", 1, 3), ("/dev/zero", 1, 5), ("/dev/full", 1, 7),
    ("/dev/random", 1, 8), ("/dev/urandom", 1, 9), ("/dev/tty", 5, 0),
)
_DEV_LINKS = (
    ("/proc/self/fd", "/dev/fd"), ("/proc/self/fd/0", "/dev/stdin"), ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"), ("pts/ptmx", "/dev/ptmx"),
)


class MountError(OSError):
    pass


def parse_options(options) -> tuple[int, int, str]:
    """(mount flags, propagation flags, data string) of an OCI mount's options."""
    flags = propagation = 0
    data = []
    for opt in options or ():
        if opt in _FLAGS:
            set_, clear = _FLAGS[opt]
            flags = (flags | set_) & ~clear
        elif opt in _PROPAGATION:
            propagation |= _PROPAGATION[opt]
        else:
            data.append(opt)
    return flags, propagation, ",".join(data)


def secure_join(root: str, path: str) -> str:
    """`path` inside `root`, resolving symlinks as if `root` were "/" so that none leads out."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(part)
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved.append(part)
            continue
        links += 1
        if links > _MAX_SYMLINKS:
            raise MountError(errno.ELOOP, f"too many symlinks resolving {path} in {root}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        parts = [p for p in target.split("/") if p not in ("", ".")] + parts
    return os.path.join(root, *resolved)


def _make_mountpoint(dest: str, source_is_dir: bool) -> None:
    if os.path.lexists(dest):
        return
    if source_is_dir:
        os.makedirs(dest, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
        os.close(os.open(dest, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o755))


def mount_one(rootfs: str, m: dict, cgroup_binds) -> None:
    """Mount one entry of the spec's "mounts" under `rootfs`."""
    destination = m["destination"]
    dest = secure_join(rootfs, destination)
    flags, propagation, data = parse_options(m.get("options"))
    kind = m.get("type") or ("bind" if flags & libc.MS_BIND else "")
    source = m.get("source") or kind
    try:
        if flags & libc.MS_BIND:
            _make_mountpoint(dest, os.path.isdir(source))
            libc.mount(source, dest, None, flags & (libc.MS_BIND | libc.MS_REC))
            if flags & _REMOUNT_FLAGS:
                # A bind mount takes most flags only on a second, remounting call.
                libc.mount(None, dest, None, libc.MS_BIND | libc.MS_REMOUNT | (flags & _REMOUNT_FLAGS))
        elif kind == "cgroup":
            _make_mountpoint(dest, True)
            if cgroup_binds is not None:
                _mount_cgroup_v1(dest, flags, cgroup_binds)
            else:  # cgroup v2: the container's own cgroup namespace makes its cgroup the root
                libc.mount("cgroup2", dest, "cgroup2", flags & ~libc.MS_REMOUNT)
        else:
            _make_mountpoint(dest, True)
            if kind == "sysfs":
                _mount_sysfs(dest, flags, data)
            else:
                libc.mount(source, dest, kind, flags & ~libc.MS_REMOUNT, data or None)
        if propagation:
            libc.mount(None, dest, None, propagation)
    except OSError as e:
        raise MountError(e.errno, f"mounting {kind or 'bind'} {source} on {destination}: {e.strerror}") from None


def _mount_sysfs(dest: str, flags: int, data: str) -> None:
    try:
        libc.mount("sysfs", dest, "sysfs", flags, data or None)
    except PermissionError:
        # A fresh sysfs needs a network namespace of one's own; a container on
        # the host's network gets the host's /sys bound in, as runc does.
        libc.mount("/sys", dest, None, libc.MS_BIND | libc.MS_REC)
        libc.mount(None, dest, None, libc.MS_BIND | libc.MS_REMOUNT | (flags & _REMOUNT_FLAGS))


def _mount_cgroup_v1(dest: str, flags: int, binds) -> None:
    """cgroup v1 has no single filesystem to mount: a tmpfs holds each hierarchy's
    container cgroup, bound in under the hierarchy's name. As runc does, the binds take
    the mount's flags and the tmpfs stays writable."""
    libc.mount("tmpfs", dest, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC, "mode=755")
    for name, source in binds:
        target = os.path.join(dest, name)
        os.makedirs(target, exist_ok=True)
        if os.path.isdir(source):
            libc.mount(source, target, None, libc.MS_BIND | libc.MS_REC)
            libc.mount(None, target, None, libc.MS_BIND | libc.MS_REMOUNT | (flags & _REMOUNT_FLAGS))
    # Co-mounted controllers are reached under each of their names too.
    for name, _ in binds:
        if "," in name:
            for alias in name.split(","):
                link = os.path.join(dest, alias)
                if not os.path.lexists(link):
                    os.symlink(name, link)


def create_devices(rootfs: str, devices) -> None:
    """Make the spec's device nodes, the defaults every container has, and /dev's symlinks."""
    made = set()
    for d in devices or ():
        _mknod(rootfs, d["path"], d.get("type", "c"), d["major"], d["minor"], d.get("fileMode", 0o666),
               d.get("uid", 0), d.get("gid", 0))
        made.add(d["path"])
    for path, major, minor in DEFAULT_DEVICES:
        if path not in made:
            _mknod(rootfs, path, "c", major, minor, 0o666, 0, 0)
    for target, link in _DEV_LINKS:
        full = secure_join(rootfs, link)
        if not os.path.lexists(full):
            os.symlink(target, full)
    kcore = secure_join(rootfs, "/dev/core")
    if os.path.exists("/proc/kcore") and not os.path.lexists(kcore):
        os.symlink("/proc/kcore", kcore)


def _mknod(rootfs: str, path: str, kind: str, major: int, minor: int, mode: int, uid: int, gid: int) -> None:
    full = secure_join(rootfs, path)
    os.makedirs(os.path.dirname(full), mode=0o755, exist_ok=True)
    if os.path.lexists(full):
        os.unlink(full)
    type_bits = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[kind]
    os.mknod(full, type_bits | (mode & 0o7777), os.makedev(major, minor))
    os.chmod(full, mode & 0o7777)  # mknod's mode went through the umask
    os.chown(full, uid, gid)


def bind_console(rootfs: str, pty_path: str) -> None:
    """Make the container's /dev/console the terminal it was given, as runc does."""
    console = secure_join(rootfs, "/dev/console")
    if not os.path.lexists(console):
        os.close(os.open(console, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    libc.mount(pty_path, console, None, libc.MS_BIND)


def mount_of(path: str) -> tuple[str, list[str]]:
    """The mount point `path` is on (itself, if it is one) and its propagation fields
    ("shared:N", "master:N") from this process's mount table; of several mounts on one
    point, the topmost (listed last)."""
    best, optional = "", []
    path = os.path.normpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, optional = point, fields[6:fields.index("-")]
    return best, optional


def make_private_if_shared(point: str) -> None:
    """Make the topmost mount at `point` private if it is shared."""
    _, optional = mount_of(point)
    if any(o.startswith("shared:") for o in optional):
        libc.mount(None, point, None, libc.MS_PRIVATE)


def pivot(rootfs: str) -> None:
    """Make `rootfs` the root and let go of the old one entirely."""
    old_root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(rootfs)
        libc.pivot_root(".", ".")
        # The old root now sits on top of the new one. Standing in it (not in the new root,
        # whose mounts would catch the next call), make it a slave so that detaching it does
        # not propagate to the host, then detach it.
        os.fchdir(old_root)
        libc.mount(None, ".", None, libc.MS_SLAVE | libc.MS_REC)
        libc.umount(".", libc.MNT_DETACH)
    finally:
        os.close(old_root)
    os.chdir("/")


def mask(paths) -> None:
    """Hide each path: /dev/null over a file, an empty read-only tmpfs over a directory."""
    for path in paths or ():
        try:
            if os.path.isdir(path):
                libc.mount("tmpfs", path, "tmpfs", libc.MS_RDONLY)
            else:
                libc.mount("/dev/null", path, None, libc.MS_BIND)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise MountError(e.errno, f"masking {path}: {e.strerror}") from None


def _flags_of(path: str) -> int:
    """The mount flags `path` is mounted with now, which a bind remount would otherwise clear."""
    f = os.statvfs(path).f_flag
    flags = f & (libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC | libc.MS_NOATIME | libc.MS_NODIRATIME)
    if f & os.ST_RELATIME:
        flags |= libc.MS_RELATIME
    return flags


def make_readonly(paths) -> None:
    for path in paths or ():
        try:
            libc.mount(path, path, None, libc.MS_BIND | libc.MS_REC)
            libc.mount(None, path, None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | _flags_of(path))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise MountError(e.errno, f"making {path} read-only: {e.strerror}") from None


def remount_root_readonly() -> None:
    libc.mount(None, "/", None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | _flags_of("/"))
