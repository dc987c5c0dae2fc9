"""From a CRI container config and an image config to an OCI runtime spec.

The semantics are Docker's and containerd's: command/args against the image's
Entrypoint/Cmd, the image's env then the config's, the working dir, the user
from the security context or the image, the sandbox's files mounted in, image
volumes, default mounts and devices, and the default capability set.
"""
from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Collection, Iterable, Mapping

from api.runtime.v1 import api_pb2 as pb
from cri.errors import FailedPrecondition, InvalidArgument
from linux import caps, libc, openat2
from linux.mounts import mount_of

OCI_VERSION = "1.1.0"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# containerd's default capability set for CRI containers.
DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/sys/devices/virtual/powercap", "/proc/scsi",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

_DEFAULT_MOUNTS = (
    ("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"]),
    ("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
    ("/dev/pts", "devpts", "devpts", ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
    ("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
    ("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
    ("/sys/fs/cgroup", "cgroup", "cgroup", ["nosuid", "noexec", "nodev", "relatime", "ro"]),
)
# The device cgroup: everything denied, then what every container may use.
_DEVICE_RULES = [
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},    # null
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},    # zero
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},    # full
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},    # random
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},    # urandom
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},    # tty
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},    # console
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},    # ptmx
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},               # pts/*
]



def device_rules(privileged: bool) -> list[dict]:
    """The device cgroup rules: a privileged container may use every device."""
    if privileged:
        return [{"allow": True, "access": "rwm"}]
    return [dict(rule) for rule in _DEVICE_RULES]


_NONE: Mapping[str, str] = {}

_PROPAGATION = {
    pb.PROPAGATION_PRIVATE: "rprivate",
    pb.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    pb.PROPAGATION_BIDIRECTIONAL: "rshared",
}


def process_args(config: pb.ContainerConfig, image: dict) -> list[str]:
    """Docker's rule: a command replaces the entrypoint and the image's Cmd; args alone replace Cmd."""
    entrypoint = list(image.get("Entrypoint") or [])
    cmd = list(image.get("Cmd") or [])
    if config.command:
        entrypoint, cmd = list(config.command), []
    if config.args:
        cmd = list(config.args)
    args = entrypoint + cmd
    if not args:
        raise InvalidArgument("container has no command: neither the config nor the image gives one")
    return args


def environment(config: pb.ContainerConfig, image: dict, hostname: str) -> list[str]:
    """The image's env, then the config's (a later key wins); PATH defaults as in Docker."""
    env: dict[str, str] = {}
    # Values are bytes in the CRI; surrogateescape carries any byte through to execve unchanged.
    given = (f"{e.key}={e.value.decode('utf-8', 'surrogateescape')}" for e in config.envs)
    for item in [f"HOSTNAME={hostname}", *(image.get("Env") or []), *given]:
        key, _, value = item.partition("=")
        env[key] = value
    env.setdefault("PATH", DEFAULT_PATH.split("=", 1)[1])
    return [f"{k}={v}" for k, v in env.items()]


# -- users ---------------------------------------------------------------------------


# The most of an image's /etc/passwd or /etc/group read: real ones are a few kilobytes, and
# each is read whole into the daemon's memory.
USER_DB_LIMIT = 1 << 20


def _read_db(rootfs: str, path: str) -> list[list[str]]:
    """The entries of the image's /etc/passwd or /etc/group; none if it has no such file.

    The image chose what is there, so the file is resolved inside the rootfs (its symlinks
    can not lead out; one inside is followed, as containerd does), opened only if it is a regular
    file (a FIFO's open waits for a writer, a device's content is the host's) and read only up
    to USER_DB_LIMIT. A file that is something else, or larger, is refused: a user looked up in
    it would be a guess. Blocking calls: the caller runs this off the event loop.
    """
    try:
        root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    try:
        data = openat2.read_in_root(root, path, USER_DB_LIMIT)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return []
    except openat2.NotRegularFile as e:
        raise InvalidArgument(f"the image's {path} {e.strerror}: users and groups can not be looked up "
                              "in it") from None
    except openat2.FileTooLarge:
        raise InvalidArgument(f"the image's {path} is larger than {USER_DB_LIMIT} bytes, the most read "
                              "for users and groups") from None
    except OSError as e:  # a symlink loop, a magic link
        raise InvalidArgument(f"the image's {path} can not be read: {e.strerror}") from None
    finally:
        os.close(root)
    text = data.decode(errors="replace")
    return [line.split(":") for line in text.split("\n") if line.strip() and not line.startswith("#")]


