"""Device rules on cgroup v2: an eBPF program of type BPF_PROG_TYPE_CGROUP_DEVICE.

cgroup v2 has no devices controller. Before a task makes, reads or writes a device node
the kernel asks the device programs attached to its cgroup2 cgroup and to that cgroup's
ancestors (besides the v1 devices controller, where there is one); every one must say yes.
This module turns an OCI linux.resources.devices list into such a program: pure functions
from rules to bytecode (parse_rules, assemble), the meaning they encode as plain Python
(allows), and the bpf(2) calls that load it and attach it to a cgroup2 directory
(set_device_program).

The meaning is the one the v1 devices controller gives the same rules written in order, and
runc's device filter too: for each access (m, r, w) the last rule that matches the device
decides. Before the first rule everything is allowed (what a cgroup under an unrestricted
parent inherits on v1), so a list that starts with a deny-all, as every OCI runtime's
default does, is an allow list. An access is granted when each of its parts is: opening
a node read-write needs both r and w. (Where v1 keeps a wildcard allow despite a later
deny of one device in it, and runc refuses such a list, the deny holds here.)
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import resource
import struct
import sys
from dataclasses import dataclass

# struct bpf_cgroup_dev_ctx (linux/bpf.h): access_type = (BPF_DEVCG_ACC_* << 16) | BPF_DEVCG_DEV_*
_CTX_ACCESS_TYPE, _CTX_MAJOR, _CTX_MINOR = 0, 4, 8
DEV_BLOCK, DEV_CHAR = 1, 2
ACC_MKNOD, ACC_READ, ACC_WRITE = 1, 2, 4
ACC_ALL = ACC_MKNOD | ACC_READ | ACC_WRITE
_ACCESS = {"m": ACC_MKNOD, "r": ACC_READ, "w": ACC_WRITE}
_TYPES = {"a": None, "b": DEV_BLOCK, "c": DEV_CHAR}
# An immediate operand is a signed 32-bit number, sign-extended for a 64-bit compare; a
# dev_t's major (12 bits) and minor (20 bits) are far below this anyway.
_MAX_NUMBER = (1 << 31) - 1


class DeviceRuleError(ValueError):
    pass


@dataclass(frozen=True)
class Rule:
    """One device rule; None matches any type, major or minor."""
    allow: bool
    type: int | None
    major: int | None
    minor: int | None
    access: int  # ACC_* bits

    def matches(self, dev_type: int, major: int, minor: int) -> bool:
        return ((self.type is None or self.type == dev_type) and (self.major is None or self.major == major)
                and (self.minor is None or self.minor == minor))


def _number(rule: dict, key: str, where: str) -> int | None:
    value = rule.get(key)
    if value is None or value == -1:  # OCI leaves a wildcard out; runc and the v1 syntax's "*" say -1
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_NUMBER:
        raise DeviceRuleError(f"{where}.{key}: want a device number 0..{_MAX_NUMBER} or -1 for any, got {value!r}")
    return value


def parse_rules(rules: list[dict]) -> list[Rule]:
    """Check OCI LinuxDeviceCgroup objects ({"allow", "type", "major", "minor", "access"})."""
    if not isinstance(rules, list):
        raise DeviceRuleError(f"devices: want a list of device rules, got {rules!r}")
    out = []
    for n, rule in enumerate(rules):
        where = f"devices[{n}]"
        if not isinstance(rule, dict):
            raise DeviceRuleError(f"{where}: want an object, got {rule!r}")
        kind = rule.get("type") or "a"
        if kind not in _TYPES:
            raise DeviceRuleError(f"{where}.type: want a, b or c, got {kind!r}")
        access_text = rule.get("access") or "rwm"  # omitted (OCI's omitempty) is every access, as on v1
        if not isinstance(access_text, str) or set(access_text) - set(_ACCESS):
            raise DeviceRuleError(f"{where}.access: want letters of rwm, got {access_text!r}")
        access = 0
        for letter in access_text:
            access |= _ACCESS[letter]
        out.append(Rule(bool(rule.get("allow")), _TYPES[kind], _number(rule, "major", where),
                        _number(rule, "minor", where), access))
    return out


def allows(rules: list[Rule], dev_type: int, major: int, minor: int, access: int) -> bool:
    """What the program answers, in Python: the reference its bytecode is tested against."""
    allowed = ACC_ALL
    for rule in rules:
        if rule.matches(dev_type, major, minor):
            allowed = allowed | rule.access if rule.allow else allowed & ~rule.access
    return access & allowed == access


# -- the bytecode --------------------------------------------------------------------------

# Opcodes (linux/bpf_common.h, linux/bpf.h): class | operation | operand source.
_LDX_MEM_W = 0x01 | 0x60 | 0x00  # dst = *(u32 *)(src + off), zero-extended
_ALU32_AND_K = 0x04 | 0x50
_ALU32_OR_K = 0x04 | 0x40
_ALU32_RSH_K = 0x04 | 0x70
_ALU32_MOV_K = 0x04 | 0xB0
_ALU32_AND_X = 0x04 | 0x50 | 0x08
_JNE_K = 0x05 | 0x50
_JNE_X = 0x05 | 0x50 | 0x08
_EXIT = 0x05 | 0x90
# Registers: r1 holds the context on entry; r0 the answer on exit.
_R0, _R1, _R2, _R3, _R4, _R5 = range(6)
_R_TYPE, _R_ACCESS, _R_MAJOR, _R_MINOR = _R2, _R3, _R4, _R5


@dataclass(frozen=True)
class Insn:
    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def encode(self) -> bytes:
        # struct bpf_insn: u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm — in the host's byte
        # order, where the bit-fields' order follows too (dst is the low nibble on little-endian).
        regs = self.dst | self.src << 4 if sys.byteorder == "little" else self.dst << 4 | self.src
        return struct.pack("=BBhi", self.code, regs, self.off, self.imm)


def instructions(rules: list[Rule]) -> list[Insn]:
    """The program for `rules`: r0 carries the accesses allowed so far (ACC_* bits) through the
    rules in order, each rule's block skipped when the device does not match; at the end the
    request is granted when every access it asks for is still allowed."""
    # A rule that matches every device and access sets the whole state: nothing before it counts.
    start, initial = 0, ACC_ALL
    for n, rule in enumerate(rules):
        if rule.type is None and rule.major is None and rule.minor is None and rule.access == ACC_ALL:
            start, initial = n + 1, ACC_ALL if rule.allow else 0
    out = [
        Insn(_LDX_MEM_W, _R_TYPE, _R1, _CTX_ACCESS_TYPE),
        Insn(_ALU32_AND_K, _R_TYPE, imm=0xFFFF),
        Insn(_LDX_MEM_W, _R_ACCESS, _R1, _CTX_ACCESS_TYPE),
        Insn(_ALU32_RSH_K, _R_ACCESS, imm=16),
        Insn(_LDX_MEM_W, _R_MAJOR, _R1, _CTX_MAJOR),
        Insn(_LDX_MEM_W, _R_MINOR, _R1, _CTX_MINOR),
        Insn(_ALU32_MOV_K, _R0, imm=initial),
    ]
    for rule in rules[start:]:
        tests = [(reg, value) for reg, value in ((_R_TYPE, rule.type), (_R_MAJOR, rule.major),
                                                 (_R_MINOR, rule.minor)) if value is not None]
        # Each test jumps past the rest of the block: the tests after it and the one update.
        for i, (reg, value) in enumerate(tests):
            out.append(Insn(_JNE_K, reg, off=len(tests) - i, imm=value))
        if rule.allow:
            out.append(Insn(_ALU32_OR_K, _R0, imm=rule.access))
        else:
            out.append(Insn(_ALU32_AND_K, _R0, imm=ACC_ALL & ~rule.access))
    out += [
        Insn(_ALU32_AND_X, _R0, _R_ACCESS),
        Insn(_JNE_X, _R0, _R_ACCESS, off=2),
        Insn(_ALU32_MOV_K, _R0, imm=1),
        Insn(_EXIT),
        Insn(_ALU32_MOV_K, _R0, imm=0),
        Insn(_EXIT),
    ]
    return out


def assemble(rules: list[dict]) -> bytes:
    """The bytecode for an OCI devices list. Raises DeviceRuleError for a malformed rule."""
    return b"".join(insn.encode() for insn in instructions(parse_rules(rules)))


# -- bpf(2) --------------------------------------------------------------------------------

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351, "riscv64": 280}
_BPF_PROG_LOAD, _BPF_PROG_ATTACH, _BPF_PROG_DETACH = 5, 8, 9
_BPF_PROG_GET_FD_BY_ID, _BPF_PROG_QUERY = 13, 16
_BPF_PROG_TYPE_CGROUP_DEVICE = 15
_BPF_CGROUP_DEVICE = 6  # the attach type
BPF_F_ALLOW_MULTI = 2
_ATTR_SIZE = 128  # of union bpf_attr this code fills; the kernel wants what it does not know zeroed
_LOG_SIZE = 1 << 16
_QUERY_MAX = 64
# No helper the program calls is GPL-only, so the kernel takes the project's own licence.
LICENSE = b"Apache-2.0"
PROGRAM_NAME = b"cricket_devices"  # at most 15 bytes: what bpftool prog shows

_libc = ctypes.CDLL(None, use_errno=True)


def _bpf(cmd: int, attr: ctypes.Array, what: str) -> int:
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"{what}: no bpf(2) number known for {platform.machine()}")
    ret = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(_ATTR_SIZE))
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return ret


def _attr(fields: list[tuple[str, int, int | bytes]]) -> ctypes.Array:
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    for fmt, offset, value in fields:
        struct.pack_into("=" + fmt, attr, offset, value)
    return attr


def load(program: bytes, license: bytes = LICENSE) -> int:
    """Load a device program; return its fd. The error carries the verifier's log."""
    insns = ctypes.create_string_buffer(program, len(program))
    lic = ctypes.create_string_buffer(license)
    log = ctypes.create_string_buffer(_LOG_SIZE)

    def attempt(log_level: int) -> int:
        attr = _attr([
            ("I", 0, _BPF_PROG_TYPE_CGROUP_DEVICE), ("I", 4, len(program) // 8),
            ("Q", 8, ctypes.addressof(insns)), ("Q", 16, ctypes.addressof(lic)),
            ("I", 24, log_level), ("I", 28, _LOG_SIZE if log_level else 0),
            ("Q", 32, ctypes.addressof(log) if log_level else 0),
            ("16s", 48, PROGRAM_NAME), ("I", 68, _BPF_CGROUP_DEVICE),  # prog_name, expected_attach_type
        ])
        return _bpf(_BPF_PROG_LOAD, attr, "loading the device program")

    try:
        return attempt(0)
    except OSError as e:
        if e.errno == errno.EPERM and _raise_memlock():
            return attempt(0)
        if e.errno not in (errno.EINVAL, errno.EACCES):
            raise
    # Load again with the verifier's log, only now: asking for it costs every load.
    try:
        return attempt(1)
    except OSError as e:
        verifier = log.value.decode(errors="replace").strip().splitlines()
        raise OSError(e.errno, f"{e.strerror}; the verifier said: {' / '.join(verifier[-5:])}") from None


def _raise_memlock() -> bool:
    # Kernels before 5.11 charge programs to RLIMIT_MEMLOCK (runc lifts it as well); later ones to
    # the memory cgroup, and never fail with EPERM for it.
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == resource.RLIM_INFINITY:
        return False
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (OSError, ValueError):
        return False
    return True


def attached(cgroup_fd: int) -> list[int]:
    """The ids of the device programs attached to this cgroup itself (not its ancestors)."""
    ids = (ctypes.c_uint32 * _QUERY_MAX)()
    attr = _attr([("I", 0, cgroup_fd), ("I", 4, _BPF_CGROUP_DEVICE), ("Q", 16, ctypes.addressof(ids)),
                  ("I", 24, _QUERY_MAX)])
    _bpf(_BPF_PROG_QUERY, attr, "listing the cgroup's device programs")
    count = struct.unpack_from("=I", attr, 24)[0]
    return list(ids[:count])


def _program_fd(prog_id: int) -> int:
    return _bpf(_BPF_PROG_GET_FD_BY_ID, _attr([("I", 0, prog_id)]), f"opening device program {prog_id}")


def attach(cgroup_fd: int, prog_fd: int, flags: int = BPF_F_ALLOW_MULTI) -> None:
    # BPF_F_ALLOW_MULTI, as runc and systemd attach theirs: programs of ancestors keep applying,
    # and a parent's multi program does not forbid a child's.
    attr = _attr([("I", 0, cgroup_fd), ("I", 4, prog_fd), ("I", 8, _BPF_CGROUP_DEVICE), ("I", 12, flags)])
    _bpf(_BPF_PROG_ATTACH, attr, "attaching the device program")


def detach(cgroup_fd: int, prog_fd: int) -> None:
    attr = _attr([("I", 0, cgroup_fd), ("I", 4, prog_fd), ("I", 8, _BPF_CGROUP_DEVICE)])
    _bpf(_BPF_PROG_DETACH, attr, "detaching a device program")


def set_device_program(cgroup_dir: str, rules: list[dict]) -> None:
    """Make `rules` the device program of the cgroup2 directory `cgroup_dir`, replacing any device
    program attached there before. The new one is attached before the old ones are detached, so
    the cgroup is never without one: for that moment both apply, and the stricter wins.

    Raises DeviceRuleError for a malformed rule, OSError naming the step that failed.
    """
    program = assemble(rules)
    dir_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        old = attached(dir_fd)
        prog_fd = load(program)
        try:
            attach(dir_fd, prog_fd)
        finally:
            os.close(prog_fd)  # the attachment holds the program from here on
        for prog_id in old:
            try:
                old_fd = _program_fd(prog_id)
            except FileNotFoundError:
                continue  # detached meanwhile by another updater
            try:
                detach(dir_fd, old_fd)
            except FileNotFoundError:
                pass
            finally:
                os.close(old_fd)
    finally:
        os.close(dir_fd)
