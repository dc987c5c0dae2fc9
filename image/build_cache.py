"""The build cache: what a build step made, found again by what went into it.

A step's key hashes its parent's key, the runtime config it ran with, the instruction as
expanded, and the content of what it copies; its entry is the image config and layers
after it. An entry is used only while every blob and the snapshot it names are still in
the store; garbage collection keeps what entries name (`referenced()`), and a prune drops
the whole cache first (`clear()`). One small JSON file per entry, written whole by rename.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile


def step_key(parent: str, *parts: object) -> str:
    """The key of a step: its parent's key and everything that decides what it makes."""
    h = hashlib.sha256(parent.encode())
    for part in parts:
        h.update(b"\0" + json.dumps(part, sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


class BuildCache:
    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, mode=0o700, exist_ok=True)
        # What each entry names, read from disk once: garbage collection asks on every image
        # removal, and must not read every entry each time.
        self._refs: dict[str, set[str]] | None = None

    def _path(self, key: str) -> str:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"build cache key {key!r} is not a sha256 hex digest")
        return os.path.join(self.root, key + ".json")

    def get(self, key: str) -> dict | None:
        try:
            with open(self._path(key)) as f:
                entry = json.load(f)
        except (OSError, ValueError):
            return None  # missing, or torn by a crash: a miss either way
        return entry if isinstance(entry, dict) else None

    def put(self, key: str, entry: dict) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".new-")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entry, f)
            os.replace(tmp, self._path(key))
        except BaseException:
            os.unlink(tmp)
            raise
        if self._refs is not None:
            self._refs[key] = _names(entry)

    def referenced(self) -> set[str]:
        """The blob digests and chain IDs the entries name."""
        if self._refs is None:
            refs = {}
            for name in os.listdir(self.root):
                if name.endswith(".json"):
                    entry = self.get(name[:-5])
                    if entry is not None:
                        refs[name[:-5]] = _names(entry)
            self._refs = refs
        return set().union(*self._refs.values())

    def clear(self) -> int:
        """Drop every entry; how many there were."""
        names = os.listdir(self.root)
        shutil.rmtree(self.root)
        os.makedirs(self.root, mode=0o700)
        self._refs = {}
        return sum(name.endswith(".json") for name in names)


def _names(entry: dict) -> set[str]:
    out = {layer.get("digest", "") for layer in entry.get("layers") or [] if isinstance(layer, dict)}
    out.add(entry.get("chain_id") or "")
    out.discard("")
    return out