def resolve_user(rootfs: str, user: str, group: int | None, supplemental: list[int], strict: bool = False) -> dict:
    """An OCI "user" from a Docker user string (uid, name, uid:gid, name:group), looked up in
    the container's own /etc/passwd and /etc/group. `strict` (the CRI's Strict supplemental
    groups policy) leaves out the groups /etc/group lists the user in. It reads the image's
    files: call it off the event loop."""
    name, _, grp = user.partition(":")
    passwd = _read_db(rootfs, "/etc/passwd")
    groups = _read_db(rootfs, "/etc/group")
    uid = gid = None
    username = ""
    entry = None
    if name.isdigit():
        uid = int(name)
        entry = next((e for e in passwd if len(e) > 3 and e[2] == name), None)
    elif name:
        entry = next((e for e in passwd if e[0] == name and len(e) > 3), None)
        if entry is None:
            raise InvalidArgument(f"user {name!r} is not in the image's /etc/passwd")
    if entry is not None:
        username = entry[0]
        uid = int(entry[2])
        gid = int(entry[3]) if entry[3].isdigit() else 0
    if grp:
        if grp.isdigit():
            gid = int(grp)
        else:
            g = next((e for e in groups if e[0] == grp and len(e) > 2), None)
            if g is None:
                raise InvalidArgument(f"group {grp!r} is not in the image's /etc/group")
            gid = int(g[2])
    if group is not None:
        gid = group
    uid = uid or 0
    gid = gid or 0
    extra: list[int] = []
    if username and not strict:
        # The groups /etc/group lists the user in, as Docker and containerd add them.
        for g in groups:
            if len(g) > 3 and username in g[3].split(",") and g[2].isdigit():
                extra.append(int(g[2]))
    for sup in supplemental:
        extra.append(sup)
    # The primary group is a supplementary one too, as containerd sets it since the fix for
    # GHSA-hmfx-3pcx-653p: otherwise a process that changes its gid keeps no trace of it.
    return {"uid": uid, "gid": gid, "additionalGids": sorted({gid, *extra})}


def user_string(ctx: pb.LinuxContainerSecurityContext, image: dict) -> tuple[str, int | None]:
    """The user to resolve and an explicit group: the security context wins over the image."""
    group = ctx.run_as_group.value if ctx.HasField("run_as_group") else None
    if group is not None and not ctx.run_as_username and not ctx.HasField("run_as_user"):
        # As containerd and CRI-O refuse it: a group alone would pair with whatever user the image names.
        raise InvalidArgument("security_context.run_as_group is set without run_as_user or run_as_username")
    if ctx.run_as_username:
        return ctx.run_as_username, group
    if ctx.HasField("run_as_user"):
        return str(ctx.run_as_user.value), group
    image_user = image.get("User") or ""
    if group is not None:
        image_user = image_user.split(":", 1)[0]  # the explicit group replaces the image's
    return image_user or "0", group


# -- capabilities --------------------------------------------------------------------


def capabilities(ctx: pb.LinuxContainerSecurityContext) -> list[str]:
    """The default set changed by the context, in containerd's order: "ALL" added, "ALL"
    dropped, then single adds, then single drops (so ALL minus one, or none plus one, work)."""
    add = [_cap_name(c) for c in ctx.capabilities.add_capabilities]
    drop = [_cap_name(c) for c in ctx.capabilities.drop_capabilities]
    have = list(DEFAULT_CAPS)
    available = caps.bounding()
    missing = [c for c in add if c != "ALL" and c not in available]
    if missing:
        raise InvalidArgument(f"capabilities.add_capabilities: {', '.join(missing)} not available to this "
                              "node's runtime (not in its bounding set)")
    if "ALL" in add:
        have = available  # all that the runtime itself holds, as containerd reads "all"
    if "ALL" in drop:
        have = []
    have += [c for c in add if c != "ALL" and c not in have]
    return [c for c in have if c not in drop]


