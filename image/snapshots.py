"""The overlay snapshotter: one directory per unpacked layer, keyed by chain ID.

A layer is unpacked in the overlayfs form (whiteouts as 0:0 character devices,
opaque dirs by xattr) into its own directory, so layers can be unpacked in any
order and stacked later as overlay lower dirs. Directory names are the row ids
of the snapshot table: short, so many layers fit in one mount option string.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from typing import cast

from image.metadata import Metadata, SnapshotRecord
from linux.crash_points import crash_point

log = logging.getLogger(__name__)

_NEW_PREFIX = "new-"


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The OCI chain ID of each layer: its identity including every layer below it."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


class Snapshotter:
    def __init__(self, root: str, metadata: Metadata):
        self.root = root
        self._md = metadata
        os.makedirs(root, exist_ok=True)

    def new_dir(self) -> str:
        """An empty directory to unpack a layer into before it is committed."""
        return tempfile.mkdtemp(prefix=_NEW_PREFIX, dir=self.root)

    def commit(self, new_dir: str, chain_id: str, parent: str, diff_id: str, size: int, inodes: int) -> SnapshotRecord:
        placed: list[str] = []

        def place(sid: int) -> None:
            dst = os.path.join(self.root, str(sid))
            os.rename(new_dir, dst)
            placed.append(dst)
            crash_point("image_pull.snapshot_placed")  # in place, its row not committed

        try:
            self._md.add_snapshot(chain_id, parent, diff_id, size, inodes, place)
        except BaseException:
            # Placed, but its row rolled back (the COMMIT failed: a full disk): the directory
            # goes now, not at the next start's sweep, and takes its room with it.
            for dst in placed:
                shutil.rmtree(dst, ignore_errors=True)
            raise
        return cast(SnapshotRecord, self._md.snapshot(chain_id))  # just added

    def discard(self, new_dir: str) -> None:
        shutil.rmtree(new_dir, ignore_errors=True)

    def get(self, chain_id: str) -> SnapshotRecord | None:
        return self._md.snapshot(chain_id)

    def path(self, rec: SnapshotRecord) -> str:
        return os.path.join(self.root, str(rec.id))

    def lower_dirs(self, chain_id: str) -> list[str]:
        """Directories of the chain from the top layer down: an overlay lowerdir list."""
        dirs = []
        while chain_id:
            rec = self._md.snapshot(chain_id)
            if rec is None:
                raise LookupError(f"snapshot {chain_id} is missing")
            dirs.append(self.path(rec))
            chain_id = rec.parent
        return dirs

    def remove(self, rec: SnapshotRecord) -> None:
        # The row goes first: a crash after it leaves a stray directory, which sweep() removes.
        self._md.remove_snapshot(rec.chain_id)
        crash_point("image_remove.mid_collect")  # its row gone, its directory not yet
        shutil.rmtree(self.path(rec), ignore_errors=True)

    def sweep(self) -> None:
        """Remove what a crash left half-made: unpack dirs never committed, dirs without rows,
        rows whose directory is gone."""
        known = {str(r.id): r for r in self._md.snapshots()}
        for name in os.listdir(self.root):
            if name not in known:
                log.info("removing leftover snapshot directory %s", name)
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
        for name, rec in known.items():
            if not os.path.isdir(os.path.join(self.root, name)):
                log.warning("snapshot %s lost its directory; forgetting it", rec.chain_id)
                self._md.remove_snapshot(rec.chain_id)
