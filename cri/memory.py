"""Keeping the daemon's resident memory small between bursts of work.

glibc gives each thread that allocates its own malloc arena and keeps freed
memory in it. Pulls run blob writers and unpackers on worker threads, so each
pull would leave several arenas of dead pages behind. Capping the arenas and
handing free pages back after a burst keeps an idle daemon idle in memory too.
"""
from __future__ import annotations

import ctypes

_M_ARENA_MAX = -8  # mallopt parameter number, from glibc's malloc.h
ARENAS = 2

_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: nothing to tune
    _libc = None


def limit_arenas() -> None:
    """Cap malloc arenas; call before any worker thread starts."""
    if _libc is not None:
        _libc.mallopt(_M_ARENA_MAX, ARENAS)


def trim() -> None:
    """Return freed memory to the kernel after a burst of work (a pull, a removal)."""
    if _libc is not None:
        _libc.malloc_trim(0)
