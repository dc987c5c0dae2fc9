"""cricketd (or one of its helpers) killed by SIGKILL at every named step of every verb
(linux/crash_points.py), then started again: nothing is lost and nothing leaks.

For each step, a daemon is started with that step armed and a pod's whole life is driven
through it: pull, run the pod (its own PID namespace holder, a host port, a private CNI
bridge network), create, start, stop and remove a container, stop and remove the pod, remove
the image. The armed step kills cricketd (or the zygote, a shim, or the network worker) in one
of those verbs. The daemon is started again without it, and then:

- every pod and container is whole or absent, or in a state stop and remove can finish
  (a container reported created is created in its shim too; a running one runs);
- the verb that was cut short can be retried to success, and the life goes on to its end;
- once everything is removed and the daemon stopped, nothing of it is left: no mount under
  its root or state dir, no pinned namespace, no veth, no address reserved, no iptables
  chain or rule of its network, no cgroup of its pods, no shim, pod init or container
  process, no file in the ingest directory, the CNI cache or the snapshot store.
"""
from __future__ import annotations

import ast
import json
import os
import pathlib
import random
import signal
import time

import grpc
import pytest

from api.runtime.v1 import api_pb2 as pb
from api.shim.v1 import shim_pb2 as shim_pb
from tests import crash_checks as cc
from tests.daemon import Cricketd, need_root, registry_config
from tests.fixtures import images
from tests.pods import Pods

# Each step, the verb of the life in which it is reached, and whether it kills a helper of
# cricketd's rather than cricketd itself (then the verb fails and cricketd lives on).
STEPS: dict[str, tuple[str, bool]] = {
    "image_pull.mid_download": ("pull", False),
    "image_pull.mid_commit": ("pull", False),
    "image_pull.mid_unpack": ("pull", False),
    "image_pull.snapshot_placed": ("pull", False),
    "image_pull.before_record": ("pull", False),
    "sandbox_run.after_record": ("run_pod", False),
    "zygote.pin_namespaces": ("run_pod", True),
    "sandbox_run.after_pin": ("run_pod", False),
    "cni.after_intent": ("run_pod", False),
    "cni.mid_add": ("run_pod", False),
    "cni_worker.after_plugin": ("run_pod", True),
    "sandbox_run.after_cni_add": ("run_pod", False),
    "zygote.spawn_pod_init": ("run_pod", True),
    "sandbox_run.pod_init_spawned": ("run_pod", False),
    "sandbox_run.pod_init_placed": ("run_pod", False),
    "sandbox_run.before_ready": ("run_pod", False),
    "container_create.before_spawn": ("create", False),
    "zygote.spawn_shim": ("create", True),
    "container_create.shim_spawned": ("create", False),
    "container_start.before_start": ("start", False),
    "shim.after_start": ("start", True),
    "container_start.after_start": ("start", False),
    "container_stop.after_signal": ("stop", False),
    "container_remove.after_shim": ("remove", False),
    "container_remove.before_forget": ("remove", False),
    "sandbox_stop.after_containers": ("stop_pod", False),
    "cni.mid_del": ("stop_pod", False),
    "sandbox_stop.after_cni_del": ("stop_pod", False),
    "sandbox_remove.after_containers": ("remove_pod", False),
    "sandbox_remove.before_forget": ("remove_pod", False),
    "image_remove.mid_collect": ("remove_image", False),
}
# Steps after which the verb rightly refuses a retry, and why; the walk goes on with kubelet's
# next attempt.
NOT_RETRIED = {
    "shim.after_start": "the container died with its shim: it is exited, and kubelet replaces it",
}
LIFE = ("pull", "run_pod", "create", "start", "stop", "remove", "stop_pod", "remove_pod", "remove_image")
ROOT = pathlib.Path(__file__).resolve().parents[1]


def armed_in_source() -> set[str]:
    """Every step named by a crash_point() or armed() call in the project's code."""
    names = set()
    for package in ("cri", "cni", "frames", "image", "linux", "shim"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                        "crash_point", "armed", "_kill_cricketd_at") and node.args \
                        and isinstance(node.args[0], ast.Constant):
                    names.add(node.args[0].value)
    return names



