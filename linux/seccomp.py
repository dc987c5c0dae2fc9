"""Compile an OCI seccomp object (the spec's libc.seccomp) and load it into a process.

The system's libseccomp compiles the filter to classic BPF, through a small ctypes
binding of the functions needed; the shim does that on the host before a
container's set-up pivots or joins a mount namespace, and the child loads the
program with the seccomp(2) system call alone. The rules follow runc's reading
of the object, so a profile behaves the same under the built-in executor as
under runc:

- a syscall name this libseccomp does not know is skipped, not an error (profiles
  list syscalls newer than the library);
- an architecture it does not know is skipped too;
- a rule whose action is the default action is dropped (libseccomp refuses it);
- the args of a rule are ANDed, unless two of them test the same argument: then
  each arg becomes a rule of its own, so they are ORed;
- no_new_privs is left alone: setting it is the spec's noNewPrivileges, the
  caller's business.

The library is loaded on the first compile(), not at import: most shims never
see a profile.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any, TypeGuard, cast

from linux import libc

# libseccomp's action values (seccomp.h); ERRNO and TRACE carry a 16-bit datum.
_ACT_KILL_PROCESS = 0x80000000
_ACT_KILL_THREAD = 0x00000000
_ACT_TRAP = 0x00030000
_ACT_ERRNO = 0x00050000
_ACT_TRACE = 0x7FF00000
_ACT_LOG = 0x7FFC0000
_ACT_ALLOW = 0x7FFF0000

ACTIONS = {
    "SCMP_ACT_KILL": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": _ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": _ACT_TRAP,
    "SCMP_ACT_ERRNO": _ACT_ERRNO,
    "SCMP_ACT_TRACE": _ACT_TRACE,
    "SCMP_ACT_LOG": _ACT_LOG,
    "SCMP_ACT_ALLOW": _ACT_ALLOW,
}
# The actions whose low 16 bits are the spec's errnoRet (runc gives both EPERM when unset).
_WITH_DATUM = (_ACT_ERRNO, _ACT_TRACE)

# enum scmp_compare
OPS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

# The spec's flags as seccomp(2) filter flag bits (linux/seccomp.h). runc also takes TSYNC;
# WAIT_KILLABLE_RECV only means something with a notify listener, which we lack.
FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": 1,
    "SECCOMP_FILTER_FLAG_LOG": 2,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
}

# The runtime spec's architecture names; libseccomp's own name is the lowercased tail.
ARCHES = frozenset(f"SCMP_ARCH_{a}" for a in (
    "X86", "X86_64", "X32", "ARM", "AARCH64", "MIPS", "MIPS64", "MIPS64N32", "MIPSEL", "MIPSEL64",
    "MIPSEL64N32", "PPC", "PPC64", "PPC64LE", "S390", "S390X", "PARISC", "PARISC64", "RISCV64",
    "LOONGARCH64", "M68K", "SH", "SHEB"))

_NR_SCMP_ERROR = -1  # what seccomp_syscall_resolve_name returns for a name it does not know
_MAX_ARGS = 6  # a syscall has at most six arguments
_U64 = 1 << 64

_lib = None  # the loaded binding, once compile() has run


class SeccompError(OSError):
    """The profile could not be turned into a filter, or the kernel refused the filter."""


def _bad(message: str) -> SeccompError:
    return SeccompError(errno.EINVAL, message)


def _known(name, names) -> TypeGuard[str]:
    """Whether a profile's value is one of `names`: a string first (a list or an object, which the
    JSON may hold instead, can not even be looked up)."""
    return isinstance(name, str) and name in names


def _is_uint(v, bound: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < bound


def action_value(name, errno_ret=None, where: str = "action") -> int:
    """libseccomp's number for a spec action name, with its errnoRet folded in where it takes one."""
    if name == "SCMP_ACT_NOTIFY":
        raise SeccompError(errno.EOPNOTSUPP, f"{where}: SCMP_ACT_NOTIFY needs a seccomp agent, "
                                             "which Cricket does not run")
    if not _known(name, ACTIONS):
        raise _bad(f"{where}: unknown action {name!r} (want one of {', '.join(ACTIONS)})")
    value = ACTIONS[name]
    if errno_ret is not None and not _is_uint(errno_ret, 0x10000):
        raise _bad(f"{where}: errnoRet {errno_ret!r} is not a number from 0 to 65535")
    if value in _WITH_DATUM:
        value |= errno.EPERM if errno_ret is None else errno_ret
    return value


