"""Building a container's filesystem view from an OCI runtime spec, inside its new mount namespace.

Everything here runs in the container's first process before pivot_root. The image controls
every path in the rootfs, and a volume shared with another container lets that container
change paths while this one is being built; so no path is checked and then used again by
name. Each destination is resolved once by the kernel inside the rootfs (linux/openat2.py)
to a descriptor, what is missing is made with *at() calls under descriptors of directories
already resolved, and each mount is made onto /proc/self/fd/N (the host's /proc, so that
path is the descriptor's own file).
"""
from __future__ import annotations

import errno
import os
import shutil
import stat

from linux import libc, openat2
from linux.openat2 import fd_path

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
# Recursive options, runc's and crun's convention ("rro" is what containerd sends for the CRI's
# recursive_read_only): attributes set by mount_setattr(2) on the mount and every mount beneath
# it. name -> (attributes to set, attributes to clear). An access-time value is one field of
# several bits, so setting any clears the whole field first, as the kernel requires.
_RECURSIVE = {
    "rro": (libc.MOUNT_ATTR_RDONLY, 0), "rrw": (0, libc.MOUNT_ATTR_RDONLY),
    "rnosuid": (libc.MOUNT_ATTR_NOSUID, 0), "rsuid": (0, libc.MOUNT_ATTR_NOSUID),
    "rnodev": (libc.MOUNT_ATTR_NODEV, 0), "rdev": (0, libc.MOUNT_ATTR_NODEV),
    "rnoexec": (libc.MOUNT_ATTR_NOEXEC, 0), "rexec": (0, libc.MOUNT_ATTR_NOEXEC),
    "rnodiratime": (libc.MOUNT_ATTR_NODIRATIME, 0), "rdiratime": (0, libc.MOUNT_ATTR_NODIRATIME),
    "rnosymfollow": (libc.MOUNT_ATTR_NOSYMFOLLOW, 0), "rsymfollow": (0, libc.MOUNT_ATTR_NOSYMFOLLOW),
    "rrelatime": (libc.MOUNT_ATTR_RELATIME, libc.MOUNT_ATTR__ATIME),
    "rnoatime": (libc.MOUNT_ATTR_NOATIME, libc.MOUNT_ATTR__ATIME),
    "rstrictatime": (libc.MOUNT_ATTR_STRICTATIME, libc.MOUNT_ATTR__ATIME),
    # Clearing an access-time value leaves the kernel's default, relatime (as runc reads them).
    "ratime": (libc.MOUNT_ATTR_RELATIME, libc.MOUNT_ATTR__ATIME),
    "rnorelatime": (libc.MOUNT_ATTR_RELATIME, libc.MOUNT_ATTR__ATIME),
    "rnostrictatime": (libc.MOUNT_ATTR_RELATIME, libc.MOUNT_ATTR__ATIME),
}
# The OCI spec's idmapped bind mounts (with the mount's uidMappings/gidMappings): "ridmap" idmaps
# the submounts an rbind brings along too. Neither is a flag nor data.
IDMAP_OPTIONS = ("idmap", "ridmap")
# Flags a read-only or nosuid... bind mount needs a second, remounting call for.
_REMOUNT_FLAGS = (libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC
                  | libc.MS_NOATIME | libc.MS_NODIRATIME | libc.MS_RELATIME | libc.MS_STRICTATIME)
_KEPT_ON_REMOUNT = libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC

_MAX_SYMLINKS = 255
_AT_FDCWD = -100

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
    """(mount flags, propagation flags, data string) of an OCI mount's options; the recursive
    ones (recursive_attrs()) are neither flags nor data."""
    flags = propagation = 0
    data = []
    for opt in options or ():
        if opt in _FLAGS:
            set_, clear = _FLAGS[opt]
            flags = (flags | set_) & ~clear
        elif opt in _PROPAGATION:
            propagation |= _PROPAGATION[opt]
        elif opt not in _RECURSIVE and opt not in IDMAP_OPTIONS:
            data.append(opt)
    return flags, propagation, ",".join(data)


