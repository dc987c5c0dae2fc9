"""Bring the one-node cluster up on a runtime, and take it down leaving nothing behind."""
from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request

from tools.cluster import addons, components, images, node, pki, runtimes
from tools.cluster import settings as s

WAIT_SECONDS = 180.0
COMPONENTS_TOP_DOWN = ("kube-controller-manager", "kube-scheduler")
CGROUP_ROOT = "/sys/fs/cgroup"
# Paths outside the cluster's own directories that kubelet writes to whatever its root dir.
KUBELET_FIXED_PATHS = ("/var/lib/kubelet", "/var/log/containers")


class ClusterError(RuntimeError):
    pass


def _state_file() -> str:
    return s.path("cluster.json")


def recorded() -> dict:
    try:
        with open(_state_file()) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def _record(**kw) -> None:
    state = {**recorded(), **kw}
    with open(_state_file(), "w") as f:
        json.dump(state, f)


def kubectl(*args: str, check: bool = True, input: str | None = None, timeout: float = 120) -> str:
    done = subprocess.run([s.binary("kubectl"), f"--kubeconfig={s.KUBECONFIG}", *args], input=input,
                          capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode:
        raise ClusterError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _wait(what: str, ready, log: str = "", seconds: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if log and not node.running(log):
            raise ClusterError(f"{what}: {log} exited:\n{node.log_tail(log)}")
        if time.monotonic() > deadline:
            tail = f":\n{node.log_tail(log)}" if log else ""
            raise ClusterError(f"{what} did not happen within {seconds:.0f}s{tail}")
        time.sleep(0.25)


def _get(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            return resp.status == 200
    except OSError:
        return False


def _api_context() -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.pki_dir("ca.crt"))
    context.load_cert_chain(pki.pki_dir("admin.crt"), pki.pki_dir("admin.key"))
    return context


def node_ready() -> bool:
    out = kubectl("get", "node", s.NODE_NAME, "-o", 'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
                  check=False)
    return out.strip() == "True"


def missing_binaries() -> list[str]:
    wanted = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy",
              "kubectl", "coredns"]
    return [b for b in wanted if not os.access(s.binary(b), os.X_OK)]


def up(runtime: str = "cricket", kubelet_overrides: dict | None = None, dns: bool = True) -> dict:
    """Start everything and wait until the node is Ready (and DNS answers); timings."""
    if os.geteuid() != 0:
        raise ClusterError("the cluster needs root: it makes a network namespace, mounts and cgroups")
    missing = missing_binaries()
    if missing:
        raise ClusterError(f"missing {', '.join(missing)} in {s.BIN_DIR}: run `make go-tools` first")
    if node.exists() or os.path.exists(_state_file()):
        raise ClusterError(f"a cluster is already here ({s.CLUSTER_DIR}): `make cluster-down` first")
    started = time.monotonic()
    for d in (s.CLUSTER_DIR, s.STATE_DIR):
        os.makedirs(d, mode=0o755, exist_ok=True)
    _record(runtime=runtime, kubelet=kubelet_overrides or {},
            preexisting=[p for p in KUBELET_FIXED_PATHS if os.path.exists(p)])
    pki.make()
    node.create()
    timings = {}

    node.start("registry", components.registry())
    _wait("the node's registry answering", lambda: _get(f"http://{s.REGISTRY_HOST}/v2/"), "registry")
    with tempfile.TemporaryDirectory(prefix="cluster-images-") as work:
        images.build_and_push(work)
    timings["images_s"] = time.monotonic() - started

    node.start("etcd", components.etcd())
    node.start("kube-apiserver", components.kube_apiserver())
    context = _api_context()
    _wait("the API server ready", lambda: _get(f"{s.API_URL}/readyz", context), "kube-apiserver")
    node.start("kube-controller-manager", components.kube_controller_manager())
    node.start("kube-scheduler", components.kube_scheduler())
    timings["control_plane_s"] = time.monotonic() - started

    runtimes.start(runtime)
    start_kubelet(runtime, kubelet_overrides)
    node.start("kube-proxy", components.kube_proxy())
    timings["node_ready_s"] = time.monotonic() - started

    if dns:
        kubectl("apply", "-f", "-", input=addons.coredns_manifest())
        kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns", f"--timeout={WAIT_SECONDS:.0f}s",
                timeout=WAIT_SECONDS + 10)
        timings["dns_ready_s"] = time.monotonic() - started
    _record(timings=timings)
    return timings