def _conditions(args, where: str) -> list[tuple[int, int, int, int]]:
    if args is None:
        return []
    if not isinstance(args, list):
        raise _bad(f"{where}.args: want a list, got {args!r}")
    out = []
    for i, arg in enumerate(args):
        at = f"{where}.args[{i}]"
        if not isinstance(arg, dict):
            raise _bad(f"{at}: want an object, got {arg!r}")
        index = arg.get("index")
        if not _is_uint(index, _MAX_ARGS):
            raise _bad(f"{at}: index {index!r} is not an argument number from 0 to 5")
        op = arg.get("op")
        if not _known(op, OPS):
            raise _bad(f"{at}: unknown op {op!r} (want one of {', '.join(OPS)})")
        value, value_two = arg.get("value", 0), arg.get("valueTwo", 0)
        for field, v in (("value", value), ("valueTwo", value_two)):
            if not _is_uint(v, _U64):
                raise _bad(f"{at}: {field} {v!r} is not an unsigned 64-bit number")
        out.append((cast(int, index), OPS[op], value, value_two))  # _is_uint checked it
    return out


def _rule_groups(conds: list) -> list[list]:
    """The filter rules one spec rule becomes: its args together (AND) — or, when two test the
    same argument, one rule per arg (OR), as runc does, since libseccomp cannot AND those."""
    indexes = [c[0] for c in conds]
    if len(set(indexes)) < len(indexes):
        return [[c] for c in conds]
    return [conds]


def _names(rule: dict, where: str) -> list[str]:
    names = rule.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(s, str) and s for s in names):
        raise _bad(f"{where}.names: want a non-empty list of syscall names, got {names!r}")
    return names


def validate(profile) -> None:
    """Check an OCI libc.seccomp object's shape and names without libseccomp (no syscall
    name is checked: unknown ones are skipped when compiled). Raises SeccompError."""
    if not isinstance(profile, dict):
        raise _bad(f"want a seccomp object, got {type(profile).__name__}")
    action_value(profile.get("defaultAction"), profile.get("defaultErrnoRet"), "defaultAction")
    if profile.get("listenerPath"):
        raise SeccompError(errno.EOPNOTSUPP, "listenerPath: seccomp agents are not supported")
    for field, known in (("architectures", ARCHES), ("flags", FLAGS)):
        values = profile.get(field) or []
        if not isinstance(values, list):
            raise _bad(f"{field}: want a list, got {values!r}")
        for v in values:
            if not _known(v, known):
                raise _bad(f"{field}: unknown or unsupported {v!r} (want one of {', '.join(sorted(known))})")
    rules = profile.get("syscalls") or []
    if not isinstance(rules, list):
        raise _bad(f"syscalls: want a list, got {rules!r}")
    for n, rule in enumerate(rules):
        where = f"syscalls[{n}]"
        if not isinstance(rule, dict):
            raise _bad(f"{where}: want an object, got {rule!r}")
        _names(rule, where)
        action_value(rule.get("action"), rule.get("errnoRet"), f"{where}.action")
        _conditions(rule.get("args"), where)