def recursive_attrs(options) -> tuple[int, int]:
    """(attributes to set, attributes to clear) of an OCI mount's recursive options ("rro"...),
    for mount_setattr(2) with AT_RECURSIVE; a later word wins over an earlier one."""
    attr_set = attr_clr = 0
    for opt in options or ():
        if opt not in _RECURSIVE:
            continue
        set_, clear = _RECURSIVE[opt]
        if clear == libc.MOUNT_ATTR__ATIME:  # an access-time value: the whole field stays cleared
            attr_set = (attr_set & ~libc.MOUNT_ATTR__ATIME) | set_
            attr_clr |= libc.MOUNT_ATTR__ATIME
        else:
            attr_set = (attr_set & ~clear) | set_
            attr_clr = (attr_clr & ~set_) | clear
    return attr_set, attr_clr


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


class _Place:
    """Where a mount goes: an O_PATH descriptor of what is there now, and of its parent with
    its name there. mount(2) takes only paths, so it is given /proc/self/fd/N, which the
    kernel follows to the descriptor's own file: nothing resolves the destination again.
    A mount made, the descriptor still holds what is under it; the name looked up again in
    the parent (reopen) crosses into the new mount, which remounting and propagation need."""

    def __init__(self, parent: int | None, name: str, fd: int, rootfs: str):
        self.parent, self.name, self.fd, self._rootfs = parent, name, fd, rootfs

    @property
    def path(self) -> str:
        return fd_path(self.fd)

    def reopen(self) -> _Place:
        if self.parent is None:  # the rootfs itself: its path is the bundle's, not the image's
            fd = os.open(self._rootfs, os.O_PATH | os.O_CLOEXEC)
        else:
            fd = os.open(self.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.parent)
        return _Place(None, self.name, fd, self._rootfs)

    def __enter__(self) -> _Place:
        return self

    def __exit__(self, *exc) -> None:
        for fd in (self.fd, self.parent):
            if fd is not None:
                os.close(fd)


def _why(e: OSError) -> str:
    return os.strerror(e.errno) if e.errno else str(e)


def _root_fd(rootfs: str) -> int:
    return os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _in_root(rootfs: str, path: str, follow: bool) -> tuple[str, str]:
    """(parent, name) of `path` inside the rootfs, relative to it; with `follow`, a symlink at the
    end is resolved too (a mount's destination is where its symlinks lead, as in runc).

    secure_join reads the tree as it is now, so its answer is only a plan: every step after
    it goes through openat2 and *at() calls, which stay inside whatever the tree becomes."""
    if follow:
        rel = os.path.relpath(secure_join(rootfs, path), rootfs)
    else:
        parent = os.path.relpath(secure_join(rootfs, os.path.dirname(path.rstrip("/")) or "/"), rootfs)
        rel = os.path.join(parent, os.path.basename(path.rstrip("/")))
    if rel == ".":
        return "", ""
    return os.path.split(rel)


def _place(root_fd: int, rootfs: str, path: str, create: str = "", follow: bool = True) -> _Place:
    """The place of `path` in the rootfs. `create` ("dir" or "file") makes what is missing, as
    mkdirat and openat(O_CREAT|O_EXCL|O_NOFOLLOW) under verified directory descriptors; without
    it, a missing path raises FileNotFoundError. Raises MountError if a symlink is found where
    none can be: at the end of a path already resolved, it was put there meanwhile."""
    parent_rel, name = _in_root(rootfs, path, follow)
    if not name:
        return _Place(None, "", os.dup(root_fd), rootfs)
    if create:
        parent = openat2.mkdirs_in_root(root_fd, parent_rel)
    else:
        parent = openat2.open_in_root(root_fd, parent_rel, os.O_PATH | os.O_DIRECTORY)
    try:
        try:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            try:
                if create == "dir":
                    os.mkdir(name, 0o755, dir_fd=parent)
                else:
                    os.close(os.open(name, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                     0o755, dir_fd=parent))
            except FileExistsError:
                pass  # made meanwhile: whatever it is, the checked open below sees it
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            os.close(fd)
            raise MountError(errno.ELOOP, f"{path} is a symlink in the container's rootfs: it was made one "
                                          "while the container was being set up")
    except BaseException:
        os.close(parent)
        raise
    return _Place(parent, name, fd, rootfs)


def cloned_tree(source: str, recursive: bool) -> int:
    """A detached copy of the mount tree at `source` (its submounts too, `recursive`), opened as
    bind sources are (no symlink followed), to be attached later (move_mount) where it belongs."""
    src = _open_source(source)
    try:
        flags = libc.OPEN_TREE_CLONE | libc.OPEN_TREE_CLOEXEC | libc.AT_EMPTY_PATH
        return libc.open_tree(src, "", flags | (libc.AT_RECURSIVE if recursive else 0), what=source)
    finally:
        os.close(src)


