"""Fuzz target: layer tars (image/unpack.py), unpacked as a pull unpacks them: as root, into an empty
directory, in overlayfs form, under the layer bounds.

The input is a layer blob (plain tar, gzip or zstd: unpacking sniffs which). What unpacks must
stay inside the directory; what does not must fail with the layer's documented errors. An
OSError is documented only for a destination filesystem that fails (full, read-only, broken);
any other is a layer the checks let through to the kernel, and a finding."""
from __future__ import annotations

import errno
import os
import shutil

from fuzz.harness import instrumented, run, scratch

with instrumented(__name__ == "__main__"):
    from image.limits import ImageLimits, LimitExceeded
    from image.unpack import LayerError, unpack_layer

EXPECTED = (LayerError, LimitExceeded)
# Small bounds: a fuzzer's input is small, and a sparse file is cheap only up to a point.
LIMITS = ImageLimits(max_layer_size=64 << 20, max_layer_entries=10_000)
# Not EROFS: the fuzzer confines the target to a read-only filesystem but for its scratch tmpfs,
# so that is what writing outside looks like.
_FILESYSTEM_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EIO}
_MEDIA_TYPES = (None, "application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip",
                "application/vnd.oci.image.layer.v1.tar+zstd")


def check(data: bytes) -> None:
    if not data:
        return
    media_type, blob = _MEDIA_TYPES[data[0] % len(_MEDIA_TYPES)], data[1:]
    work = scratch()
    path, dest = os.path.join(work, "layer"), os.path.join(work, "dest")
    outside = os.path.join(work, "outside")
    with open(path, "wb") as f:
        f.write(blob)
    shutil.rmtree(dest, ignore_errors=True)
    shutil.rmtree(outside, ignore_errors=True)
    os.mkdir(dest)
    os.mkdir(outside)
    try:
        unpack_layer(path, media_type, dest, LIMITS)
    except OSError as e:
        if e.errno not in _FILESYSTEM_FAILURES:
            raise
    finally:
        assert os.listdir(outside) == [], "the layer wrote beside its directory"
        assert sorted(os.listdir(work)) == ["dest", "layer", "outside"], sorted(os.listdir(work))


if __name__ == "__main__":
    run(check, EXPECTED, confine=True)
