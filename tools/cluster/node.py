"""The node: a network namespace joined to the host by a veth pair, and the cluster's
processes started in it, each recorded by pid so that only they are ever stopped."""
from __future__ import annotations

import os
import signal
import subprocess
import time

from tools.cluster import settings as s

NETNS_PATH = f"/run/netns/{s.NETNS}"
STOP_SECONDS = 20.0


def sh(*argv: str, check: bool = True, netns: bool = False) -> subprocess.CompletedProcess:
    cmd = (["nsenter", f"--net={NETNS_PATH}"] if netns else []) + list(argv)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def exists() -> bool:
    return os.path.exists(NETNS_PATH)


def create() -> None:
    """The namespace, its veth to the host, and the sysctls a node needs."""
    sh("ip", "netns", "add", s.NETNS)
    sh("ip", "link", "add", s.HOST_IF, "type", "veth", "peer", "name", s.NODE_IF, "netns", s.NETNS)
    sh("ip", "addr", "add", f"{s.HOST_IP}/{s.LINK_PREFIX}", "dev", s.HOST_IF)
    sh("ip", "link", "set", s.HOST_IF, "up")
    sh("ip", "addr", "add", f"{s.NODE_IP}/{s.LINK_PREFIX}", "dev", s.NODE_IF, netns=True)
    sh("ip", "link", "set", s.NODE_IF, "up", netns=True)
    sh("ip", "link", "set", "lo", "up", netns=True)
    # No default route on purpose: nothing in the cluster may reach past this machine.
    for key, value in (
        ("net/ipv4/ip_forward", "1"),
        # Pod-to-service traffic between pods on one bridge must pass iptables for its DNAT.
        ("net/bridge/bridge-nf-call-iptables", "1"),
        ("net/bridge/bridge-nf-call-ip6tables", "1"),
    ):
        sh("sh", "-c", f"echo {value} > /proc/sys/{key}", netns=True)


def delete() -> None:
    """The namespace and, with it, every link, bridge, address and iptables rule in it."""
    if exists():
        sh("ip", "netns", "del", s.NETNS, check=False)
    # The host's end goes with its peer; only a half-made pair can leave it.
    if os.path.exists(f"/sys/class/net/{s.HOST_IF}"):
        sh("ip", "link", "del", s.HOST_IF, check=False)


# -- processes ---------------------------------------------------------------------


def _pid_file(name: str) -> str:
    return s.path("pids", f"{name}.pid")


def _start_time(pid: int) -> str | None:
    """The process's start time (with its pid, an identity), or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] == "Z" else fields[19]


def start(name: str, argv: list[str], env: dict | None = None, in_node: bool = True, cwd: str | None = None) -> int:
    """Start a component detached (it outlives this command), logging to logs/<name>.log."""
    os.makedirs(s.LOG_DIR, exist_ok=True)
    os.makedirs(s.path("pids"), exist_ok=True)
    cmd = (["nsenter", f"--net={NETNS_PATH}"] if in_node else []) + argv
    with open(os.path.join(s.LOG_DIR, f"{name}.log"), "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})}, cwd=cwd)
    with open(_pid_file(name), "w") as f:
        f.write(f"{proc.pid} {_start_time(proc.pid)}\n")
    return proc.pid


def pid_of(name: str) -> int | None:
    """The pid of a component this cluster started, if it still runs."""
    try:
        with open(_pid_file(name)) as f:
            pid_text, start_time = f.read().split()
    except (FileNotFoundError, ValueError):
        return None
    pid = int(pid_text)
    return pid if _start_time(pid) == start_time else None


def running(name: str) -> bool:
    return pid_of(name) is not None


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)  # ours when this process started it: no zombie left
    except ChildProcessError:
        pass


def stop(name: str, sig: int = signal.SIGTERM, timeout: float = STOP_SECONDS) -> None:
    """Signal the component (by its recorded pid), then SIGKILL it if it outlives `timeout`."""
    pid = pid_of(name)
    if pid is not None:
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while _start_time(pid) is not None and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
        if _start_time(pid) is not None:
            os.kill(pid, signal.SIGKILL)
            while _start_time(pid) is not None:
                _reap(pid)
                time.sleep(0.02)
        _reap(pid)
    try:
        os.unlink(_pid_file(name))
    except FileNotFoundError:
        pass


def log_tail(name: str, lines: int = 30) -> str:
    try:
        with open(os.path.join(s.LOG_DIR, f"{name}.log"), errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except FileNotFoundError:
        return ""