def idmapped_tree(source: str, userns_fd: int, recursive: bool, readonly: bool = False) -> int:
    """A detached copy of the mount tree at `source` (its submounts too, `recursive`), idmapped
    through the user namespace `userns_fd`: what it shows as owned by host id H is owned by the
    namespace's id H on disk. Made where the host's filesystem and capabilities are at hand (only
    a detached mount can be idmapped), attached later (move_mount) where it belongs."""
    tree = cloned_tree(source, recursive)
    try:
        libc.mount_setattr(tree, "", libc.AT_EMPTY_PATH | (libc.AT_RECURSIVE if recursive else 0),
                           libc.MOUNT_ATTR_IDMAP | (libc.MOUNT_ATTR_RDONLY if readonly else 0),
                           what=f"{source} (idmapped)", userns_fd=userns_fd)
    except OSError as e:
        os.close(tree)
        why = (": its filesystem (or one mounted beneath it) can not be idmapped" if e.errno == errno.EINVAL
               else f": {e.strerror}")
        raise MountError(e.errno, f"idmapping {source}{why}") from None
    return tree


def attach_idmapped(source: str, target: str, userns_fd: int, readonly: bool = False) -> None:
    """Bind `source` idmapped (see idmapped_tree) onto the directory `target`."""
    tree = idmapped_tree(source, userns_fd, recursive=False, readonly=readonly)
    try:
        libc.move_mount(tree, target)
    finally:
        os.close(tree)


# Set once this kernel's overlay has refused the "volatile" option (it has it from Linux 5.10).
_volatile_refused = False


