"""Pod networking benchmark, two parts, same run.

1. CNI ADD+DEL of one conflist (bridge + host-local + portmap + loopback) into a
   fresh network namespace, through Cricket's CNI runtime: once with Cricket's
   plugins (called in its network worker) and once with Debian's reference
   plugins (each executed, as the CNI spec says).
2. RunPodSandbox and Stop+RemovePodSandbox of a pod with its own network, over
   CRI: Cricket with its plugins against containerd + runc with the reference
   plugins, each on a bridge and subnet of its own.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time

from api.runtime.v1 import api_pb2 as pb
from bench.lifecycle import _timed
from bench.peers import Containerd, Cricket
from cni.install import install_plugins
from cni.runtime import Network
from tests.fixtures.images import build_pause_image, push
from tests.fixtures.registry import start_registry

REFERENCE_PLUGINS = "/usr/lib/cni"
LIBCNI_CACHE = "/var/lib/cni"
TARGET_RUN_POD = 0.5  # networked RunPodSandbox, cricket / containerd


def add_arguments(parser) -> None:
    parser.add_argument("--network-iterations", type=int, default=30,
                        help="ADD+DEL rounds and networked pods per runtime (default %(default)s)")


def conflist(bridge: str, subnet: str, data_dir: str) -> dict:
    return {
        "cniVersion": "1.0.0", "name": "bench-" + bridge,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": subnet}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }


def write_conflist(conf_dir: str, doc: dict) -> None:
    os.makedirs(conf_dir, exist_ok=True)
    with open(os.path.join(conf_dir, "10-bench.conflist"), "w") as f:
        json.dump(doc, f)


class _Bridges:
    """Bridges the runs make, deleted at the end whatever happens; ip_forward put back, and
    the result cache containerd's libcni writes (/var/lib/cni) removed if the run made it."""

    def __init__(self):
        self.names: list[str] = []
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            self.forward = f.read()
        self.libcni_cache_existed = os.path.exists(LIBCNI_CACHE)

    def new(self) -> str:
        name = "crkb" + secrets.token_hex(3)
        self.names.append(name)
        return name

    def close(self) -> None:
        for name in self.names:
            subprocess.run(["ip", "link", "del", name], capture_output=True)
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write(self.forward)
        if not self.libcni_cache_existed:
            shutil.rmtree(LIBCNI_CACHE, ignore_errors=True)


def cni_round_trips(work: str, plugins: str, bridge: str, subnet: str, iterations: int) -> dict:
    """Median ADD and DEL (s) of the conflist into a fresh netns, through cni.runtime."""
    bin_dir = os.path.join(work, "bin") if plugins == "cricket" else REFERENCE_PLUGINS
    if plugins == "cricket":
        install_plugins(bin_dir)
    conf_dir = os.path.join(work, "net.d")
    write_conflist(conf_dir, conflist(bridge, subnet, os.path.join(work, "ipam")))
    network = Network(conf_dir, [bin_dir], os.path.join(work, "state"))
    adds, dels = [], []

    async def rounds():
        for i in range(iterations + 1):  # the first round starts the worker: not counted
            netns = f"crkbench{secrets.token_hex(3)}"
            subprocess.run(["ip", "netns", "add", netns], check=True)
            try:
                path, sid = f"/run/netns/{netns}", f"bench{i:04d}" + secrets.token_hex(4)
                start = time.perf_counter()
                await network.add(sid, path, "eth0", {}, {})
                middle = time.perf_counter()
                await network.delete(sid, path, "eth0")
                end = time.perf_counter()
                if i:
                    adds.append(middle - start)
                    dels.append(end - middle)
            finally:
                subprocess.run(["ip", "netns", "del", netns], capture_output=True)

    try:
        asyncio.run(rounds())
    finally:
        network.close()
    return {"add_median_ms": statistics.median(adds) * 1000, "del_median_ms": statistics.median(dels) * 1000}


def pod_config(log_dir: str) -> pb.PodSandboxConfig:
    uid = secrets.token_hex(8)
    return pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name=f"net-{uid[:6]}", namespace="bench", uid=uid),
        log_directory=os.path.join(log_dir, uid),
        linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
            namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD))),
    )