def _binding():
    """libseccomp.so.2 with the prototypes set, loaded once per process."""
    global _lib
    if _lib is not None:
        return _lib
    import ctypes

    lib: Any  # a CDLL that also carries ArgCmp, an attribute CDLL's stub does not know
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
    except OSError as e:
        raise SeccompError(errno.ENOENT, f"cannot load libseccomp.so.2 ({e}): install libseccomp2") from None

    class ArgCmp(ctypes.Structure):  # struct scmp_arg_cmp
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                    ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]

    ctx = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_init.restype = ctx
    lib.seccomp_release.argtypes = [ctx]
    lib.seccomp_release.restype = None
    lib.seccomp_attr_set.argtypes = [ctx, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_add.argtypes = [ctx, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctx, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctx, ctypes.c_int]
    lib.ArgCmp = ArgCmp
    _lib = lib
    return lib


def _check(rc: int, what: str) -> None:
    # libseccomp returns a negated errno rather than setting errno.
    if rc < 0:
        raise SeccompError(-rc, f"{what}: {os.strerror(-rc)}")


def _describe(name: str, group: list) -> str:
    ops = {v: k.removeprefix("SCMP_CMP_") for k, v in OPS.items()}
    tests = ", ".join(f"arg{i} {ops[op]} {a:#x}" + (f" want {b:#x}" if op == OPS["SCMP_CMP_MASKED_EQ"] else "")
                      for i, op, a, b in group)
    return f"{name}({tests})" if tests else name


@dataclass(frozen=True)
class Filter:
    """A compiled filter: the classic-BPF program and the seccomp(2) flags to load it with."""
    program: bytes
    flags: int

    def load(self) -> None:
        """Load the filter into the calling process. It must have set no_new_privs or hold
        CAP_SYS_ADMIN; the filter then stays through execve. Needs no library, so it works
        after pivot_root and setns, where libseccomp is out of reach."""
        libc.seccomp_set_filter(self.program, self.flags)


def compile(profile: dict) -> Filter:
    """Compile the OCI libc.seccomp object `profile` for this machine's architecture.

    Done in the shim before the container's set-up leaves the host's filesystem: the
    library is loaded from the host, the child only loads the result. Raises
    SeccompError naming the part that failed.
    """
    validate(profile)
    default = action_value(profile["defaultAction"], profile.get("defaultErrnoRet"))
    lib = _binding()
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise _bad(f"seccomp_init({profile['defaultAction']}): libseccomp refused the default action")
    try:
        for arch in profile.get("architectures") or ():
            token = lib.seccomp_arch_resolve_name(arch.removeprefix("SCMP_ARCH_").lower().encode())
            if not token:
                continue  # newer than this libseccomp, which could not build its filter anyway
            rc = lib.seccomp_arch_add(ctx, token)
            if rc != -errno.EEXIST:  # the native arch is in every new filter already
                _check(rc, f"seccomp_arch_add({arch})")
        for n, rule in enumerate(profile.get("syscalls") or ()):
            _add_rule(lib, ctx, rule, default, f"syscalls[{n}]")
        return Filter(_export(lib, ctx), sum(FLAGS[f] for f in set(profile.get("flags") or ())))
    finally:
        lib.seccomp_release(ctx)


def _export(lib, ctx) -> bytes:
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    try:
        _check(lib.seccomp_export_bpf(ctx, fd), "seccomp_export_bpf")
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _add_rule(lib, ctx, rule: dict, default: int, where: str) -> None:
    action = action_value(rule["action"], rule.get("errnoRet"))
    if action == default:
        return  # libseccomp refuses a rule that only repeats the default action
    groups = _rule_groups(_conditions(rule.get("args"), where))
    for name in rule["names"]:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr == _NR_SCMP_ERROR:
            continue  # newer than this libseccomp: runc skips these too
        for group in groups:
            cmps = (lib.ArgCmp * max(len(group), 1))(*(lib.ArgCmp(*c) for c in group))
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(group), cmps)
            _check(rc, f"{where}: seccomp_rule_add {rule['action']} {_describe(name, group)}")