def mount_overlay(target: str, lower: list[str], options: str = "", flags: int = 0, userns: str = "",
                  staging: str = "") -> None:
    """Mount an overlay of the `lower` dirs (top first) on `target`, with `options` (upperdir,
    workdir) added. With `userns`, a pinned user namespace, as containerd's overlay snapshotter
    does for such pods: overlayfs can not itself be idmapped, so each lower dir is first bound
    idmapped through it on a directory of `staging` (made here, removed after: the overlay keeps
    private copies of its layers' mounts), and the overlay stacks those. The staging binds are
    read-only: should cricketd die before they go, no clean-up that walks the directory can
    delete a shared layer's files through them (and unmount_beneath() takes them away)."""
    def overlay(lowers: list[str]) -> None:
        global _volatile_refused
        wanted = [o for o in options.split(",") if o and not (o == "volatile" and _volatile_refused)]

        def mount(opts: list[str]) -> None:
            libc.mount("overlay", target, "overlay", flags, ",".join([f"lowerdir={':'.join(lowers)}", *opts]))

        try:
            mount(wanted)
        except OSError as e:
            if e.errno != errno.EINVAL or "volatile" not in wanted:
                raise
            # Overlays before Linux 5.10 know no "volatile": mount without it, and from now on.
            mount([o for o in wanted if o != "volatile"])
            _volatile_refused = True

    if not userns:
        overlay(lower)
        return
    os.makedirs(staging, mode=0o700, exist_ok=True)
    points: list[str] = []
    fd = os.open(userns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for i, layer in enumerate(lower):
            point = os.path.join(staging, str(i))
            os.makedirs(point, exist_ok=True)
            attach_idmapped(layer, point, fd, readonly=True)
            points.append(point)
        overlay(points)
    finally:
        os.close(fd)
        for point in points:
            libc.umount(point, libc.MNT_DETACH)
        shutil.rmtree(staging, ignore_errors=True)


def mount_one(rootfs: str, m: dict, cgroup_binds, tree: int | None = None) -> None:
    """Mount one entry of the spec's "mounts" under `rootfs`, which the destination, whatever
    its symlinks, can not lead out of. A bind mount's source can come made already (`tree`: a
    detached mount, idmapped_tree()'s), to be attached instead of bound."""
    destination = m["destination"]
    flags, propagation, data = parse_options(m.get("options"))
    attr_set, attr_clr = recursive_attrs(m.get("options"))
    kind = m.get("type") or ("bind" if flags & libc.MS_BIND else "")
    source = m.get("source") or kind
    root = _root_fd(rootfs)
    try:
        if flags & libc.MS_BIND:
            src = _open_source(source) if tree is None else os.dup(tree)
            try:
                is_dir = stat.S_ISDIR(os.fstat(src).st_mode)
                with _place(root, rootfs, destination, "dir" if is_dir else "file") as place:
                    if tree is None:
                        libc.mount(fd_path(src), place.path, None, flags & (libc.MS_BIND | libc.MS_REC))
                    else:
                        libc.move_mount(tree, "", place.fd, libc.MOVE_MOUNT_F_EMPTY_PATH | libc.MOVE_MOUNT_T_EMPTY_PATH,
                                        what=destination)
                    with place.reopen() as top:
                        if flags & _REMOUNT_FLAGS:
                            # A bind mount takes most flags only on a second, remounting call,
                            # which clears every flag it is not given: the source's nosuid,
                            # nodev and noexec are given again, or a read-only bind of a noexec
                            # mount would run its files (statvfs's ST_* bits are the MS_* ones).
                            kept = os.statvfs(top.path).f_flag & _KEPT_ON_REMOUNT
                            libc.mount(None, top.path, None,
                                       libc.MS_BIND | libc.MS_REMOUNT | (flags & _REMOUNT_FLAGS) | kept)
                        if propagation:
                            libc.mount(None, top.path, None, propagation)
                        if attr_set or attr_clr:
                            _set_recursive(top, attr_set, attr_clr)
            finally:
                os.close(src)
        else:
            with _place(root, rootfs, destination, "dir") as place:
                if kind == "cgroup" and cgroup_binds is not None:
                    _mount_cgroup_v1(place, flags, cgroup_binds)
                elif kind == "cgroup":  # cgroup v2: the container's own cgroup namespace makes its cgroup the root
                    libc.mount("cgroup2", place.path, "cgroup2", flags & ~libc.MS_REMOUNT)
                elif kind == "sysfs":
                    _mount_sysfs(place, flags, data)
                else:
                    libc.mount(source, place.path, kind, flags & ~libc.MS_REMOUNT, data or None)
                if propagation or attr_set or attr_clr:
                    with place.reopen() as top:
                        if propagation:
                            libc.mount(None, top.path, None, propagation)
                        if attr_set or attr_clr:
                            _set_recursive(top, attr_set, attr_clr)
    except MountError:
        raise
    except OSError as e:
        # Named by the spec's paths: the descriptors' /proc/self/fd names would tell nobody anything.
        raise MountError(e.errno, f"mounting {kind or 'bind'} {source} on {destination}: "
                                  f"{_why(e)}") from None
    finally:
        os.close(root)


def _set_recursive(top: _Place, attr_set: int, attr_clr: int) -> None:
    """Set the attributes on the mount `top` holds and on every mount beneath it: those bound
    along by rbind too, which a remount would leave as the host has them. The descriptor is the
    mount's own root, so nothing is looked up by name (AT_EMPTY_PATH)."""
    if not libc.has_mount_setattr():
        raise MountError(errno.ENOSYS, "recursive mount options (rro...) need mount_setattr(2), which this "
                                       "kernel lacks (Linux 5.12 or later has it)")
    libc.mount_setattr(top.fd, "", libc.AT_EMPTY_PATH | libc.AT_RECURSIVE, attr_set, attr_clr)


def _open_source(source: str) -> int:
    """An O_PATH descriptor of a bind mount's source, opened once: what is bound is what was
    looked at. cricketd resolved the source when the container was created, to a path with no
    symlink in it (cri/oci_spec.py), so none is followed now: one found on the path was put there
    since, by whoever can write the directory above it — a container sharing it, making this
    mount bind what it chose — and fails the mount."""
    try:
        return openat2.openat2(_AT_FDCWD, source, os.O_PATH,
                               resolve=openat2.RESOLVE_NO_SYMLINKS | openat2.RESOLVE_NO_MAGICLINKS)
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise MountError(errno.ELOOP, f"bind source {source} has a symlink on its path that was not there "
                                      "when the container was created: it is not bound") from None


def _mount_sysfs(place: _Place, flags: int, data: str) -> None:
    try:
        libc.mount("sysfs", place.path, "sysfs", flags, data or None)
    except PermissionError:
        # A fresh sysfs needs a network namespace of one's own; a container on
        # the host's network gets the host's /sys bound in, as runc does.
        libc.mount("/sys", place.path, None, libc.MS_BIND | libc.MS_REC)
        with place.reopen() as top:
            libc.mount(None, top.path, None, libc.MS_BIND | libc.MS_REMOUNT | (flags & _REMOUNT_FLAGS))


def _mount_cgroup_v1(place: _Place, flags: int, binds) -> None:
    """cgroup v1 has no single filesystem to mount: a tmpfs holds each hierarchy's
    container cgroup, bound in under the hierarchy's name. As runc does, the binds take
    the mount's flags and the tmpfs stays writable."""
    libc.mount("tmpfs", place.path, "tmpfs", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC, "mode=755")
    # The tmpfs is this mount namespace's alone, made just now: names in it are ours.
    with place.reopen() as tmpfs:
        for name, source in binds:
            try:
                os.mkdir(name, 0o777, dir_fd=tmpfs.fd)
            except FileExistsError:
                pass
            if os.path.isdir(source):
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=tmpfs.fd)
                with _Place(os.dup(tmpfs.fd), name, fd, "") as target:
                    libc.mount(source, target.path, None, libc.MS_BIND | libc.MS_REC)
                    with target.reopen() as top:
                        libc.mount(None, top.path, None, libc.MS_BIND | libc.MS_REMOUNT | (flags & _REMOUNT_FLAGS))
        # Co-mounted controllers are reached under each of their names too.
        for name, _ in binds:
            if "," in name:
                for alias in name.split(","):
                    try:
                        os.symlink(name, alias, dir_fd=tmpfs.fd)
                    except FileExistsError:
                        pass


