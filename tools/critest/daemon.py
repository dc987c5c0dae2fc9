"""The cricketd under test, in the run's temporary directories, and taking down what it made.

Clean-up goes through the CRI first (removing a pod is what undoes its network, mounts,
namespace pins and cgroups, in Cricket's own order). A daemon that died during the run is
started again on the same directories to do that from its records, as a restart after a crash
would; only what even that leaves is killed and unmounted by hand.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import grpc

from api.runtime.v1 import api_pb2 as pb
from api.runtime.v1 import api_pb2_grpc as pb_grpc
from cri.records import RecordStore
from linux import libc
from linux.cgroups import Cgroup, CgroupError
from tools.critest import processes

START_SECONDS = 30
REMOVE_SECONDS = 60
# The registries critest pulls from, all sent to the local stand-ins.
MIRRORED = ("docker.io", "registry.k8s.io", "k8s.gcr.io", "gcr.io", "quay.io", "public.ecr.aws")


def config(registry: str, network_table: str) -> str:
    mirrors = "".join(f'\n[registries."{host}"]\nmirrors = ["http://{registry}"]\n' for host in MIRRORED)
    return f'log_level = "debug"\n\n{network_table}{mirrors}\n[registries."{registry}"]\ninsecure = true\n'


class Cricketd:
    def __init__(self, repo: str, workdir: str, config_text: str, log_path: str):
        self.repo = repo
        self.workdir = workdir
        self.socket = os.path.join(workdir, "cricket.sock")
        self.root = os.path.join(workdir, "root")
        self.state = os.path.join(workdir, "state")
        self.config_path = os.path.join(workdir, "config.toml")
        self.log_path = log_path
        with open(self.config_path, "w") as f:
            f.write(config_text)
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return "unix://" + self.socket

    def start(self) -> None:
        self.proc = processes.start([sys.executable, "-m", "cri.main", "--config", self.config_path,
                                     "--socket", self.socket, "--root", self.root, "--state", self.state],
                                    self.log_path, cwd=self.repo)
        deadline = time.monotonic() + START_SECONDS
        with grpc.insecure_channel(self.endpoint) as channel:
            stub = pb_grpc.RuntimeServiceStub(channel)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"cricketd exited with {self.proc.returncode}: "
                                       f"{processes.tail(self.log_path, 10)}")
                try:
                    stub.Version(pb.VersionRequest(), timeout=1)
                    return
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"cricketd did not answer in {START_SECONDS}s: "
                                           f"{processes.tail(self.log_path, 10)}") from None
                    time.sleep(0.1)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def remove_pods(self) -> list[str]:
        """Stop and remove every pod and container through the CRI; the errors met."""
        problems = []
        with grpc.insecure_channel(self.endpoint) as channel:
            rt = pb_grpc.RuntimeServiceStub(channel)
            try:
                pods = rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items
                for pod in pods:
                    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=REMOVE_SECONDS)
                    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod.id), timeout=REMOVE_SECONDS)
                for c in rt.ListContainers(pb.ListContainersRequest(), timeout=10).containers:
                    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=c.id), timeout=REMOVE_SECONDS)
            except grpc.RpcError as e:
                problems.append(f"removing pods through the CRI: {e.code().name}: {e.details()}")
        return problems

    def stop(self) -> None:
        if self.proc is not None:
            processes.stop(self.proc)

    def recorded(self) -> tuple[list, list]:
        """The sandboxes and containers the daemon's records still hold."""
        path = os.path.join(self.root, "runtime.db")
        if not os.path.exists(path):
            return [], []
        store = RecordStore(path)
        try:
            return store.sandboxes(), store.containers()
        finally:
            store.close()

    def take_down(self) -> list[str]:
        """Everything the daemon made goes, whatever state the run left it in; what could not."""
        problems = []
        if self.running():
            problems += self.remove_pods()
        self.stop()
        sandboxes, containers = self.recorded()
        if sandboxes or containers:
            try:  # a daemon that died mid-run: its successor finishes the job from the records
                self.start()
                problems += self.remove_pods()
            except RuntimeError as e:
                problems.append(str(e))
            self.stop()
            sandboxes, containers = self.recorded()
        processes.kill_mentioning(self.workdir)  # the zygote and shims of a daemon that died
        for path in [(c.spec.get("linux") or {}).get("cgroupsPath") for c in containers] + [
                f"{s.cgroup_parent.rstrip('/')}/{s.id}" for s in sandboxes] + [
                s.cgroup_parent for s in sandboxes if s.own_cgroup_parent]:
            if path:
                problems += _remove_cgroup(path)
        problems += unmount_under(self.workdir)
        if sandboxes or containers:
            problems.append(f"{len(sandboxes)} pods and {len(containers)} containers were left; removed by hand")
        return problems


def _remove_cgroup(path: str) -> list[str]:
    group = Cgroup(path)
    if not group.exists():
        return []
    try:
        group.kill_all()
        group.remove(recursive=True)
        return []
    except (CgroupError, OSError) as e:
        return [f"cgroup {path}: {e}"]


def unmount_under(root: str) -> list[str]:
    """Detach every mount under `root` (namespace pins, rootfs overlays, /dev/shm), deepest first."""
    prefix = os.path.realpath(root).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].encode().decode("unicode_escape") for line in f]
    problems = []
    for point in sorted({p for p in points if p.startswith(prefix)}, key=len, reverse=True):
        try:
            libc.umount(point, libc.MNT_DETACH)
        except OSError as e:
            problems.append(f"unmounting {point}: {e.strerror}")
    return problems
