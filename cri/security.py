"""Security context and resources: from the CRI's fields to the OCI spec's, validated.

Every refusal is InvalidArgument naming the field, raised before anything is
made: a bad request leaves no half-made container.
"""
from __future__ import annotations

import os
import re
import stat

from api.runtime.v1 import api_pb2 as pb
from cri import seccomp_profile
from cri.errors import InvalidArgument, RuntimeFailure
from linux import caps, cgroups
from linux.cgroups import Cgroup, CgroupError

# Sysctls that belong to a namespace a pod owns, and which namespace (sysctls of the
# whole host, like kernel.*, may not be set per pod).
_NAMESPACED_SYSCTLS = (
    (re.compile(r"^kernel\.(shm[a-z_]+|msg[a-z_]+|sem)$"), "ipc"),
    (re.compile(r"^fs\.mqueue\.[a-z_]+$"), "ipc"),
    (re.compile(r"^net\.[a-z0-9_.\-/]+$"), "net"),
)
_CPUSET = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_PAGE_SIZE = re.compile(r"^(\d+)([KMG]B)$")
OOM_SCORE_ADJ_RANGE = (-1000, 1000)


# -- sysctls ----------------------------------------------------------------------------


def pod_sysctls(config: pb.PodSandboxConfig) -> dict[str, str]:
    """The pod's sysctls, each checked to be namespaced in a namespace the pod owns."""
    ns = config.linux.security_context.namespace_options
    out = {}
    for key, value in config.linux.sysctls.items():
        name = key.replace("/", ".")
        owner = next((kind for pattern, kind in _NAMESPACED_SYSCTLS if pattern.match(name)), None)
        if owner is None:
            raise InvalidArgument(f"sysctl {key!r} is not namespaced: it would change the whole node")
        if owner == "net" and ns.network == pb.NODE:
            raise InvalidArgument(f"sysctl {key!r} needs the pod's own network namespace, but it uses the host's")
        if owner == "ipc" and ns.ipc == pb.NODE:
            raise InvalidArgument(f"sysctl {key!r} needs the pod's own IPC namespace, but it uses the host's")
        if not os.path.exists("/proc/sys/" + name.replace(".", "/")):
            raise InvalidArgument(f"sysctl {key!r} does not exist on this kernel")
        if "\n" in value:
            raise InvalidArgument(f"sysctl {key!r} value {value!r} holds a newline")
        out[name] = value
    return out


# -- capabilities and privilege ---------------------------------------------------------


def capability_sets(ctx: pb.LinuxContainerSecurityContext, default: list[str]) -> dict[str, list[str]]:
    """The process's capability sets: all of them when privileged; ambient ones are also put in
    every other set, without which the kernel would not keep them across execve."""
    have = caps.bounding() if ctx.privileged else list(default)
    ambient = []
    for name in ctx.capabilities.add_ambient_capabilities:
        full = name.upper() if name.upper().startswith("CAP_") else "CAP_" + name.upper()
        if full not in caps.NUMBERS:
            raise InvalidArgument(f"capabilities.add_ambient_capabilities: unknown capability {name!r}")
        if full not in caps.bounding():
            raise InvalidArgument(f"capabilities.add_ambient_capabilities: {full} is not available to this "
                                  "node's runtime (not in its bounding set)")
        ambient.append(full)
        if full not in have:
            have.append(full)
    sets = {"bounding": have, "effective": have, "permitted": have}
    if ambient:
        sets["inheritable"] = ambient
        sets["ambient"] = ambient
    return sets


def check_privileged(ctx: pb.LinuxContainerSecurityContext, sandbox: pb.PodSandboxConfig) -> None:
    if ctx.privileged and not sandbox.linux.security_context.privileged:
        raise InvalidArgument("security_context.privileged: a privileged container needs a privileged pod sandbox")


_MAX_ID = 2**32 - 1  # (uid_t)-1 is no id


