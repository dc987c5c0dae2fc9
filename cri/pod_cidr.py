"""The node's pod CIDRs, as kubelet gives them with UpdateRuntimeConfig once the node has them.

Cricket's own network does not depend on them: its CNI config names its ranges (host-local's
`ranges`), so NetworkReady is what the CNI config makes it, before and after (containerd uses
them only to write a CNI config from a template when none is there). They are recorded so that
`Status` can show what the node was given, and kept in the root dir, beside the runtime's
records, so that a restarted daemon still knows them (kubelet sends them again only when they
change). The file is replaced whole (written beside, synced, renamed): a crash leaves the old
CIDRs or the new, never a torn file.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import tempfile

from cri.errors import InvalidArgument

log = logging.getLogger(__name__)

FILE_NAME = "runtime-config.json"


def parse(text: str) -> list[str]:
    """kubelet's pod_cidr (its node's podCIDRs joined by commas: one range, or one per IP family
    on a dual-stack node), each as its network; InvalidArgument naming what is wrong."""
    out: list[str] = []
    families: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if "/" not in part:
            raise InvalidArgument(f"runtime_config.network_config.pod_cidr {text!r}: {part!r} is not a CIDR "
                                  "(an address and a prefix length, e.g. 10.244.0.0/24)")
        try:
            # Not strict: host bits are dropped, as Go's net.ParseCIDR (containerd's) does.
            net = ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise InvalidArgument(f"runtime_config.network_config.pod_cidr {text!r}: {part!r} is not a CIDR "
                                  "(give e.g. 10.244.0.0/24, or an IPv4 and an IPv6 range joined by a comma)") from None
        if net.version in families:
            raise InvalidArgument(f"runtime_config.network_config.pod_cidr {text!r}: more than one IPv{net.version} "
                                  "range (a node has at most one per IP family)")
        families.add(net.version)
        out.append(str(net))
    return out


class PodCidrs:
    """The recorded CIDRs of one root dir."""

    def __init__(self, root_dir: str):
        self.path = os.path.join(root_dir, FILE_NAME)
        self.cidrs: list[str] = self._load()
        self._lock = asyncio.Lock()

    def _load(self) -> list[str]:
        try:
            with open(self.path) as f:
                cidrs = json.load(f)["podCIDRs"]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as e:
            # Never torn (it is renamed into place), so this is damage: kubelet sends them again
            # when it next syncs its node (after its own restart at the latest).
            log.warning("%s is unreadable (%s): no pod CIDRs recorded", self.path, e)
            return []
        if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
            log.warning("%s holds no list of pod CIDRs: none recorded", self.path)
            return []
        return cidrs

    async def record(self, cidrs: list[str]) -> None:
        """Keep `cidrs` on disk, then in memory: an answer of success means a restart keeps them."""
        async with self._lock:  # two updates land in the order they came
            if cidrs != self.cidrs:
                await asyncio.to_thread(_write, self.path, {"podCIDRs": cidrs})
                self.cidrs = cidrs


def _write(path: str, doc: dict) -> None:
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=FILE_NAME + ".", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
