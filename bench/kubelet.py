"""Kubelet benchmark: the figures a cluster operator sees, measured through a real kubelet on the
one-node cluster (tools/cluster) over Cricket and then over containerd + runc, in one run, with the
same cluster scripts, images and pods.

1. Pod start-up latency as Kubernetes' scalability SLI defines it: from the pod object's creation
   to all its containers running as a watch observes it, the image already present. A batch of
   `--kubelet-batch` (30) pods is created at once, one create call per thread; a pod's clock
   starts when its create call returns (the object exists) and stops at the first watch event
   showing every container running. p50, p90, p99.
2. Density: `--kubelet-density` (100) pods created at once (kubelet's max-pods of 110 holds them
   beside CoreDNS); the time until the last is Running, then the PSS of everything the runtime
   keeps: Cricket's daemon, zygote, network worker, shims and pod inits; containerd's daemon, its
   shims and the pods' pause processes. The containers' own processes (`sleep`) are left out.
3. Steady state: with those pods idle under kubelet's relisting, PLEG and stats polling, the CPU
   time the same processes spend over `--kubelet-idle-seconds` (120), per minute.

Each pod is one busybox container sleeping, bridge-networked by the cluster's CNI config; a
warm-up pod pulls the images first. The runtimes run one after the other, never together: both
would be the node's runtime.
"""
from __future__ import annotations

import concurrent.futures
import math
import os
import threading
import time

from bench.peers import memory
from tools.cluster import cluster, node
from tools.cluster import settings as s

NAMESPACE = "bench"
IMAGE = "docker.io/library/busybox:1.36.1"
WAIT_SECONDS = 600.0
_TICK = os.sysconf("SC_CLK_TCK")
# What each runtime keeps running besides its daemon, by process name (comm).
CRICKET_HELPERS = ("cricket-zygote", "cricket-net", "cricket-shim", "cricket-podinit")
CONTAINERD_HELPERS = ("containerd-shim",)  # comm is cut to 15 bytes: containerd-shim-runc-v2
PAUSE = "pause"


def add_arguments(parser) -> None:
    parser.add_argument("--kubelet-batch", type=int, default=30,
                        help="pods created at once for the start-up latency (default %(default)s)")
    parser.add_argument("--kubelet-density", type=int, default=100,
                        help="pods on the node for density and steady state (default %(default)s)")
    parser.add_argument("--kubelet-idle-seconds", type=float, default=120,
                        help="length of the steady-state CPU measurement (default %(default)s)")
    parser.add_argument("--kubelet-runtimes", default="cricket,containerd",
                        help="runtimes to measure, in order (default %(default)s)")


# -- the Kubernetes API -----------------------------------------------------------------------


def _api():
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(s.KUBECONFIG, client_configuration=configuration)
    configuration.connection_pool_maxsize = 128  # a connection for each of the pods created at once
    return client.CoreV1Api(client.ApiClient(configuration))


def _pod(name: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "sleep", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                            "command": ["sleep", "86400"]}],
        },
    }


def _all_running(pod) -> bool:
    statuses = pod.status.container_statuses or []
    return bool(statuses) and all(c.state and c.state.running for c in statuses)


