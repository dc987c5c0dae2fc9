"""Namespaces: a pod's, pinned without a pause process, and work done inside one.

Pinning: a child unshares new network, IPC and UTS namespaces, sets the pod's
hostname, brings loopback up and bind-mounts each namespace onto a file; then
it exits and the mounts keep the namespaces alive (what CRI-O's pinns does).

With a user namespace (a pod of kubelet's `hostUsers: false`) the child first unshares the user
namespace, its parent (root on the host) writes its uid and gid maps, and then the child makes
the others, so that they are owned by it: root in the pod has its capabilities over the pod's
network, IPC and UTS, and none over the host's. The parent pins all four.

Namespaces belong to threads: a thread that joins a network namespace creates
its sockets (netlink ones included) there, and the rest of the process does
not notice. So work for a pod's namespace runs in a fresh thread that joins it
and ends with the work (`run_in`).
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from linux import libc

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def pin_namespaces(net: str, ipc: str, uts: str, hostname: str, sysctls: dict[str, str], user: str = "",
                   uid_map: str = "", gid_map: str = "") -> None:
    """In a forked child: make the namespaces, set the pod's sysctls in them, and bind-mount
    them onto the given files. With `user`, a user namespace with the given maps (lines of
    "inside outside length") owns them all, and is pinned at `user` too."""
    if user:
        _pin_in_userns(net, ipc, uts, hostname, sysctls, user, uid_map, gid_map)
        return
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


def _pin_in_userns(net: str, ipc: str, uts: str, hostname: str, sysctls: dict[str, str], user: str,
                   uid_map: str, gid_map: str) -> None:
    targets = [(path, kind) for path, kind in ((net, "net"), (ipc, "ipc"), (uts, "uts")) if path]
    flags = 0
    for _, kind in targets:
        flags |= {"net": libc.CLONE_NEWNET, "ipc": libc.CLONE_NEWIPC, "uts": libc.CLONE_NEWUTS}[kind]
    to_child_r, to_child_w = os.pipe2(os.O_CLOEXEC)
    from_child_r, from_child_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(to_child_w)
            os.close(from_child_r)
            libc.unshare(libc.CLONE_NEWUSER)
            os.write(from_child_w, b"u")
            if os.read(to_child_r, 1) == b"m":  # mapped: root here is root in the namespace
                if flags:
                    libc.unshare(flags)
                os.write(from_child_w, b"n")
                os.read(to_child_r, 1)  # held until the parent has pinned what it made
                code = 0
        finally:
            os._exit(code)
    os.close(to_child_r)
    os.close(from_child_w)
    try:
        if os.read(from_child_r, 1) != b"u":
            raise OSError(errno.EPERM, "unsharing the pod's user namespace failed")
        # Arbitrary ranges can only be mapped from outside, by root here.
        for name, text in (("uid_map", uid_map), ("gid_map", gid_map)):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(text)
        os.write(to_child_w, b"m")
        if os.read(from_child_r, 1) != b"n":
            raise OSError(errno.EPERM, "making the pod's namespaces in its user namespace failed")
        libc.mount(f"/proc/{pid}/ns/user", user, None, libc.MS_BIND)
        for path, kind in targets:
            libc.mount(f"/proc/{pid}/ns/{kind}", path, None, libc.MS_BIND)
    finally:
        os.close(to_child_w)
        os.close(from_child_r)
        os.waitpid(pid, 0)
    # This process (a child of the zygote's, root on the host) joins what it pinned to set them up.
    if uts:
        libc.setns(uts, libc.CLONE_NEWUTS)
        if hostname:
            libc.sethostname(hostname)
    if ipc:
        libc.setns(ipc, libc.CLONE_NEWIPC)
    if net:
        libc.setns(net, libc.CLONE_NEWNET)
        loopback_up()
    for key, value in sysctls.items():
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(value)


def id_map(mappings) -> str:
    """The text of a uid_map or gid_map for (container_id, host_id, length) triples."""
    return "".join(f"{inside} {outside} {length}\n" for inside, outside, length in mappings)


def idmap_problem(paths: tuple[str, ...]) -> str | None:
    """Why mounts of the filesystems at `paths` can not be idmapped here (a pod's user namespace
    needs that of its image layers, its files and its volumes); None if they can. Tried as
    critest tries it: a throwaway user namespace with a mapping, then open_tree(OPEN_TREE_CLONE)
    and mount_setattr(MOUNT_ATTR_IDMAP). Blocking; no fork of this process (it may have threads):
    the namespace's holder is `unshare --user sleep`."""
    try:
        holder = subprocess.Popen(["unshare", "--user", "--", "sleep", "30"], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as e:
        return f"unshare(1) can not be run to make a user namespace: {e.strerror}"
    try:
        mine = os.readlink("/proc/self/ns/user")
        deadline = time.monotonic() + 5
        while True:
            try:
                if os.readlink(f"/proc/{holder.pid}/ns/user") != mine:
                    break
            except OSError:
                pass
            if holder.poll() is not None:
                return f"unshare --user failed (status {holder.returncode}): no user namespaces here"
            if time.monotonic() > deadline:
                return "unshare --user did not make a user namespace within 5s"
            time.sleep(0.005)
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{holder.pid}/{name}", "w") as f:
                f.write("0 65536 65536\n")
        userns = os.open(f"/proc/{holder.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        try:
            for path in paths:
                tree = libc.open_tree(libc.AT_FDCWD, path, libc.OPEN_TREE_CLONE | libc.OPEN_TREE_CLOEXEC)
                try:
                    libc.mount_setattr(tree, "", libc.AT_EMPTY_PATH, libc.MOUNT_ATTR_IDMAP, userns_fd=userns,
                                       what=f"{path} (idmapped)")
                finally:
                    os.close(tree)
        finally:
            os.close(userns)
        return None
    except OSError as e:
        return str(e)
    finally:
        holder.kill()
        holder.wait()


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
