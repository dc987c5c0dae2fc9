"""Running one CNI plugin: executing its binary per the spec, or calling Cricket's own in-process.

A plugin is found by its type in the CNI path. If the file found there is
one of Cricket's plugins (its installed launcher carries a marker), its code
runs in this process instead: the same JSON in and out, no interpreter started.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
from dataclasses import dataclass, field

from cni.spec import DECODE_FAILURE, IO_FAILURE, CniError

# What an installed launcher of Cricket's plugins says in its first lines.
MARKER = b"cricket-cni-plugin"
# Cricket's plugins: CNI type -> the module implementing it.
OWN = {"bridge": "cni.plugins.bridge", "host-local": "cni.plugins.host_local",
       "loopback": "cni.plugins.loopback", "portmap": "cni.plugins.portmap"}
EXEC_TIMEOUT = 60.0


@dataclass
class Env:
    """The CNI_* environment of one call."""

    command: str  # ADD, DEL, CHECK, VERSION
    container_id: str
    netns: str
    ifname: str
    path: list[str]  # CNI_PATH: directories plugins are looked up in
    args: dict[str, str] = field(default_factory=dict)

    def environ(self) -> dict[str, str]:
        return {
            "CNI_COMMAND": self.command, "CNI_CONTAINERID": self.container_id, "CNI_NETNS": self.netns,
            "CNI_IFNAME": self.ifname, "CNI_PATH": ":".join(self.path),
            "CNI_ARGS": ";".join(f"{k}={v}" for k, v in self.args.items()),
        }


def find(kind: str, path: list[str]) -> str:
    if "/" in kind or kind in (".", ".."):
        raise CniError(IO_FAILURE, f"plugin type {kind!r} is not a plain name")
    for d in path:
        candidate = os.path.join(d, kind)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(IO_FAILURE, f"plugin {kind!r} not found in {':'.join(path) or 'an empty CNI path'}")


def is_own(binary: str) -> bool:
    try:
        with open(binary, "rb") as f:
            return MARKER in f.read(512)
    except OSError:
        return False


def run(kind: str, conf: dict, env: Env, in_process: bool = True) -> dict | None:
    """Run plugin `kind` for env.command with `conf` on its stdin; its result (ADD) or None."""
    binary = find(kind, env.path)
    if in_process and kind in OWN and is_own(binary):
        return call_own(kind, conf, env)
    return execute(binary, conf, env)


def call_own(kind: str, conf: dict, env: Env) -> dict | None:
    plugin = importlib.import_module(OWN[kind])
    if env.command == "ADD":
        return plugin.add(conf, env)
    if env.command == "DEL":
        plugin.delete(conf, env)
        return None
    if env.command == "CHECK":
        plugin.check(conf, env)
        return None
    raise CniError(IO_FAILURE, f"unknown CNI command {env.command!r}")


def execute(binary: str, conf: dict, env: Env) -> dict | None:
    """Execute a plugin binary the way the spec says: environment, config on stdin, answer on stdout."""
    try:
        done = subprocess.run([binary], input=json.dumps(conf).encode(), capture_output=True,
                              env={**_base_env(), **env.environ()}, timeout=EXEC_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CniError(IO_FAILURE, f"running plugin {binary}", str(e)) from None
    name = os.path.basename(binary)
    if done.returncode != 0:
        try:
            raise CniError.from_json(json.loads(done.stdout), name)
        except (ValueError, AttributeError):
            words = (done.stderr or done.stdout).decode(errors="replace").strip()
            raise CniError(IO_FAILURE, f"plugin {name} failed (exit status {done.returncode})", words) from None
    if env.command != "ADD":
        return None
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise CniError(DECODE_FAILURE, f"plugin {name} printed no JSON result",
                       done.stdout.decode(errors="replace")[:200]) from None


def _base_env() -> dict[str, str]:
    # Plugins exec iptables, sysctl and friends: they need a PATH, nothing else of ours.
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