def user_namespace(ns: pb.NamespaceOption, what: str) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """The pod's user namespace as kubelet asks for it (`hostUsers: false`): its uid and gid
    mapping, each (container_id, host_id, length); None for the host's (mode NODE, or nothing
    said). Refused with InvalidArgument as containerd and CRI-O refuse it: a mode other than POD
    or NODE, mappings with NODE, other than exactly one uid and one gid mapping, a mapping that
    leaves container ID 0 unmapped, or one that overflows."""
    if not ns.HasField("userns_options"):
        return None
    u = ns.userns_options
    mode = pb.NamespaceMode.Name(u.mode)
    if u.mode == pb.NODE:
        if u.uids or u.gids:
            raise InvalidArgument(f"{what}.userns_options: mode NODE (the host's user namespace) takes no uid "
                                  "or gid mappings")
        return None
    if u.mode != pb.POD:
        raise InvalidArgument(f"{what}.userns_options: mode {mode} is not supported: a user namespace is the "
                              "pod's (POD) or the host's (NODE)")
    out = []
    for kind, mappings in (("uid", u.uids), ("gid", u.gids)):
        if len(mappings) != 1:
            raise InvalidArgument(f"{what}.userns_options: mode POD takes exactly one {kind} mapping, "
                                  f"got {len(mappings)}")
        m = mappings[0]
        if m.container_id != 0:
            raise InvalidArgument(f"{what}.userns_options: container ID 0 must be mapped, but the {kind} "
                                  f"mapping starts at container ID {m.container_id}")
        if m.length == 0 or m.host_id + m.length > _MAX_ID or m.container_id + m.length > _MAX_ID:
            raise InvalidArgument(f"{what}.userns_options: the {kind} mapping {m.container_id} -> {m.host_id} "
                                  f"of length {m.length} is empty or goes beyond the last id")
        out.append((m.container_id, m.host_id, m.length))
    return out[0], out[1]


def check_pod_user_namespace(config: pb.PodSandboxConfig) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """The pod's user namespace (see user_namespace), refused where it can not hold: a pod of its
    own user namespace has its own network, IPC and PID namespaces (as kubelet insists) and is not
    privileged."""
    ctx = config.linux.security_context
    ns = ctx.namespace_options
    mappings = user_namespace(ns, "namespace_options")
    if mappings is None:
        return None
    shared = [kind for kind, mode in (("network", ns.network), ("ipc", ns.ipc), ("pid", ns.pid)) if mode == pb.NODE]
    if shared:
        raise InvalidArgument(f"namespace_options.userns_options: a pod with a user namespace of its own can not "
                              f"share the host's {', '.join(shared)} namespace")
    if ctx.privileged:
        raise InvalidArgument("namespace_options.userns_options: a privileged pod can not have a user namespace "
                              "of its own")
    return mappings


def check_container_user_namespace(ctx: pb.LinuxContainerSecurityContext, sandbox: pb.PodSandboxConfig) -> None:
    """A container's userns_options must say what its pod's say (as containerd requires): its user
    namespace is the pod's."""
    pod = sandbox.linux.security_context.namespace_options
    ours = user_namespace(ctx.namespace_options, "security_context.namespace_options")
    if ours != user_namespace(pod, "namespace_options"):
        raise InvalidArgument("security_context.namespace_options.userns_options: a container's user namespace "
                              "must be its pod's: give it the pod sandbox's userns_options")
    if ours is not None and ctx.privileged:
        raise InvalidArgument("security_context.privileged: a container in a user namespace of its own can not "
                              "be privileged")


def proc_paths(ctx: pb.LinuxContainerSecurityContext) -> tuple[list[str], list[str]]:
    """The spec's maskedPaths and readonlyPaths: the context's, exactly, as containerd and CRI-O
    take them. kubelet always sends both, and that is how it says procMount: its default lists
    for Default, none at all for Unmasked. The API allows Unmasked only with hostUsers: false;
    like containerd, Cricket does not ask for a user namespace before it leaves /proc unmasked.
    A privileged container gets neither (its /proc is the host's to see)."""
    if ctx.privileged:
        return [], []
    return list(ctx.masked_paths), list(ctx.readonly_paths)


_HOST_DEV_SKIP = ("/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/fd", "/dev/.lxc", "/dev/.udev")


def host_devices() -> list[dict]:
    """Every character and block device of the host's /dev, for a privileged container."""
    out = []
    for dirpath, dirnames, filenames in os.walk("/dev"):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in _HOST_DEV_SKIP]
        for name in filenames:
            path = os.path.join(dirpath, name)
            if path == "/dev/console":
                continue  # the container's own terminal goes there
            try:
                st = os.lstat(path)
            except OSError:
                continue
            kind = "c" if stat.S_ISCHR(st.st_mode) else "b" if stat.S_ISBLK(st.st_mode) else None
            if kind:
                out.append({"path": path, "type": kind, "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev),
                            "fileMode": st.st_mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid})
    return out


