"""The pod init: PID 1 of a pod whose containers share one PID namespace.

A PID namespace dies with its first process, so such a pod needs a process to
hold it: this one, forked from the zygote, which does nothing but reap the
orphans that land on it.
"""
from __future__ import annotations

import os
import signal

from linux import libc


def run() -> None:
    """The body of a pod's init process: PID 1 of the pod's PID namespace. Never returns."""
    libc.set_name("cricket-podinit")
    os.chdir("/")
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