def _cap_name(name: str) -> str:
    upper = name.upper()
    if upper == "ALL":
        return "ALL"
    full = upper if upper.startswith("CAP_") else "CAP_" + upper
    if full not in caps.NUMBERS:
        raise InvalidArgument(f"unknown capability {name!r}")
    return full


# -- mounts ----------------------------------------------------------------------------


def _depth(path: str) -> int:
    return len([p for p in posixpath.normpath(path).split("/") if p])


def mounts(config: pb.ContainerConfig, sandbox_files: list[pb.Mount], volumes: list[tuple[str, str]],
           image_sources: Mapping[str, str] = _NONE, writable: Collection[str] = ()) -> list[dict]:
    """Default mounts, then the CRI's and the sandbox's, shallow before deep so none hides another.

    A CRI mount wins over a sandbox file or volume at the same place, and over
    a default one; a CRI mount of /dev replaces everything under /dev. A mount
    of an image (Mount.image) binds what `image_sources` has mounted for its
    container path (cri/image_mounts.py). Host paths are resolved by
    resolve_source(), `writable` naming the host directories containers can write
    (writable_dirs()); every source in the spec is a path with no symlink in it.
    """
    cri = list(config.mounts)
    taken = {posixpath.normpath(m.container_path) for m in cri}
    extra = [m for m in sandbox_files if posixpath.normpath(m.container_path) not in taken]
    taken |= {posixpath.normpath(m.container_path) for m in extra}
    for m in cri + extra:
        if not m.container_path.startswith("/"):
            raise InvalidArgument(f"mount container_path {m.container_path!r} must be absolute")
        if not m.image.image and not m.host_path:
            raise InvalidArgument(f"mount of {m.container_path} has no host_path")
        _check_recursive_read_only(m)
    # This container's own writable mounts count as well: an earlier attempt of it had them, and
    # may have planted a symlink for this one to follow.
    roots = frozenset(os.path.normpath(r) for r in writable)  # once: resolve_source takes a frozenset as it is
    roots |= {resolve_source(m.host_path, roots, m.container_path, make=False)
              for m in cri + extra if not m.image.image and not m.readonly}
    binds = []
    for m in cri + extra:
        if m.image.image:
            # Read-only, and private: an image's filesystem never changes, so there is nothing
            # to propagate. Its source is resolved already, inside the image.
            binds.append({"destination": m.container_path, "type": "bind",
                          "source": os.path.realpath(image_sources[m.container_path]),
                          "options": ["rbind", "rprivate", "ro", *_rro(m)]})
            continue
        source = resolve_source(m.host_path, roots, m.container_path)
        _check_propagation(m, source)
        options = ["rbind", _PROPAGATION.get(m.propagation, "rprivate"), "ro" if m.readonly else "rw", *_rro(m),
                   *_kept_flags(source)]
        binds.append({"destination": m.container_path, "type": "bind", "source": source, "options": options})
    for dest, source in volumes:
        if posixpath.normpath(dest) not in taken:
            binds.append({"destination": dest, "type": "bind", "source": os.path.realpath(source),
                          "options": ["rbind", "rprivate", "rw"]})
    binds.sort(key=lambda m: _depth(m["destination"]))
    defaults = []
    dev_given = "/dev" in taken
    for dest, kind, source, options in _DEFAULT_MOUNTS:
        if dest in taken or (dev_given and dest.startswith("/dev/")):
            continue
        defaults.append({"destination": dest, "type": kind, "source": source, "options": list(options)})
    return defaults + binds


def _kept_flags(source: str) -> list[str]:
    """The source mount's nosuid, nodev and noexec, said again for a bind of it: an executor that
    remounts a bind (to make it read-only, or crun always) sets only the flags it is given, and a
    host's noexec mount bound read-only would run its files in the container (runc 1.1 did)."""
    try:
        flags = os.statvfs(source).f_flag
    except OSError:
        return []
    return [word for bit, word in ((os.ST_NOSUID, "nosuid"), (os.ST_NODEV, "nodev"), (os.ST_NOEXEC, "noexec"))
            if flags & bit]