# -- confinement profiles -----------------------------------------------------------------


def _apparmor_enabled() -> bool:
    try:
        with open("/sys/module/apparmor/parameters/enabled") as f:
            return f.read().strip() == "Y"
    except OSError:
        return False


def _host_has(lsm_enabled: bool, name: str) -> str:
    return f"this host has {name}, but" if lsm_enabled else f"{name} is not enabled on this host, and"


def selinux_enabled() -> bool:
    """Whether the kernel enforces SELinux here: selinuxfs is mounted (go-selinux asks the same)."""
    return os.path.exists("/sys/fs/selinux/enforce")


def check_lsm(ctx: pb.LinuxContainerSecurityContext) -> None:
    """AppArmor and SELinux: Cricket loads no AppArmor profile and sets no SELinux label. A
    profile asked for is refused rather than silently not applied (a container the caller believes
    confined would run unconfined); kubelet asks for one only where the node has AppArmor. An
    SELinux label is refused where SELinux is enabled, for the same reason; where it is not, a
    label confines nothing under any runtime, and kubelet passes a pod's seLinuxOptions on
    whatever the node: it is accepted and left unapplied, as containerd and CRI-O do."""
    profile = ctx.apparmor
    wants = ""
    if ctx.HasField("apparmor") and profile.profile_type != pb.SecurityProfile.Unconfined:
        wants = "runtime/default" if profile.profile_type == pb.SecurityProfile.RuntimeDefault \
            else f"localhost/{profile.localhost_ref}"
    elif ctx.apparmor_profile and ctx.apparmor_profile != "unconfined":
        wants = ctx.apparmor_profile
    if wants:
        raise InvalidArgument(f"security_context.apparmor: profile {wants!r} asked for; "
                              f"{_host_has(_apparmor_enabled(), 'AppArmor')} Cricket applies no AppArmor "
                              "profile: only unconfined is possible")
    sel = ctx.selinux_options
    if (sel.user or sel.role or sel.level or (sel.type and "unconfined" not in sel.type)) and selinux_enabled():
        raise InvalidArgument("security_context.selinux_options: SELinux labels asked for; this host has "
                              "SELinux, but Cricket sets no SELinux label")


def seccomp(ctx: pb.LinuxContainerSecurityContext, capabilities: list[str]) -> dict | None:
    """The OCI seccomp object for the context, or None for unconfined (and for privileged)."""
    if ctx.privileged:
        return None
    if ctx.HasField("seccomp"):
        kind = ctx.seccomp.profile_type
        ref = ctx.seccomp.localhost_ref
    elif ctx.seccomp_profile_path:  # the deprecated spelling: runtime/default, localhost/<path>
        path = ctx.seccomp_profile_path
        if path in ("runtime/default", "docker/default"):
            kind, ref = pb.SecurityProfile.RuntimeDefault, ""
        elif path == "unconfined":
            kind, ref = pb.SecurityProfile.Unconfined, ""
        elif path.startswith("localhost/"):
            kind, ref = pb.SecurityProfile.Localhost, path[len("localhost/"):]
        else:
            raise InvalidArgument(f"security_context.seccomp_profile_path {path!r}: want runtime/default, "
                                  "unconfined or localhost/<path>")
    else:
        return None  # kubelet's own default is unconfined
    if kind == pb.SecurityProfile.Unconfined:
        return None
    if kind == pb.SecurityProfile.RuntimeDefault:
        return seccomp_profile.default_profile(capabilities)
    if not ref or not os.path.isabs(ref):
        raise InvalidArgument(f"security_context.seccomp.localhost_ref {ref!r}: want an absolute path to a profile")
    try:
        return seccomp_profile.load_localhost(ref, capabilities)
    except ValueError as e:
        raise InvalidArgument(f"security_context.seccomp.localhost_ref: {e}") from None


# -- resources ------------------------------------------------------------------------------


def _online_cpus() -> set[int]:
    with open("/sys/devices/system/cpu/online") as f:
        return _cpuset_members(f.read().strip())


