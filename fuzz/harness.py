"""What every fuzz target shares: the contract it checks, and how it runs under atheris.

A target module defines `check(data: bytes) -> None`, which feeds the bytes to one parser, and
`EXPECTED`, the exception types that parser documents for bad input. run() hands atheris a
function that calls check() and lets those pass; anything else that escapes — another
exception, or an input that takes longer than SLOW_SECONDS — is a finding: atheris prints it,
writes the input as an artifact and stops. libFuzzer's own -timeout catches what never returns.

Targets import the code under test inside `with instrumented(__name__ == "__main__"):`, so
that it is instrumented for coverage when the module runs as a fuzzer, and imported plainly
(without atheris) when the unit tests replay the seed corpus through check().
"""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

# An input that takes longer than this is a finding, as a hang is: the parsers run on cricketd's
# event loop or hold up a pull, and every real input takes milliseconds.
SLOW_SECONDS = float(os.environ.get("CRICKET_FUZZ_SLOW_SECONDS", "2"))
CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


_scratch: str | None = None


def scratch() -> str:
    """A directory of this process's own for the files a target writes (on tmpfs where there is
    one: a fuzzer writes them thousands of times a second), removed at exit."""
    global _scratch
    if _scratch is None:
        _scratch = tempfile.mkdtemp(prefix="cricket-fuzz-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
        atexit.register(shutil.rmtree, _scratch, True)
    return _scratch


_SYS_MOUNT_SETATTR = 442  # the same on every architecture
_AT_RECURSIVE = 0x8000
_MOUNT_ATTR_RDONLY = 0x1


def confine_writes(writable: list[str]) -> str:
    """Make this process's whole filesystem read-only but for `writable` (libFuzzer's corpus and
    artifact directories) and a fresh tmpfs, and return that tmpfs's directory (scratch() from
    then on). For the targets that write files as root (layers, archives): were a path check of
    theirs to fail, the fuzzer would write through it onto the host, which now answers EROFS —
    no error those targets expect. Needs root; done in a mount namespace of the process's own,
    which goes with it. The tmpfs is mounted on $CRICKET_FUZZ_SCRATCH (the runner makes it and
    removes it after) or on a new directory in /dev/shm, left there empty."""
    import ctypes

    from linux import libc

    global _scratch
    directory = os.environ.get("CRICKET_FUZZ_SCRATCH") or tempfile.mkdtemp(
        prefix="cricket-fuzz-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    libc.unshare(libc.CLONE_NEWNS)
    libc.mount(None, "/", None, libc.MS_PRIVATE | libc.MS_REC)
    for path in writable:  # a mount of its own, to be made writable again below
        libc.mount(path, path, None, libc.MS_BIND | libc.MS_REC)

    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    c = ctypes.CDLL(None, use_errno=True)
    attr = MountAttr(_MOUNT_ATTR_RDONLY, 0, 0, 0)
    if c.syscall(_SYS_MOUNT_SETATTR, -100, b"/", _AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
        # An older kernel: each mount, one by one.
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4].encode().decode("unicode_escape") for line in f]
        for point in points:
            try:
                libc.mount(None, point, None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY)
            except OSError:
                pass
    for path in writable:
        libc.mount(None, path, None, libc.MS_BIND | libc.MS_REMOUNT)
    libc.mount("tmpfs", directory, "tmpfs", 0, "size=1g,mode=700")
    _scratch = directory
    return directory


def libfuzzer_dirs(argv: list[str]) -> list[str]:
    """The directories libFuzzer writes to with this command line: its corpus directories and
    where artifacts go (-artifact_prefix, else the working directory)."""
    dirs = [a for a in argv[1:] if not a.startswith("-") and os.path.isdir(a)]
    prefix = next((a.split("=", 1)[1] for a in argv if a.startswith("-artifact_prefix=")), None)
    dirs.append(os.path.dirname(prefix) or "." if prefix else ".")
    return sorted({os.path.abspath(d) for d in dirs})


class SlowInput(AssertionError):
    """One input took longer than SLOW_SECONDS."""


def instrumented(fuzzing: bool):
    """atheris's import hook while fuzzing (what is imported in the block is instrumented for
    coverage), nothing otherwise."""
    if not fuzzing:
        return contextlib.nullcontext()
    import atheris  # only here: the unit tests replay corpora without it

    # Comparisons inside str methods guide the mutations too: media types, digests and names
    # are matched with startswith and ==. (atheris 3.0's "RegEx" hook is not used: its proxy
    # takes no `pos` argument, which json and tarfile pass.)
    atheris.enabled_hooks.add("str")
    return atheris.instrument_imports()


def guarded(check: Callable[[bytes], None], expected: tuple[type[BaseException], ...]) -> Callable[[bytes], None]:
    """check() with the documented errors let through and a bound on the time an input takes."""

    def one_input(data: bytes) -> None:
        start = time.monotonic()
        try:
            check(data)
        except expected:
            pass
        elapsed = time.monotonic() - start
        if elapsed > SLOW_SECONDS:
            raise SlowInput(f"one input took {elapsed:.2f}s, over the {SLOW_SECONDS}s bound")

    return one_input


def seeds(target: str) -> list[tuple[str, bytes]]:
    """The committed seed corpus of a target: (file name, bytes), in name order."""
    directory = os.path.join(CORPUS, target)
    out = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            out.append((name, f.read()))
    return out


def run(check: Callable[[bytes], None], expected: tuple[type[BaseException], ...], confine: bool = False) -> None:
    """Fuzz check() under atheris with the command line's libFuzzer flags and corpus dirs;
    with `confine`, in a filesystem read-only but for libFuzzer's directories and scratch()."""
    import atheris

    if confine:
        confine_writes(libfuzzer_dirs(sys.argv))
    atheris.Setup(sys.argv, guarded(check, expected))
    atheris.Fuzz()
