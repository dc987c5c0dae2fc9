"""Load benchmark: many pods at once, a kubelet's relisting, many containers, and a long soak.

Cricket (its own CNI plugins) and containerd + runc (the reference plugins) in the same run,
each on a bridge and subnet of its own, each pod bridge-networked with one busybox container:

1. `--load-pods` (100) pods at once, each RunPodSandbox, CreateContainer, StartContainer from a
   thread of its own, all let go together: the wall time until every one runs, each pod's time,
   and a check that each got an address of its own.
2. `--load-execs` (50) ExecSync calls at once, each into another pod's container, each answer
   checked (the pod's hostname and address, as seen inside it).
3. The kubelet-like loop: ListPodSandbox, ListContainers and ListContainerStats once a second for
   `--relist-seconds` (300) against those pods, each answer checked; the CPU time the daemon and
   its helpers (Cricket: the zygote, the network worker and the shims; containerd: its shims) spent
   meanwhile, read from /proc, as a share of one core.
4. `--load-containers` (1,000) containers present: the running ones and more that ran `true` and
   exited (as kubelet keeps dead containers): ListContainers, ListPodSandbox and
   ListContainerStats timed, each answer checked; then everything removed, timed.
5. The soak, Cricket only: `--soak-rounds` (1,000) rounds of run pod, create, start, exec, stop,
   remove; then the daemon's descriptors and RSS against where they were after a warm-up, and
   every kind of leak counted (mounts, pinned namespaces, veths, addresses, iptables rules and
   chains, cgroups, processes, files) once the daemon has stopped.

tests/test_load.py runs the same code at sizes CI can afford.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import ipaddress
import os
import secrets
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field

from api.runtime.v1 import api_pb2 as pb

RPC_TIMEOUT = 120
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def add_arguments(parser) -> None:
    parser.add_argument("--load-pods", type=int, default=100,
                        help="pods (one container each) created at once (default %(default)s)")
    parser.add_argument("--load-execs", type=int, default=50,
                        help="ExecSync calls at once (default %(default)s)")
    parser.add_argument("--load-containers", type=int, default=1000,
                        help="containers present when listing; 0 skips that part (default %(default)s)")
    parser.add_argument("--relist-seconds", type=float, default=300,
                        help="length of the kubelet-like relist loop (default %(default)s)")
    parser.add_argument("--soak-rounds", type=int, default=1000,
                        help="rounds of the soak (Cricket only); 0 skips it (default %(default)s)")


# -- the workload ---------------------------------------------------------------------------


def pod_config(log_dir: str, prefix: str = "load") -> pb.PodSandboxConfig:
    uid = secrets.token_hex(8)
    name = f"{prefix}-{uid[:10]}"
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=name, namespace="bench", uid=uid),
        hostname=name,
        log_directory=os.path.join(log_dir, uid),
        linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD))),
    )


def container_config(image: str, name: str, command: list[str]) -> pb.ContainerConfig:
    return pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name=name),
        image=pb.ImageSpec(image=image),
        command=command,
        log_path=f"{name}.log",
        linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD))),
    )


@dataclass
class Pod:
    id: str
    config: pb.PodSandboxConfig
    container: str = ""
    ip: str = ""
    seconds: float = 0.0  # RunPodSandbox to a started container


def run_pod(rt, image: str, log_dir: str, command=("sleep", "3600"), prefix: str = "load") -> Pod:
    """A networked pod with one started container."""
    start = time.perf_counter()
    config = pod_config(log_dir, prefix)
    pod = Pod(rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=RPC_TIMEOUT).pod_sandbox_id, config)
    req = pb.CreateContainerRequest(pod_sandbox_id=pod.id, config=container_config(image, "main", list(command)),
                                    sandbox_config=config)
    pod.container = rt.CreateContainer(req, timeout=RPC_TIMEOUT).container_id
    rt.StartContainer(pb.StartContainerRequest(container_id=pod.container), timeout=RPC_TIMEOUT)
    pod.seconds = time.perf_counter() - start
    pod.ip = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod.id),
                                 timeout=RPC_TIMEOUT).status.network.ip
    return pod


def remove_pod(rt, pod: Pod) -> None:
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=RPC_TIMEOUT)
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=RPC_TIMEOUT)


def pods_at_once(rt, image: str, log_dir: str, n: int) -> tuple[list[Pod], float]:
    """n pods with a started container each, all asked for at the same moment, one thread each:
    the pods and the wall time until the last one runs. Raises the first failure once every
    call has ended (the caller removes whatever pods the daemon lists)."""
    barrier = threading.Barrier(n + 1)

    def one(_) -> Pod:
        barrier.wait()
        return run_pod(rt, image, log_dir)

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(one, i) for i in range(n)]
        barrier.wait()
        start = time.perf_counter()
        concurrent.futures.wait(futures)
        wall = time.perf_counter() - start
    for f in futures:
        error = f.exception()
        if error is not None:
            raise error
    return [f.result() for f in futures], wall


def check_addresses(pods: list[Pod], subnet: ipaddress.IPv4Network | None = None) -> None:
    ips = [p.ip for p in pods]
    assert all(ips), f"{ips.count('')} pods got no address"
    assert len(set(ips)) == len(ips), f"addresses given twice: {sorted(ip for ip in set(ips) if ips.count(ip) > 1)}"
    if subnet is not None:
        outside = [ip for ip in ips if ipaddress.ip_address(ip) not in subnet]
        assert not outside, f"addresses outside {subnet}: {outside}"


EXEC_SCRIPT = "echo $(busybox hostname) $(busybox ip -o -4 addr show dev eth0)"


def execs_at_once(rt, pods: list[Pod], n: int) -> dict:
    """n ExecSync calls at once, each into another pod's container, each answer checked: the
    command sees its own pod's hostname and address. Figures in ms."""
    chosen = pods[:n]
    barrier = threading.Barrier(len(chosen))

    def one(pod: Pod) -> float:
        barrier.wait()
        start = time.perf_counter()
        out = rt.ExecSync(pb.ExecSyncRequest(container_id=pod.container, cmd=["sh", "-c", EXEC_SCRIPT], timeout=60),
                          timeout=RPC_TIMEOUT)
        took = time.perf_counter() - start
        assert out.exit_code == 0, f"exec in {pod.container} exited {out.exit_code}: {out.stderr!r}"
        words = out.stdout.decode().split()
        assert words[:1] == [pod.config.hostname] and f"{pod.ip}/" in out.stdout.decode(), \
            f"exec in {pod.container} of pod {pod.config.hostname} ({pod.ip}) answered {out.stdout!r}"
        return took

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(chosen)) as pool:
        times = list(pool.map(one, chosen))
    wall = time.perf_counter() - start
    return {"calls": len(chosen), "wall_ms": wall * 1000, "median_ms": statistics.median(times) * 1000,
            "max_ms": max(times) * 1000}


