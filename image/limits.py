"""Bounds on what an image controls: its layers' unpacked size and entry count, its manifests
and config, the headers of its tar entries.

An image is input from whoever published it. Every part of it that costs the node memory,
disk or inodes has a bound here, and crossing one fails the pull (or load) with
LimitExceeded, whose message names the bound and, where it is a setting, the setting.
"""
from __future__ import annotations

from dataclasses import dataclass

# containers/image (CRI-O's image library) bounds a config at 4 MiB, as it does a manifest:
# a config is a few KiB, and it is read whole into memory.
CONFIG_LIMIT = 4 << 20
# The manifest bound of image/registry.py, for manifests read from an archive too.
MANIFEST_LIMIT = 4 << 20
# Go's archive/tar, which containerd unpacks with, refuses a pax header or a GNU long name
# over 1 MiB; the headers of one tar entry (a GNU sparse map included) get the same here.
HEADER_LIMIT = 1 << 20


class LimitExceeded(Exception):
    """Something an image controls is over one of its bounds; the message names the bound."""


@dataclass(frozen=True)
class ImageLimits:
    """Bounds of one layer, as [image] max_layer_size and max_layer_entries set them."""

    # Bytes of file content, counted at each file's apparent size (a sparse file's holes count):
    # what the layer could take on disk if anything copied it out densely.
    max_layer_size: int = 64 << 30
    max_layer_entries: int = 1_000_000
