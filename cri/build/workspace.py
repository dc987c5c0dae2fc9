"""A build's directory under root_dir/build: the unpacked context, and one overlay per step.

A step's overlay stacks the snapshots of the layers so far under a fresh upper dir; what the
step changes lands in the upper dir, which becomes the step's layer (image/layer_diff.py) and
is unpacked into a snapshot like a pulled layer, so the next step stacks it. The directory is
on the root dir's filesystem, beside the content store, so a layer's tar moves into the store
by rename. What a crash leaves — RUN containers, mounts, directories — is ended, unmounted and
deleted at the next start (sweep()).
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import stat
import tempfile

from cri.build.run_step import MOUNT_POINTS, cgroup_parent
from cri.container_lifecycle import kill_cgroup_tree
from image.layer_diff import write_layer
from image.limits import ImageLimits
from image.new_image import HashingWriter, Layer, add_layer, next_chain_id
from image.store import ImageStore
from linux import libc, mounts
from linux.cgroups import Cgroup
from linux.openat2 import RESOLVE_BENEATH, RESOLVE_NO_SYMLINKS, openat2

# Overlay features the layer diff can not carry: a renamed lower directory (redirect_dir)
# becomes a copy, a changed owner or mode copies the whole file up (metacopy off).
OVERLAY_OPTIONS = "redirect_dir=off,metacopy=off,index=off,volatile"


def build_root(root_dir: str) -> str:
    return os.path.join(root_dir, "build")


def sweep(root_dir: str) -> None:
    """What builds a crash cut short left: their RUN steps' processes (a shim outlives the
    daemon), their mounts, then their directories."""
    parent = cgroup_parent(root_dir)
    kill_cgroup_tree(parent)
    with contextlib.suppress(OSError):
        Cgroup(parent).remove(recursive=True)
    top = build_root(root_dir)
    if not os.path.isdir(top):
        return
    for name in os.listdir(top):
        path = os.path.join(top, name)
        mounts.unmount_beneath(path)
        shutil.rmtree(path, ignore_errors=True)


class Workspace:
    def __init__(self, store: ImageStore, root_dir: str):
        self.store = store
        top = build_root(root_dir)
        os.makedirs(top, mode=0o700, exist_ok=True)
        self.root = tempfile.mkdtemp(dir=top)
        self.empty = os.path.join(self.root, "empty")  # the bottom of every stack: no layer is empty
        os.mkdir(self.empty)
        self.context = os.path.join(self.root, "context")
        os.mkdir(self.context, 0o700)
        self._steps = 0
        self._mounted: list[str] = []

    def new_step(self) -> str:
        """A step's directory: bundle with rootfs/ (the mount point), upper/ and work/."""
        self._steps += 1
        step = os.path.join(self.root, f"s{self._steps}")
        for d in ("", "rootfs", "upper", "work"):
            os.mkdir(os.path.join(step, d), 0o711)
        return step

    def lowers(self, chain_id: str) -> list[str]:
        return [*(self.store.snapshots.lower_dirs(chain_id) if chain_id else []), self.empty]

    def mount(self, step: str, chain_id: str) -> str:
        """The step's overlay: the chain's layers under its upper dir. Returns the rootfs."""
        rootfs = os.path.join(step, "rootfs")
        mounts.mount_overlay(rootfs, self.lowers(chain_id),
                             f"upperdir={step}/upper,workdir={step}/work,{OVERLAY_OPTIONS}")
        self._mounted.append(rootfs)
        return rootfs

    def mount_read_only(self, chain_id: str) -> str:
        """A chain's filesystem as it is, to copy from (COPY --from)."""
        self._steps += 1
        rootfs = os.path.join(self.root, f"r{self._steps}")
        os.mkdir(rootfs, 0o700)
        mounts.mount_overlay(rootfs, self.lowers(chain_id), "", libc.MS_RDONLY)
        self._mounted.append(rootfs)
        return rootfs

    def unmount(self, rootfs: str) -> None:
        if rootfs in self._mounted:
            self._mounted.remove(rootfs)
            libc.umount(rootfs, libc.MNT_DETACH)

    def diff(self, step: str, parent_chain: str, max_size: int, stubs: bool = True) -> tuple[str, str] | None:
        """The step's upper dir written as a layer tar: its path and digest; None when the step
        changed nothing. Blocking: run in a thread, with the overlay unmounted."""
        upper = os.path.join(step, "upper")
        if stubs:
            drop_mount_stubs(upper, self.lowers(parent_chain), MOUNT_POINTS)
        if not os.listdir(upper):
            return None
        tar_path = os.path.join(step, "layer.tar")
        with open(tar_path, "wb") as f:
            out = HashingWriter(f)
            write_layer(upper, out, max_size)  # type: ignore[arg-type]  # it writes, as a file does
            out.flush()
        return tar_path, out.digest

    async def layer(self, step: str, parent_chain: str, max_size: int, stubs: bool = True) -> Layer | None:
        """The step's changes as a layer in the store on `parent_chain`; None when there are
        none. Its digest and chain ID are leased (before the store holds them, so no garbage
        collection meanwhile takes them); the caller releases them with release()."""
        made = await asyncio.to_thread(self.diff, step, parent_chain, max_size, stubs)
        if made is None:
            return None
        tar_path, digest = made
        keys = [digest, next_chain_id(parent_chain, digest)]
        for key in keys:
            self.store.leases[key] += 1
        try:
            return await asyncio.to_thread(add_layer, self.store, tar_path, digest, parent_chain,
                                           ImageLimits(max_layer_size=max_size))
        except BaseException:
            release(self.store, keys)
            raise

    def forget(self, path: str) -> None:
        """A step's directory once its layer is in the store (blocking: it may hold much)."""
        shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        for rootfs in reversed(self._mounted):
            with contextlib.suppress(OSError):
                libc.umount(rootfs, libc.MNT_DETACH)
        self._mounted.clear()
        mounts.unmount_beneath(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


def release(store: ImageStore, keys: list[str]) -> None:
    """Let go of leases taken on the store's digests and chain IDs."""
    for key in keys:
        store.leases[key] -= 1
        if store.leases[key] <= 0:
            del store.leases[key]


def drop_mount_stubs(upper: str, lowers: list[str], points) -> None:
    """The executor's empty mount points (/proc, /etc/hosts ...) that no layer below has: the
    step made them, not the Dockerfile. A non-empty one the step wrote to stays. The upper dir
    is the step's to shape (it may make /etc a symlink to anywhere), so each name is looked up
    under its parent's descriptor, opened with no symlink on the way."""
    for rel in sorted(points, key=len, reverse=True):
        if any(_entry(lower, rel) is not None for lower in lowers):
            continue
        found = _entry(upper, rel, keep_parent=True)
        if found is None:
            continue
        parent, name, st = found
        try:
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(name, dir_fd=parent)
            elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(name, dir_fd=parent)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        finally:
            os.close(parent)


def _entry(root: str, rel: str, keep_parent: bool = False):
    """lstat of `rel` under `root`, its parent reached without following any symlink: the
    stat, or with `keep_parent` (parent descriptor, name, stat); None when there is none."""
    head, name = os.path.split(rel)
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            parent = openat2(root_fd, head or ".", os.O_PATH | os.O_DIRECTORY,
                             resolve=RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH)
        finally:
            os.close(root_fd)
    except OSError:
        return None  # a parent missing, or not a plain directory: nothing of ours is there
    try:
        st = os.lstat(name, dir_fd=parent)
    except FileNotFoundError:
        os.close(parent)
        return None
    if keep_parent:
        return parent, name, st
    os.close(parent)
    return st