def check_lists(rt, pods: int, containers: int, running: int) -> dict:
    """One ListPodSandbox, ListContainers and ListContainerStats, each timed (ms) and checked."""
    out = {}
    start = time.perf_counter()
    items = rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=RPC_TIMEOUT).items
    out["list_pods_ms"] = (time.perf_counter() - start) * 1000
    assert len(items) == pods and all(p.state == pb.SANDBOX_READY for p in items), \
        f"ListPodSandbox: {len(items)} pods, {sum(p.state == pb.SANDBOX_READY for p in items)} ready; expected {pods}"
    start = time.perf_counter()
    listed = rt.ListContainers(pb.ListContainersRequest(), timeout=RPC_TIMEOUT).containers
    out["list_containers_ms"] = (time.perf_counter() - start) * 1000
    states = [c.state for c in listed]
    assert len(listed) == containers and states.count(pb.CONTAINER_RUNNING) == running, \
        f"ListContainers: {len(listed)} containers, {states.count(pb.CONTAINER_RUNNING)} running; " \
        f"expected {containers}, {running}"
    start = time.perf_counter()
    stats = rt.ListContainerStats(pb.ListContainerStatsRequest(), timeout=RPC_TIMEOUT).stats
    out["list_stats_ms"] = (time.perf_counter() - start) * 1000
    running_ids = {c.id for c in listed if c.state == pb.CONTAINER_RUNNING}
    # containerd lists stats for its exited containers too (zeroes): only the running ones must be there.
    assert running_ids <= {s.attributes.id for s in stats}, \
        f"ListContainerStats lacks {len(running_ids - {s.attributes.id for s in stats})} running containers"
    return out


