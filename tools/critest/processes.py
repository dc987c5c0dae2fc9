"""Processes the runner starts and stops: each in a session of its own (so a Ctrl-C at the
terminal reaches the runner alone, which stops them in order), and stopped by pid."""
from __future__ import annotations

import os
import signal
import subprocess
import time


def start(argv: list[str], log_path: str, cwd: str | None = None) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=cwd,
                                start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if it is still there after `timeout`; reaped either way."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def kill_mentioning(text: str, wait: float = 5) -> list[int]:
    """SIGKILL every process whose command line mentions `text` — a path of the runner's own
    temporary directory, which only the processes it started (and theirs: the zygote, shims,
    the network worker) name. What a daemon killed mid-run leaves behind is found so."""
    me = os.getpid()
    killed = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            try:
                os.kill(int(name), signal.SIGKILL)
                killed.append(int(name))
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + wait
    while killed and time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in killed):
        time.sleep(0.05)
    return killed