@pytest.fixture(scope="module")
def big_image(registry, tmp_path_factory):
    """busybox and three layers of random data (~6 MB): blobs that take many reads to fetch,
    layers that take a moment to unpack."""
    built = images.build_big_image(str(tmp_path_factory.mktemp("crash-big")), mb=6, seed=14)
    images.push_all(built, registry)
    return built["bigimage"].reference(registry)


class Life:
    """One pod's life on a daemon, verb by verb; each verb can be driven again after a crash."""

    def __init__(self, d: Cricketd, pods: Pods, image: str):
        self.d, self.pods, self.image = d, pods, image
        self.pod_config = pods.pod_config(pid=pb.POD)
        # A host port, so that portmap makes the pod a chain of its own too.
        self.pod_config.port_mappings.append(pb.PortMapping(protocol=pb.TCP, container_port=80,
                                                            host_port=random.randint(30000, 39999)))
        self.container_config = pods.container_config(image, ["sleep", "1000"], pid=pb.POD)
        self.pod = ""
        self.cid = ""
        self.seen = cc.Seen()

    def do(self, verb: str) -> None:
        p = self.pods
        if verb == "pull":
            self.d.pull(self.image)
        elif verb == "run_pod":
            self.pod = p.run_pod(self.pod_config)
        elif verb == "create":
            self.cid = p.create(self.pod, self.container_config)
        elif verb == "start":
            p.start(self.cid)
        elif verb == "stop":
            p.stop(self.cid, timeout=10)
        elif verb == "remove":
            p.remove(self.cid)
        elif verb == "stop_pod":
            p.stop_pod(self.pod)
        elif verb == "remove_pod":
            p.remove_pod(self.pod)
        elif verb == "remove_image":
            self.d.remove(self.image)
        self.seen.note(p)

    def retry(self, verb: str) -> None:
        """Drive `verb` again after the crash, as kubelet would: a start whose effect took place
        before the crash is not repeated (kubelet sees the container running)."""
        if verb == "start" and self.pods.state(self.cid) == pb.CONTAINER_RUNNING:
            return
        self.do(verb)

    def next_attempt(self, verb: str) -> bool:
        """After a retry failed: what kubelet does next, a new attempt under a new name, so
        that the walk goes on to count what was left behind. False if there is none."""
        if verb == "run_pod":
            self.pod_config.metadata.attempt += 1
        elif verb == "create":
            self.container_config.metadata.attempt += 1
        elif verb == "start":
            # A container that cannot be started again is replaced, as kubelet's next sync does.
            self.container_config.metadata.attempt += 1
            self.do("create")
        else:
            return False
        self.do(verb)
        return True


def said_by(d: Cricketd, life: Life, step: str) -> str:
    """What the process that reaches `step` wrote: a shim writes its own log, in its bundle;
    the rest write cricketd's."""
    if step.startswith("shim."):
        try:
            return pathlib.Path(d.state, "containers", life.cid, "shim.log").read_text()
        except FileNotFoundError:
            return ""
    return d.log()


def check_whole_or_absent(life: Life) -> list[str]:
    """What after a restart is neither whole, nor absent, nor on its way out."""
    pods, d = life.pods, life.d
    wrong = []
    for p in pods.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items:
        info = json.loads(pods.pod_status(p.id, verbose=True).info["info"])
        if p.state == pb.SANDBOX_READY:
            for key in ("netNamespace", "ipcNamespace", "utsNamespace", "shm"):
                if info[key] and not os.path.ismount(info[key]):
                    wrong.append(f"pod {p.id} is ready but its {key} {info[key]} is not there")
            if not info["pid"] or not os.path.exists(f"/proc/{info['pid']}"):
                wrong.append(f"pod {p.id} is ready but its init {info['pid']} is not running")
            if not pods.pod_status(p.id).status.network.ip:
                wrong.append(f"pod {p.id} is ready but has no IP")
    for c in pods.rt.ListContainers(pb.ListContainersRequest()).containers:
        info = json.loads(pods.status(c.id, verbose=True).info["info"])
        truth = cc.shim_state(d, c.id)
        if c.state == pb.CONTAINER_CREATED and truth != shim_pb.CREATED:
            wrong.append(f"container {c.id} is reported created, its shim says {truth}")
        if c.state == pb.CONTAINER_RUNNING and not (info["pid"] and os.path.exists(f"/proc/{info['pid']}")):
            wrong.append(f"container {c.id} is reported running, its process {info['pid']} is not")
        if c.state == pb.CONTAINER_EXITED and truth == shim_pb.RUNNING:
            wrong.append(f"container {c.id} is reported exited, its shim says it runs")
    return wrong