def add_exited_containers(rt, pods: list[Pod], image: str, total: int, workers: int = 8) -> float:
    """Containers that ran `true` and exited, spread over the pods, until `total` containers
    exist (the pods' own included); the seconds it took."""
    more = total - len(pods)
    if more <= 0:
        return 0.0

    def one(i: int) -> None:
        pod = pods[i % len(pods)]
        name = f"done-{i // len(pods)}"
        req = pb.CreateContainerRequest(pod_sandbox_id=pod.id, config=container_config(image, name, ["true"]),
                                        sandbox_config=pod.config)
        cid = rt.CreateContainer(req, timeout=RPC_TIMEOUT).container_id
        rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=RPC_TIMEOUT)

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(more)))
    # Until every one of them is seen exited.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        listed = rt.ListContainers(pb.ListContainersRequest(), timeout=RPC_TIMEOUT).containers
        if sum(c.state == pb.CONTAINER_EXITED for c in listed) >= more:
            break
        time.sleep(0.2)
    return time.perf_counter() - start


def remove_pods(rt, pods: list[Pod], workers: int = 10) -> float:
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda p: remove_pod(rt, p), pods))
    return time.perf_counter() - start


# -- what the daemon costs -------------------------------------------------------------------


def processes_naming(marker: str) -> list[int]:
    """Processes whose command line holds `marker` (a daemon's own work dir): the daemon and its
    helpers, not the containers, which exec commands of their own."""
    needle = os.fsencode(marker)
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if needle in f.read():
                    out.append(int(name))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def _cpu(pid: int) -> tuple[int, int] | None:
    """(start time, CPU ticks of the process and its reaped children), None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    # utime, stime, cutime, cstime are fields 14-17 of stat(5); starttime is field 22.
    return int(fields[19]), sum(int(x) for x in fields[11:15])


class CpuMeter:
    """CPU time of the daemon and of its helpers between start() and stop(), from /proc.
    A helper counts for the part of the window it lived through both ends of; one born or
    gone meanwhile is counted as far as it can be (from its birth; not after it is gone)."""

    def __init__(self, daemon_pid: int, marker: str):
        self.daemon_pid = daemon_pid
        self.marker = marker
        self.before: dict[int, tuple[int, int]] = {}

    def _sample(self) -> dict[int, tuple[int, int]]:
        out = {}
        for pid in {self.daemon_pid, *processes_naming(self.marker)}:
            got = _cpu(pid)
            if got is not None:
                out[pid] = got
        return out

    def start(self) -> None:
        self.before = self._sample()
        self.t0 = time.monotonic()

    def stop(self) -> dict:
        after = self._sample()
        wall = time.monotonic() - self.t0
        daemon = helpers = 0
        for pid, (born, ticks) in after.items():
            was = self.before.get(pid)
            used = ticks - was[1] if was is not None and was[0] == born else ticks
            if pid == self.daemon_pid:
                daemon += used
            else:
                helpers += used
        return {"wall_s": wall, "daemon_cpu_s": daemon / _TICK, "helpers_cpu_s": helpers / _TICK,
                "daemon_share": daemon / _TICK / wall, "total_share": (daemon + helpers) / _TICK / wall,
                "helpers": len(after) - 1}


def relist_loop(rt, meter: CpuMeter, seconds: float, pods: int, containers: int, running: int) -> dict:
    """ListPodSandbox, ListContainers, ListContainerStats once a second, as kubelet's PLEG and
    stats do, each answer checked; what the daemon spent meanwhile, and each round's time."""
    rounds: list[float] = []
    meter.start()
    start = time.monotonic()
    tick = 0
    while time.monotonic() - start < seconds:
        t0 = time.perf_counter()
        check_lists(rt, pods, containers, running)
        rounds.append(time.perf_counter() - t0)
        tick += 1
        time.sleep(max(0.0, start + tick - time.monotonic()))
    cpu = meter.stop()
    cpu.update(rounds=len(rounds), round_median_ms=statistics.median(rounds) * 1000,
               round_max_ms=max(rounds) * 1000)
    return cpu


