"""Per-call cost of the calls kubelet makes all the time, Cricket beside containerd + runc.

With 100 containers running (10 host-network pods of 10 busybox containers), each call is
made over one persistent gRPC connection by 1 and then by 16 concurrent callers (threads of
this process, each with its own stub on the shared channel), and timed around the stub call:
p50 and p99 of the latency, and the CPU the daemon spent per call (its utime + stime from
/proc over the run, divided by the calls made), which the machine's noise disturbs less
than a wall-clock figure. A new connection's cost is timed too: connect, Version, close.
"""
from __future__ import annotations

import concurrent.futures
import os
import statistics
import tempfile
import threading
import time

import grpc

from api.runtime.v1 import api_pb2 as pb
from api.runtime.v1 import api_pb2_grpc as pb_grpc
from bench.lifecycle import container_config, pod_config
from bench.peers import Containerd, Cricket
from tests.fixtures.images import build_images, build_pause_image, push
from tests.fixtures.registry import start_registry

PODS, PER_POD = 10, 10
CONCURRENCY = (1, 16)
# The target ratio of each call (Cricket / containerd), as the performance issue sets them.
LIST_TARGET, CALL_TARGET = 0.7, 1.0
LISTS = ("ListPodSandbox", "ListContainers", "ListContainerStats")


def add_arguments(parser) -> None:
    parser.add_argument("--calls", type=int, default=2000,
                        help="calls of each kind per concurrency level (default %(default)s)")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _requests(pod: str, cid: str, image: str) -> dict:
    """Each call measured: (the stub's method name, its request)."""
    return {
        "Version": ("Version", pb.VersionRequest()),
        "Status": ("Status", pb.StatusRequest()),
        "ListPodSandbox": ("ListPodSandbox", pb.ListPodSandboxRequest()),
        "ListContainers": ("ListContainers", pb.ListContainersRequest()),
        "ListContainerStats": ("ListContainerStats", pb.ListContainerStatsRequest()),
        "PodSandboxStatus": ("PodSandboxStatus", pb.PodSandboxStatusRequest(pod_sandbox_id=pod)),
        "ContainerStatus": ("ContainerStatus", pb.ContainerStatusRequest(container_id=cid)),
        "ImageStatus": ("ImageStatus", pb.ImageStatusRequest(image=pb.ImageSpec(image=image))),
    }


def _populate(peer, image: str, log_dir: str) -> list[tuple[str, list[str]]]:
    rt = peer.runtime
    pods = []
    for _ in range(PODS):
        config = pod_config(log_dir)
        pod = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=60).pod_sandbox_id
        cids: list[str] = []
        pods.append((pod, cids))
        for i in range(PER_POD):
            c = container_config(image)
            c.metadata.name = f"sleeper-{i}"
            c.log_path = f"sleeper-{i}.log"
            req = pb.CreateContainerRequest(pod_sandbox_id=pod, config=c, sandbox_config=config)
            cid = rt.CreateContainer(req, timeout=60).container_id
            rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60)
            cids.append(cid)
    return pods


def _unpopulate(peer, pods: list[tuple[str, list[str]]]) -> None:
    rt = peer.runtime
    for pod, cids in pods:
        for cid in cids:
            rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=60)
            rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=60)
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)


def _measure(peer, socket: str, method: str, request, calls: int, callers: int) -> dict:
    channel = grpc.insecure_channel("unix://" + socket)
    try:
        service = pb_grpc.ImageServiceStub if method == "ImageStatus" else pb_grpc.RuntimeServiceStub
        call = getattr(service(channel), method)
        for _ in range(50):  # warm: the connection, the daemon's caches
            call(request, timeout=30)
        latencies: list[float] = []
        lock = threading.Lock()

        def caller(n: int) -> None:
            mine = []
            for _ in range(n):
                start = time.perf_counter()
                call(request, timeout=30)
                mine.append(time.perf_counter() - start)
            with lock:
                latencies.extend(mine)

        cpu = _cpu_seconds(peer.pid)
        with concurrent.futures.ThreadPoolExecutor(callers) as pool:
            list(pool.map(caller, [calls // callers] * callers))
        cpu = _cpu_seconds(peer.pid) - cpu
    finally:
        channel.close()
    latencies.sort()
    return {"p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
            "cpu_us_per_call": cpu / len(latencies) * 1e6}


def _connect(socket: str, rounds: int = 100) -> float:
    """Median ms of a new connection: connect, Version, close."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        with grpc.insecure_channel("unix://" + socket) as channel:
            pb_grpc.RuntimeServiceStub(channel).Version(pb.VersionRequest(), timeout=30)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _socket(peer) -> str:
    return peer.daemon.socket if isinstance(peer, Cricket) else peer.socket


def run(args) -> dict:
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-calls-") as work:
        images = build_images(os.path.join(work, "images"))
        pause_images = build_pause_image(os.path.join(work, "pause"))
        log_dir = os.path.join(work, "logs")
        with start_registry(os.path.join(work, "registry")) as registry:
            push(images, "busybox", registry)
            push(pause_images, "pause", registry)
            image = images["busybox"].reference(registry)
            peers = [Cricket([registry]),
                     Containerd([registry], sandbox_image=pause_images["pause"].reference(registry))]
            for peer in peers:
                peer.start()
                pods: list = []
                try:
                    peer.pull(image)
                    pods = _populate(peer, image, log_dir)
                    pod, cid = pods[0][0], pods[0][1][0]
                    out: dict = {"connect_ms": _connect(_socket(peer))}
                    for name, (method, request) in _requests(pod, cid, image).items():
                        for callers in CONCURRENCY:
                            out[f"{name}@{callers}"] = _measure(peer, _socket(peer), method, request,
                                                                args.calls, callers)
                    figures[peer.name] = out
                finally:
                    _unpopulate(peer, pods)
                    peer.stop()
    figures["setup"] = {"calls": args.calls, "containers": PODS * PER_POD, "cpus": os.cpu_count(),
                        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return figures


def report(f: dict) -> str:
    c, d, s = f["cricket"], f["containerd"], f["setup"]
    lines = [f"calls: {s['calls']} calls of each, {s['containers']} containers running, one connection; "
             f"{s['cpus']} CPUs",
             f"{'call@callers':26}{'p50 ms':>16}{'p99 ms':>16}{'daemon CPU us':>18}{'ratio':>7}   target"]
    for key in (k for k in c if "@" in k):
        cv, dv = c[key], d[key]
        ratio = cv["p50_ms"] / dv["p50_ms"]
        target = LIST_TARGET if key.split("@")[0] in LISTS else CALL_TARGET
        verdict = "PASS" if ratio <= target else "MISS"
        lines.append(f"{key:26}{cv['p50_ms']:>7.3f} /{dv['p50_ms']:>7.3f}{cv['p99_ms']:>7.3f} /{dv['p99_ms']:>7.3f}"
                     f"{cv['cpu_us_per_call']:>8.0f} /{dv['cpu_us_per_call']:>8.0f}{ratio:>7.2f}   "
                     f"{verdict} p50 <= {target}x containerd")
    cv, dv = c["connect_ms"], d["connect_ms"]
    lines.append(f"{'new connection + Version':26}{cv:>7.3f} /{dv:>7.3f}{'':>34}{cv / dv:>7.2f}   "
                 f"{'PASS' if cv <= dv else 'MISS'} <= 1.0x containerd")
    lines.append("(each pair: cricket / containerd)")
    return "\n".join(lines)