def test_every_step_in_the_code_is_walked():
    assert armed_in_source() == set(STEPS), "crash points and the walk's steps differ"


@pytest.mark.parametrize("step", list(STEPS))
def test_a_crash_at_each_step_loses_and_leaks_nothing(step, registry, big_image, network, tmp_path):
    need_root()
    verb, helper_dies = STEPS[step]
    d = Cricketd(str(tmp_path / "cricketd"), registry_config(registry) + network.daemon_config())
    pods = Pods(d, str(tmp_path / "logs"))
    life = Life(d, pods, big_image)
    try:
        cc.start(d, crash_at=step)
        failed_at = ""
        for v in LIFE:
            try:
                life.do(v)
            except grpc.RpcError as e:
                failed_at = v
                error = e
                break
        assert failed_at, f"the life went through without reaching {step}"
        assert f"crash point {step}:" in said_by(d, life, step), \
            f"{failed_at} failed, but not at {step}: {error.details()}"
        assert failed_at == verb, f"{step} was reached in {failed_at}, not {verb}"
        problems = []
        if helper_dies:
            # cricketd lives on, answers, and what the failed verb made is whole or absent.
            assert not cc.died(d, 1), f"cricketd died with its helper at {step}"
            problems += [f"while cricketd ran on: {p}" for p in check_whole_or_absent(life)]
            d.stop(signal.SIGKILL)
        else:
            assert cc.died(d), f"cricketd lived on past {step}"
            d.stop()

        cc.start(d)
        problems += check_whole_or_absent(life)
        life.seen.note(pods)
        try:
            life.retry(failed_at)
        except grpc.RpcError as e:
            if not (step in NOT_RETRIED and e.code() == grpc.StatusCode.FAILED_PRECONDITION):
                problems.append(f"retrying {failed_at} failed: {e.code().name}: {e.details()}")
            if not life.next_attempt(failed_at):
                raise AssertionError(problems) from None
        for v in LIFE[LIFE.index(failed_at) + 1:]:
            life.do(v)
        try:
            cc.remove_everything(d, pods)
        except grpc.RpcError as e:
            problems.append(f"removing everything failed: {e.code().name}: {e.details()}")
        problems += [f"left listed: pod {p.id}" for p in pods.rt.ListPodSandbox(pb.ListPodSandboxRequest()).items]
        problems += [f"left listed: container {c.id}"
                     for c in pods.rt.ListContainers(pb.ListContainersRequest()).containers]
        problems += [f"left listed: image {i.id}" for i in d.list()]
        d.stop()
        problems += [f"leaked: {leak}" for leak in cc.leaks(d, network, life.seen)]
        assert problems == [], f"after a crash at {step}: {problems}"
    finally:
        _clean_up(d, pods)


def _clean_up(d: Cricketd, pods: Pods) -> None:
    """Whatever a failed test left: its pods, containers and images removed by a daemon without
    the crash point, that daemon stopped, and any of its processes that remain killed."""
    try:
        if d.proc is not None and d.proc.poll() is not None:
            d.stop()
        if d.proc is None:
            cc.start(d)
        try:
            cc.remove_everything(d, pods)
        except grpc.RpcError:
            pass
    except RuntimeError:
        pass  # it will not start: what it left is killed below
    finally:
        d.stop()
        deadline = time.monotonic() + 5
        while cc.family(d) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid, _ in cc.family(d):
            cc.kill(pid)