# -- the soak --------------------------------------------------------------------------------


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def soak_round(rt, image: str, log_dir: str, observe=None) -> None:
    """Run a pod, create, start, exec (and list stats), stop, remove: one pod's life, as kubelet
    lives it."""
    config = pod_config(log_dir, "soak")
    pod = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=RPC_TIMEOUT).pod_sandbox_id
    req = pb.CreateContainerRequest(pod_sandbox_id=pod, config=container_config(image, "main", ["sleep", "3600"]),
                                    sandbox_config=config)
    cid = rt.CreateContainer(req, timeout=RPC_TIMEOUT).container_id
    rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=RPC_TIMEOUT)
    out = rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "echo $(busybox hostname)"], timeout=30),
                      timeout=RPC_TIMEOUT)
    assert out.exit_code == 0 and out.stdout.decode().strip() == config.hostname, \
        f"exec in {cid} answered {out.exit_code}: {out.stdout!r} {out.stderr!r}"
    stats = rt.ListContainerStats(pb.ListContainerStatsRequest(), timeout=RPC_TIMEOUT).stats  # as kubelet's loop
    assert cid in {s.attributes.id for s in stats}, f"ListContainerStats lacks running container {cid}"
    if observe is not None:
        observe()
    rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=RPC_TIMEOUT)
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=RPC_TIMEOUT)
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=RPC_TIMEOUT)
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=RPC_TIMEOUT)


def quiet_descriptors(pid: int, still: float = 0.5, timeout: float = 10) -> int:
    """The daemon's descriptor count once it has held still for `still` seconds: a removal
    answers before its background work (the trash being emptied, a connection closing) is
    done, and a baseline counted in the middle of that counts a descriptor about to go."""
    deadline = time.monotonic() + timeout
    n, since = descriptors(pid), time.monotonic()
    while time.monotonic() - since < still and time.monotonic() < deadline:
        time.sleep(0.05)
        now = descriptors(pid)
        if now != n:
            n, since = now, time.monotonic()
    return n


def settled_descriptors(pid: int, target: int, timeout: float = 10) -> int:
    """The daemon's descriptor count, once it is back at `target` or `timeout` has passed:
    closing a connection or reaping a helper finishes a moment after the call that caused it."""
    deadline = time.monotonic() + timeout
    while True:
        n = descriptors(pid)
        if n <= target or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