def create_devices(rootfs: str, devices, bind: bool = False) -> None:
    """Make the spec's device nodes, the defaults every container has, and /dev's symlinks.
    In a user namespace, where mknod(2) of a device is refused, each is the host's node of the
    same path bound in instead, as runc does."""
    make = _bind_device if bind else _mknod
    root = _root_fd(rootfs)
    try:
        made = set()
        for d in devices or ():
            make(root, rootfs, d["path"], d.get("type", "c"), d["major"], d["minor"], d.get("fileMode", 0o666),
                 d.get("uid", 0), d.get("gid", 0))
            made.add(d["path"])
        for path, major, minor in DEFAULT_DEVICES:
            if path not in made:
                make(root, rootfs, path, "c", major, minor, 0o666, 0, 0)
        links = list(_DEV_LINKS)
        if os.path.exists("/proc/kcore"):
            links.append(("/proc/kcore", "/dev/core"))
        for target, link in links:
            parent_rel, name = _in_root(rootfs, link, follow=False)
            parent = openat2.open_in_root(root, parent_rel, os.O_PATH | os.O_DIRECTORY)
            try:
                os.symlink(target, name, dir_fd=parent)
            except FileExistsError:
                pass
            finally:
                os.close(parent)
    finally:
        os.close(root)


def _mknod(root: int, rootfs: str, path: str, kind: str, major: int, minor: int, mode: int, uid: int,
           gid: int) -> None:
    type_bits = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[kind]
    parent_rel, name = _in_root(rootfs, path, follow=False)
    parent = openat2.mkdirs_in_root(root, parent_rel)
    try:
        try:
            os.unlink(name, dir_fd=parent)  # whatever is there, a symlink included, never what it points to
        except FileNotFoundError:
            pass
        os.mknod(name, type_bits | 0o600, os.makedev(major, minor), dir_fd=parent)
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            st = os.fstat(fd)
            if stat.S_IFMT(st.st_mode) != type_bits or st.st_rdev != os.makedev(major, minor):
                raise MountError(errno.EEXIST, f"device {path} was replaced while it was being made")
            # Mode and owner through the descriptor: a name can be swapped for a symlink, this can not.
            os.chmod(fd_path(fd), mode & 0o7777)
            os.chown(fd_path(fd), uid, gid)
        finally:
            os.close(fd)
    finally:
        os.close(parent)


def _bind_device(root: int, rootfs: str, path: str, kind: str, major: int, minor: int, mode: int, uid: int,
                 gid: int) -> None:
    """Bind the host's device node at `path` (still the host's /dev: this runs before pivot_root)
    over an empty file at `path` in the rootfs, if it is the device the spec names."""
    type_bits = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK}.get(kind)
    try:
        host = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise MountError(e.errno, f"device {path}: the host's node to bind into a user namespace: {_why(e)}") from None
    try:
        st = os.fstat(host)
        if type_bits is None or stat.S_IFMT(st.st_mode) != type_bits or st.st_rdev != os.makedev(major, minor):
            raise MountError(errno.ENODEV, f"device {path}: the host's {path} is not device {kind} {major}:{minor}, "
                                           "which a container in a user namespace can only have bound from there")
        with _place(root, rootfs, path, "file", follow=False) as place:
            libc.mount(fd_path(host), place.path, None, libc.MS_BIND)
    finally:
        os.close(host)


