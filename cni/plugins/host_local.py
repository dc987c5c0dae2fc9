"""host-local IPAM: addresses from ranges, allocations kept as files under a lock.

The store has the reference plugin's layout, so either can take over from the
other: <dataDir>/<network>/<ip> holds "<container id>\\r\\n<ifname>", and
last_reserved_ip.<n> remembers where the n-th range set last allocated, so
addresses are handed out in turn rather than reused at once. One flock on
<dataDir>/<network>/lock makes concurrent ADDs, from threads or processes,
take turns: no address is ever given twice.
"""
from __future__ import annotations

import fcntl
import ipaddress
import os
from contextlib import contextmanager
from typing import Any, cast

from cni.invoke import Env
from cni.spec import INVALID_CONFIG, CniError

DEFAULT_DATA_DIR = "/var/lib/cni/networks"
_LINE_BREAK = "\r\n"
# The spec's code for "no address left" is plugin-specific; the reference uses this text.
NO_ADDRESSES = 100


class _Range:
    def __init__(self, spec: dict):
        try:
            self.subnet = ipaddress.ip_network(spec["subnet"], strict=False)
        except (KeyError, ValueError) as e:
            raise CniError(INVALID_CONFIG, "host-local: range needs a valid subnet", str(e)) from None
        hosts_start, hosts_end = self._host_bounds()
        self.start = ipaddress.ip_address(spec["rangeStart"]) if spec.get("rangeStart") else hosts_start
        self.end = ipaddress.ip_address(spec["rangeEnd"]) if spec.get("rangeEnd") else hosts_end
        self.gateway = ipaddress.ip_address(spec["gateway"]) if spec.get("gateway") else hosts_start
        for addr, what in ((self.start, "rangeStart"), (self.end, "rangeEnd"), (self.gateway, "gateway")):
            if addr not in self.subnet:
                raise CniError(INVALID_CONFIG, f"host-local: {what} {addr} is outside {self.subnet}")
        # Both are in self.subnet, so of one IP version: comparable.
        if cast(Any, self.start) > self.end:
            raise CniError(INVALID_CONFIG, f"host-local: rangeStart {self.start} is after rangeEnd {self.end}")

    def _host_bounds(self):
        # The network address is never handed out, nor (IPv4) the broadcast one; the
        # reference's default gateway is the first address, so the range starts after it.
        first = self.subnet.network_address + 1
        last = self.subnet.broadcast_address - (1 if self.subnet.version == 4 else 0)
        return first, last

    def candidates(self, after):
        """Every usable address of the range, starting just after `after` and wrapping round."""
        size = int(self.end) - int(self.start) + 1
        offset = 0 if after is None or not (self.start <= after <= self.end) else int(after) - int(self.start) + 1
        for i in range(size):
            addr = ipaddress.ip_address(int(self.start) + (offset + i) % size)
            if addr != self.gateway:
                yield addr


def _range_sets(ipam: dict) -> list[list[_Range]]:
    if ipam.get("ranges"):
        sets = ipam["ranges"]
        if not all(isinstance(s, list) and s for s in sets):
            raise CniError(INVALID_CONFIG, "host-local: ranges must be a list of non-empty lists of ranges")
        return [[_Range(r) for r in s] for s in sets]
    if ipam.get("subnet"):  # the older single-range form
        return [[_Range(ipam)]]
    raise CniError(INVALID_CONFIG, "host-local: no ranges (or subnet) configured")


class _Store:
    def __init__(self, data_dir: str, network: str):
        if "/" in network or network in ("", ".", ".."):
            raise CniError(INVALID_CONFIG, f"host-local: network name {network!r} cannot name a directory")
        self.dir = os.path.join(data_dir, network)
        os.makedirs(self.dir, mode=0o755, exist_ok=True)

    @contextmanager
    def locked(self):
        fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _path(self, addr) -> str:
        return os.path.join(self.dir, str(addr))

    def reserve(self, addr, owner: str, set_index: int) -> bool:
        try:
            fd = os.open(self._path(addr), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(owner)
        with open(os.path.join(self.dir, f"last_reserved_ip.{set_index}"), "w") as f:
            f.write(str(addr))
        return True

    def last_reserved(self, set_index: int):
        try:
            with open(os.path.join(self.dir, f"last_reserved_ip.{set_index}")) as f:
                return ipaddress.ip_address(f.read().strip())
        except (OSError, ValueError):
            return None

    def held_by(self, owner: str) -> list:
        out = []
        for name in os.listdir(self.dir):
            try:
                addr = ipaddress.ip_address(name)
            except ValueError:
                continue  # lock, last_reserved_ip.N
            try:
                with open(self._path(name), newline="") as f:  # keep the "\r\n" as written
                    if f.read().strip() == owner.strip():
                        out.append(addr)
            except FileNotFoundError:
                pass
        return out

    def release(self, owner: str) -> None:
        for addr in self.held_by(owner):
            try:
                os.unlink(self._path(addr))
            except FileNotFoundError:
                pass


def _owner(env: Env) -> str:
    return f"{env.container_id}{_LINE_BREAK}{env.ifname}"


def _store(conf: dict) -> _Store:
    return _Store(conf.get("ipam", {}).get("dataDir") or DEFAULT_DATA_DIR, conf["name"])


def add(conf: dict, env: Env) -> dict:
    ipam = conf.get("ipam") or {}
    sets = _range_sets(ipam)
    store = _store(conf)
    ips = []
    with store.locked():
        owner = _owner(env)
        held = set(store.held_by(owner))
        for index, ranges in enumerate(sets):
            found = None
            for r in ranges:
                mine = next((a for a in held if a in r.subnet), None)
                if mine is not None:  # a retried ADD keeps what it got
                    found = (mine, r)
                    break
            for r in ranges if found is None else ():
                for addr in r.candidates(store.last_reserved(index)):
                    if store.reserve(addr, owner, index):
                        found = (addr, r)
                        break
                if found:
                    break
            if found is None:
                store.release(owner)
                subnets = ", ".join(str(r.subnet) for r in ranges)
                raise CniError(NO_ADDRESSES, f"host-local: no IP addresses available in range set {subnets}")
            addr, r = found
            ips.append({"address": f"{addr}/{r.subnet.prefixlen}", "gateway": str(r.gateway)})
    result: dict[str, Any] = {"cniVersion": "1.0.0", "ips": ips,
                              "routes": [dict(rt) for rt in ipam.get("routes") or ()]}
    if ipam.get("resolvConf"):
        result["dns"] = _dns_from(ipam["resolvConf"])
    return result


def delete(conf: dict, env: Env) -> None:
    store = _store(conf)
    with store.locked():
        store.release(_owner(env))


def check(conf: dict, env: Env) -> None:
    store = _store(conf)
    with store.locked():
        if not store.held_by(_owner(env)):
            raise CniError(NO_ADDRESSES, f"host-local: container {env.container_id} has no address reserved")


def _dns_from(path: str) -> dict:
    dns: dict = {}
    try:
        with open(path) as f:
            for line in f:
                word, _, rest = line.partition(" ")
                if word == "nameserver":
                    dns.setdefault("nameservers", []).append(rest.strip())
                elif word in ("search", "domain"):
                    dns.setdefault("search", []).extend(rest.split())
                elif word == "options":
                    dns.setdefault("options", []).extend(rest.split())
    except OSError as e:
        raise CniError(INVALID_CONFIG, f"host-local: resolvConf {path} is unreadable", str(e)) from None
    return dns