@dataclass
class Soak:
    rounds: int
    warmup: int = 3
    figures: dict = field(default_factory=dict)

    def run(self, rt, pid: int, image: str, log_dir: str, progress=None, observe=None) -> dict:
        """`warmup` rounds (first-use costs: caches, threads, the network worker), then the
        descriptors and RSS, then `rounds` rounds, then both again. `observe()` is called in
        each round while its container runs (to note the processes the daemon reports)."""
        for _ in range(self.warmup):
            soak_round(rt, image, log_dir)
        fds0, rss0 = quiet_descriptors(pid), rss_bytes(pid)
        times = []
        start = time.perf_counter()
        for i in range(self.rounds):
            t0 = time.perf_counter()
            soak_round(rt, image, log_dir, observe)
            times.append(time.perf_counter() - t0)
            if progress is not None and (i + 1) % 100 == 0:
                progress(f"soak: {i + 1}/{self.rounds} rounds, RSS {rss_bytes(pid) / 2**20:.1f} MiB, "
                         f"{descriptors(pid)} descriptors")
        wall = time.perf_counter() - start
        fds1 = settled_descriptors(pid, fds0)
        rss1 = rss_bytes(pid)
        self.figures = {"rounds": self.rounds, "warmup": self.warmup, "wall_s": wall,
                        "round_median_ms": statistics.median(times) * 1000, "round_max_ms": max(times) * 1000,
                        "fds_before": fds0, "fds_after": fds1,
                        "rss_before_kib": rss0 // 1024, "rss_after_kib": rss1 // 1024,
                        "rss_growth_kib": (rss1 - rss0) // 1024}
        return self.figures


# -- the benchmark ---------------------------------------------------------------------------


def load(peer, image: str, log_dir: str, marker: str, subnet, args) -> dict:
    """Parts 1 to 4 on one daemon; everything it made is removed before it returns."""
    rt = peer.runtime
    remove_pod(rt, run_pod(rt, image, log_dir))  # one untimed pod first: first-use costs are not compared
    out: dict = {}
    pods: list[Pod] = []
    try:
        pods, wall = pods_at_once(rt, image, log_dir, args.load_pods)
        check_addresses(pods, subnet)
        seconds = sorted(p.seconds for p in pods)
        out["pods_at_once"] = {"pods": len(pods), "wall_s": wall, "median_s": statistics.median(seconds),
                               "p90_s": seconds[int(len(seconds) * 0.9) - 1], "max_s": seconds[-1]}
        print(f"load: {peer.name}: {len(pods)} pods at once in {wall:.1f}s", flush=True)
        out["execs_at_once"] = execs_at_once(rt, pods, args.load_execs)
        meter = CpuMeter(peer.pid, marker)
        out["relist"] = relist_loop(rt, meter, args.relist_seconds, len(pods), len(pods), len(pods))
        print(f"load: {peer.name}: relist loop, {out['relist']['total_share'] * 100:.1f}% of a core", flush=True)
        if args.load_containers:
            made = add_exited_containers(rt, pods, image, args.load_containers)
            lists = check_lists(rt, len(pods), args.load_containers, len(pods))
            again = check_lists(rt, len(pods), args.load_containers, len(pods))  # a second, warm answer
            out["many_containers"] = {"containers": args.load_containers, "made_s": made,
                                      **{k: min(lists[k], again[k]) for k in lists}}
    finally:
        out["remove_s"] = remove_pods(rt, pods)
    return out


def run(args) -> dict:
    # Imported here: the test fixtures pull in pytest, which `python -m bench --help` need not.
    from bench.network import _Bridges
    from bench.peers import Containerd, Cricket
    from tests.fixtures.images import build_images, build_pause_image, push
    from tests.fixtures.registry import start_registry
    from tests.test_network import OwnNetwork

    figures: dict = {}
    bridges = _Bridges()  # puts ip_forward back and removes containerd's libcni cache
    networks: list[OwnNetwork] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-load-") as work:
            images = build_images(os.path.join(work, "images"))
            pause = build_pause_image(os.path.join(work, "pause"))
            with start_registry(os.path.join(work, "registry")) as registry:
                push(images, "busybox", registry)
                push(pause, "pause", registry)
                image = images["busybox"].reference(registry)
                c_net, d_net = OwnNetwork(os.path.join(work, "cricket-net")), \
                    OwnNetwork(os.path.join(work, "containerd-net"), plugins="reference")
                networks += [c_net, d_net]
                c_net.write()
                d_net.write()
                # containerd first: it is forked before this process has any gRPC channel.
                containerd = Containerd([registry], sandbox_image=pause["pause"].reference(registry),
                                        cni_conf_dir=d_net.conf_dir, cni_bin_dir=d_net.bin_dir)
                cricket = Cricket([registry], extra_config=c_net.daemon_config())
                try:
                    for peer in (containerd, cricket):
                        peer.start()
                        peer.pull(image)
                    # Each runtime's helpers are the processes that name its work dir.
                    for peer, workdir, net in ((cricket, cricket.workdir, c_net),
                                               (containerd, containerd.workdir, d_net)):
                        figures[peer.name] = load(peer, image, os.path.join(work, "logs"), workdir, net.subnet, args)
                finally:
                    for peer in (containerd, cricket):
                        peer.stop()
                if args.soak_rounds:
                    figures["soak"] = soak(registry, image, work, args.soak_rounds)
    finally:
        for net in networks:
            net.remove()
        bridges.close()
    figures["setup"] = {"pods": args.load_pods, "execs": args.load_execs, "containers": args.load_containers,
                        "relist_seconds": args.relist_seconds, "soak_rounds": args.soak_rounds,
                        "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return figures


def soak(registry, image: str, work: str, rounds: int) -> dict:
    """The soak on a Cricket of its own, on a network of its own; its leaks counted once it
    has removed everything and stopped."""
    from bench.peers import cleanup_dir
    from tests import crash_checks
    from tests.daemon import Cricketd, registry_config
    from tests.pods import Pods
    from tests.test_network import OwnNetwork

    net = OwnNetwork(os.path.join(work, "soak-net"))
    net.write()
    d = Cricketd(os.path.join(work, "soak"), registry_config(registry) + net.daemon_config())
    try:
        d.start()
        assert d.proc is not None
        d.pull(image)
        seen = crash_checks.Seen()  # the shims, containers and pod inits the daemon reports
        figures = Soak(rounds).run(d.runtime, d.proc.pid, image, os.path.join(work, "soak-logs"),
                                   progress=lambda line: print(line, flush=True),
                                   observe=lambda: seen.note(Pods(d, "")))
        crash_checks.remove_everything(d, Pods(d, ""))
        d.stop()
        figures["leaks"] = crash_checks.leaks(d, net, seen)
        return figures
    finally:
        with contextlib.suppress(Exception):
            if d.proc is not None:
                Pods(d, "").remove_all()
        d.stop()
        for pid, _ in crash_checks.family(d):  # what a failure left of its helpers
            crash_checks.kill(pid)
        cleanup_dir(d.workdir)  # and of its mounts, before the work dir goes
        net.remove()


def report(f: dict) -> str:
    s = f["setup"]
    c, d = f.get("cricket", {}), f.get("containerd", {})
    lines = [f"load: {s['pods']} bridge-networked pods, one busybox container each; {s['cpus']} CPUs",
             f"{'':44}{'cricket':>10}{'containerd':>12}{'ratio':>8}"]

    def row(label: str, cv: float, dv: float, fmt: str = ".1f") -> None:
        ratio = f"{cv / dv:>8.2f}" if dv else f"{'':>8}"
        lines.append(f"{label:44}{cv:>10{fmt}}{dv:>12{fmt}}{ratio}")

    if c and d:
        cp, dp = c["pods_at_once"], d["pods_at_once"]
        row(f"{s['pods']} pods at once: all running (s)", cp["wall_s"], dp["wall_s"])
        row("  one pod: median (s)", cp["median_s"], dp["median_s"], ".2f")
        row("  one pod: 90th percentile (s)", cp["p90_s"], dp["p90_s"], ".2f")
        ce, de = c["execs_at_once"], d["execs_at_once"]
        row(f"{ce['calls']} ExecSync at once: all answered (ms)", ce["wall_ms"], de["wall_ms"], ".0f")
        row("  one ExecSync: median (ms)", ce["median_ms"], de["median_ms"], ".0f")
        cr, dr = c["relist"], d["relist"]
        lines.append(f"relist loop: ListPodSandbox + ListContainers + ListContainerStats every second, "
                     f"{cr['wall_s']:.0f}s")
        row("  daemon, % of one core", cr["daemon_share"] * 100, dr["daemon_share"] * 100, ".2f")
        row("  daemon + helpers (shims...), % of one core", cr["total_share"] * 100, dr["total_share"] * 100, ".2f")
        row("  one round: median (ms)", cr["round_median_ms"], dr["round_median_ms"])
        if "many_containers" in c and "many_containers" in d:
            cm, dm = c["many_containers"], d["many_containers"]
            lines.append(f"{cm['containers']} containers present ({s['pods']} running):")
            row("  ListContainers (ms)", cm["list_containers_ms"], dm["list_containers_ms"])
            row("  ListPodSandbox (ms)", cm["list_pods_ms"], dm["list_pods_ms"])
            row("  ListContainerStats (ms)", cm["list_stats_ms"], dm["list_stats_ms"])
        row("remove every pod, 10 at a time (s)", c["remove_s"], d["remove_s"])
    if "soak" in f:
        k = f["soak"]
        lines += ["",
                  f"soak (cricket): {k['rounds']} rounds of run pod, create, start, exec, stop, remove, in "
                  f"{k['wall_s']:.0f}s (median round {k['round_median_ms']:.0f} ms)",
                  f"  descriptors {k['fds_before']} -> {k['fds_after']}; RSS {k['rss_before_kib'] / 1024:.1f} -> "
                  f"{k['rss_after_kib'] / 1024:.1f} MiB ({k['rss_growth_kib'] / 1024:+.1f} MiB)",
                  f"  leaks: {', '.join(k['leaks']) if k['leaks'] else 'none'}"]
    return "\n".join(lines)
