"""A container's writable layer is a volatile overlay unless `[rootfs] volatile = false`.

Without "volatile", the last unmount of an overlay syncs the whole filesystem its upper dir is
on: each RemoveContainer waited on the host disk (5.6 ms median here while Go builds wrote
beside it, against 0.2 ms volatile). Kubernetes never runs a container again on its old
writable layer, so a sync keeps nothing it would use. What is asserted: the option as the
kernel reports the mount, that a container syncing works and sees its own writes, and that
removal leaves neither the mount nor the directories behind.
"""
from __future__ import annotations

import os

import pytest

from cri.layout import Layout
from tests.daemon import registry_config
from tests.pods import Pods, serving


def _super_options(path: str) -> list[str] | None:
    """The superblock options of the mount on `path` (the topmost), None if nothing is mounted there."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == path:
                found = fields[fields.index("-") + 3].split(",")
    return found


@pytest.mark.parametrize("volatile", [True, False], ids=["default", "turned-off"])
def test_the_rootfs_overlay_is_volatile_as_configured(registry, test_images, tmp_path, volatile):
    config = registry_config(registry) + ("" if volatile else "[rootfs]\nvolatile = false\n")
    busybox = test_images["busybox"].reference(registry)
    with serving(str(tmp_path / "cricketd"), config, [busybox]) as d:
        pods = Pods(d, str(tmp_path / "logs"))
        pod = pods.run_pod()
        cid = pods.run(pod, busybox, ["sleep", "1000"])
        layout = Layout(d.root, d.state)
        rootfs = layout.rootfs(cid)
        options = _super_options(rootfs)
        assert options is not None and "lowerdir" in " ".join(options), f"no overlay on {rootfs}: {options}"
        # Kernels with overlay's fsync= option report "volatile" as fsync=volatile.
        assert bool({"volatile", "fsync=volatile"} & set(options)) is volatile, options
        assert pods.sh(cid, "echo kept > /written && sync && cat /written").strip() == "kept"
        assert os.path.exists(os.path.join(layout.container_dir(cid), "upper", "written"))
        pods.stop(cid)
        pods.remove(cid)
        assert _super_options(rootfs) is None
        assert not os.path.exists(layout.bundle(cid)) and not os.path.exists(layout.container_dir(cid))
        pods.stop_pod(pod)
        pods.remove_pod(pod)
