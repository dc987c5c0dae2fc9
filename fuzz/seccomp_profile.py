"""Fuzz target: Localhost seccomp profiles (cri/seccomp_profile.py), OCI or Docker format, as
CreateContainer reads one from the node, and then the filter libseccomp compiles from it, as the
shim does (linux/seccomp.py).

The first byte picks the container's bounding set (none, containerd's default, or all with
CAP_SYS_ADMIN) and the machine the profile is read for."""
from __future__ import annotations

import os

from fuzz.harness import instrumented, run, scratch

with instrumented(__name__ == "__main__"):
    from cri.seccomp_profile import load_localhost
    from linux import seccomp

EXPECTED = (ValueError, seccomp.SeccompError)
_CAPS = ((), ("CAP_CHOWN", "CAP_NET_RAW", "CAP_KILL"), ("CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_BPF"))
_MACHINES = ("x86_64", "aarch64", "s390x")


def check(data: bytes) -> None:
    if not data:
        return
    caps, machine = _CAPS[data[0] % 3], _MACHINES[(data[0] // 3) % 3]
    path = os.path.join(scratch(), "profile.json")
    with open(path, "wb") as f:
        f.write(data[1:])
    profile = load_localhost(path, caps, kernel=(5, 15), machine=machine)
    if machine == "x86_64":  # what the shim compiles: for its own machine only
        seccomp.compile(profile)


if __name__ == "__main__":
    run(check, EXPECTED)
