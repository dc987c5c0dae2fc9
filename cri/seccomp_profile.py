"""The seccomp profiles a container can ask for, as OCI linux.seccomp objects.

RuntimeDefault is containerd's default profile, rule for rule, so a pod sees the
same system calls here as under containerd: the calls a container needs are
allowed, everything else fails with EPERM; calls that need a capability the
container lacks stay out; clone may not make namespaces without CAP_SYS_ADMIN.

Localhost profiles are JSON files in the OCI shape, or in Docker's, which adds
per-architecture lists and rules that apply only with some capabilities, on some
architectures or kernels; those are settled here for the container at hand, so
the shim only ever sees the plain OCI object (linux/seccomp.py compiles it).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from linux import seccomp
from linux.seccomp import SeccompError

ALLOW = "SCMP_ACT_ALLOW"
ERRNO = "SCMP_ACT_ERRNO"

# What every container may call, whatever its capabilities. Names this machine's
# libseccomp or kernel does not know are harmless: the shim skips them, as runc does.
# Missing on purpose, as in containerd: keyctl/add_key/request_key (the keyring is not
# namespaced), io_uring_* (a long record of kernel holes), userfaultfd, kexec_*, swapon,
# and everything that needs one of the capabilities below.
_ALLOWED = (
    "accept", "accept4", "access", "adjtimex", "alarm",
    "bind", "brk",
    "cachestat", "capget", "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime",
    "clock_adjtime64", "clock_getres", "clock_getres_time64", "clock_gettime",
    "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "close", "close_range",
    "connect", "copy_file_range", "creat",
    "dup", "dup2", "dup3",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat",
    "exit", "exit_group",
    "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate", "fanotify_mark",
    "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat", "fcntl",
    "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr",
    "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv",
    "futex_wake", "futimesat",
    "getcpu", "getcwd", "getdents", "getdents64", "getegid", "getegid32", "geteuid",
    "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer", "getpeername",
    "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom", "getresgid",
    "getresgid32", "getresuid", "getresuid32", "getrlimit", "get_robust_list", "getrusage",
    "getsid", "getsockname", "getsockopt", "get_thread_area", "gettid", "gettimeofday",
    "getuid", "getuid32", "getxattr", "getxattrat",
    "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel",
    "ioctl", "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64",
    "ioprio_get", "ioprio_set", "io_setup", "io_submit", "ipc",
    "kill",
    "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "lchown",
    "lchown32", "lgetxattr", "link", "linkat", "listen", "listmount", "listxattr",
    "listxattrat", "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr",
    "lsm_get_self_attr", "lsm_list_modules", "lsm_set_self_attr", "lstat", "lstat64",
    "madvise", "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir", "mkdirat",
    "mknod", "mknodat", "mlock", "mlock2", "mlockall", "map_shadow_stack", "mmap", "mmap2",
    "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap",
    "mseal", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
    "name_to_handle_at", "nanosleep", "newfstatat", "_newselect",
    "open", "openat", "openat2",
    "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free",
    "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2",
    "prlimit64", "process_mrelease", "pselect6", "pselect6_time64", "pwrite64", "pwritev",
    "pwritev2",
    "read", "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom", "recvmmsg",
    "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "removexattrat", "rename",
    "renameat", "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction",
    "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend",
    "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo",
    "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getscheduler", "sched_rr_get_interval",
    "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr", "sched_setparam",
    "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget", "semop",
    "semtimedop", "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg",
    "sendto", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32",
    "setgroups", "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32",
    "setrlimit", "set_robust_list", "setsid", "setsockopt", "set_thread_area",
    "set_tid_address", "setuid", "setuid32", "setxattr", "setxattrat", "shmat", "shmctl",
    "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask",
    "sigreturn", "socketcall", "socketpair", "splice", "stat", "stat64", "statfs", "statfs64",
    "statmount", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs",
    "sysinfo",
    "tee", "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun",
    "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64", "timerfd_create",
    "timerfd_gettime", "timerfd_gettime64", "timerfd_settime", "timerfd_settime64", "times",
    "tkill", "truncate", "truncate64",
    "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "uretprobe", "utime", "utimensat",
    "utimensat_time64", "utimes",
    "vfork", "vmsplice",
    "wait4", "waitid", "waitpid", "write", "writev",
)

# socket(2) for every family but AF_ALG (38: the kernel's crypto API) and AF_VSOCK (40):
# three ranges, each one condition, because a rule with two tests of arg0 is split by
# runc into two rules that are ORed, which would let both families through.
AF_ALG = 38
AF_VSOCK = 40

# personality(2) may only pick Linux, 32-bit Linux, the 2.6-uname quirk or both, or query
# (0xffffffff): the other personalities change how the kernel reads memory layouts.
_PERSONALITIES = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)

# The clone(2) flags that make namespaces (linux/sched.h): without CAP_SYS_ADMIN, clone
# is allowed only when none is set. clone3 passes its flags in memory, which seccomp
# cannot read, so it is refused with ENOSYS: libc then falls back to clone.
CLONE_NAMESPACE_FLAGS = (0x00020000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
                         | 0x02000000)  # NEWNS | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWCGROUP
ENOSYS = 38

# Before Linux 4.8 a seccomp filter could be escaped through ptrace, so containerd allows
# ptrace and process_vm_* to everyone only from 4.8 on (and with CAP_SYS_PTRACE always).
_PTRACE_SAFE_SINCE = (4, 8)
_PTRACE = ("process_vm_readv", "process_vm_writev", "ptrace")

# What each capability adds, in containerd's order.
_BY_CAPABILITY = {
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_ADMIN": (
        "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
        "lookup_dcookie", "mount", "mount_setattr", "move_mount", "open_tree", "perf_event_open",
        "quotactl", "quotactl_fd", "setdomainname", "sethostname", "setns", "syslog", "umount",
        "umount2", "unshare",
    ),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("delete_module", "init_module", "finit_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": ("kcmp", "pidfd_getfd", "process_madvise") + _PTRACE,
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
}


@dataclass(frozen=True)
class Platform:
    """What the profiles need to know of the machine's architecture."""
    go_name: str                 # as Go (and so Docker profiles' "arches") names it
    native: str = ""             # the spec's name of the native arch (a Docker "archMap" key)
    arches: tuple = ()           # the filter's architectures in containerd's default profile
    syscalls: tuple = ()         # calls containerd allows on this architecture only
    clone_flags_arg: int = 0     # s390 passes clone's flags second


