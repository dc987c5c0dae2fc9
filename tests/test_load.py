"""Load and soak, at sizes CI can afford (`make bench`'s bench/load.py runs the same code at full
size, beside containerd: 1,000 containers listed, a 5-minute relist loop, 1,000 rounds): 100
bridge-networked pods at once, 50 ExecSync calls at once, a kubelet-like relist loop, 400
containers listed, and rounds of a pod's whole life; afterwards nothing of the daemon's is left
on the host, and its descriptors are back where they were.

Times and CPU shares are printed (pytest -s shows them), never asserted.
"""
from __future__ import annotations

import os

import grpc
import pytest

from bench import load
from tests import crash_checks as cc
from tests.daemon import Cricketd, registry_config
from tests.pods import Pods
from tests.test_network import OwnNetwork

PODS = 100
EXECS = 50
CONTAINERS = 400  # each exited one costs ~0.15s to make here: bench/load.py lists 1,000
RELIST_SECONDS = 20
SOAK_ROUNDS = 30
RSS_GROWTH_BOUND = 64 << 20  # generous, for a noisy allocator: the figure itself is printed



@pytest.fixture
def busybox(registry, test_images):
    return test_images["busybox"].reference(registry)


@pytest.fixture
def daemon(registry, network, busybox, tmp_path):
    """A started cricketd on the test's network with busybox pulled; afterwards, whatever
    happened, everything it made is removed and any process of its family left is killed."""
    d = Cricketd(str(tmp_path / "cricketd"), registry_config(registry) + network.daemon_config())
    pods = Pods(d, str(tmp_path / "logs"))
    try:
        d.start()
        d.pull(busybox)
        yield d, pods
    finally:
        try:
            if d.proc is not None and d.proc.poll() is not None:
                d.stop()
            if d.proc is None:
                d.start()
            pods.remove_all()
        except (grpc.RpcError, RuntimeError):
            pass
        finally:
            d.stop()
            for pid, _ in cc.family(d):
                cc.kill(pid)


def _stop_and_check_leaks(d: Cricketd, pods: Pods, network: OwnNetwork, seen: cc.Seen) -> None:
    """Remove everything, stop the daemon, and find nothing of it left on the host."""
    cc.remove_everything(d, pods)
    d.stop()
    leaks = cc.leaks(d, network, seen)
    assert leaks == [], leaks


def test_a_hundred_pods_at_once_fifty_execs_a_relist_loop_and_many_containers(
        daemon, network, busybox, tmp_path):
    d, pods = daemon
    assert d.proc is not None
    rt, log_dir, pid, seen = d.runtime, str(tmp_path / "logs"), d.proc.pid, cc.Seen()
    load.soak_round(rt, busybox, log_dir)  # first-use costs (the network worker, threads) before counting
    fds, rss = load.quiet_descriptors(pid), load.rss_bytes(pid)
    made, wall = load.pods_at_once(rt, busybox, log_dir, PODS)
    seen.note(pods)
    load.check_addresses(made, network.subnet)
    assert len(network.allocations()) == PODS and len(network.veths()) == PODS
    seconds = sorted(p.seconds for p in made)
    print(f"\n{PODS} pods at once, each with a started container: all running in {wall:.1f}s "
          f"(one pod: median {seconds[PODS // 2]:.2f}s, slowest {seconds[-1]:.2f}s)")

    execs = load.execs_at_once(rt, made, EXECS)
    print(f"{EXECS} ExecSync at once: all answered in {execs['wall_ms']:.0f} ms (median {execs['median_ms']:.0f} ms)")

    relist = load.relist_loop(rt, load.CpuMeter(pid, d.workdir), RELIST_SECONDS, PODS, PODS, PODS)
    print(f"relist loop (ListPodSandbox, ListContainers, ListContainerStats every second) against {PODS} pods, "
          f"{relist['wall_s']:.0f}s: cricketd {relist['daemon_share'] * 100:.2f}% of a core, with its "
          f"{relist['helpers']} helpers (zygote, network worker, shims) {relist['total_share'] * 100:.2f}%; "
          f"a round's median {relist['round_median_ms']:.1f} ms")

    made_s = load.add_exited_containers(rt, made, busybox, CONTAINERS)
    lists = load.check_lists(rt, PODS, CONTAINERS, PODS)
    print(f"{CONTAINERS} containers ({PODS} running, made in {made_s:.0f}s): ListContainers "
          f"{lists['list_containers_ms']:.1f} ms, ListPodSandbox {lists['list_pods_ms']:.1f} ms, "
          f"ListContainerStats {lists['list_stats_ms']:.1f} ms")

    removed = load.remove_pods(rt, made)
    after = load.settled_descriptors(pid, fds)
    print(f"every pod removed, 10 at a time, in {removed:.1f}s; cricketd's descriptors {fds} -> {after}, "
          f"RSS {rss / 2**20:.1f} -> {load.rss_bytes(pid) / 2**20:.1f} MiB")
    assert after == fds, f"cricketd holds {after - fds} more descriptors: {_fds(pid)}"
    assert network.allocations() == [] and network.veths() == [] and network.rules() == []
    _stop_and_check_leaks(d, pods, network, seen)


def test_rounds_of_a_pods_life_leak_nothing(daemon, network, busybox, tmp_path):
    d, pods = daemon
    assert d.proc is not None
    pid, seen = d.proc.pid, cc.Seen()
    soak = load.Soak(SOAK_ROUNDS).run(d.runtime, pid, busybox, str(tmp_path / "logs"), observe=lambda: seen.note(pods))
    print(f"\nsoak: {SOAK_ROUNDS} rounds of run pod, create, start, exec, stop, remove in {soak['wall_s']:.1f}s "
          f"(a round's median {soak['round_median_ms']:.0f} ms); descriptors {soak['fds_before']} -> "
          f"{soak['fds_after']}; RSS {soak['rss_before_kib'] / 1024:.1f} -> {soak['rss_after_kib'] / 1024:.1f} MiB "
          f"({soak['rss_growth_kib'] / 1024:+.1f} MiB)")
    assert soak["fds_after"] == soak["fds_before"], \
        f"cricketd holds {soak['fds_after'] - soak['fds_before']} more descriptors: {_fds(pid)}"
    assert soak["rss_growth_kib"] * 1024 < RSS_GROWTH_BOUND
    # While it still runs: no shim, container or pod init is left, only the zygote and the worker.
    helpers = sorted(name for _, name in cc.family(d))
    assert helpers == ["cricket-net", "cricket-zygote"], helpers
    assert network.allocations() == [] and network.veths() == [] and network.rules() == []
    _stop_and_check_leaks(d, pods, network, seen)


def _fds(pid: int) -> list[str]:
    out = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            out.append(f"{fd} -> {os.readlink(f'/proc/{pid}/fd/{fd}')}")
        except OSError:
            pass
    return out

