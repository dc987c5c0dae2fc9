"""A Dockerfile's RUN: a container made by Cricket's own executor on the step's overlay.

It is isolated as a pod's container is by default — new mount, PID, IPC and UTS namespaces,
the default capabilities, the runtime's default seccomp profile, no new privileges, masked
and read-only /proc paths, a device cgroup — and in a cgroup of its own with a bound on its
processes ([build] pids_limit). Its network is none (a namespace with only a loopback, the
default) or the host's (asked for with --network host). Its shim comes from the zygote like
any container's, and writes the output to a CRI log, which is read back line by line while
the step runs.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from api.runtime.v1 import api_pb2 as pb
from api.shim.v1 import shim_pb2 as shim_pb
from cri import oci_spec, security
from cri.container_lifecycle import kill_cgroup_tree, wait_gone
from cri.runtime import Runtime, read_exit_file
from frames.shim_client import ShimClient, ShimError, ShimGone
from linux.cgroups import Cgroup
from linux.cgroups import mode as cgroup_mode

CGROUP_PARENT = "/cricket-build"
# What one step may write to its log before the log is rotated (the live file and one more
# are kept): the output is streamed to the client as it comes, and a step that prints without
# end must not fill the disk.
LOG_MAX_SIZE = 16 << 20
# The mount points the executor makes in the rootfs when the image lacks them: made by the
# step, not by the Dockerfile, so an empty one is left out of the layer (as BuildKit does).
MOUNT_POINTS = ("proc", "dev", "sys", "etc/hosts", "etc/resolv.conf", "etc")
_LOG_LINE = re.compile(rb"^\S+ (stdout|stderr) ([PF]) (.*)$")
_POLL_SECONDS = 0.1
_KEEP_LINES = 20  # output lines a failure quotes
_READ_MAX = LOG_MAX_SIZE  # one read takes at most a whole log


@dataclass
class Step:
    """What a RUN step runs, and where."""

    bundle: str            # holds rootfs/ (the step's overlay, mounted) and gets config.json
    argv: list[str]
    env: list[str]
    cwd: str
    user: str
    network: str           # "host" or "none"
    hosts_files: dict[str, str] = field(default_factory=dict)  # container path -> host file bound read-only


@dataclass
class Outcome:
    exit_code: int
    reason: str
    last_lines: list[str]


def cgroup_parent(root_dir: str) -> str:
    """The cgroup under which one daemon's build steps run: its own, so that the daemon's
    clean-up after a crash ends its steps and no other daemon's."""
    return f"{CGROUP_PARENT}/{hashlib.sha256(root_dir.encode()).hexdigest()[:12]}"


def spec(step: Step, process_user: dict, pids_limit: int, parent: str) -> dict:
    ctx = pb.LinuxContainerSecurityContext(seccomp=pb.SecurityProfile(profile_type=pb.SecurityProfile.RuntimeDefault))
    capabilities = security.capability_sets(ctx, list(oci_spec.DEFAULT_CAPS))
    files = [pb.Mount(container_path=dest, host_path=source, readonly=True)
             for dest, source in step.hosts_files.items()]
    namespaces = [{"type": kind} for kind in ("mount", "pid", "ipc", "uts")]
    if step.network == "none":
        namespaces.append({"type": "network"})
    if cgroup_mode() == "v2":
        namespaces.append({"type": "cgroup"})
    return {
        "ociVersion": oci_spec.OCI_VERSION,
        "process": {"terminal": False, "user": process_user, "args": step.argv, "env": step.env,
                    "cwd": step.cwd, "capabilities": capabilities, "noNewPrivileges": True},
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "buildsandbox",
        "mounts": oci_spec.mounts(pb.ContainerConfig(), files, []),
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": f"{parent}/{os.path.basename(step.bundle)}-{secrets.token_hex(4)}",
            "resources": {"pids": {"limit": pids_limit}, "devices": oci_spec.device_rules(False)},
            "maskedPaths": list(oci_spec.MASKED_PATHS),
            "readonlyPaths": list(oci_spec.READONLY_PATHS),
            "seccomp": security.seccomp(ctx, capabilities["bounding"]),
        },
    }


