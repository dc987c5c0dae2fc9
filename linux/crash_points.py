"""Named steps at which a test can have a process die by SIGKILL, to prove that a crash at any
step loses and leaks nothing (tests/test_crash_walk.py walks them all).

A step is armed by naming it in the environment the process starts with:
CRICKET_CRASH_AT=sandbox_run.after_record (several: comma-separated). The names are read once,
at import; an unarmed step costs one lookup in an empty set. cricketd's helpers (the zygote,
the shims, the network worker) inherit the variable, so a step in their code is armed the
same way. What a step's name means is said where it is called.

It lives here, at the bottom of the layers, because the image, CNI and shim code has steps
too and may import nothing above linux/.
"""
from __future__ import annotations

import os
import signal

ENV = "CRICKET_CRASH_AT"

_ARMED = frozenset(filter(None, (name.strip() for name in os.environ.get(ENV, "").split(","))))


def armed(name: str) -> bool:
    return name in _ARMED


def crash_point(name: str) -> None:
    """SIGKILL this process if step `name` is armed. Never an exception: nothing may clean up."""
    if name in _ARMED:
        die(name)


def die(name: str, pid: int = 0) -> None:
    """SIGKILL `pid` (this process by default: the zygote kills cricketd at steps of cricketd's
    that only the zygote sees)."""
    target = pid or os.getpid()
    # One line on stderr first, by write(2): the test reads it to know the step was reached.
    os.write(2, f"crash point {name}: SIGKILL to pid {target} (from {os.getpid()})\n".encode())
    os.kill(target, signal.SIGKILL)
    while target == os.getpid():  # the kernel ends us on the way back from kill(2); nothing more runs
        signal.pause()
