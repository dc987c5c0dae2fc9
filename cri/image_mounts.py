"""Images mounted into containers: the CRI's Mount.image, which Kubernetes image volumes
(KEP-4639) are made of.

Each one is the image's snapshots stacked by overlayfs with no upper dir, on a mount point in
the container's bundle; the container binds it (or a sub path of it) like a host path. An
overlay without an upper dir is read-only whatever its flags, so nothing a container does can
reach the snapshots that every container of the image shares. The mount is the container's
own: made with it, gone with it, so removing one container never takes a filesystem from
under another, and nothing needs to count a shared mount's users.

While a container has an image mounted, the image's snapshots are kept from image GC (the
record's `image_mounts`, as a container's own image's `chain_id`). RemoveImage is deferred,
not refused — as containerd's RemoveImage refuses no image a container uses: the image's names
and record go at once, its snapshots when the last container that mounts them is removed. So
kubelet's image GC, should it count no image volume as a use, can never break a running container.
"""
from __future__ import annotations

import asyncio
import os

from api.runtime.v1 import api_pb2 as pb
from cri.errors import InvalidArgument, NotFound, RuntimeFailure
from cri.layout import Layout
from image.store import ImageStore
from linux import libc
from linux.mounts import mount_overlay, secure_join

# The bottom lower dir of every image mount: overlayfs wants two lower dirs when it has no
# upper one, and an image may have one layer or none.
_EMPTY = "empty"


def is_image_mount(m: pb.Mount) -> bool:
    return bool(m.image.image)


def check(mounts) -> None:
    """Refuse, before anything is made, an image mount the CRI does not allow."""
    for m in mounts:
        where = f"mount {m.container_path or '(no container_path)'}"
        if m.image_sub_path and not is_image_mount(m):
            raise InvalidArgument(f"{where}: image_sub_path {m.image_sub_path!r} is set but image is empty: "
                                  "a sub path is one of an image's")
        if not is_image_mount(m):
            continue
        if m.host_path:
            raise InvalidArgument(f"{where}: host_path {m.host_path!r} and image {m.image.image!r} are both set: "
                                  "a mount is of one or the other")
        if not m.readonly:
            raise InvalidArgument(f"{where}: image {m.image.image!r} can only be mounted read-only: set readonly")


def resolve(images: ImageStore, mounts) -> list[dict]:
    """The image each image mount names, as the container's record keeps them; NotFound when
    one is not present (kubelet pulls an image volume's image before it creates the container)."""
    out = []
    for m in mounts:
        if not is_image_mount(m):
            continue
        rec = images.find(m.image.image)
        if rec is None:
            raise NotFound(f"image {m.image.image!r} of the mount at {m.container_path} is not present: pull it first")
        out.append({"container_path": m.container_path, "image_id": rec.id, "chain_id": rec.chain_id})
    return out


async def mount(layout: Layout, images: ImageStore, container_id: str, recorded: list[dict],
                mounts, userns: str = "") -> dict[str, str]:
    """Mount each recorded image and return, by container path, what the container is to bind:
    the image's root or its sub path. With `userns` (a pod's pinned user namespace), each image's
    snapshots are idmapped through it, as the container's rootfs is, so the binds need no idmapping
    of their own. What this makes, release() undoes, even half made."""
    wanted = [m for m in mounts if is_image_mount(m)]
    if not wanted:
        return {}
    # The snapshot records are read here, on the loop (the store is not shared with threads);
    # the mounts and the walk of the sub paths are made in a thread.
    try:
        lowers = [images.snapshots.lower_dirs(r["chain_id"]) if r["chain_id"] else [] for r in recorded]
    except LookupError as e:
        raise RuntimeFailure(f"an image to mount is damaged: {e}; pull it again") from None
    return await asyncio.to_thread(_mount_all, layout.image_mounts(container_id), wanted, lowers, userns)


def _mount_all(root: str, wanted: list[pb.Mount], lowers: list[list[str]], userns: str) -> dict[str, str]:
    empty = os.path.join(root, _EMPTY)
    os.makedirs(empty, mode=0o755)
    sources = {}
    for i, (m, lower) in enumerate(zip(wanted, lowers)):
        point = os.path.join(root, str(i))
        os.mkdir(point, 0o755)
        try:
            mount_overlay(point, [*lower, empty], flags=libc.MS_RDONLY, userns=userns,
                          staging=os.path.join(root, f"{i}.idmapped"))
        except OSError as e:
            raise RuntimeFailure(f"mount {m.container_path}: mounting image {m.image.image!r}: {e.strerror}") from None
        source = point
        if m.image_sub_path:
            # Every symlink resolved inside the image, so the sub path can name nothing outside it.
            try:
                source = secure_join(point, m.image_sub_path)
            except OSError as e:  # a symlink loop
                raise InvalidArgument(f"mount {m.container_path}: image_sub_path {m.image_sub_path!r}: "
                                      f"{e.strerror}") from None
            if not os.path.lexists(source):
                raise InvalidArgument(f"mount {m.container_path}: image_sub_path {m.image_sub_path!r} "
                                      f"is not in image {m.image.image!r}")
        sources[m.container_path] = source
    return sources


def release(layout: Layout, container_id: str) -> None:
    """Unmount every image mount of the container: idempotent, and safe on a half-made one.
    Must come before its bundle is removed."""
    root = layout.image_mounts(container_id)
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return
    for name in names:
        point = os.path.join(root, name)
        if os.path.ismount(point):
            libc.umount(point, libc.MNT_DETACH)


def report(recorded: list[dict], mounts) -> None:
    """Fill in, on a container's mounts as its config gave them, the image ID each image mount
    resolved to (ImageSpec.image_ref), as ContainerStatus answers (KEP-5365)."""
    ids = {r["container_path"]: r["image_id"] for r in recorded}
    for m in mounts:
        if is_image_mount(m) and m.container_path in ids:
            m.image.image_ref = ids[m.container_path]
