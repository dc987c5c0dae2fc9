"""The image store: image records over the content store and the snapshotter.

It answers "which image does this name or ID mean", removes names and images,
reports usage, and collects blobs and snapshots that nothing references.
"""
from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Set
from typing import Any

from image.build_cache import BuildCache
from image.content import ContentStore
from image.metadata import ImageRecord, Metadata
from image.reference import ReferenceError, parse_reference
from image.snapshots import Snapshotter

log = logging.getLogger(__name__)

_HEX = re.compile(r"^[0-9a-f]+$")
_ID_LENGTH = 64  # hex digits of a sha256 image ID
# Shortest ID prefix accepted in place of a name, as `crictl images` prints 13 characters.
_MIN_ID_PREFIX = 4
# A partial download is kept this long so a pull retried after a crash resumes it.
INGEST_KEEP_SECONDS = 3600


class ImageNotFound(LookupError):
    pass


class ImageStore:
    def __init__(self, root: str):
        os.makedirs(root, exist_ok=True)
        self.metadata = Metadata(os.path.join(root, "images.db"))
        self.content = ContentStore(os.path.join(root, "content"))
        self.snapshots = Snapshotter(os.path.join(root, "snapshots"), self.metadata)
        self.snapshot_root = self.snapshots.root
        self.build_cache = BuildCache(os.path.join(root, "build-cache"))
        # Here, not in a Puller: a load's Puller and the daemon's share the store, its ingest
        # files and its snapshots. `leases`: digests and chain IDs that running pulls and loads
        # hold but no image records yet, counted (they may overlap), which garbage collection
        # and a failed pull's clean-up leave alone. `work`: the download of a digest or the
        # unpack of a chain ID under way, which a second pull of it waits for (image/pull.py).
        self.leases: Counter[str] = Counter()
        self.work: dict[str, Any] = {}

    def close(self) -> None:
        self.metadata.close()

    def lookup(self, spec: str) -> tuple[ImageRecord, str | None]:
        """Find the image `spec` names: a full or short image ID, or a reference by tag or digest.

        Returns the record and the normalised name that matched (None for an ID).
        Raises ImageNotFound, or ReferenceError for a string that is neither.
        """
        if not spec:
            raise ReferenceError("image reference is empty")
        ident = spec[7:] if spec.startswith("sha256:") else spec
        if _HEX.match(ident) and len(ident) >= _MIN_ID_PREFIX:
            found = self.metadata.images_by_id_prefix("sha256:" + ident)
            if len(found) == 1:
                return found[0], None
            if len(found) > 1:
                raise ImageNotFound(f"image ID prefix {spec!r} is ambiguous: it matches {len(found)} images")
            # A whole ID can only be an ID (the reference grammar refuses 64 hex digits as a
            # name), so one that matches nothing is a missing image, not a malformed name.
            if spec.startswith("sha256:") or len(ident) == _ID_LENGTH:
                raise ImageNotFound(f"no image with ID {spec}")
        name = str(parse_reference(spec))
        rec = self.metadata.image_by_name(name)
        if rec is None:
            raise ImageNotFound(f"image {spec!r} not found (looked for {name})")
        return rec, name

    def find(self, spec: str) -> ImageRecord | None:
        try:
            return self.lookup(spec)[0]
        except ImageNotFound:
            return None

    def list(self) -> list[ImageRecord]:
        return self.metadata.images()

    def remove(self, spec: str) -> bool:
        """Remove what `spec` names. A tag of an image that has other tags is only untagged;
        an ID, a digest reference or the last tag removes the image. True when an image
        went, and its blobs and snapshots may be garbage now (collect_garbage says)."""
        try:
            rec, name = self.lookup(spec)
        except ImageNotFound:
            return False
        if name is not None and name in rec.repo_tags and len(rec.repo_tags) > 1:
            self.metadata.remove_name(name)
            return False
        self.metadata.remove_image(rec.id)
        return True

    def collect_garbage(self, in_flight: Set[str] = frozenset()) -> None:
        """Delete blobs and snapshots that no image references.

        `in_flight` holds digests and chain IDs that a running pull or build is still
        assembling; they are kept even though no image record names them yet, as are
        those the build cache names.
        """
        in_flight = set(in_flight) | self.build_cache.referenced()
        blobs = self.metadata.referenced_blobs() | in_flight
        for digest in self.content.digests():
            if digest not in blobs:
                log.debug("removing unreferenced blob %s", digest)
                self.content.delete(digest)
        for digest in self.content.stale_ingests(INGEST_KEEP_SECONDS):
            if digest not in in_flight:
                self.content.delete(digest)
        keep: set[str] = set()
        by_chain = {r.chain_id: r for r in self.metadata.snapshots()}
        for chain_id in self.metadata.image_chain_ids() | in_flight:
            while chain_id and chain_id not in keep:
                keep.add(chain_id)
                rec = by_chain.get(chain_id)
                chain_id = rec.parent if rec else ""
        for chain_id, rec in by_chain.items():
            if chain_id not in keep:
                log.debug("removing unreferenced snapshot %s", chain_id)
                self.snapshots.remove(rec)

    def usage(self) -> tuple[int, int]:
        """Bytes and inodes the image store uses: unpacked snapshots plus stored blobs."""
        used, inodes = self.metadata.snapshot_usage()
        for digest in self.content.digests():
            used += self.content.size(digest)
            inodes += 1
        return used, inodes