def _cpuset_members(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        out.update(range(int(first), int(last or first) + 1))
    return out


def clamp_oom_score_adj(value: int) -> int:
    """Never below cricketd's own score: lowering it needs CAP_SYS_RESOURCE, which hosts like this
    one lack (what containerd's restrict_oom_score_adj does)."""
    with open("/proc/self/oom_score_adj") as f:
        own = int(f.read())
    return max(value, own)


def resources(r: pb.LinuxContainerResources, where: str = "resources") -> dict:
    """An OCI linux.resources object (without devices) from CRI resources, every field checked."""
    out: dict = {}
    cpu: dict = {}
    if r.cpu_shares < 0:
        raise InvalidArgument(f"{where}.cpu_shares must not be negative, got {r.cpu_shares}")
    if r.cpu_shares:
        cpu["shares"] = max(2, min(r.cpu_shares, 262144))  # the kernel's range, as runc clamps
    if r.cpu_period and not 1000 <= r.cpu_period <= 1_000_000:
        raise InvalidArgument(f"{where}.cpu_period must be 1000..1000000 microseconds, got {r.cpu_period}")
    if r.cpu_period:
        cpu["period"] = r.cpu_period
    if r.cpu_quota and r.cpu_quota != -1 and r.cpu_quota < 1000:
        raise InvalidArgument(f"{where}.cpu_quota must be -1 or at least 1000 microseconds, got {r.cpu_quota}")
    if r.cpu_quota:
        cpu["quota"] = r.cpu_quota
    for field in ("cpuset_cpus", "cpuset_mems"):
        value = getattr(r, field)
        if not value:
            continue
        if not _CPUSET.match(value):
            raise InvalidArgument(f"{where}.{field} {value!r} is not a list like 0-3,5")
        if field == "cpuset_cpus" and not _cpuset_members(value) <= _online_cpus():
            raise InvalidArgument(f"{where}.cpuset_cpus {value!r} names CPUs this node does not have")
        cpu[field[len("cpuset_"):]] = value
    if cpu:
        out["cpu"] = cpu
    memory: dict = {}
    if r.memory_limit_in_bytes < 0:
        raise InvalidArgument(f"{where}.memory_limit_in_bytes must not be negative, got {r.memory_limit_in_bytes}")
    if r.memory_limit_in_bytes:
        memory["limit"] = r.memory_limit_in_bytes
    if r.memory_swap_limit_in_bytes:
        if r.memory_swap_limit_in_bytes != -1 and r.memory_swap_limit_in_bytes < r.memory_limit_in_bytes:
            raise InvalidArgument(
                f"{where}.memory_swap_limit_in_bytes ({r.memory_swap_limit_in_bytes}) is memory plus swap, "
                f"so it must be at least memory_limit_in_bytes ({r.memory_limit_in_bytes})")
        memory["swap"] = r.memory_swap_limit_in_bytes
    if memory:
        out["memory"] = memory
    pages = []
    for h in r.hugepage_limits:
        if not _PAGE_SIZE.match(h.page_size):
            raise InvalidArgument(f"{where}.hugepage_limits: page_size {h.page_size!r} is not like 2MB or 1GB")
        pages.append({"pageSize": h.page_size, "limit": h.limit})
    if pages and cgroups.mode() == "v1" and not any("hugetlb" in n.split(",") for n in cgroups.hierarchies()):
        pages = []  # no hugetlb controller here: ignored, as containerd's tolerate_missing_hugetlb_controller
    if pages:
        out["hugepageLimits"] = pages
    if r.unified:
        if cgroups.mode() == "v1":
            bad = sorted(k for k in r.unified if k not in cgroups.V1_UNIFIED_KEYS)
            if bad:
                raise InvalidArgument(
                    f"{where}.unified {bad}: this node has cgroup v1, where only "
                    f"{', '.join(cgroups.V1_UNIFIED_KEYS)} have a meaning"
                )
        for key in r.unified:
            if "/" in key or key.startswith(".") or "." not in key:
                raise InvalidArgument(f"{where}.unified key {key!r} is not a cgroup file name")
        out["unified"] = dict(r.unified)
    if not OOM_SCORE_ADJ_RANGE[0] <= r.oom_score_adj <= OOM_SCORE_ADJ_RANGE[1]:
        raise InvalidArgument(f"{where}.oom_score_adj must be -1000..1000, got {r.oom_score_adj}")
    return out


def apply_resources(path: str, resources: dict, what: str) -> None:
    """Put checked resources (from `resources`) on a live cgroup; one not made yet gets them from the spec."""
    cg = Cgroup(path)
    if not cg.exists():
        return
    try:
        cg.apply(resources)
    except CgroupError as e:
        raise RuntimeFailure(f"updating the resources of {what}: {e}") from None