class Watcher:
    """Notes the monotonic time at which each pod of the namespace is first seen with every
    container running, from a watch started before any pod is created."""

    def __init__(self, api):
        from kubernetes import watch

        self.api = api
        self.running: dict[str, float] = {}
        self._watch = watch.Watch()
        self._changed = threading.Condition()
        self._stopping = False
        self.restarts = 0  # watches begun again after being cut short
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc):
        self._stopping = True
        self._watch.stop()
        self._thread.join(10)

    def _note(self, pod, seen: float) -> None:
        if _all_running(pod):
            with self._changed:
                self.running.setdefault(pod.metadata.name, seen)
                self._changed.notify_all()

    def _run(self) -> None:
        # A watch the API server or the connection cuts short is begun again from a fresh list
        # (whose running pods count as seen when it answered), and counted.
        while not self._stopping:
            try:
                listed = self.api.list_namespaced_pod(NAMESPACE)
                seen = time.monotonic()
                for pod in listed.items:
                    self._note(pod, seen)
                self._ready.set()
                for event in self._watch.stream(self.api.list_namespaced_pod, NAMESPACE,
                                                resource_version=listed.metadata.resource_version,
                                                timeout_seconds=int(WAIT_SECONDS)):
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._note(event["object"], time.monotonic())
            except Exception:
                if self._stopping:
                    return
                self.restarts += 1
                time.sleep(0.2)

    def wait_for(self, names: list[str]) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        with self._changed:
            while not all(n in self.running for n in names):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = [n for n in names if n not in self.running]
                    raise RuntimeError(f"{len(missing)} pods not running after {WAIT_SECONDS:.0f} s: {missing[:5]}")
                self._changed.wait(min(left, 5))


def create_at_once(api, names: list[str]) -> dict[str, float]:
    """Create the pods from a thread each, let go together; when each create call returned."""
    barrier = threading.Barrier(len(names))

    def create(name: str) -> float:
        barrier.wait()
        api.create_namespaced_pod(NAMESPACE, _pod(name))
        return time.monotonic()

    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        return dict(zip(names, pool.map(create, names)))


def delete_all(api) -> None:
    api.delete_collection_namespaced_pod(NAMESPACE, grace_period_seconds=1)
    deadline = time.monotonic() + WAIT_SECONDS
    while api.list_namespaced_pod(NAMESPACE).items:
        if time.monotonic() > deadline:
            raise RuntimeError("bench pods still there after deletion")
        time.sleep(1)


