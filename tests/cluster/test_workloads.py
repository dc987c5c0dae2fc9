"""Deployments, Jobs and the pod lifecycle as kubelet drives them on the runtime: scaling,
rollouts, init containers, hooks, grace periods and restart policies."""
from __future__ import annotations

import json
import subprocess
import time

from tests.cluster.kube import BUSYBOX, BUSYBOX_V2, HTTPD, Kube
from tools.cluster import settings as s


def deployment(name: str, replicas: int, image: str = BUSYBOX) -> str:
    return json.dumps({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"rollingUpdate": {"maxSurge": 2, "maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                    "name": "web", "image": image, "command": HTTPD,
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
                }]},
            },
        },
    })


def available(kube: Kube, ns: str, name: str, replicas: int) -> None:
    kube.kubectl("-n", ns, "rollout", "status", f"deployment/{name}", "--timeout=180s", timeout=190)
    d = kube.get("-n", ns, "deployment", name)
    assert d["status"].get("availableReplicas") == replicas, d["status"]


def sandboxes_of(kube: Kube, ns: str) -> set[str]:
    """The pods the runtime itself holds for a namespace, ready or not (crictl pods)."""
    out = json.loads(kube.crictl("pods", "--namespace", ns, "-o", "json").stdout)
    return {p["metadata"]["name"] for p in out.get("items", [])}


def test_a_deployment_scales_rolls_and_its_deleted_pods_leave_the_runtime(kube, ns):
    kube.apply(deployment("web", 5), ns)
    available(kube, ns, "web", 5)

    kube.kubectl("-n", ns, "scale", "deployment/web", "--replicas=10")
    available(kube, ns, "web", 10)
    kube.kubectl("-n", ns, "scale", "deployment/web", "--replicas=5")
    kube.wait("the deployment back at 5 pods",
              lambda: len(kube.get("-n", ns, "pods", "-l", "app=web")["items"]) == 5, timeout=120)

    before = {p["metadata"]["name"] for p in kube.get("-n", ns, "pods", "-l", "app=web")["items"]}
    kube.kubectl("-n", ns, "set", "image", "deployment/web", f"web={BUSYBOX_V2}")
    available(kube, ns, "web", 5)
    pods = kube.get("-n", ns, "pods", "-l", "app=web")["items"]
    kube.wait("the old pods gone", lambda: not before & {
        p["metadata"]["name"] for p in kube.get("-n", ns, "pods", "-l", "app=web")["items"]})
    pods = kube.get("-n", ns, "pods", "-l", "app=web")["items"]
    assert {c["image"] for p in pods for c in p["status"]["containerStatuses"]} == {BUSYBOX_V2}
    # The new image really runs: it has the file the second busybox adds.
    assert kube.exec(ns, pods[0]["metadata"]["name"], "cat", "/etc/release").strip() == "v2"

    kube.kubectl("-n", ns, "delete", "deployment", "web", "--wait=true", timeout=180)
    kube.wait("the deleted pods gone from the runtime", lambda: not sandboxes_of(kube, ns), timeout=180)


def test_init_containers_run_to_completion_first_in_order(kube, ns):
    kube.apply(json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "init"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "volumes": [{"name": "work", "emptyDir": {}}],
            "initContainers": [
                {"name": f"step{i}", "image": BUSYBOX, "command": ["sh", "-c", f"echo step{i} >> /work/order"],
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}]} for i in (1, 2)
            ],
            "containers": [{"name": "main", "image": BUSYBOX, "command": ["sleep", "3600"],
                            "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
        },
    }), ns)
    kube.wait_ready(ns, "init")
    assert kube.exec(ns, "init", "cat", "/work/order").split() == ["step1", "step2"]
    inits = kube.pod(ns, "init")["status"]["initContainerStatuses"]
    assert [c["state"]["terminated"]["reason"] for c in inits] == ["Completed", "Completed"]


