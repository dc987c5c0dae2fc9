"""What the shim asks of an executor, and the types both executors share.

An executor turns an OCI runtime spec into a container: `create` sets it up to
just before execve and holds it there, `start` releases it, `exec` adds a
process, `delete` lets go of whatever outlives the processes. The shim reaps
every process (it is a child subreaper). Two executors implement this: the
built-in one (shim/builtin.py) and the one that drives runc or crun
(shim/oci_runtime.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from linux.cgroups import Cgroup


class ExecutorError(Exception):
    """The container or process could not be set up; the message says what failed."""


class StartError(ExecutorError):
    """execve of the container's process failed (no such file, permission denied...)."""


@dataclass
class Stdio:
    """The descriptors a process gets as its 0, 1 and 2; a tty process gets the terminal for all three."""

    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None
    terminal: int | None = None


@dataclass
class Held:
    """A created container's first process, waiting for its release into execve."""

    pid: int
    start_w: int
    report_r: int


class Executor(Protocol):
    # The container's own cgroup (for OOM counts and killing every process), if the spec names one.
    cgroup: Cgroup | None
    # A tty container's terminal when the executor made it (an OCI runtime does); None when the shim did.
    console: int | None

    def create(self, stdio: Stdio) -> Held:
        """Set the container up to just before execve and hold it there. Raises ExecutorError."""

    def start(self, held: Held) -> None:
        """Release the held process into execve; raises StartError with execve's error."""

    def abandon(self, held: Held) -> None:
        """Let go of a held process without starting it: it exits."""

    def exec(self, init_pid: int, process: dict, stdio: Stdio) -> int:
        """Run `process` in the running container whose first process is `init_pid`; its pid.
        Raises ExecutorError, including for an execve failure."""

    def delete(self) -> None:
        """Let go of what of the container outlives its processes."""