# Keyed by `uname -m`. The 32-bit ABIs a 64-bit kernel also runs are listed too, or their
# calls would meet the filter's bad-arch action (kill) instead of its rules.
PLATFORMS = {
    "x86_64": Platform("amd64", "SCMP_ARCH_X86_64", ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
                       ("arch_prctl", "modify_ldt")),
    "aarch64": Platform("arm64", "SCMP_ARCH_AARCH64", ("SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64"),
                        ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint",
                         "cacheflush", "set_tls")),
    "s390x": Platform("s390x", "SCMP_ARCH_S390X", ("SCMP_ARCH_S390", "SCMP_ARCH_S390X"),
                      ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"), clone_flags_arg=1),
    # containerd lists no architectures for ppc64le: the filter has the native one alone.
    "ppc64le": Platform("ppc64le", "SCMP_ARCH_PPC64LE", (), ("sync_file_range2", "swapcontext")),
    "riscv64": Platform("riscv64", "SCMP_ARCH_RISCV64", ("SCMP_ARCH_RISCV64",),
                        ("riscv_flush_icache", "riscv_hwprobe")),
}


def platform(machine: str | None = None) -> Platform:
    """The Platform of `machine` (default: this one); an unknown one gets no extras."""
    machine = machine or os.uname().machine
    return PLATFORMS.get(machine) or Platform(machine)


