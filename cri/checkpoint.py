"""Checkpoint and restore: what CheckpointContainer, CreateContainer (restoring from a checkpoint
archive) and the pod-level calls share. Which requests are sound is decided here; whether this
host can checkpoint at all is CRIU's to say.

Checkpointing a container is CRIU's work, for every handler: runc's `checkpoint` and `restore`
drive CRIU, and the built-in executor would drive it directly. So the first question is whether
CRIU works on this host, and `criu check` answers it: it probes the kernel features that a dump
and a restore need. On this project's machines it does not (Debian 12's CRIU 3.17.1 predates
Linux 6.13, which split the vDSO's data pages into [vvar] and [vvar_vclock]; CRIU fails while
probing the kernel, before it looks at any process), and the answer names CRIU's own words.
The verdict is kept for as long as the binary is the same: the kernel does not change under a
running daemon.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess

from cri.errors import InvalidArgument

# Where Debian puts it, should the daemon's PATH lack the sbin directories.
CRIU_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
CHECK_TIMEOUT = 30
_MAX_LINES = 6  # of CRIU's errors quoted in an answer

_verdicts: dict[tuple, str | None] = {}  # (binary, its inode and mtime) -> why CRIU cannot work, or None


def find_criu() -> str | None:
    return shutil.which("criu", path=CRIU_PATH)


def _check(binary: str) -> str | None:
    """Blocking: run `criu check`; None when it passes, else why not, in CRIU's words."""
    try:
        version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=CHECK_TIMEOUT,
                                 stdin=subprocess.DEVNULL).stdout
        done = subprocess.run([binary, "check"], capture_output=True, text=True, timeout=CHECK_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"CRIU ({binary}) could not be run: {e}"
    words = version.split()
    named = f"CRIU {words[words.index('Version:') + 1]}" if "Version:" in words[:-1] else "CRIU"
    output = (done.stdout + done.stderr).strip()
    if done.returncode == 0 and "Error" not in output:
        return None
    lines = [line.strip() for line in output.splitlines() if "Error" in line] or output.splitlines()[-_MAX_LINES:]
    quoted = "; ".join(lines[:_MAX_LINES]) or f"exit status {done.returncode}"
    return f"{named} ({binary}) can not work on this host: `criu check` fails: {quoted}"


async def criu_problem() -> str | None:
    """Why CRIU can not checkpoint on this host, or None when it can."""
    binary = find_criu()
    if binary is None:
        return "CRIU is not installed (Debian's criu package; runc's checkpoint and restore need it too)"
    st = os.stat(binary)
    key = (binary, st.st_ino, st.st_mtime_ns)
    if key not in _verdicts:
        _verdicts[key] = await asyncio.to_thread(_check, binary)
    return _verdicts[key]


def check_location(location: str, field: str) -> None:
    """A checkpoint archive's path as a request gives it: absolute, and a file's."""
    if not location:
        raise InvalidArgument(f"{field} is empty: name the checkpoint archive (an absolute path)")
    if not os.path.isabs(location):
        raise InvalidArgument(f"{field} {location!r} is not an absolute path")
    if location.endswith("/"):
        raise InvalidArgument(f"{field} {location!r} names a directory: name the archive file")


def is_checkpoint_archive(image: str) -> bool:
    """Whether CreateContainer's image is a checkpoint archive to restore (as CRI-O and containerd
    take it: a path to a file on the host, which no image reference can be) rather than an image."""
    return os.path.isabs(image) and os.path.isfile(image)