def id_mappings(mapping: tuple[int, int, int]) -> list[dict]:
    """One CRI IDMapping (container_id, host_id, length) as the OCI spec's uidMappings/gidMappings."""
    inside, outside, length = mapping
    return [{"containerID": inside, "hostID": outside, "size": length}]


def idmap_binds(mounts: list[dict], uids: list[dict], gids: list[dict], skip: Iterable[str] = ()) -> None:
    """Make every bind mount of a container in a user namespace of its pod's an idmapped one
    (the OCI spec's "idmap"/"ridmap" options with the mount's own mappings, the container's): its
    files' owners show through the container's mappings, so nothing is chowned and what the
    container's root writes lands as the host's root, as without a user namespace. Binds of the
    sources in `skip`, mapped already, are left as they are."""
    skipped = {os.path.realpath(path) for path in skip}
    for m in mounts:
        options = m.get("options") or []
        if m.get("type") != "bind" or "idmap" in options or "ridmap" in options or m.get("source") in skipped:
            continue
        m["options"] = [*options, "ridmap" if "rbind" in options else "idmap"]
        m["uidMappings"], m["gidMappings"] = uids, gids


def writable_dirs(specs: Iterable[dict]) -> set[str]:
    """The host paths containers can write through: every read-write bind source of these specs."""
    out = set()
    for spec in specs:
        for m in spec.get("mounts") or ():
            options = m.get("options") or ()
            if m.get("type") == "bind" and "ro" not in options and "rro" not in options and m.get("source"):
                out.add(os.path.normpath(m["source"]))
    return out


_MAX_SYMLINKS = 255