def kernel_version(release: str | None = None) -> tuple[int, int] | None:
    """(major, minor) of a kernel release string (default: the running kernel's), or None."""
    m = re.match(r"(\d+)\.(\d+)", release if release is not None else os.uname().release)
    return (int(m[1]), int(m[2])) if m else None


def _rule(names, action: str = ALLOW, args: list | None = None, errno_ret: int | None = None) -> dict:
    rule: dict = {"names": list(names), "action": action}
    if errno_ret is not None:
        rule["errnoRet"] = errno_ret
    if args:
        rule["args"] = args
    return rule


def _arg(index: int, op: str, value: int, value_two: int | None = None) -> dict:
    arg = {"index": index, "value": value, "op": op}
    if value_two is not None:
        arg["valueTwo"] = value_two
    return arg


def default_profile(capabilities: list[str], *, kernel: tuple[int, int] | None = None,
                    machine: str | None = None) -> dict:
    """containerd's RuntimeDefault seccomp profile for a container whose bounding set is
    `capabilities` ("CAP_SYS_ADMIN", …), as an OCI linux.seccomp object.

    `kernel` (major, minor) and `machine` (`uname -m`) default to this host's, as containerd
    reads them at the time the container is made.
    """
    plat = platform(machine)
    kernel = kernel if kernel is not None else kernel_version()
    rules = [
        _rule(_ALLOWED),
        _rule(["socket"], args=[_arg(0, "SCMP_CMP_LT", AF_ALG)]),
        _rule(["socket"], args=[_arg(0, "SCMP_CMP_EQ", AF_ALG + 1)]),
        _rule(["socket"], args=[_arg(0, "SCMP_CMP_GT", AF_VSOCK)]),
    ]
    rules += [_rule(["personality"], args=[_arg(0, "SCMP_CMP_EQ", p)]) for p in _PERSONALITIES]
    # An unreadable kernel version counts as old, as in containerd: the stricter choice.
    if kernel is not None and kernel >= _PTRACE_SAFE_SINCE:
        rules.append(_rule(_PTRACE))
    if plat.syscalls:
        rules.append(_rule(plat.syscalls))
    held: list[str] = []
    for cap in capabilities:
        cap = cap.upper()
        if cap in _BY_CAPABILITY and cap not in held:
            held.append(cap)
            rules.append(_rule(_BY_CAPABILITY[cap]))
    if "CAP_SYS_ADMIN" not in held:
        rules.append(_rule(["clone"], args=[
            _arg(plat.clone_flags_arg, "SCMP_CMP_MASKED_EQ", CLONE_NAMESPACE_FLAGS, 0)]))
        rules.append(_rule(["clone3"], ERRNO, errno_ret=ENOSYS))
    # No defaultErrnoRet, as containerd writes it: SCMP_ACT_ERRNO means EPERM to runc and crun.
    return {"defaultAction": ERRNO, "architectures": list(plat.arches), "syscalls": rules}


# -- Localhost profiles ---------------------------------------------------------------------------


