"""Cgroups by path, on cgroup v1 (legacy or hybrid) and v2 (unified), found at first use.

A path is what an OCI spec's linux.cgroupsPath holds ("/kubepods/pod1/ctr2"):
on v1 it names a directory in every hierarchy Cricket uses, on v2 one
directory of the unified tree. The daemon makes pod cgroups and reads stats;
the executor places container processes and applies limits and device rules.
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import cast

from linux import devices_bpf

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
_FREEZE_TRIES = 1000  # of 1 ms each


class CgroupError(OSError):
    pass


class CgroupNotFound(CgroupError):
    path: str  # set by _read on the error it raises for a missing file


@dataclass
class CgroupStats:
    """Bytes, nanoseconds and counts; memory_limit is None when unlimited. memory_working_set is
    usage less inactive file pages, as kubelet evicts by and cadvisor reports."""
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


@dataclass
class IoCounters:
    """One block device's I/O by a cgroup: bytes and completed requests."""
    read_bytes: int = 0
    write_bytes: int = 0
    reads: int = 0
    writes: int = 0


@dataclass
class CgroupMetrics:
    """What cadvisor's container metrics read beyond CgroupStats. A figure this kernel does not
    keep (memory.peak before 5.19, kernel memory on v1 without kmem accounting) is 0, as cadvisor
    reports it. Times in nanoseconds; io by device, "major:minor"."""
    cpu_user_ns: int = 0
    cpu_system_ns: int = 0
    cfs_periods: int = 0
    cfs_throttled_periods: int = 0
    cfs_throttled_ns: int = 0
    memory_failcnt: int = 0
    memory_kernel: int = 0
    memory_mapped_file: int = 0
    memory_max_usage: int = 0
    memory_swap: int = 0
    pgfault: int = 0  # the cgroup's own ...
    pgmajfault: int = 0
    hierarchy_pgfault: int = 0  # ... and with the cgroups under it
    hierarchy_pgmajfault: int = 0
    threads: int = 0
    threads_max: int = 0  # 0: no limit, as cadvisor says it
    io: dict[str, IoCounters] = field(default_factory=dict)


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
        return mount_fstype(f.read(), path) == "cgroup2"


def mount_fstype(mountinfo: str, path: str) -> str | None:
    """The filesystem type mounted at `path`: the last mount there, which hides any before it."""
    fstype = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) > 4 and fields[4] == path and right:
            fstype = right.split()[0]
    return fstype


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


def v2_swap_max(limit: int | None, swap: int | None) -> int | None:
    """OCI memory.swap (memory+swap) to cgroup v2 memory.swap.max (swap alone), as runc converts:
    -1 is unlimited, None or 0 leaves it as it is."""
    limit, swap = limit or 0, swap or 0
    if limit == -1 and swap == 0:
        return -1  # "unlimited memory" on v1 lifts memsw too; keep that meaning
    if swap in (-1, 0) or limit == -1:
        return swap or None
    if limit <= 0:
        raise CgroupError(errno.EINVAL, f"memory.swap {swap} needs a memory.limit to be subtracted from")
    if swap < limit:
        raise CgroupError(errno.EINVAL, f"memory.swap {swap} (memory+swap) is below memory.limit {limit}")
    return swap - limit


def v2_cpu_max(quota: int | None, period: int | None) -> str | None:
    """OCI cpu.quota and cpu.period to cgroup v2 cpu.max, as runc writes it: a quota of -1
    (or none, with a period) is "max"; without a period the kernel keeps the current one."""
    if not quota and not period:
        return None
    value = str(quota) if quota and quota > 0 else "max"
    return f"{value} {period}" if period else value


