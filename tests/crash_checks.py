"""What the crash tests share: a daemon started with a crash point armed, the processes of a
daemon's family, and the inventory of everything a daemon can leave behind on the host."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time

import grpc

from api.runtime.v1 import api_pb2 as pb
from cni.plugins import iptables
from cni.plugins.bridge import MASQ_CHAIN_PREFIX
from cni.plugins.portmap import POD_CHAIN_PREFIX
from linux.cgroups import Cgroup
from linux.crash_points import ENV
from tests.daemon import Cricketd
from tests.pods import Pods

_ID = re.compile(r"\b[0-9a-f]{64}\b")


def start(d: Cricketd, crash_at: str = "") -> Cricketd:
    """Start `d`, with step `crash_at` armed (its helpers inherit it) or none."""
    saved = os.environ.pop(ENV, None)
    if crash_at:
        os.environ[ENV] = crash_at
    try:
        return d.start()
    finally:
        os.environ.pop(ENV, None)
        if saved is not None:
            os.environ[ENV] = saved


def died(d: Cricketd, timeout: float = 10) -> bool:
    """Whether the daemon's process has ended (waiting up to `timeout` for it)."""
    assert d.proc is not None
    try:
        d.proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(p) for p in f.read().split())
    return out


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def helper(d: Cricketd, name: str) -> int:
    """The pid of the daemon's helper named `name` (cricket-zygote, cricket-net); 0 if none."""
    assert d.proc is not None
    return next((p for p in children(d.proc.pid) if comm(p) == name), 0)


def family(d: Cricketd) -> list[tuple[int, str]]:
    """Every process forked from a zygote of this daemon's state dir (zygotes, shims, pod inits,
    containers held before exec), and its network workers: (pid, name)."""
    marks = [
        [b"-m", b"shim.zygote", b"--socket", os.fsencode(os.path.join(d.state, "zygote.sock"))],
        [b"-m", b"cni.worker", os.fsencode(os.path.join(d.state, "cni-worker.sock"))],
    ]
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if any(argv[1:1 + len(m)] == m for m in marks):
            out.append((int(name), comm(int(name))))
    return out


def shim_state(d: Cricketd, cid: str) -> int | None:
    """What the container's shim says of it (a shim_pb.Status), asked directly; None if no
    shim answers."""
    import socket

    from api.shim.v1 import shim_pb2 as shim_pb
    from frames import channel

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        with channel.reachable(os.path.join(d.state, "containers", cid, "shim.sock")) as name:
            sock.connect(name)
        channel.write_frame_blocking(sock, shim_pb.Request(state=shim_pb.StateRequest()).SerializeToString())
        resp = shim_pb.Response.FromString(channel.read_frame_blocking(sock))
    except OSError:
        return None
    finally:
        sock.close()
    return None if resp.error else resp.state.status


def start_time(pid: int) -> int | None:
    """The process's start time (with its pid, an identity); None when gone, or a zombie (dead,
    waiting for whoever its parent is now to reap it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    return None if fields[0] == b"Z" else int(fields[19])


class Seen:
    """Processes a test saw the daemon report (shims, containers, pod inits), with their start
    times, so that a leak is told from a pid used again."""

    def __init__(self):
        self.pids: dict[int, tuple[int | None, str]] = {}

    def add(self, pid: int, what: str) -> None:
        if pid > 0 and pid not in self.pids:
            self.pids[pid] = (start_time(pid), what)

    def note(self, pods: Pods) -> None:
        """Every pid the daemon reports now."""
        import json

        try:
            for p in pods.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items:
                self.add(json.loads(pods.pod_status(p.id, verbose=True).info["info"])["pid"], f"pod init of {p.id}")
            for c in pods.rt.ListContainers(pb.ListContainersRequest()).containers:
                info = json.loads(pods.status(c.id, verbose=True).info["info"])
                self.add(info["shimPid"], f"shim of {c.id}")
                self.add(info["pid"], f"process of {c.id}")
        except grpc.RpcError:
            pass

    def alive(self) -> list[str]:
        return [f"{what} (pid {pid})" for pid, (start, what) in self.pids.items()
                if start is not None and start_time(pid) == start]


def ids_in_log(d: Cricketd) -> set[str]:
    """Every 64-hex ID the daemon's log names: its pods' and containers', also those a crash hid."""
    return set(_ID.findall(d.log()))


def leaks(d: Cricketd, network=None, seen: Seen | None = None, images_removed: bool = True) -> list[str]:
    """Everything of `d`'s left on the host after everything was removed and `d` stopped."""
    found = []
    for line in open("/proc/self/mountinfo"):
        target = line.split()[4]
        if target.startswith((d.root + "/", d.state + "/")):
            found.append(f"mount {target}")
    for sub in ("containers", "sandboxes"):
        path = os.path.join(d.state, sub)
        if os.path.isdir(path) and os.listdir(path):
            found.append(f"{path}: {os.listdir(path)}")
    dirs = [os.path.join(d.root, "containers"), os.path.join(d.root, "content", "ingest"),
            os.path.join(d.root, "cni", "results"), os.path.join(d.state, "cni", "results")]
    if images_removed:
        dirs += [os.path.join(d.root, "snapshots"), os.path.join(d.root, "content", "blobs", "sha256")]
    for path in dirs:
        if os.path.isdir(path) and os.listdir(path):
            found.append(f"{path}: {sorted(os.listdir(path))[:5]}")
    ids = ids_in_log(d)
    for ident in ids:
        for path in (f"/cricket/{ident}",):
            if Cgroup(path).exists():
                found.append(f"cgroup {path}")
    # A killed process may take a moment to end: a PID namespace's init, say, waits for every
    # process of its namespace to be reaped. What still runs after 10 s has leaked.
    deadline = time.monotonic() + 10
    while (family(d) or (seen is not None and seen.alive())) and time.monotonic() < deadline:
        time.sleep(0.05)
    found += [f"process {pid} ({name})" for pid, name in family(d)]
    if seen is not None:
        found += [f"process: {p}" for p in seen.alive()]
    if network is not None:
        found += [f"IP reservation {a}" for a in network.allocations()]
        found += [f"veth {v}" for v in network.veths()]
        found += [f"iptables rule {r}" for r in network.rules()]
        chains = set()
        dump = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
        declared = {line[1:].split()[0] for line in dump.splitlines() if line.startswith(":")}
        for ident in ids:
            for prefix in (POD_CHAIN_PREFIX, MASQ_CHAIN_PREFIX):
                chains.add(iptables.chain_name(prefix, network.name, ident))
        found += [f"iptables chain {c}" for c in sorted(chains & declared)]
    return found


def remove_everything(d: Cricketd, pods: Pods) -> None:
    """Remove every pod, container and image of the daemon's, failing on any error."""
    for p in pods.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items:
        pods.stop_pod(p.id)
        pods.remove_pod(p.id)
    for c in pods.rt.ListContainers(pb.ListContainersRequest()).containers:
        pods.remove(c.id)
    for image in d.list():
        d.remove(image.id)


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def wait_for(what, timeout: float = 15, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        if time.monotonic() > deadline:
            return got
        time.sleep(step)