# -- the runtime's processes ---------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int]:
    """comm, parent pid, and user+system CPU ticks of a process."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return comm, int(fields[1]), int(fields[11]) + int(fields[12])


def runtime_processes(runtime: str) -> dict[int, str]:
    """pid -> role of every process the runtime keeps: its daemon, its helpers, and (containerd)
    the pause process of each pod."""
    daemon = node.pid_of("runtime")
    if daemon is None:
        raise RuntimeError(f"the cluster's runtime ({runtime}) is not running")
    helpers = CRICKET_HELPERS if runtime == "cricket" else CONTAINERD_HELPERS
    found: dict[int, str] = {daemon: "daemon"}
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                table[int(entry)] = _stat(int(entry))
            except (OSError, ValueError):
                continue
    for pid, (comm, _, _) in table.items():
        if comm in helpers:
            found[pid] = comm
    for pid, (comm, parent, _) in table.items():
        if comm == PAUSE and table.get(parent, ("",))[0] in CONTAINERD_HELPERS:
            found[pid] = "pause"
    return found


def pss_by_role(pids: dict[int, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for pid, role in pids.items():
        try:
            out[role] = out.get(role, 0) + memory(pid)["pss_kib"]
        except (OSError, KeyError):
            continue
    return out


def cpu_ticks(pids) -> int:
    total = 0
    for pid in pids:
        try:
            total += _stat(pid)[2]
        except (OSError, ValueError):
            continue
    return total


# -- the run ---------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value at or above a share q of them."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def measure(runtime: str, batch: int, density: int, idle_seconds: float) -> dict:
    figures: dict = {}
    timings = cluster.up(runtime, dns=False)
    figures["node_ready_s"] = round(timings["node_ready_s"], 1)
    try:
        api = _api()
        from kubernetes import client

        api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
        _wait_service_account(api)
        with Watcher(api) as watcher:  # the image pulled, the runtime warm
            create_at_once(api, ["warm-up"])
            watcher.wait_for(["warm-up"])
        delete_all(api)

        names = [f"batch-{i}" for i in range(batch)]
        with Watcher(api) as watcher:
            created = create_at_once(api, names)
            watcher.wait_for(names)
        restarts = watcher.restarts
        latencies = [watcher.running[n] - created[n] for n in names]
        figures["startup_s"] = {"p50": _percentile(latencies, 0.50), "p90": _percentile(latencies, 0.90),
                                "p99": _percentile(latencies, 0.99), "all": sorted(latencies)}
        delete_all(api)

        names = [f"dense-{i}" for i in range(density)]
        with Watcher(api) as watcher:
            started = time.monotonic()
            create_at_once(api, names)
            watcher.wait_for(names)
        figures["density_all_running_s"] = max(watcher.running.values()) - started
        figures["watch_restarts"] = restarts + watcher.restarts
        pids = runtime_processes(runtime)
        by_role = pss_by_role(pids)
        figures["pss_kib"] = by_role
        figures["pss_total_kib"] = sum(by_role.values())
        figures["processes"] = {role: sum(1 for r in pids.values() if r == role) for role in set(pids.values())}

        time.sleep(10)  # past the burst: kubelet's first stats and relists after the pods started
        before = cpu_ticks(pids)
        time.sleep(idle_seconds)
        spent = (cpu_ticks(runtime_processes(runtime)) - before) / _TICK
        figures["idle_cpu_s_per_min"] = spent * 60 / idle_seconds
        delete_all(api)
    finally:
        problems = cluster.down()
        if problems:
            figures["cluster_down_problems"] = problems
    return figures


def _wait_service_account(api) -> None:
    deadline = time.monotonic() + 60
    while True:
        names = [a.metadata.name for a in api.list_namespaced_service_account(NAMESPACE).items]
        if "default" in names or time.monotonic() > deadline:
            return
        time.sleep(0.5)


def run(args) -> dict:
    missing = cluster.missing_binaries()
    if missing:
        raise SystemExit(f"bench kubelet: missing {', '.join(missing)} in {s.BIN_DIR}: make go-tools")
    out = {"batch": args.kubelet_batch, "density": args.kubelet_density, "idle_seconds": args.kubelet_idle_seconds}
    for runtime in args.kubelet_runtimes.split(","):
        out[runtime] = measure(runtime, args.kubelet_batch, args.kubelet_density, args.kubelet_idle_seconds)
    return out


def report(f: dict) -> str:
    c, d = f.get("cricket"), f.get("containerd")
    lines = [f"kubelet: {f['batch']} pods at once for start-up latency, {f['density']} for density, "
             f"{f['idle_seconds']:.0f} s idle"]
    rows = [
        ("start-up p50 (s)", lambda x: x["startup_s"]["p50"], "—"),
        ("start-up p90 (s)", lambda x: x["startup_s"]["p90"], "—"),
        ("start-up p99 (s)", lambda x: x["startup_s"]["p99"], "ratio <= 0.5"),
        (f"{f['density']} pods all running (s)", lambda x: x["density_all_running_s"], "—"),
        (f"runtime PSS at {f['density']} pods (MiB)", lambda x: x["pss_total_kib"] / 1024, "ratio < 1"),
        ("idle CPU (s per minute)", lambda x: x["idle_cpu_s_per_min"], "ratio <= 1"),
    ]
    lines.append(f"{'':34}{'cricket':>10}{'containerd':>12}{'ratio':>8}   goal")
    for label, get, goal in rows:
        cv = get(c) if c else None
        dv = get(d) if d else None
        ratio = f"{cv / dv:>8.2f}" if cv is not None and dv else f"{'':>8}"
        lines.append(f"{label:34}{_fmt(cv):>10}{_fmt(dv):>12}{ratio}   {goal}")
    for name, x in (("cricket", c), ("containerd", d)):
        if x:
            parts = ", ".join(f"{role} {kib / 1024:.1f} MiB ({x['processes'].get(role, 0)})"
                              for role, kib in sorted(x["pss_kib"].items()))
            lines.append(f"  {name} PSS by process (count): {parts}")
    return "\n".join(lines)


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.2f}"
