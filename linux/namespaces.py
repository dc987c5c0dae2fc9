"""Namespaces: a pod's, pinned without a pause process, and work done inside one.

Pinning: a child unshares new network, IPC and UTS namespaces, sets the pod's
hostname, brings loopback up and bind-mounts each namespace onto a file; then
it exits and the mounts keep the namespaces alive (what CRI-O's pinns does).

Namespaces belong to threads: a thread that joins a network namespace creates
its sockets (netlink ones included) there, and the rest of the process does
not notice. So work for a pod's namespace runs in a fresh thread that joins it
and ends with the work (`run_in`).
"""
from __future__ import annotations

import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import TypeVar

from linux import libc

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def pin_namespaces(net: str, ipc: str, uts: str, hostname: str, sysctls: dict[str, str]) -> None:
    """In a forked child: make the namespaces, set the pod's sysctls in them, and bind-mount
    them onto the given files."""
    targets = [(path, kind) for path, kind in ((net, "net"), (ipc, "ipc"), (uts, "uts")) if path]
    flags = 0
    for _, kind in targets:
        flags |= {"net": libc.CLONE_NEWNET, "ipc": libc.CLONE_NEWIPC, "uts": libc.CLONE_NEWUTS}[kind]
    libc.unshare(flags)
    if uts and hostname:
        libc.sethostname(hostname)
    if net:
        loopback_up()
    # /proc/sys answers for the namespaces of whoever opens it: these writes land in the new ones.
    for key, value in sysctls.items():
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(value)
    for path, kind in targets:
        libc.mount(f"/proc/self/ns/{kind}", path, None, libc.MS_BIND)


def loopback_up() -> None:
    """Bring up lo in the current network namespace (it starts down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def unpin(path: str) -> None:
    """Let go of a pinned namespace: unmount its file and remove it. Idempotent."""
    try:
        libc.umount(path, libc.MNT_DETACH)
    except OSError:
        pass  # not mounted (any more)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


T = TypeVar("T")


def run_in(netns: str, fn: Callable[[], T]) -> T:
    """Run fn() in a new thread inside the network namespace at `netns` (a pinned file or
    /proc/<pid>/ns/net); its result, or its exception raised here."""
    outcome: dict = {}

    def body() -> None:
        try:
            libc.setns(netns, libc.CLONE_NEWNET)
            outcome["value"] = fn()
        except BaseException as e:  # carried back to the caller's thread
            outcome["error"] = e

    worker = threading.Thread(target=body, name="in-netns")
    worker.start()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
