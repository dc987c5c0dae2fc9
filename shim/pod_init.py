"""The pod init: PID 1 of a pod whose containers share one PID namespace.

A PID namespace dies with its first process, so such a pod needs a process to
hold it: this one, forked from the zygote, which does nothing but reap the
orphans that land on it.
"""
from __future__ import annotations

import os
import signal

from linux import libc, mounts

_PR_SET_DUMPABLE = 4  # prctl(2)
_EMPTY_ROOT = "/tmp"  # any directory of the host's: a tmpfs over it, in a mount namespace of our own


def run() -> None:
    """The body of a pod's init process: PID 1 of the pod's PID namespace. Never returns."""
    libc.set_name("cricket-podinit")
    _hold_nothing()
    # SIGTERM and SIGKILL from the host end it; from inside the namespace the
    # kernel keeps PID 1 from signals it has no handler for.
    # SIGCHLD stays pending while blocked, so none is missed between reaping and waiting.
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        signal.sigwait([signal.SIGCHLD])


def _hold_nothing() -> None:
    """Let go of the host: the pod's containers see this process as their PID 1. Forked from the
    zygote, it stands in the host's root with every capability and is the host's Python; a
    container allowed to trace (CAP_SYS_PTRACE) would read the host's files through
    /proc/1/root, and attached, run as host root. So it is not dumpable, stands in an empty
    read-only root of its own (the host's is detached, not just out of sight, so no ".." leads
    back), and holds no capability: reaping needs none."""
    libc.prctl(_PR_SET_DUMPABLE, 0)
    last_cap = libc.last_cap()  # from /proc, which the empty root has not
    libc.unshare(libc.CLONE_NEWNS)
    libc.mount(None, "/", None, libc.MS_SLAVE | libc.MS_REC)  # nothing done here reaches the host
    libc.mount("tmpfs", _EMPTY_ROOT, "tmpfs", libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC,
               "size=4k,mode=555")
    mounts.pivot(_EMPTY_ROOT)
    libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
    for cap in range(last_cap + 1):
        libc.prctl(libc.PR_CAPBSET_DROP, cap)
    libc.capset(0, 0, 0)