def v1_memory_writes(limit: int | None, swap: int | None, current_limit: int, has_memsw: bool) -> list[tuple[str, int]]:
    """The memory.limit_in_bytes and memory.memsw.limit_in_bytes writes for OCI memory.limit and
    memory.swap on v1, in an order the kernel takes: it refuses at every moment a memsw limit
    below the memory limit, so when the new memsw is above the current memory limit it goes
    first, else last (runc's order). -1 is unlimited."""
    limit, swap = limit or 0, swap or 0
    if not has_memsw:
        swap = 0  # no swap accounting on this kernel: there is no memsw to keep in step
    elif limit == -1 and swap == 0:
        swap = -1  # lifting the memory limit lifts memsw with it, or the kernel refuses
    writes = []
    if limit:
        writes.append(("memory.limit_in_bytes", limit))
    if swap:
        memsw = ("memory.memsw.limit_in_bytes", swap)
        if limit and (swap == -1 or swap > current_limit):
            writes.insert(0, memsw)
        else:
            writes.append(memsw)
    return writes


def parse_flat_keyed(text: str) -> dict[str, int]:
    """"key value" lines (memory.stat, cpu.stat, memory.events) as a dict of ints."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def parse_v2_io_stat(text: str) -> dict[str, IoCounters]:
    """cgroup v2 io.stat ("8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0") by device."""
    out = {}
    for line in text.splitlines():
        device, *pairs = line.split()
        values = dict(p.split("=", 1) for p in pairs if "=" in p)
        out[device] = IoCounters(*(int(values.get(k, 0)) for k in ("rbytes", "wbytes", "rios", "wios")))
    return out


def parse_v1_blkio(service_bytes: str, serviced: str) -> dict[str, IoCounters]:
    """cgroup v1 blkio "io_service_bytes" and "io_serviced" files ("8:0 Read 4096" lines, and a
    "Total" line that names no device) by device."""
    out: dict[str, IoCounters] = {}
    for text, (read, write) in ((service_bytes, ("read_bytes", "write_bytes")), (serviced, ("reads", "writes"))):
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 3 or parts[1] not in ("Read", "Write"):
                continue
            counters = out.setdefault(parts[0], IoCounters())
            setattr(counters, read if parts[1] == "Read" else write, int(parts[2]))
    return out


# v1 blkio files by I/O scheduler, in the order libcontainer tries them: BFQ's, CFQ's (kernels
# before 5.0), then the throttling layer's, which counts I/O under any scheduler.
_V1_BLKIO = tuple((f"blkio.{kind}io_service_bytes_recursive", f"blkio.{kind}io_serviced_recursive")
                  for kind in ("bfq.", "", "throttle."))


def _read(path: str) -> str:
    # os.open and os.read, not open(): stats() reads six files every few seconds per
    # container, and a text file object costs more to build than the kernel takes to answer.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        err = CgroupNotFound(errno.ENOENT, f"cgroup file {path} does not exist")
        err.path = path
        raise err from None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(fd)


def _write(path: str, value) -> None:
    # One write(2) of the whole value, and no O_CREAT: a file the kernel does not offer
    # (no swap accounting, a controller not enabled) fails as ENOENT, not as a refused create.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, str(value).encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise CgroupError(e.errno, f"writing {value!r} to {path}: {e.strerror}") from None


def _v2_value(n: int) -> str:
    return "max" if n < 0 else str(n)  # OCI's -1 for unlimited is v2's "max"


def _fill_cpusets(levels: list[str]) -> None:
    # A v1 cpuset is made with empty cpus and mems and refuses tasks (ENOSPC) until they are
    # set. Every level is checked, not only the ones made now, so a create cut short by a
    # crash, or raced by another creator, is finished by the next one.
    for d in levels:
        for f in ("cpuset.cpus", "cpuset.mems"):
            path = os.path.join(d, f)
            if not _read(path).strip():
                _write(path, _read(os.path.join(os.path.dirname(d), f)).strip())


def _wait_frozen(state_file: str) -> None:
    # The write only starts freezing: until the state reads FROZEN a task may still be in
    # fork(), and its child would miss the list read next. A task that never freezes (stuck
    # in the kernel) must not hang the caller, so the wait is bounded.
    for _ in range(_FREEZE_TRIES):
        if _read(state_file).strip() == "FROZEN":
            return
        time.sleep(0.001)


def _wait_frozen_v2(events: str) -> None:
    # cgroup.freeze only asks; cgroup.events says "frozen 1" once every task is stopped.
    for _ in range(_FREEZE_TRIES):
        if "frozen 1" in _read(events):
            return
        time.sleep(0.001)


def _rmdir(d: str, tries: int) -> None:
    for attempt in range(tries):
        try:
            os.rmdir(d)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or attempt == tries - 1:
                try:
                    left = [int(p) for p in _read(os.path.join(d, "cgroup.procs")).split()]
                except CgroupNotFound:
                    left = []
                raise CgroupError(e.errno, f"removing cgroup {d}: {e.strerror} (processes in it: {left})") from None
            time.sleep(0.01)


def _removed_alone(d: str) -> bool:
    """Try the usual case first: a cgroup with no sub-cgroups and nobody in it goes with one
    rmdir, where walking it lists every controller file of the directory. False if it is
    still there (children, processes, an error), for the caller's walk, retries and words."""
    try:
        os.rmdir(d)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _check_device_rules(path: str, devices: list[dict]) -> None:
    try:
        devices_bpf.parse_rules(devices)
    except devices_bpf.DeviceRuleError as e:
        raise CgroupError(errno.EINVAL, f"device rules for cgroup {path}: {e}") from None


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
            levels = self._makedirs(point)
            if "cpuset" in names.split(","):
                _fill_cpusets(levels)

    def _makedirs(self, point: str) -> list[str]:
        levels = []
        current = point
        for part in self.path.strip("/").split("/"):
            current = os.path.join(current, part)
            try:
                os.mkdir(current, 0o755)
            except FileExistsError:
                pass
            levels.append(current)
        return levels

    def _create_v2(self) -> None:
        current = CGROUP_ROOT
        for part in self.path.strip("/").split("/"):
            available = set(_read(os.path.join(current, "cgroup.controllers")).split())
            subtree = os.path.join(current, "cgroup.subtree_control")
            enabled = set(_read(subtree).split())
            # One controller a write: the kernel takes a write whole or not at all, and one it
            # refuses here (a threaded or busy parent, a real-time task and cpu) must not cost the rest.
            for c in _V2_CONTROLLERS:
                if c in available and c not in enabled:
                    try:
                        _write(subtree, f"+{c}")
                    except CgroupError:
                        pass
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
        """Processes directly in the cgroup (not in its children); none when it does not exist."""
        return self._procs(None)

    def _procs(self, procs: str | None) -> list[int]:
        if procs is None:
            d = self.dirs()[0] if mode() == "v2" else self._dir(_mount_of("pids") or next(iter(hierarchies().values())))
            procs = os.path.join(d, "cgroup.procs")
        try:
            return [int(p) for p in _read(procs).split()]
        except CgroupNotFound:
            return []

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        """Signal every process in the cgroup (not in its children), without racing forks
        where the kernel can help: v2's cgroup.kill for SIGKILL, v1's freezer for any signal.
        Elsewhere (v2 and another signal, or no freezer) a process forked while the list is
        read can escape this signal."""
        if mode() == "v2" and sig == signal.SIGKILL:
            kill = self._file("", "cgroup.kill")
            if kill and os.path.exists(kill):
                _write(kill, 1)
                return
        freezer = self._file("freezer", "freezer.state") if mode() == "v1" else None
        frozen = False
        if freezer and os.path.exists(freezer):
            # An empty cgroup has no process that could fork while the list is read, so it needs
            # no freeze (three writes and a wait). It is the list a freeze would be followed by.
            if not self._procs(os.path.join(os.path.dirname(freezer), "cgroup.procs")):
                return
            try:
                _write(freezer, "FROZEN")
                frozen = True
                _wait_frozen(freezer)
            except CgroupError:
                pass  # the cgroup went away meanwhile, or cannot freeze: signal what is there
        try:
            # The list of the hierarchy that was frozen, so it is the one that holds still.
            procs = os.path.join(os.path.dirname(cast(str, freezer)), "cgroup.procs") if frozen else None
            for pid in self._procs(procs):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        finally:
            if frozen:
                try:
                    _write(cast(str, freezer), "THAWED")  # a frozen task acts on no signal, not even SIGKILL
                except CgroupNotFound:
                    pass

    @contextlib.contextmanager
    def frozen(self):
        """The cgroup's processes held still for the block (v1's freezer, v2's cgroup.freeze),
        then let go; nothing is held where the cgroup can not freeze."""
        if mode() == "v2":
            state, on, off = self._file("", "cgroup.freeze"), "1", "0"
        else:
            state, on, off = self._file("freezer", "freezer.state"), "FROZEN", "THAWED"
        if not state or not os.path.exists(state):
            yield
            return
        _write(state, on)
        try:
            if mode() == "v1":
                _wait_frozen(state)
            else:
                _wait_frozen_v2(os.path.join(os.path.dirname(state), "cgroup.events"))
            yield
        finally:
            try:
                _write(state, off)
            except CgroupNotFound:
                pass

    def remove(self, wait: bool = True, recursive: bool = False) -> None:
        """Remove the cgroup in every hierarchy; with `recursive`, the cgroups under it too,
        deepest first (what a container that made its own sub-cgroups leaves). Idempotent.
        While processes are leaving (EBUSY) it is retried for a moment, unless `wait` is false;
        then the error names the directory and the processes left in it.

        Not recursive by default, so that removing a shared parent ("the last pod out") fails
        while other pods' cgroups are under it instead of taking their empty ones away."""
        tries = _REMOVE_TRIES if wait else 1
        for top in self.dirs():
            if not recursive:
                _rmdir(top, tries)
            elif not _removed_alone(top):
                # bottom-up, so children go before their parent; a missing top walks to nothing
                for d, _, _ in os.walk(top, topdown=False):
                    _rmdir(d, tries)

    # -- stats ---------------------------------------------------------------------

    def stats(self) -> CgroupStats:
        """CPU, memory and pids figures as kubelet and cadvisor compute them, from six files.
        CgroupNotFound when the cgroup does not exist (or is being removed)."""
        try:
            return self._stats_v2() if mode() == "v2" else self._stats_v1()
        except CgroupNotFound as e:
            missing = getattr(e, "path", None)
            if missing and os.path.isdir(os.path.dirname(missing)):
                # There, but a controller is not enabled for it (v2) or lacks a file: not "gone".
                raise CgroupError(errno.ENOENT, f"cgroup {self.path} has no {os.path.basename(e.path)}: "
                                  "is its controller enabled?") from None
            raise CgroupNotFound(errno.ENOENT, f"cgroup {self.path} does not exist") from None

    def oom_kills(self) -> int:
        """How many of the cgroup's processes the OOM killer has killed: one file read, for a
        shim deciding its container's exit reason (stats() reads six)."""
        if mode() == "v2":
            return parse_flat_keyed(_read(cast(str, self._file("memory", "memory.events")))).get("oom_kill", 0)
        return parse_flat_keyed(_read(self._path("memory", "memory.oom_control"))).get("oom_kill", 0)

    def _stats_v1(self) -> CgroupStats:
        s = CgroupStats()
        s.cpu_usage_ns = int(_read(self._path("cpuacct", "cpuacct.usage")))
        mem = parse_flat_keyed(_read(self._path("memory", "memory.stat")))
        s.memory_usage = int(_read(self._path("memory", "memory.usage_in_bytes")))
        inactive = mem.get("total_inactive_file", mem.get("inactive_file", 0))
        s.memory_working_set = max(0, s.memory_usage - inactive)
        s.memory_rss = mem.get("total_rss", mem.get("rss", 0))
        s.memory_cache = mem.get("total_cache", mem.get("cache", 0))
        s.page_faults = mem.get("total_pgfault", mem.get("pgfault", 0))
        s.major_page_faults = mem.get("total_pgmajfault", mem.get("pgmajfault", 0))
        limit = int(_read(self._path("memory", "memory.limit_in_bytes")))
        s.memory_limit = None if limit >= 1 << 62 else limit  # unlimited reads as the page counter's max
        s.oom_kills = self.oom_kills()
        pids = self._file("pids", "pids.current")
        if pids:
            s.pids_current = int(_read(pids))
        return s

    def _stats_v2(self) -> CgroupStats:
        # On v2 every controller's file is under CGROUP_ROOT: _file never returns None.
        s = CgroupStats()
        s.cpu_usage_ns = parse_flat_keyed(_read(cast(str, self._file("cpu", "cpu.stat")))).get("usage_usec", 0) * 1000
        mem = parse_flat_keyed(_read(cast(str, self._file("memory", "memory.stat"))))
        s.memory_usage = int(_read(cast(str, self._file("memory", "memory.current"))))
        s.memory_working_set = max(0, s.memory_usage - mem.get("inactive_file", 0))
        s.memory_rss = mem.get("anon", 0)
        s.memory_cache = mem.get("file", 0)
        s.page_faults = mem.get("pgfault", 0)
        s.major_page_faults = mem.get("pgmajfault", 0)
        limit = _read(cast(str, self._file("memory", "memory.max"))).strip()
        s.memory_limit = None if limit == "max" else int(limit)
        s.oom_kills = self.oom_kills()
        s.pids_current = int(_read(cast(str, self._file("pids", "pids.current"))))
        return s

    def metrics(self) -> CgroupMetrics:
        """The figures of CgroupMetrics, from whichever files this kernel offers.
        CgroupNotFound when the cgroup does not exist."""
        if not self.exists():
            raise CgroupNotFound(errno.ENOENT, f"cgroup {self.path} does not exist")
        return self._metrics_v2() if mode() == "v2" else self._metrics_v1()

    def _optional(self, controller: str, name: str) -> str:
        path = self._file(controller, name)
        try:
            return _read(path) if path else ""
        except CgroupNotFound:
            return ""

    def _optional_int(self, controller: str, name: str) -> int:
        text = self._optional(controller, name).strip()
        return int(text) if text.isdigit() else 0

    def _metrics_v1(self) -> CgroupMetrics:
        m = CgroupMetrics()
        acct = parse_flat_keyed(self._optional("cpuacct", "cpuacct.stat"))
        tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")  # cpuacct.stat counts USER_HZ ticks
        m.cpu_user_ns, m.cpu_system_ns = acct.get("user", 0) * tick_ns, acct.get("system", 0) * tick_ns
        cpu = parse_flat_keyed(self._optional("cpu", "cpu.stat"))
        m.cfs_periods, m.cfs_throttled_periods = cpu.get("nr_periods", 0), cpu.get("nr_throttled", 0)
        m.cfs_throttled_ns = cpu.get("throttled_time", 0)
        mem = parse_flat_keyed(self._optional("memory", "memory.stat"))
        m.memory_failcnt = self._optional_int("memory", "memory.failcnt")
        m.memory_kernel = self._optional_int("memory", "memory.kmem.usage_in_bytes")
        m.memory_mapped_file = mem.get("total_mapped_file", mem.get("mapped_file", 0))
        m.memory_max_usage = self._optional_int("memory", "memory.max_usage_in_bytes")
        memsw = self._optional_int("memory", "memory.memsw.usage_in_bytes")
        if memsw:  # swap accounting on: what memory+swap holds beyond memory (cadvisor's figure)
            m.memory_swap = max(0, memsw - self._optional_int("memory", "memory.usage_in_bytes"))
        m.pgfault, m.pgmajfault = mem.get("pgfault", 0), mem.get("pgmajfault", 0)
        m.hierarchy_pgfault = mem.get("total_pgfault", m.pgfault)
        m.hierarchy_pgmajfault = mem.get("total_pgmajfault", m.pgmajfault)
        m.threads = self._optional_int("pids", "pids.current")  # the pids controller counts tasks
        m.threads_max = self._optional_int("pids", "pids.max")  # "max" reads as 0: no limit
        for service_bytes, serviced in _V1_BLKIO:
            m.io = parse_v1_blkio(self._optional("blkio", service_bytes), self._optional("blkio", serviced))
            if m.io:
                break
        return m

    def _metrics_v2(self) -> CgroupMetrics:
        m = CgroupMetrics()
        cpu = parse_flat_keyed(self._optional("cpu", "cpu.stat"))
        m.cpu_user_ns, m.cpu_system_ns = cpu.get("user_usec", 0) * 1000, cpu.get("system_usec", 0) * 1000
        m.cfs_periods, m.cfs_throttled_periods = cpu.get("nr_periods", 0), cpu.get("nr_throttled", 0)
        m.cfs_throttled_ns = cpu.get("throttled_usec", 0) * 1000
        mem = parse_flat_keyed(self._optional("memory", "memory.stat"))
        # v2 keeps no failcnt; "max" counts the same thing: usage about to go over the limit.
        m.memory_failcnt = parse_flat_keyed(self._optional("memory", "memory.events")).get("max", 0)
        m.memory_kernel = mem.get("kernel", mem.get("kernel_stack", 0) + mem.get("slab", 0))  # "kernel": 5.18+
        m.memory_mapped_file = mem.get("file_mapped", 0)
        m.memory_max_usage = self._optional_int("memory", "memory.peak")
        m.memory_swap = self._optional_int("memory", "memory.swap.current")
        # v2's memory.stat counts the whole subtree: the cgroup's own and its hierarchy's are one.
        m.pgfault = m.hierarchy_pgfault = mem.get("pgfault", 0)
        m.pgmajfault = m.hierarchy_pgmajfault = mem.get("pgmajfault", 0)
        m.threads = self._optional_int("pids", "pids.current")
        m.threads_max = self._optional_int("pids", "pids.max")
        m.io = parse_v2_io_stat(self._optional("io", "io.stat"))
        return m

    # -- limits ---------------------------------------------------------------------

    def apply(self, resources: dict) -> None:
        """Apply an OCI linux.resources object (cpu, memory, pids, hugepageLimits, unified, devices).
        Device rules go to the v1 devices controller and, as an eBPF program, to the cgroup's
        cgroup2 directory (linux/devices_bpf.py); when neither can enforce them it raises
        CgroupError, so that no container runs without device control."""
        if mode() == "v2":
            self._apply_v2(resources)
        else:
            self._apply_v1(resources)

    def _path(self, controller: str, name: str) -> str:
        path = self._file(controller, name)
        if path is None:
            raise CgroupError(errno.ENOTSUP, f"the {controller} controller is not mounted: no {name}")
        return path

    def _set(self, controller: str, name: str, value) -> None:
        _write(self._path(controller, name), value)

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
        if mem.get("limit") or mem.get("swap"):
            current = int(_read(self._path("memory", "memory.limit_in_bytes")))
            has_memsw = os.path.exists(self._path("memory", "memory.memsw.limit_in_bytes"))
            for name, value in v1_memory_writes(mem.get("limit"), mem.get("swap"), current, has_memsw):
                self._set("memory", name, value)
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
        if devices:
            self._apply_v1_devices(devices)

    def _apply_v1_devices(self, devices: list[dict]) -> None:
        _check_device_rules(self.path, devices)  # before any is written: none or all
        has_controller = self._file("devices", "devices.allow") is not None
        if has_controller:
            for rule in devices:
                kind = rule.get("type", "a")
                major = "*" if rule.get("major") in (None, -1) else rule["major"]
                minor = "*" if rule.get("minor") in (None, -1) else rule["minor"]
                line = "a" if kind == "a" else f"{kind} {major}:{minor} {rule.get('access', 'rwm')}"
                self._set("devices", "devices.allow" if rule.get("allow") else "devices.deny", line)
        # The kernel asks a device program on the task's cgroup2 cgroup as well as the v1
        # controller, so on a hybrid host the same rules go on the container's "unified"
        # directory too. Where the v1 controller took them, that program only repeats them
        # and a kernel that cannot load it (no CONFIG_CGROUP_BPF, before 4.15) still runs
        # containers; without the controller it is the only device control there is.
        unified = self.v2_dir()
        if unified is not None:
            try:
                self._set_device_program(unified, devices)
            except CgroupError:
                if not has_controller:
                    raise
        elif not has_controller:
            raise CgroupError(errno.ENOTSUP, f"device rules for cgroup {self.path}: this host has neither the v1 "
                              "devices controller nor a cgroup2 hierarchy to enforce them; mount one of them "
                              "(a container is not run without device control)")

    def v2_dir(self) -> str | None:
        """The cgroup's directory on the cgroup2 hierarchy (the unified one on a hybrid host), if any."""
        if mode() == "v2":
            return self._dir(CGROUP_ROOT)
        point = hierarchies().get("unified")
        return None if point is None else self._dir(point)

    def _set_device_program(self, directory: str, devices: list[dict]) -> None:
        _check_device_rules(self.path, devices)
        try:
            devices_bpf.set_device_program(directory, devices)
        except OSError as e:
            raise CgroupError(e.errno, f"device rules for cgroup {self.path} ({directory}): {e.strerror}. On cgroup "
                              "v2 only an eBPF device program enforces them, so the container is not run without "
                              "one: check that the kernel has CONFIG_CGROUP_BPF and that no ancestor cgroup holds a "
                              "device program attached without BPF_F_ALLOW_MULTI") from None

    def _apply_v2(self, r: dict) -> None:
        cpu = r.get("cpu") or {}
        if cpu.get("shares"):
            self._set("cpu", "cpu.weight", shares_to_weight(cpu["shares"]))
        cpu_max = v2_cpu_max(cpu.get("quota"), cpu.get("period"))
        if cpu_max:
            self._set("cpu", "cpu.max", cpu_max)
        for key in ("cpus", "mems"):
            if cpu.get(key):
                self._set("cpuset", f"cpuset.{key}", cpu[key])
        mem = r.get("memory") or {}
        swap = v2_swap_max(mem.get("limit"), mem.get("swap"))
        if swap is not None:
            self._set("memory", "memory.swap.max", _v2_value(swap))
        if mem.get("limit"):
            self._set("memory", "memory.max", _v2_value(mem["limit"]))
        if mem.get("reservation"):
            self._set("memory", "memory.low", _v2_value(mem["reservation"]))
        pids = (r.get("pids") or {}).get("limit")
        if pids is not None:
            self._set("pids", "pids.max", "max" if pids <= 0 else pids)
        for h in r.get("hugepageLimits") or ():
            self._set("hugetlb", f"hugetlb.{h['pageSize']}.max", h["limit"])
        for key, value in (r.get("unified") or {}).items():
            if "/" in key or key.startswith("."):
                raise CgroupError(errno.EINVAL, f"unified key {key!r} is not a cgroup file name")
            self._set("", key, value)
        devices = r.get("devices")
        if devices:
            # v2 has no devices controller: the program is the only device control a container gets.
            self._set_device_program(self._dir(CGROUP_ROOT), devices)
