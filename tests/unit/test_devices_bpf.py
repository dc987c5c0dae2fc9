"""linux/devices_bpf.py's pure parts: OCI device rules to cgroup device program bytecode.

The bytecode is run here by a small interpreter of the eBPF instructions it uses, written from
the instruction set's definition and reading the bytes (not the Insn objects), and its answers
are compared with the rules' meaning (devices_bpf.allows) over many rule lists. The same
programs run in the kernel in tests/test_devices_bpf.py.
"""
from __future__ import annotations

import random
import struct

import pytest

from cri.oci_spec import device_rules
from linux import devices_bpf as bpf
from linux.devices_bpf import ACC_MKNOD, ACC_READ, ACC_WRITE, DEV_BLOCK, DEV_CHAR, DeviceRuleError

RW = ACC_READ | ACC_WRITE
RWM = RW | ACC_MKNOD


def run(program: bytes, dev_type: int, major: int, minor: int, access: int) -> int:
    """Interpret a cgroup device program on one request (struct bpf_cgroup_dev_ctx)."""
    ctx = struct.pack("<III", access << 16 | dev_type, major, minor)
    regs = [0] * 11
    regs[1] = -1  # the context pointer: only loads through r1 are understood
    pc, steps = 0, 0
    while True:
        steps += 1
        assert steps < 100_000 and 0 <= pc < len(program) // 8, f"ran off the program at {pc}"
        code, reg_byte, off, imm = struct.unpack_from("<BBhi", program, pc * 8)
        dst, src = reg_byte & 0xF, reg_byte >> 4
        cls, op, source = code & 0x07, code & 0xF0, code & 0x08
        pc += 1
        if code == 0x61:  # ldx w
            assert regs[src] == -1, "a load from something other than the context"
            regs[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif cls == 0x04:  # alu32
            operand = (regs[src] if source else imm) & 0xFFFFFFFF
            value = regs[dst] & 0xFFFFFFFF
            regs[dst] = {0x40: value | operand, 0x50: value & operand, 0x70: value >> operand,
                         0xB0: operand}[op]
        elif code == 0x95:  # exit
            return regs[0]
        elif cls == 0x05:  # jmp, 64-bit compare of zero-extended values
            operand = regs[src] if source else imm & 0xFFFFFFFFFFFFFFFF
            assert op == 0x50, f"unexpected jump {code:#x}"
            if regs[dst] != operand:
                pc += off
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def test_instructions_are_encoded_as_struct_bpf_insn():
    program = bpf.assemble([])
    # ldxw r2, [r1+0]: code 0x61, dst 2 in the low nibble, src 1 in the high one (little-endian)
    assert program[:8] == bytes([0x61, 0x12, 0, 0, 0, 0, 0, 0])
    # and32 r2, 0xffff
    assert program[8:16] == bytes([0x54, 0x02, 0, 0, 0xFF, 0xFF, 0, 0])
    assert program[-8:] == bytes([0x95, 0, 0, 0, 0, 0, 0, 0])  # exit
    assert bpf.Insn(0x55, 4, 0, 3, 136).encode() == bytes([0x55, 0x04, 3, 0, 136, 0, 0, 0])


def test_the_default_rules_allow_only_the_standard_devices():
    rules = device_rules(privileged=False)
    program = bpf.assemble(rules)
    allowed = [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2), (136, 0), (136, 99)]
    for major, minor in allowed:
        for access in (ACC_READ, ACC_WRITE, RW, ACC_MKNOD, RWM):
            assert run(program, DEV_CHAR, major, minor, access) == 1, (major, minor, access)
    for dev_type, major, minor in [(DEV_CHAR, 1, 1), (DEV_CHAR, 10, 200), (DEV_BLOCK, 8, 0), (DEV_BLOCK, 1, 3),
                                   (DEV_BLOCK, 136, 0), (DEV_CHAR, 4, 0), (DEV_BLOCK, 254, 0)]:
        for access in (ACC_READ, ACC_WRITE, ACC_MKNOD):
            assert run(program, dev_type, major, minor, access) == 0, (dev_type, major, minor, access)


def test_a_privileged_container_may_use_every_device():
    program = bpf.assemble(device_rules(privileged=True))
    assert all(run(program, t, 8, m, RWM) == 1 for t in (DEV_BLOCK, DEV_CHAR) for m in (0, 1, 2**20 - 1))


