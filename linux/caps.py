"""Linux capabilities by name, as the OCI runtime spec writes them ("CAP_CHOWN")."""
from __future__ import annotations

# linux/capability.h, in number order.
NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
NUMBERS = {name: i for i, name in enumerate(NAMES)}


class UnknownCapability(ValueError):
    pass


def number(name: str) -> int:
    try:
        return NUMBERS[name.upper()]
    except KeyError:
        raise UnknownCapability(f"unknown capability {name!r}") from None


def bounding() -> list[str]:
    """The capabilities this process may ever hold (its bounding set): what "all" can mean here."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapBnd:"):
                bits = int(line.split()[1], 16)
                return [name for i, name in enumerate(NAMES) if bits & (1 << i)]
    return list(NAMES)


def mask(names) -> int:
    """The bit mask of a list of capability names."""
    bits = 0
    for name in names or ():
        bits |= 1 << number(name)
    return bits
