"""Cgroups by path, on cgroup v1 (legacy or hybrid) and v2 (unified), found at first use.

A path is what an OCI spec's linux.cgroupsPath holds ("/kubepods/pod1/ctr2"):
on v1 it names a directory in every hierarchy Cricket uses, on v2 one
directory of the unified tree. The daemon makes pod cgroups and reads stats;
the executor places container processes and applies limits.
"""
from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass
from functools import lru_cache

CGROUP_ROOT = "/sys/fs/cgroup"
# v1 controllers Cricket places containers under (hugetlb and systemd's named
# hierarchy when mounted), so a container leaves the daemon's groups in all of them.
_V1_WANTED = ("cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer", "hugetlb",
              "net_cls", "net_prio", "perf_event", "name=systemd")
_V2_CONTROLLERS = ("cpu", "cpuset", "memory", "pids", "io", "hugetlb")
# cgroup v2 keys whose file has the same name and meaning in the v1 hierarchy of its
# controller, so a "unified" resource can be honoured on v1 too.
V1_UNIFIED_KEYS = ("pids.max", "cpuset.cpus", "cpuset.mems")
_REMOVE_TRIES = 50  # of 10 ms each: processes that were just killed take a moment to leave


class CgroupError(OSError):
    pass


class CgroupNotFound(CgroupError):
    pass


@dataclass
class CgroupStats:
    cpu_usage_ns: int = 0
    memory_usage: int = 0
    memory_working_set: int = 0
    memory_rss: int = 0
    memory_cache: int = 0
    page_faults: int = 0
    major_page_faults: int = 0
    pids_current: int = 0
    memory_limit: int | None = None
    oom_kills: int = 0


# -- discovery ---------------------------------------------------------------------------


def parse_mountinfo(text: str) -> dict[str, str]:
    """v1 hierarchies from /proc/self/mountinfo: "cpu,cpuacct" (or "name=systemd") -> mount point.

    On a hybrid host the cgroup2 tree beside them is "unified": runc makes and
    joins containers' cgroups there too, so Cricket does the same.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if tail and tail[0] == "cgroup2" and fields[4] != CGROUP_ROOT:
            out.setdefault("unified", fields[4])
            continue
        if len(tail) < 3 or tail[0] != "cgroup":
            continue
        controllers = [o for o in tail[2].split(",") if o in _V1_WANTED or o.startswith("name=")]
        if controllers:
            out.setdefault(",".join(controllers), fields[4])
    return out


@lru_cache(maxsize=1)
def mode() -> str:
    """"v2" when /sys/fs/cgroup is the unified hierarchy, else "v1" (legacy or hybrid)."""
    return "v2" if _is_cgroup2(CGROUP_ROOT) else "v1"


def _is_cgroup2(path: str) -> bool:
    # Python has statvfs but not statfs, whose f_type would say: the mount table says it too.
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if left.split()[4] == path:
                return right.split()[0] == "cgroup2"
    return False


@lru_cache(maxsize=1)
def hierarchies() -> dict[str, str]:
    """The v1 hierarchies Cricket uses: controller list -> mount point."""
    with open("/proc/self/mountinfo") as f:
        return parse_mountinfo(f.read())


def _mount_of(controller: str) -> str | None:
    for names, point in hierarchies().items():
        if controller in names.split(","):
            return point
    return None


def v1_mount_sources(path: str) -> list[tuple[str, str]] | None:
    """For a container's /sys/fs/cgroup on v1: (name under it, host directory) per hierarchy.
    None on v2, where the container mounts cgroup2 itself."""
    if mode() == "v2":
        return None
    out = []
    for names, point in hierarchies().items():
        if names == "unified":
            continue  # runc leaves a hybrid host's cgroup2 tree out of containers; so does Cricket
        name = names.replace("name=", "")
        out.append((name, os.path.join(point, path.lstrip("/"))))
    return out


# -- pure conversions --------------------------------------------------------------------


def shares_to_weight(shares: int) -> int:
    """cpu.shares (2..262144) to cgroup v2 cpu.weight (1..10000), as runc and crun convert."""
    if shares == 0:
        return 0
    return 1 + ((shares - 2) * 9999) // 262142


def parse_flat_keyed(text: str) -> dict[str, int]:
    """"key value" lines (memory.stat, cpu.stat, memory.events) as a dict of ints."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        raise CgroupNotFound(errno.ENOENT, f"cgroup file {path} does not exist") from None