def test_post_start_and_pre_stop_hooks_run(kube, ns):
    # The preStop hook writes into the container's own output (its PID 1's stdout), which the
    # log keeps while the pod terminates.
    kube.run_pod(ns, "hooks", ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
                 terminationGracePeriodSeconds=10,
                 container={"lifecycle": {
                     "postStart": {"exec": {"command": ["sh", "-c", "echo started > /tmp/post-start"]}},
                     "preStop": {"exec": {"command": ["sh", "-c", "echo stopping > /proc/1/fd/1; sleep 1"]}},
                 }})
    kube.wait_ready(ns, "hooks")
    assert kube.exec(ns, "hooks", "cat", "/tmp/post-start").strip() == "started"
    follow = kube.kubectl("-n", ns, "delete", "pod", "hooks", "--wait=false")
    assert follow.returncode == 0
    logs = kube.wait("the preStop hook's line in the log",
                     lambda: "stopping" in (out := kube.kubectl("-n", ns, "logs", "hooks", check=False).stdout) and out,
                     timeout=30, interval=0.2)
    assert "stopping" in logs


def test_grace_period_sends_sigterm_then_sigkill(kube, ns):
    # One container ignores SIGTERM: it must be killed when its 3 s grace period runs out.
    kube.run_pod(ns, "stubborn", ["sh", "-c", "trap 'echo got TERM' TERM; while true; do sleep 0.2; done"],
                 terminationGracePeriodSeconds=3)
    kube.wait_ready(ns, "stubborn")
    uid = kube.pod(ns, "stubborn")["metadata"]["uid"]
    # The container's output, followed until it ends, shows whether SIGTERM reached it.
    follow = subprocess.Popen([s.binary("kubectl"), f"--kubeconfig={s.KUBECONFIG}", "-n", ns, "logs", "-f",
                               "stubborn"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1)  # let the follower attach before the signal comes
        start = time.monotonic()
        kube.kubectl("-n", ns, "delete", "pod", "stubborn", "--wait=true", timeout=60)
        took = time.monotonic() - start
        output, _ = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    # Deleted only after the grace period (SIGTERM was ignored), and not much later (SIGKILL came).
    assert "got TERM" in output, output
    assert 3 <= took < 30, took
    assert not [p for p in json.loads(kube.crictl("pods", "-o", "json").stdout)["items"]
                if p["metadata"]["uid"] == uid and p["state"] == "SANDBOX_READY"]


def test_restart_policies(kube, ns):
    kube.run_pod(ns, "never", ["sh", "-c", "exit 3"], restartPolicy="Never")
    kube.run_pod(ns, "onfailure", ["sh", "-c", "[ -e /tmp/x ] || { touch /tmp/x; exit 1; }; exit 1"],
                 restartPolicy="OnFailure")
    kube.run_pod(ns, "succeeds", ["sh", "-c", "exit 0"], restartPolicy="OnFailure")
    never = kube.wait_phase(ns, "never", "Failed")
    assert never["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    assert never["status"]["containerStatuses"][0]["restartCount"] == 0
    kube.wait("OnFailure to restart a failing container",
              lambda: kube.container_status(ns, "onfailure")["restartCount"] >= 1)
    done = kube.wait_phase(ns, "succeeds", "Succeeded")
    assert done["status"]["containerStatuses"][0]["restartCount"] == 0


def test_a_job_completes(kube, ns):
    kube.apply(json.dumps({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "count"},
        "spec": {"completions": 3, "parallelism": 2, "backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": BUSYBOX, "command": ["sh", "-c", "echo done"]}],
        }}},
    }), ns)
    kube.kubectl("-n", ns, "wait", "--for=condition=Complete", "job/count", "--timeout=120s", timeout=130)
    job = kube.get("-n", ns, "job", "count")
    assert job["status"]["succeeded"] == 3
    pods = kube.get("-n", ns, "pods", "-l", "job-name=count")["items"]
    assert all(kube.kubectl("-n", ns, "logs", p["metadata"]["name"]).stdout.strip() == "done" for p in pods)
