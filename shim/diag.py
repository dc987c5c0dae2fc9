"""The shim's and the zygote's own diagnostics, written without the logging module: each
import a forked shim touches costs it pages of its own."""
from __future__ import annotations

import os
import time

from linux import libc


def diag(message: str) -> None:
    """A line in this process's own log: its stderr (the shim log for a shim, cricketd's for the zygote)."""
    try:
        os.write(2, f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {libc.name()} {os.getpid()}: {message}\n".encode())
    except OSError:
        pass