def resolve_source(host_path: str, writable: Collection[str], container_path: str = "", make: bool = True) -> str:
    """The host path a bind mount's source names, resolved on the host once, at CreateContainer,
    to a path with no symlink left in it (missing directories are made, as kubelet expects).

    Symlinks are followed as the host has them — an absolute one from the host's root, a relative
    one from its directory — but inside a directory in `writable`: a container can write there,
    so a symlink there may be one it planted to make this mount bind the host's files. Inside such
    a directory a symlink is followed only while it stays inside (as kubelet resolves a subPath),
    and one that leads out is refused. What is made there is made without following any symlink.
    The shim binds the result refusing any symlink on it (linux/mounts.py), so one swapped in
    after this resolution fails the mount instead of moving it. Without `make`, nothing is made:
    the path is only worked out."""
    where = f"mount {container_path}: host_path {host_path}" if container_path else f"host path {host_path}"
    if not host_path.startswith("/"):
        raise InvalidArgument(f"{where}: want an absolute path")
    roots = writable if isinstance(writable, frozenset) else frozenset(os.path.normpath(r) for r in writable)
    parts = [p for p in host_path.split("/") if p not in ("", ".")]
    resolved, jail, links = "/", None, 0

    def jail_of(path: str) -> str | None:
        # The outermost root at or above `path` (containers write all beneath it), found by its
        # ancestors rather than by every root: a node's thousands of containers each have some.
        if "/" in roots:
            return "/"
        ancestor = ""
        for part in path.strip("/").split("/"):
            ancestor += "/" + part
            if ancestor in roots:
                return ancestor
        return None

    def leads_out(how: str) -> InvalidArgument:
        return InvalidArgument(f"{where}: {how} leads out of {jail}, a directory containers can write: a "
                               "symlink there is followed only as far as it stays inside it")

    while parts:
        part = parts.pop(0)
        if part == "..":
            if jail is not None and resolved == jail and jail != "/":
                raise leads_out("'..'")
            resolved = posixpath.dirname(resolved)
            continue
        candidate = posixpath.join(resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            rest = posixpath.normpath(posixpath.join(candidate, *parts))
            if jail is not None and rest != jail and not rest.startswith(jail.rstrip("/") + "/"):
                raise leads_out(f"{candidate}'s missing path") from None
            return _make_missing(rest, jail, where) if make else rest
        except OSError as e:
            raise InvalidArgument(f"{where}: {candidate}: {e.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_SYMLINKS:
                raise InvalidArgument(f"{where}: too many levels of symlinks")
            target = os.readlink(candidate)
            if target.startswith("/"):
                if jail is not None:
                    inside = posixpath.normpath(target)
                    if inside != jail and not inside.startswith(jail.rstrip("/") + "/"):
                        raise leads_out(f"the symlink {candidate} -> {target}")
                    target = posixpath.relpath(inside, jail)
                    resolved = jail
                else:
                    resolved = "/"
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved = candidate
        if jail is None:
            jail = jail_of(resolved)
    return resolved


def _make_missing(path: str, jail: str | None, where: str) -> str:
    """Make the missing directory `path`: beneath `jail` by descriptors, following no symlink; else
    as the host has it."""
    try:
        if jail is None:
            os.makedirs(path, mode=0o755, exist_ok=True)
            return os.path.realpath(path)
        root = os.open(jail, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.close(openat2.mkdirs_in_root(root, posixpath.relpath(path, jail)))
        finally:
            os.close(root)
    except OSError as e:
        raise InvalidArgument(f"{where}: can not make {path}: {e.strerror or e}") from None
    return path


def _rro(m: pb.Mount) -> list[str]:
    """"rro" for a recursive read-only mount (runc's and crun's option, as containerd sends it),
    beside the plain "ro" that keeps the mount itself read-only whoever reads the spec."""
    return ["rro"] if m.recursive_read_only else []


def _check_recursive_read_only(m: pb.Mount) -> None:
    """containerd's refusals: recursive_read_only is a kind of readonly, and mounts propagated
    into the container later would not be read-only, so only private propagation goes with it."""
    if not m.recursive_read_only:
        return
    what = f"mount {m.container_path}" + (f" (host_path {m.host_path})" if m.host_path else "")
    if not m.readonly:
        raise InvalidArgument(f"{what}: recursive_read_only needs readonly as well: a recursive read-only "
                              "mount can not be read-write")
    if m.propagation != pb.PROPAGATION_PRIVATE:
        name = pb.MountPropagation.Name(m.propagation) if m.propagation in pb.MountPropagation.values() \
            else str(m.propagation)
        raise InvalidArgument(f"{what}: recursive_read_only needs private propagation, not {name}: mounts "
                              "propagated into the container later would not be read-only")
    if not libc.has_mount_setattr():
        raise FailedPrecondition(f"{what}: recursive_read_only needs mount_setattr(2), which this kernel lacks "
                                 "(Linux 5.12 or later has it): Status does not offer recursive read-only mounts")


def _check_propagation(m: pb.Mount, source: str) -> None:
    """Propagation needs a source on a mount that propagates (as containerd checks): else the
    container would silently see nothing of what it was promised."""
    if m.propagation not in (pb.PROPAGATION_BIDIRECTIONAL, pb.PROPAGATION_HOST_TO_CONTAINER):
        return
    point, optional = mount_of(source)
    shared = any(o.startswith("shared:") for o in optional)
    slave = any(o.startswith("master:") for o in optional)
    if m.propagation == pb.PROPAGATION_BIDIRECTIONAL and not shared:
        raise InvalidArgument(
            f"mount {m.container_path}: bidirectional propagation needs {m.host_path} on a "
            f"shared mount, but {point} is not shared"
        )
    if m.propagation == pb.PROPAGATION_HOST_TO_CONTAINER and not (shared or slave):
        raise InvalidArgument(
            f"mount {m.container_path}: host-to-container propagation needs {m.host_path} on a "
            f"shared or slave mount, but {point} is private"
        )


def root_propagation(all_mounts: list[dict]) -> str | None:
    """rshared if a mount is bidirectional, rslave if one wants host-to-container; else the
    executor's default (rslave, as runc's)."""
    options = {o for m in all_mounts for o in m.get("options", ())}
    if "rshared" in options:
        return "rshared"
    if "rslave" in options:
        return "rslave"
    return None