def _write(path: str, value) -> None:
    try:
        with open(path, "w") as f:
            f.write(str(value))
    except OSError as e:
        raise CgroupError(e.errno, f"writing {value!r} to {path}: {e.strerror}") from None


# -- one cgroup ---------------------------------------------------------------------------


class Cgroup:
    def __init__(self, path: str):
        if not path.startswith("/"):
            path = "/" + path
        self.path = os.path.normpath(path)

    def __repr__(self) -> str:
        return f"Cgroup({self.path!r})"

    def _dir(self, mount_point: str) -> str:
        return os.path.join(mount_point, self.path.lstrip("/"))

    def dirs(self) -> list[str]:
        """Every directory that is this cgroup (one per v1 hierarchy, or the v2 one)."""
        if mode() == "v2":
            return [self._dir(CGROUP_ROOT)]
        return [self._dir(point) for point in hierarchies().values()]

    def _file(self, controller: str, name: str) -> str | None:
        point = CGROUP_ROOT if mode() == "v2" else _mount_of(controller)
        return None if point is None else os.path.join(self._dir(point), name)

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self.dirs())

    def create(self) -> None:
        """Make the cgroup and any missing parents. Idempotent."""
        if mode() == "v2":
            self._create_v2()
            return
        for names, point in hierarchies().items():
            made = self._makedirs(point)
            if "cpuset" in names.split(","):
                for d in made:  # a new cpuset takes no tasks until it has cpus and mems
                    parent = os.path.dirname(d)
                    for f in ("cpuset.cpus", "cpuset.mems"):
                        _write(os.path.join(d, f), _read(os.path.join(parent, f)).strip())

    def _makedirs(self, point: str) -> list[str]:
        made = []
        current = point
        for part in self.path.strip("/").split("/"):
            current = os.path.join(current, part)
            try:
                os.mkdir(current, 0o755)
                made.append(current)
            except FileExistsError:
                pass
        return made

    def _create_v2(self) -> None:
        current = CGROUP_ROOT
        for part in self.path.strip("/").split("/"):
            available = set(_read(os.path.join(current, "cgroup.controllers")).split())
            enable = " ".join(f"+{c}" for c in _V2_CONTROLLERS if c in available)
            if enable:
                try:
                    _write(os.path.join(current, "cgroup.subtree_control"), enable)
                except CgroupError:
                    pass  # a controller the parent may not delegate; the rest still work
            current = os.path.join(current, part)
            try:
                os.mkdir(current, 0o755)
            except FileExistsError:
                pass

    def add(self, pid: int) -> None:
        """Move a process (0: the caller) into the cgroup in every hierarchy."""
        for d in self.dirs():
            _write(os.path.join(d, "cgroup.procs"), pid)

    def mover(self):
        """Open the cgroup's procs files now and return a function that moves a pid in later,
        through them: it works from a process whose filesystem view has changed meanwhile
        (a pivot_root by another process of its mount namespace moves its root too)."""
        files = [(os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC), d) for d in self.dirs()]

        def move(pid: int) -> None:
            try:
                for fd, d in files:
                    try:
                        os.write(fd, str(pid).encode())
                    except OSError as e:
                        raise CgroupError(e.errno, f"moving {pid} into {d}: {e.strerror}") from None
            finally:
                for fd, _ in files:
                    os.close(fd)

        return move

    def pids(self) -> list[int]:
        """Processes directly in the cgroup (not in its children)."""
        d = self.dirs()[0] if mode() == "v2" else self._dir(_mount_of("pids") or next(iter(hierarchies().values())))
        try:
            return [int(p) for p in _read(os.path.join(d, "cgroup.procs")).split()]
        except CgroupNotFound:
            return []

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        """Signal every process in the cgroup, without racing forks where the kernel can help."""
        if mode() == "v2" and sig == signal.SIGKILL:
            kill = self._file("", "cgroup.kill")
            if kill and os.path.exists(kill):
                _write(kill, 1)
                return
        freezer = self._file("freezer", "freezer.state") if mode() == "v1" else None
        frozen = False
        if freezer and os.path.exists(freezer):
            try:
                _write(freezer, "FROZEN")
                frozen = True
            except CgroupError:
                pass
        try:
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        finally:
            if frozen:
                _write(freezer, "THAWED")

    def remove(self, wait: bool = True) -> None:
        """Remove the cgroup in every hierarchy. Idempotent. While processes are leaving it
        (EBUSY) it is retried for a moment, unless `wait` is false."""
        tries = _REMOVE_TRIES if wait else 1
        for d in self.dirs():
            for attempt in range(tries):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or attempt == tries - 1:
                        raise CgroupError(e.errno, f"removing cgroup {d}: {e.strerror} (processes in it: "
                                          f"{self.pids()})") from None
                    time.sleep(0.01)

    # -- stats ---------------------------------------------------------------------

    def stats(self) -> CgroupStats:
        return self._stats_v2() if mode() == "v2" else self._stats_v1()

    def _stats_v1(self) -> CgroupStats:
        s = CgroupStats()
        s.cpu_usage_ns = int(_read(self._file("cpuacct", "cpuacct.usage")))
        mem = parse_flat_keyed(_read(self._file("memory", "memory.stat")))
        s.memory_usage = int(_read(self._file("memory", "memory.usage_in_bytes")))
        inactive = mem.get("total_inactive_file", mem.get("inactive_file", 0))
        s.memory_working_set = max(0, s.memory_usage - inactive)
        s.memory_rss = mem.get("total_rss", mem.get("rss", 0))
        s.memory_cache = mem.get("total_cache", mem.get("cache", 0))
        s.page_faults = mem.get("total_pgfault", mem.get("pgfault", 0))
        s.major_page_faults = mem.get("total_pgmajfault", mem.get("pgmajfault", 0))
        limit = int(_read(self._file("memory", "memory.limit_in_bytes")))
        s.memory_limit = None if limit >= 1 << 62 else limit
        s.oom_kills = parse_flat_keyed(_read(self._file("memory", "memory.oom_control"))).get("oom_kill", 0)
        pids = self._file("pids", "pids.current")
        if pids:
            s.pids_current = int(_read(pids))
        return s

    def _stats_v2(self) -> CgroupStats:
        s = CgroupStats()
        s.cpu_usage_ns = parse_flat_keyed(_read(self._file("cpu", "cpu.stat"))).get("usage_usec", 0) * 1000
        mem = parse_flat_keyed(_read(self._file("memory", "memory.stat")))
        s.memory_usage = int(_read(self._file("memory", "memory.current")))
        s.memory_working_set = max(0, s.memory_usage - mem.get("inactive_file", 0))
        s.memory_rss = mem.get("anon", 0)
        s.memory_cache = mem.get("file", 0)
        s.page_faults = mem.get("pgfault", 0)
        s.major_page_faults = mem.get("pgmajfault", 0)
        limit = _read(self._file("memory", "memory.max")).strip()
        s.memory_limit = None if limit == "max" else int(limit)
        s.oom_kills = parse_flat_keyed(_read(self._file("memory", "memory.events"))).get("oom_kill", 0)
        s.pids_current = int(_read(self._file("pids", "pids.current")))
        return s

    # -- limits ---------------------------------------------------------------------

    def apply(self, resources: dict) -> None:
        """Apply an OCI linux.resources object (cpu, memory, pids, hugepageLimits, unified, devices)."""
        if mode() == "v2":
            self._apply_v2(resources)
        else:
            self._apply_v1(resources)

    def _set(self, controller: str, name: str, value) -> None:
        path = self._file(controller, name)
        if path is None:
            raise CgroupError(errno.ENOTSUP, f"the {controller} controller is not mounted: cannot set {name}")
        _write(path, value)

    def _apply_v1(self, r: dict) -> None:
        cpu = r.get("cpu") or {}
        if cpu.get("shares"):
            self._set("cpu", "cpu.shares", cpu["shares"])
        if cpu.get("period"):
            self._set("cpu", "cpu.cfs_period_us", cpu["period"])
        if cpu.get("quota"):
            self._set("cpu", "cpu.cfs_quota_us", cpu["quota"])
        for key in ("cpus", "mems"):
            if cpu.get(key):
                self._set("cpuset", f"cpuset.{key}", cpu[key])
        mem = r.get("memory") or {}
        limit, swap = mem.get("limit"), mem.get("swap")
        memsw = self._file("memory", "memory.memsw.limit_in_bytes")
        has_memsw = memsw is not None and os.path.exists(memsw)
        if limit:
            # memsw must stay >= limit at every moment: raise the larger one first.
            current = int(_read(self._file("memory", "memory.limit_in_bytes")))
            order = ["limit", "swap"] if limit <= current or not has_memsw else ["swap", "limit"]
            for which in order:
                if which == "limit":
                    self._set("memory", "memory.limit_in_bytes", limit)
                elif swap and has_memsw:
                    self._set("memory", "memory.memsw.limit_in_bytes", swap)
        if mem.get("reservation"):
            self._set("memory", "memory.soft_limit_in_bytes", mem["reservation"])
        pids = (r.get("pids") or {}).get("limit")
        if pids is not None:
            self._set("pids", "pids.max", "max" if pids <= 0 else pids)
        for h in r.get("hugepageLimits") or ():
            self._set("hugetlb", f"hugetlb.{h['pageSize']}.limit_in_bytes", h["limit"])
        for key, value in (r.get("unified") or {}).items():
            if key not in V1_UNIFIED_KEYS:
                raise CgroupError(errno.ENOTSUP, f"unified key {key!r} has no cgroup v1 equivalent on this host")
            self._set(key.split(".", 1)[0], key, value)
        devices = r.get("devices")
        if devices and self._file("devices", "devices.allow") is not None:
            for rule in devices:
                kind = rule.get("type", "a")
                major = "*" if rule.get("major") is None else rule["major"]
                minor = "*" if rule.get("minor") is None else rule["minor"]
                line = "a" if kind == "a" else f"{kind} {major}:{minor} {rule.get('access', 'rwm')}"
                self._set("devices", "devices.allow" if rule.get("allow") else "devices.deny", line)

    def _apply_v2(self, r: dict) -> None:
        cpu = r.get("cpu") or {}
        if cpu.get("shares"):
            self._set("cpu", "cpu.weight", shares_to_weight(cpu["shares"]))
        if cpu.get("quota") or cpu.get("period"):
            quota = cpu.get("quota")
            period = cpu.get("period") or 100000
            self._set("cpu", "cpu.max", f"{quota if quota and quota > 0 else 'max'} {period}")
        for key in ("cpus", "mems"):
            if cpu.get(key):
                self._set("cpuset", f"cpuset.{key}", cpu[key])
        mem = r.get("memory") or {}
        if mem.get("limit"):
            self._set("memory", "memory.max", mem["limit"] if mem["limit"] > 0 else "max")
            swap = mem.get("swap")
            if swap:
                self._set("memory", "memory.swap.max", "max" if swap < 0 else max(0, swap - mem["limit"]))
        if mem.get("reservation"):
            self._set("memory", "memory.low", mem["reservation"])
        pids = (r.get("pids") or {}).get("limit")
        if pids is not None:
            self._set("pids", "pids.max", "max" if pids <= 0 else pids)
        for h in r.get("hugepageLimits") or ():
            self._set("hugetlb", f"hugetlb.{h['pageSize']}.max", h["limit"])
        for key, value in (r.get("unified") or {}).items():
            if "/" in key or key.startswith("."):
                raise CgroupError(errno.EINVAL, f"unified key {key!r} is not a cgroup file name")
            self._set("", key, value)
        # Device rules on v2 are an eBPF program attached to the cgroup, which Cricket does not load yet.
