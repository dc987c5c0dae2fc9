"""What each runtime handler can do, as Status reports it in `runtime_handlers` (kubelet reads
it before it asks a handler for a recursive read-only mount or a user namespace).

The built-in executor can do what this kernel can. An OCI runtime is asked as containerd asks
it: `<runtime> features` (the OCI runtime features document) lists the mount options it knows,
and "rro" among them means recursive read-only mounts. Runtimes from before that command (crun
before 1.9) are judged by their version instead. Either way the kernel must have
mount_setattr(2) as well. Every answer is worked out once per binary: asking runs it, which
blocks, so callers on the event loop go through a thread.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import subprocess
from dataclasses import dataclass

from linux import libc, namespaces

log = logging.getLogger(__name__)

_ASK_TIMEOUT = 10.0  # seconds: `features` and `--version` answer at once, or the binary is broken
# The first release of each runtime that knows "rro", for those too old to have `features`.
_RRO_SINCE = {"runc": (1, 1, 0), "crun": (1, 4, 0)}
_VERSION = re.compile(r"^(\S+) version (\d+)\.(\d+)(?:\.(\d+))?", re.MULTILINE)


@dataclass(frozen=True)
class HandlerFeatures:
    recursive_read_only_mounts: bool = False
    user_namespaces: bool = False


@functools.cache
def builtin(paths: tuple[str, ...] = ()) -> HandlerFeatures:
    """The built-in executor's features (linux/mounts.py sets recursive options itself). User
    namespaces need idmapped mounts of the filesystems at `paths` (the root and state dirs: image
    layers, containers' dirs, pods' files). Blocking: it tries one."""
    problem = userns_problem(paths)
    if problem is not None:
        log.warning("no user namespaces for pods (hostUsers: false) with the built-in executor: %s", problem)
    return HandlerFeatures(recursive_read_only_mounts=libc.has_mount_setattr(), user_namespaces=problem is None)


def userns_problem(paths: tuple[str, ...]) -> str | None:
    if not libc.has_mount_setattr():
        return "this kernel lacks mount_setattr(2) (Linux 5.12 or later has it), which idmapped mounts need"
    if not os.path.exists("/proc/self/ns/user"):
        return "this kernel has no user namespaces"
    return namespaces.idmap_problem(paths)


@functools.cache
def oci_runtime(path: str) -> HandlerFeatures:
    """The features of the OCI runtime binary at `path`. Blocking: it runs the binary."""
    options = _mount_options(path)
    return HandlerFeatures(recursive_read_only_mounts="rro" in options and libc.has_mount_setattr())


def _mount_options(path: str) -> set[str]:
    """The mount options the runtime knows, from `features`; else those its version implies."""
    out = _ask(path, "features")
    if out is not None:
        try:
            doc = json.loads(out)
            return {str(o) for o in doc.get("mountOptions") or ()}
        except (ValueError, AttributeError):
            log.warning("%s features: not a features document; judging it by its version", path)
    version = _ask(path, "--version")
    m = _VERSION.search(version or "")
    if m is None:
        log.warning("%s: neither `features` nor `--version` says what it is; no recursive read-only "
                    "mounts with it", path)
        return set()
    name, numbers = m.group(1), tuple(int(n or 0) for n in m.group(2, 3, 4))
    since = _RRO_SINCE.get(name)
    return {"rro"} if since is not None and numbers >= since else set()


def _ask(path: str, arg: str) -> str | None:
    try:
        done = subprocess.run([path, arg], capture_output=True, text=True, timeout=_ASK_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        log.warning("%s %s: %s", path, arg, e)
        return None
    return done.stdout if done.returncode == 0 else None
