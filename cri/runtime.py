"""The runtime's live state: every sandbox and container, over their records.

Each object has a lock: calls on one container (a stop and a remove, say) run
one after the other, calls on different ones run side by side. A running
container is watched through a wait on its shim, so its exit is recorded as
soon as it happens; a shim that vanishes without an exit file is a dead shim.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from api.runtime.v1 import api_pb2 as pb
from cni.runtime import Network
from cri.config import Config, runtime_handlers
from cri.errors import NotFound
from cri.events import EventBus
from cri.layout import Layout
from cri.records import EXITED, RUNNING, ContainerRecord, RecordStore, SandboxRecord
from cri.trash import Trash
from frames.shim_client import ShimClient, ShimError, ShimGone, ZygoteClient
from image.store import ImageStore

log = logging.getLogger(__name__)

# What containerd reports for a container whose end nobody saw.
UNKNOWN_EXIT_CODE = 255
UNKNOWN_EXIT_REASON = "Unknown"


def proc_start_time(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (with its pid, an identity), or None if
    gone. A zombie is gone: it has ended, and waits only for its parent (perhaps not ours, when
    the one that forked it died) to reap it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name may hold spaces and parens: fields resume after the last ')'.
    fields = stat[stat.rindex(b")") + 2:].split()
    return None if fields[0] == b"Z" else int(fields[19])


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def alive(pid: int, start: int) -> bool:
    return pid > 0 and start > 0 and proc_start_time(pid) == start


def read_exit_file(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # never half-written (it is renamed into place), so this is damage: treat as absent


@dataclass
class Sandbox:
    rec: SandboxRecord
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Its set-up was cut short (a crash, or an undo that failed) and nobody is finishing it:
    # a RunPodSandbox for its name undoes it first (cri/sandbox_lifecycle.py's discard_sandbox).
    abandoned: bool = False
    # As a container's (below): the config parsed once, and how the list calls last listed it.
    _config: pb.PodSandboxConfig | None = field(default=None, repr=False)
    listed: tuple[tuple, pb.PodSandbox, bytes] | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.rec.id

    @property
    def config(self) -> pb.PodSandboxConfig:
        """The config the pod was run with; shared, so not to be altered."""
        if self._config is None:
            self._config = pb.PodSandboxConfig.FromString(self.rec.config)
        return self._config


@dataclass
class Container:
    rec: ContainerRecord
    shim: ShimClient
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    watcher: asyncio.Task | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    # The record's config parsed once (it never changes), and what the list calls last listed
    # it as (what that was built from, the message, its bytes in a list answer): kubelet lists
    # every container every second, and few have changed since the last time.
    _config: pb.ContainerConfig | None = field(default=None, repr=False)
    listed: tuple[tuple, pb.Container, bytes] | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.rec.id

    @property
    def config(self) -> pb.ContainerConfig:
        """The config the container was created with; shared, so not to be altered."""
        if self._config is None:
            self._config = pb.ContainerConfig.FromString(self.rec.config)
        return self._config


class Runtime:
    def __init__(self, config: Config, images: ImageStore):
        self.config = config
        self.layout = Layout(config.root_dir, config.state_dir)
        self.trash = Trash(config.root_dir, config.state_dir)
        self.records = RecordStore(self.layout.records)
        self.images = images
        self.zygote = ZygoteClient(config.state_dir)
        self.handlers = runtime_handlers(config)  # OCI runtimes by handler name, beside the built-in
        self.network = Network(config.cni.conf_dir, config.cni.bin_dirs, config.state_dir, config.root_dir)
        self.events = EventBus()
        self.sandboxes: dict[str, Sandbox] = {}
        self.containers: dict[str, Container] = {}
        self.pod_inits_spawning = 0  # pod inits asked of the zygote and not yet recorded
        # Digests and chain IDs that running pulls hold (set by the daemon's wiring).
        self.pull_leases: Callable[[], set[str]] = set

    def close(self) -> None:
        for c in self.containers.values():
            if c.watcher is not None:
                c.watcher.cancel()
        self.zygote.stop()
        self.network.close()
        self.records.close()

    # -- lookups ---------------------------------------------------------------------

    def sandbox(self, ident: str) -> Sandbox:
        """The sandbox with this ID (or unique ID prefix, as crictl users type); NotFound otherwise."""
        return _find(self.sandboxes, ident, "pod sandbox")

    def container(self, ident: str) -> Container:
        return _find(self.containers, ident, "container")

    def containers_of(self, sandbox_id: str) -> list[Container]:
        return [c for c in self.containers.values() if c.rec.sandbox_id == sandbox_id]

    def chain_ids_in_use(self) -> set[str]:
        """Image snapshots that containers stack on or have mounted: image GC must keep them."""
        out = set()
        for c in self.containers.values():
            out.add(c.rec.chain_id)
            out.update(m["chain_id"] for m in c.rec.image_mounts)
        out.discard("")  # an image without layers
        return out

    def collect_image_garbage(self) -> None:
        self.images.collect_garbage(self.pull_leases() | self.chain_ids_in_use())

    # -- containers ------------------------------------------------------------------

    def add_container(self, rec: ContainerRecord) -> Container:
        c = Container(rec, ShimClient(self.layout.shim_socket(rec.id)))
        self.containers[rec.id] = c
        if rec.state == EXITED:
            c.exited.set()
        return c

    def watch(self, c: Container) -> None:
        """Record the container's exit as soon as its shim reports it."""
        if c.watcher is None or c.watcher.done():
            c.watcher = asyncio.get_running_loop().create_task(self._watch(c))

    async def _watch(self, c: Container) -> None:
        try:
            await c.shim.wait()
        except ShimGone:
            pass  # the exit file, or its absence, tells what happened
        except ShimError as e:
            log.warning("waiting for container %s: %s", c.id, e)
        self.observe_exit(c)

    def observe_exit(self, c: Container) -> bool:
        """If the container has ended, record how; True when it has.

        The exit file is the shim's word. A container whose shim is gone without
        one is exited with an unknown status, and any process of it still alive
        is killed: nobody would ever reap or report it.
        """
        rec = c.rec
        if rec.state == EXITED:
            return True
        data = read_exit_file(self.layout.exit_file(rec.id))
        if data is None:
            if self.shim_alive(c):
                return False
            if alive(rec.pid, rec.pid_start):
                os.kill(rec.pid, signal.SIGKILL)
            rec.exit_code = UNKNOWN_EXIT_CODE
            rec.reason = UNKNOWN_EXIT_REASON
            rec.message = "the container's shim is gone and left no exit status (it died, or the state dir was wiped)"
            rec.finished_at = rec.finished_at or time.time_ns()
        else:
            rec.exit_code = int(data.get("exit_code", UNKNOWN_EXIT_CODE))
            rec.finished_at = int(data.get("finished_at") or time.time_ns())
            rec.started_at = rec.started_at or int(data.get("started_at") or 0)
            rec.reason = data.get("reason") or ("Completed" if rec.exit_code == 0 else "Error")
            rec.message = data.get("message") or ""
        rec.state = EXITED
        self.records.update_container(rec)
        c.exited.set()
        self.events.emit(pb.CONTAINER_STOPPED_EVENT, rec.sandbox_id, rec.id)
        return True

    def state_of(self, c: Container) -> str:
        """The container's state, as status and list calls report it. A running container whose
        shim is watched needs no look: the watch records its exit as the shim reports it, or as
        the shim's connection drops. One not watched is looked at (observe_exit), which reads
        /proc and the exit file: kubelet lists every container every second."""
        if c.rec.state == RUNNING and (c.watcher is None or c.watcher.done()):
            self.observe_exit(c)
        return c.rec.state

    def shim_alive(self, c: Container) -> bool:
        if not c.rec.shim_pid:  # spawned, but its pid never heard (a crash, or the zygote died)
            return c.shim.listening()
        # The pid is the shim's still if it is a shim (or a fork of the zygote not yet renamed):
        # a dead shim's pid given to another process must not keep its container running forever.
        return proc_start_time(c.rec.shim_pid) is not None and os.path.exists(c.shim.socket) \
            and _comm(c.rec.shim_pid) in ("cricket-shim", "cricket-zygote")

    def save(self, obj: Sandbox | Container) -> None:
        if isinstance(obj, Sandbox):
            self.records.update_sandbox(obj.rec)
        else:
            self.records.update_container(obj.rec)


def zygote_family(zygote_socket: str) -> list[tuple[int, str, int]]:
    """Every process forked from a zygote serving `zygote_socket`, this daemon's or a killed
    predecessor's on the same state dir: (pid, comm, its pid in its own PID namespace). Forked
    without exec, they all carry the zygote's command line; a pod init is PID 1 of a namespace
    of its own (before it has named itself too). Containers exec, so they are not among them."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if argv[1:5] != [b"-m", b"shim.zygote", b"--socket", os.fsencode(zygote_socket)]:
                continue
            with open(f"/proc/{name}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        inner = int(status.get("NSpid", name).split()[-1])
        out.append((int(name), status.get("Name", "").strip(), inner))
    return out


def _find(table: dict, ident: str, what: str):
    if not ident:
        raise NotFound(f"no {what} ID given")
    obj = table.get(ident)
    if obj is not None:
        return obj
    matches = [o for key, o in table.items() if key.startswith(ident)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise NotFound(f"{what} ID prefix {ident!r} is ambiguous: it matches {len(matches)}")
    raise NotFound(f"{what} {ident!r} not found")

