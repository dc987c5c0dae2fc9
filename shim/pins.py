"""A pod's namespaces without a pause process.

Pinning: a child unshares new network, IPC and UTS namespaces, sets the pod's
hostname, brings loopback up and bind-mounts each namespace onto a file; then
it exits and the mounts keep the namespaces alive (what CRI-O's pinns does).

A pod whose containers share one PID namespace needs a process to hold it, as
a PID namespace dies with its first process: the pod init, which does nothing
but reap the orphans that land on it.
"""
from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct

from shim import linux

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def pin_namespaces(net: str, ipc: str, uts: str, hostname: str, sysctls: dict[str, str]) -> None:
    """In a forked child: make the namespaces, set the pod's sysctls in them, and bind-mount
    them onto the given files."""
    targets = [(path, kind) for path, kind in ((net, "net"), (ipc, "ipc"), (uts, "uts")) if path]
    flags = 0
    for _, kind in targets:
        flags |= {"net": linux.CLONE_NEWNET, "ipc": linux.CLONE_NEWIPC, "uts": linux.CLONE_NEWUTS}[kind]
    linux.unshare(flags)
    if uts and hostname:
        linux.sethostname(hostname)
    if net:
        loopback_up()
    # /proc/sys answers for the namespaces of whoever opens it: these writes land in the new ones.
    for key, value in sysctls.items():
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(value)
    for path, kind in targets:
        linux.mount(f"/proc/self/ns/{kind}", path, None, linux.MS_BIND)


def loopback_up() -> None:
    """Bring up lo in the current network namespace (it starts down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def unpin(path: str) -> None:
    """Let go of a pinned namespace: unmount its file and remove it. Idempotent."""
    try:
        linux.umount(path, linux.MNT_DETACH)
    except OSError:
        pass  # not mounted (any more)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def pod_init() -> None:
    """The body of a pod's init process: PID 1 of the pod's PID namespace. Never returns."""
    linux.set_name("cricket-podinit")
    os.chdir("/")
    # SIGTERM and SIGKILL from the host end it; from inside the namespace the
    # kernel keeps PID 1 from signals it has no handler for.
    # SIGCHLD stays pending while blocked, so none is missed between reaping and waiting.
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        signal.sigwait([signal.SIGCHLD])