def start_kubelet(runtime: str, overrides: dict | None = None) -> None:
    """(Re)start kubelet on the runtime's socket and wait for the node to be Ready."""
    node.start("kubelet", components.kubelet(runtimes.socket_of(runtime), overrides))
    _wait("the node Ready", node_ready, "kubelet")


def restart_kubelet(extra: dict | None = None, sig: int = signal.SIGTERM) -> None:
    """Stop kubelet (pods keep running) and start it again, with `extra` over the cluster's
    kubelet configuration (none: back to the cluster's own)."""
    state = recorded()
    node.stop("kubelet", sig)
    start_kubelet(state["runtime"], {**state.get("kubelet", {}), **(extra or {})})


def restart_runtime(sig: int = signal.SIGKILL) -> None:
    runtime = recorded()["runtime"]
    node.stop("runtime", sig)
    runtimes.start(runtime)


def _mounts_under(*roots: str) -> list[str]:
    roots = tuple(os.path.realpath(r) for r in roots)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if any(point == r or point.startswith(r + "/") for r in roots):
                found.append(point)
    return found[::-1]  # the most recent (deepest) first


def _unmount_all(*roots: str) -> None:
    for point in _mounts_under(*roots):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _kubepods_cgroups() -> list[str]:
    """Every cgroup directory kubelet made (kubepods and below) in every hierarchy, deepest first."""
    found = []
    for hierarchy in sorted(os.listdir(CGROUP_ROOT)):
        top = os.path.join(CGROUP_ROOT, hierarchy, "kubepods")
        if os.path.isdir(top):
            for dirpath, _, _ in os.walk(top):
                found.append(dirpath)
    return sorted(found, key=lambda p: p.count("/"), reverse=True)


def _kill_in(cgroups: list[str]) -> None:
    # Only processes in the cluster's own cgroups: what its pods left running.
    for d in cgroups:
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            continue
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _remove_cgroups(cgroups: list[str]) -> list[str]:
    left = []
    for d in cgroups:
        for _ in range(50):
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)  # killed processes take a moment to leave
        else:
            left.append(d)
    return left


def down() -> list[str]:
    """Stop every component and remove everything the cluster made; what could not be removed."""
    problems = []
    state = recorded()
    for name in COMPONENTS_TOP_DOWN:
        node.stop(name)
    node.stop("kubelet")
    if state.get("runtime"):
        problems += runtimes.remove_all_pods(state["runtime"])
    for name in ("kube-proxy", "runtime", "kube-apiserver", "etcd", "registry"):
        node.stop(name)
    cgroups = _kubepods_cgroups()
    _kill_in(cgroups)
    _unmount_all(s.CLUSTER_DIR, s.STATE_DIR, *KUBELET_FIXED_PATHS)
    node.delete()
    problems += [f"cgroup {d} could not be removed" for d in _remove_cgroups(cgroups)]
    for p in KUBELET_FIXED_PATHS:
        if p not in state.get("preexisting", KUBELET_FIXED_PATHS):
            shutil.rmtree(p, ignore_errors=True)
    for d in (s.CLUSTER_DIR, s.STATE_DIR):
        if _mounts_under(d):
            problems.append(f"{d} still has mounts: {_mounts_under(d)}")
        else:
            shutil.rmtree(d, ignore_errors=True)
    return problems


def usage() -> str:
    return f"""The cluster is up: one node, {s.NODE_NAME}, on {recorded().get('runtime')}.

  export KUBECONFIG={s.KUBECONFIG}
  {s.binary('kubectl')} get nodes -o wide

Logs of every component: {s.LOG_DIR}
Images: push to {s.REGISTRY_HOST} (plain HTTP); the node resolves docker.io, registry.k8s.io,
gcr.io, quay.io and public.ecr.aws names through it.
`make cluster-down` stops it all and removes what it made."""