async def run(rt: Runtime, step: Step, emit: Callable[[str], None]) -> Outcome:
    """Run the step to its end; each line of its output goes to `emit` as it comes."""
    rootfs = os.path.join(step.bundle, "rootfs")
    process_user = await asyncio.to_thread(oci_spec.resolve_user, rootfs, step.user, None, [])
    doc = spec(step, process_user, rt.config.build.pids_limit, cgroup_parent(rt.config.root_dir))
    with open(os.path.join(step.bundle, "config.json"), "w") as f:
        f.write(json.dumps(doc))
    socket = os.path.join(step.bundle, "shim.sock")
    log_path = os.path.join(step.bundle, "output.log")
    shim_pid = await rt.zygote.spawn_shim(shim_pb.SpawnShim(
        container_id=os.path.basename(step.bundle), bundle=step.bundle, socket=socket,
        exit_file=os.path.join(step.bundle, "exit"), log_path=log_path,
        shim_log=os.path.join(step.bundle, "shim.log"), log_max_size=LOG_MAX_SIZE, log_max_files=2))
    shim = ShimClient(socket)
    output = _Output(log_path, emit)
    exit_file = os.path.join(step.bundle, "exit")
    ended = False
    try:
        await shim.wait_created()
        await shim.start()
        waiting = asyncio.ensure_future(shim.wait())
        while not waiting.done():
            await asyncio.wait([waiting], timeout=_POLL_SECONDS)
            await asyncio.to_thread(output.read)
        try:
            state = waiting.result()
            code, reason = state.exit_code, state.reason
        except ShimGone:
            # A step that ends at once can end before the wait is asked for, and its shim leaves
            # once the exit is written: the exit file has it.
            await wait_gone(shim_pid)
            record = read_exit_file(exit_file)
            if record is None:
                raise
            code, reason = int(record.get("exit_code", -1)), str(record.get("reason") or "")
        ended = True
        await asyncio.to_thread(output.read)
        output.flush()
        return Outcome(code, reason, output.last)
    except ShimError as e:
        ended = True
        await asyncio.to_thread(output.read)
        output.flush()
        return Outcome(-1, f"the step could not run: {e}", output.last)
    finally:
        if not ended:  # cancelled (the client went away): the step ends with the build
            try:
                await shim.kill(signal.SIGKILL, all=True)
            except ShimError:
                pass
        try:
            await shim.shutdown()
        except ShimError:
            pass
        await wait_gone(shim_pid)
        await asyncio.to_thread(_remove_cgroup, doc["linux"]["cgroupsPath"])


def _remove_cgroup(path: str) -> None:
    # Normally empty by now: the PID namespace ended with its init. Whatever is left is killed.
    try:
        Cgroup(path).remove(wait=False, recursive=True)
    except OSError:
        kill_cgroup_tree(path)
        Cgroup(path).remove(recursive=True)


class _Output:
    """Follows a step's CRI log: whole lines to `emit`, the last few kept for a failure's message."""

    def __init__(self, path: str, emit: Callable[[str], None]):
        self._path = path
        self._emit = emit
        self._offset = 0
        self._pending = b""
        self._partial = b""
        self.last: list[str] = []

    def read(self) -> None:
        """What the log gained since the last read (blocking: call it in a thread). A log
        rotated meanwhile is read from its start: what went with the old file is not shown."""
        try:
            with open(self._path, "rb") as f:
                if os.fstat(f.fileno()).st_size < self._offset:
                    self._offset = 0
                f.seek(self._offset)
                data = f.read(_READ_MAX)
        except FileNotFoundError:
            return
        self._offset += len(data)
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        for line in lines:
            m = _LOG_LINE.match(line)
            if m is None:
                continue
            self._partial += m.group(3)
            if m.group(2) == b"F":
                self._line(self._partial)
                self._partial = b""

    def flush(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = b""

    def _line(self, raw: bytes) -> None:
        text = raw.decode(errors="replace")
        self.last = (self.last + [text])[-_KEEP_LINES:]
        self._emit(text)
