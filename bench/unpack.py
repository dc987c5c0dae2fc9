"""Unpack benchmark: the floor under a pull. One synthetic layer (a 20 MB file and 3,000
small ones) unpacked by Cricket's unpacker from a file, plain, gzip and zstd: what
decompressing, parsing and writing cost on this machine with no network and no peer."""
from __future__ import annotations

import os
import random
import shutil
import tarfile
import tempfile
import time

from image.compression import GZIP, NONE, ZSTD
from image.unpack import unpack_layer
from tests.fixtures.layers import compress, entry, tar_bytes

MEDIA_TYPES = {
    NONE: "application/vnd.oci.image.layer.v1.tar",
    GZIP: "application/vnd.oci.image.layer.v1.tar+gzip",
    ZSTD: "application/vnd.oci.image.layer.v1.tar+zstd",
}


def add_arguments(parser) -> None:
    parser.add_argument(
        "--unpack-runs", type=int, default=3, help="unpacks per compression, best kept (default %(default)s)"
    )


def _layer() -> tuple[bytes, int]:
    rng = random.Random(1)
    members = [entry("big", data=os.urandom(20 << 20))]
    for d in range(60):
        members.append(entry(f"usr/lib/pkg{d}/", tarfile.DIRTYPE, mode=0o755))
        for i in range(50):
            members.append(entry(f"usr/lib/pkg{d}/file{i}.py", data=os.urandom(rng.randint(100, 20000))))
    return tar_bytes(*members), len(members)


def run(args) -> dict:
    tar, entries = _layer()
    figures: dict = {"uncompressed_bytes": len(tar), "entries": entries, "kinds": {}}
    with tempfile.TemporaryDirectory(prefix="bench-unpack-") as tmp:
        for kind in (NONE, GZIP, ZSTD):
            blob = os.path.join(tmp, f"layer.{kind}")
            with open(blob, "wb") as f:
                f.write(compress(tar, kind))
            times = []
            for attempt in range(args.unpack_runs):
                out = os.path.join(tmp, f"out-{kind}-{attempt}")
                os.mkdir(out)
                start = time.perf_counter()
                unpack_layer(blob, MEDIA_TYPES[kind], out)
                times.append(time.perf_counter() - start)
                shutil.rmtree(out)
            figures["kinds"][kind] = {"seconds": times, "blob_bytes": os.path.getsize(blob)}
    return figures


def report(figures: dict) -> str:
    size, entries = figures["uncompressed_bytes"], figures["entries"]
    lines = [f"unpack: one layer, {size / 1e6:.1f} MB uncompressed, {entries} entries (best of the runs)"]
    for kind, f in figures["kinds"].items():
        best = min(f["seconds"])
        lines.append(
            f"  {kind:5s}: {best * 1000:7.1f} ms  {size / best / 1e6:7.1f} MB/s  {entries / best:8.0f} entries/s"
        )
    return "\n".join(lines)
