"""ext4 disk images filled from a directory (mke2fs -d: no loop device, no mount), and the
checkout's disk of each run.

Under TCG every instruction of the guest is emulated, so work that the host can do at native
speed is done here: the checkout is copied and byte-compiled here and reaches the guest as a
disk of its own, rather than being read over 9p and copied by the guest.
"""
from __future__ import annotations

import compileall
import os
import shutil
import subprocess

SRC_LABEL = "cricket-src"
# Not the guest's business: version control, the host's venv and caches, build output.
_LEFT_OUT = {".git", ".venv", ".cache", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", "build"}


def du(path: str) -> int:
    out = subprocess.run(["du", "-s", "-B1", "-x", path], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def make_ext4(source: str, image: str, label: str, free: int, log=None) -> None:
    """A raw ext4 image (sparse) holding source's tree, with `free` bytes to spare, owners,
    modes, times and special files kept."""
    mib = 1 << 20
    size = (du(source) * 5 // 4 + free + mib - 1) // mib * mib  # a quarter more: metadata and journal
    if os.path.exists(image):
        os.unlink(image)
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-L", label, "-d", source, "-F", image, str(size >> 10)],
                   check=True, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT if log else None)


def _ignore(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n in _LEFT_OUT or n.endswith(".egg-info")}


def checkout_disk(tree: str, workdir: str) -> str:
    """The checkout at this moment (its files, ignored generated ones like the CRI stubs
    included), byte-compiled, as an ext4 image in workdir: an edit made on the host while the
    guest runs does not land in the middle of the run."""
    stage = os.path.join(workdir, "src.tmp")
    if os.path.isdir(stage):
        shutil.rmtree(stage)
    shutil.copytree(tree, stage, symlinks=True, ignore=_ignore)
    compileall.compile_dir(stage, quiet=2, workers=0)  # the same bytecode magic as the guest's 3.11
    image = os.path.join(workdir, "src.img")
    try:
        make_ext4(stage, image, SRC_LABEL, free=256 << 20)
    finally:
        shutil.rmtree(stage)
    return image