def load_localhost(path: str, capabilities: Iterable[str] = (), *, kernel: tuple[int, int] | None = None,
                   machine: str | None = None) -> dict:
    """Read the Localhost seccomp profile at `path` as an OCI linux.seccomp object.

    The file is an OCI seccomp object or a Docker profile; a Docker profile's archMap and
    per-rule includes/excludes are settled for a container with bounding set `capabilities`
    (with none given, rules that need a capability are left out: the stricter reading) on
    this machine and kernel. Raises ValueError naming the file and what is wrong with it.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ValueError(f"seccomp profile {path}: no such file") from None
    except OSError as e:
        raise ValueError(f"seccomp profile {path}: cannot read it: {e.strerror}") from None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"seccomp profile {path}: not valid JSON: {e}") from None
    try:
        profile = _settle_docker(doc, {c.upper() for c in capabilities},
                                 kernel if kernel is not None else kernel_version(), platform(machine))
        seccomp.validate(profile)
    except SeccompError as e:
        raise ValueError(f"seccomp profile {path}: {e.strerror}") from None
    except ValueError as e:
        raise ValueError(f"seccomp profile {path}: {e}") from None
    return profile


_OCI_FIELDS = ("defaultAction", "defaultErrnoRet", "architectures", "flags", "listenerPath", "listenerMetadata")


def _settle_docker(doc, caps: set[str], kernel, plat: Platform) -> dict:
    """The OCI object a (possibly Docker-format) profile means for this container."""
    if not isinstance(doc, dict):
        raise ValueError(f"want a JSON object, got {type(doc).__name__}")
    if "defaultAction" not in doc:
        raise ValueError("defaultAction is missing")
    profile = {k: doc[k] for k in _OCI_FIELDS if doc.get(k) is not None}
    arch_map = doc.get("archMap") or []
    if arch_map:
        if doc.get("architectures"):
            raise ValueError("both architectures and archMap are given: use one")
        if not isinstance(arch_map, list) or not all(isinstance(a, dict) for a in arch_map):
            raise ValueError(f"archMap: want a list of objects, got {arch_map!r}")
        for entry in arch_map:
            if plat.native and entry.get("architecture") == plat.native:
                subs = entry.get("subArchitectures") or []
                if not isinstance(subs, list):
                    raise ValueError(f"archMap: subArchitectures of {plat.native}: want a list, got {subs!r}")
                profile["architectures"] = [entry["architecture"], *subs]
                break
    rules = doc.get("syscalls") or []
    if not isinstance(rules, list):
        raise ValueError(f"syscalls: want a list, got {rules!r}")
    out = []
    for n, rule in enumerate(rules):
        where = f"syscalls[{n}]"
        if not isinstance(rule, dict):
            raise ValueError(f"{where}: want an object, got {rule!r}")
        if not _applies(rule, caps, kernel, plat, where):
            continue
        names = rule.get("names")
        if rule.get("name"):  # Docker's older single-name spelling
            if names:
                raise ValueError(f"{where}: both name and names are given: use one")
            names = [rule["name"]]
        settled = {"names": names, "action": rule.get("action")}
        for key in ("errnoRet", "args"):
            if rule.get(key) is not None:
                settled[key] = rule[key]
        out.append(settled)
    profile["syscalls"] = out
    return profile


def _applies(rule: dict, caps: set[str], kernel, plat: Platform, where: str) -> bool:
    """Whether a Docker rule's excludes and includes let it into this container's profile:
    excluded if any listed cap is held, included only if all are (moby's reading)."""
    excludes, includes = rule.get("excludes") or {}, rule.get("includes") or {}
    for field, f in (("excludes", excludes), ("includes", includes)):
        if not isinstance(f, dict):
            raise ValueError(f"{where}.{field}: want an object, got {f!r}")
        for key in ("caps", "arches"):
            values = f.get(key) or []
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ValueError(f"{where}.{field}.{key}: want a list of strings, got {f[key]!r}")
    if plat.go_name in (excludes.get("arches") or ()):
        return False
    if caps & {c.upper() for c in excludes.get("caps") or ()}:
        return False
    if excludes.get("minKernel") and _at_least(kernel, excludes["minKernel"], f"{where}.excludes"):
        return False
    if includes.get("arches") and plat.go_name not in includes["arches"]:
        return False
    if not {c.upper() for c in includes.get("caps") or ()} <= caps:
        return False
    if includes.get("minKernel") and not _at_least(kernel, includes["minKernel"], f"{where}.includes"):
        return False
    return True


def _at_least(kernel, min_kernel, where: str) -> bool:
    want = kernel_version(min_kernel) if isinstance(min_kernel, str) else None
    if want is None:
        raise ValueError(f"{where}.minKernel: {min_kernel!r} is not a kernel version like \"4.8\"")
    return kernel is not None and kernel >= want