def networked_pod(peer, log_dir: str, times: dict | None = None) -> None:
    rt = peer.runtime
    config = pod_config(log_dir)
    pod, t_run = _timed(lambda: rt.RunPodSandbox(pb.RunPodSandboxRequest(config=config),
                                                 timeout=60).pod_sandbox_id)
    ip = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=30).status.network.ip
    if not ip:
        raise RuntimeError(f"{peer.name}: pod {pod} got no IP")
    start = time.perf_counter()
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    if times is not None:
        times["run_pod"].append(t_run)
        times["stop_remove_pod"].append(time.perf_counter() - start)


def networked_pods(peers, log_dir: str, iterations: int) -> dict:
    out: dict[str, dict[str, list[float]]] = {p.name: {"run_pod": [], "stop_remove_pod": []} for p in peers}
    for p in peers:  # one untimed round each: first-use costs are not compared
        networked_pod(p, log_dir)
    for i in range(iterations):
        for p in peers if i % 2 == 0 else peers[::-1]:
            networked_pod(p, log_dir, out[p.name])
    return {name: {f"{k}_median_ms": statistics.median(v) * 1000 for k, v in times.items()}
            for name, times in out.items()}


def run(args) -> dict:
    n = args.network_iterations
    figures: dict = {}
    bridges = _Bridges()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-network-") as work:
            for plugins, subnet in (("cricket", "10.251.1.0/24"), ("reference", "10.251.2.0/24")):
                figures[f"cni_{plugins}"] = cni_round_trips(os.path.join(work, plugins), plugins,
                                                            bridges.new(), subnet, n)
            pause = build_pause_image(os.path.join(work, "pause"))
            with start_registry(os.path.join(work, "registry")) as registry:
                push(pause, "pause", registry)
                c_conf, d_conf = os.path.join(work, "cricket-net.d"), os.path.join(work, "containerd-net.d")
                c_bin = os.path.join(work, "cricket-bin")
                install_plugins(c_bin)
                write_conflist(c_conf, conflist(bridges.new(), "10.251.3.0/24", os.path.join(work, "ipam-c")))
                write_conflist(d_conf, conflist(bridges.new(), "10.251.4.0/24", os.path.join(work, "ipam-d")))
                # containerd first: it is forked before this process has any gRPC channel.
                peers = [
                    Containerd([registry], sandbox_image=pause["pause"].reference(registry),
                               cni_conf_dir=d_conf, cni_bin_dir=REFERENCE_PLUGINS),
                    Cricket([registry], extra_config=f'[cni]\nconf_dir = "{c_conf}"\nbin_dirs = ["{c_bin}"]\n'),
                ]
                try:
                    for peer in peers:
                        peer.start()
                    figures.update(networked_pods(peers, os.path.join(work, "logs"), n))
                finally:
                    for peer in peers:
                        peer.stop()
    finally:
        bridges.close()
    figures["setup"] = {"iterations": n, "cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return figures


def report(f: dict) -> str:
    c, r = f["cni_cricket"], f["cni_reference"]
    lines = [f"network: {f['setup']['iterations']} rounds each; {f['setup']['cpus']} CPUs",
             f"{'CNI median (ms)':34}{'cricket':>10}{'reference':>12}{'ratio':>8}",
             f"{'ADD bridge+portmap+loopback':34}{c['add_median_ms']:>10.1f}{r['add_median_ms']:>12.1f}"
             f"{c['add_median_ms'] / r['add_median_ms']:>8.2f}",
             f"{'DEL':34}{c['del_median_ms']:>10.1f}{r['del_median_ms']:>12.1f}"
             f"{c['del_median_ms'] / r['del_median_ms']:>8.2f}",
             "",
             f"{'networked pod, median (ms)':34}{'cricket':>10}{'containerd':>12}{'ratio':>8}   target"]
    c, d = f["cricket"], f["containerd"]
    ratio = c["run_pod_median_ms"] / d["run_pod_median_ms"]
    verdict = "PASS" if ratio <= TARGET_RUN_POD else "MISS"
    lines.append(f"{'RunPodSandbox':34}{c['run_pod_median_ms']:>10.1f}{d['run_pod_median_ms']:>12.1f}"
                 f"{ratio:>8.2f}   {verdict}  <= {TARGET_RUN_POD}x containerd")
    lines.append(f"{'Stop+RemovePodSandbox':34}{c['stop_remove_pod_median_ms']:>10.1f}"
                 f"{d['stop_remove_pod_median_ms']:>12.1f}"
                 f"{c['stop_remove_pod_median_ms'] / d['stop_remove_pod_median_ms']:>8.2f}")
    return "\n".join(lines)