def bind_console(rootfs: str, pty_path: str) -> None:
    """Make the container's /dev/console the terminal it was given, as runc does. The mount
    point is /dev/console itself, never where a symlink there points (runc's CVE-2025-52565)."""
    root = _root_fd(rootfs)
    try:
        with _place(root, rootfs, "/dev/console", "file", follow=False) as place:
            libc.mount(pty_path, place.path, None, libc.MS_BIND)
    finally:
        os.close(root)


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


def unmount_beneath(*paths: str) -> None:
    """Detach every mount on or beneath each of `paths`, deepest first: what a half-made
    container left (its rootfs, image mounts, idmapped staging binds), before its directories
    are removed, so that removing them can never reach into a mounted filesystem. The mount
    table is read once for all of them: it grows with every container running."""
    prefixes = tuple(os.path.normpath(path).rstrip("/") + "/" for path in paths)
    points = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4]
            if "\\" in point:  # an escaped space, tab, newline or backslash (octal)
                point = point.encode().decode("unicode_escape")
            if point + "/" in prefixes or point.startswith(prefixes):
                points.add(point)
    for point in sorted(points, key=len, reverse=True):
        try:
            libc.umount(point, libc.MNT_DETACH)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOENT):  # gone with its parent already
                raise


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


def mask(rootfs: str, paths) -> None:
    """Hide each path: /dev/null over a file, an empty read-only tmpfs over a directory.

    The /dev/null bound is the container's own (its mount's flags show, as under runc) only if it
    is the null device: were it a symlink to a /proc file, or another device, that would be
    bound over the masked path instead (runc's CVE-2025-31133). Otherwise the host's is used."""
    if not paths:
        return
    root = _root_fd(rootfs)
    null = _null_device(root, rootfs)
    try:
        for path in paths:
            try:
                with _place(root, rootfs, path) as place:
                    if stat.S_ISDIR(os.fstat(place.fd).st_mode):
                        libc.mount("tmpfs", place.path, "tmpfs", libc.MS_RDONLY)
                    else:
                        libc.mount(fd_path(null), place.path, None, libc.MS_BIND)
            except FileNotFoundError:
                pass
            except MountError:
                raise
            except OSError as e:
                raise MountError(e.errno, f"masking {path}: {_why(e)}") from None
    finally:
        os.close(null)
        os.close(root)


def _null_device(root: int, rootfs: str) -> int:
    """An O_PATH descriptor of the container's /dev/null if it is the null device, else the host's."""
    try:
        with _place(root, rootfs, "/dev/null", follow=False) as place:
            st = os.fstat(place.fd)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3):
                return os.dup(place.fd)
    except OSError:
        pass
    return os.open("/dev/null", os.O_PATH | os.O_CLOEXEC)


def _flags_of(fd: int) -> int:
    """The mount flags what `fd` holds is mounted with now, which a bind remount would otherwise clear."""
    f = os.fstatvfs(fd).f_flag
    flags = f & (libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC | libc.MS_NOATIME | libc.MS_NODIRATIME)
    if f & os.ST_RELATIME:
        flags |= libc.MS_RELATIME
    return flags


def make_readonly(rootfs: str, paths) -> None:
    """Bind each path onto itself read-only (before pivot_root, as mask())."""
    root = _root_fd(rootfs)
    try:
        for path in paths or ():
            try:
                with _place(root, rootfs, path) as place:
                    libc.mount(place.path, place.path, None, libc.MS_BIND | libc.MS_REC)
                    with place.reopen() as top:
                        libc.mount(None, top.path, None,
                                   libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | _flags_of(top.fd))
            except FileNotFoundError:
                pass
            except MountError:
                raise
            except OSError as e:
                raise MountError(e.errno, f"making {path} read-only: {_why(e)}") from None
    finally:
        os.close(root)


def remount_root_readonly() -> None:
    root = os.open("/", os.O_PATH | os.O_CLOEXEC)
    try:
        flags = _flags_of(root)
    finally:
        os.close(root)
    libc.mount(None, "/", None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY | flags)