def test_the_last_matching_rule_decides_each_access():
    rules = [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
        {"allow": False, "type": "c", "major": 1, "minor": 3, "access": "w"},   # read-only from here on
        {"allow": True, "type": "b", "major": 8, "access": "r"},                 # every minor of 8
        {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "r"},
        {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "w"},  # r and w from two rules
    ]
    program = bpf.assemble(rules)
    cases = [
        ((DEV_CHAR, 1, 3, ACC_READ), 1), ((DEV_CHAR, 1, 3, ACC_WRITE), 0),
        ((DEV_CHAR, 1, 3, RW), 0),  # a later deny of part of an access denies the whole open
        ((DEV_CHAR, 1, 3, ACC_MKNOD), 1),
        ((DEV_BLOCK, 8, 0, ACC_READ), 1), ((DEV_BLOCK, 8, 17, ACC_READ), 1), ((DEV_BLOCK, 8, 0, RW), 0),
        ((DEV_CHAR, 8, 0, ACC_READ), 0),
        ((DEV_CHAR, 10, 200, RW), 1), ((DEV_CHAR, 10, 200, ACC_MKNOD), 0),
    ]
    parsed = bpf.parse_rules(rules)
    for (t, major, minor, access), want in cases:
        assert bpf.allows(parsed, t, major, minor, access) == bool(want), (t, major, minor, access)
        assert run(program, t, major, minor, access) == want, (t, major, minor, access)


def test_an_allow_all_or_deny_all_rule_overrides_what_came_before():
    denied_after_all = [{"allow": True, "access": "rwm"}, {"allow": False, "type": "a", "access": "rwm"}]
    assert run(bpf.assemble(denied_after_all), DEV_CHAR, 1, 3, ACC_READ) == 0
    allowed_after_all = [{"allow": False, "access": "rwm"}, {"allow": True, "type": "a", "major": -1,
                                                            "minor": -1, "access": "rwm"}]
    assert run(bpf.assemble(allowed_after_all), DEV_BLOCK, 8, 0, RWM) == 1
    # Rules before the last match-all rule cannot change an answer, so they are left out.
    assert bpf.assemble([{"allow": True, "type": "c", "major": 1, "access": "r"}, *denied_after_all]) == \
        bpf.assemble([{"allow": False, "access": "rwm"}])


def test_minus_one_and_an_absent_number_are_both_any():
    with_minus = [{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 136, "minor": -1,
                                                      "access": "rwm"}]
    absent = [{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 136, "access": "rwm"}]
    assert bpf.assemble(with_minus) == bpf.assemble(absent)
    assert run(bpf.assemble(absent), DEV_CHAR, 136, 7, RW) == 1


def test_an_empty_access_is_every_access():
    rules = [{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 1, "minor": 3, "access": ""}]
    assert run(bpf.assemble(rules), DEV_CHAR, 1, 3, RWM) == 1


@pytest.mark.parametrize("rule, message", [
    ({"allow": True, "type": "x", "access": "rwm"}, r"devices\[1\]\.type: want a, b or c"),
    ({"allow": True, "type": "c", "access": "rwx"}, r"devices\[1\]\.access: want letters of rwm"),
    ({"allow": True, "type": "c", "major": -2, "access": "r"}, r"devices\[1\]\.major"),
    ({"allow": True, "type": "c", "minor": 1 << 31, "access": "r"}, r"devices\[1\]\.minor"),
    ({"allow": True, "type": "c", "major": "8", "access": "r"}, r"devices\[1\]\.major"),
    ("c 1:3 rwm", r"devices\[1\]: want an object"),
])
def test_a_malformed_rule_is_named(rule, message):
    with pytest.raises(DeviceRuleError, match=message):
        bpf.assemble([{"allow": False, "access": "rwm"}, rule])


def test_rules_must_be_a_list():
    with pytest.raises(DeviceRuleError, match="want a list"):
        bpf.assemble({"allow": False})  # type: ignore[arg-type]


def _random_rule(rng: random.Random) -> dict:
    rule: dict = {"allow": rng.random() < 0.6, "type": rng.choice("abc"),
                  "access": "".join(a for a in "rwm" if rng.random() < 0.6)}
    if rng.random() < 0.7:
        rule["major"] = rng.choice([1, 8, 10, 136, -1])
    if rng.random() < 0.6:
        rule["minor"] = rng.choice([0, 3, 200, -1])
    return rule


def test_the_program_answers_as_the_rules_mean_over_many_rule_lists():
    rng = random.Random(20240601)
    devices = [(t, major, minor) for t in (DEV_BLOCK, DEV_CHAR) for major in (1, 8, 10, 136, 255)
               for minor in (0, 3, 200, 1000)]
    for _ in range(300):
        rules = [_random_rule(rng) for _ in range(rng.randrange(0, 9))]
        if rng.random() < 0.5:
            rules.insert(0, {"allow": False, "access": "rwm"})
        program, parsed = bpf.assemble(rules), bpf.parse_rules(rules)
        for t, major, minor in devices:
            for access in range(1, 8):
                want = bpf.allows(parsed, t, major, minor, access)
                assert run(program, t, major, minor, access) == int(want), (rules, t, major, minor, access)
